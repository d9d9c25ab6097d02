import pytest
import torch
from torch import nn

from captum_invert.metrics import (class_diversity, copies, frechet_distance, judge_accuracy, judge_features,
                                   prototype_report)


class _Fixed(nn.Module):
    """Outputs the given logits for the i-th input (the input's first value is i)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(logits)

    def forward(self, x):
        return self.logits[x.flatten(1)[:, 0].long()]


def test_judge_accuracy_separates_read_forced_and_rejected():
    logits = torch.tensor([[5.0, 0, 0], [0, 1.0, 3.0], [0, 0, 9.0], [0, 2.0, 1.0]])  # class 2 = reject
    judge = _Fixed(logits)
    x = torch.arange(4.0)[:, None]
    r = judge_accuracy(judge, x, torch.tensor([0, 1, 1, 0]), reject_class=2)
    assert r["read"] == pytest.approx(0.25)       # only sample 0
    assert r["forced"] == pytest.approx(0.5)      # samples 0 and 1 (1 beats 0 once 2 is left out)
    assert r["rejected"] == pytest.approx(0.5)    # samples 1 and 2
    r10 = judge_accuracy(judge, x, torch.tensor([0, 1, 1, 0]))
    assert r10["read"] == r10["forced"] == pytest.approx(0.25) and r10["rejected"] == 0
    with pytest.raises(ValueError, match="reject_class"):
        judge_accuracy(judge, x, 0, reject_class=7)


def test_frechet_distance_of_gaussians():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=g, dtype=torch.float64)
    b = torch.randn(4000, 3, generator=g, dtype=torch.float64) * 2 + torch.tensor([1.0, 0, 0], dtype=torch.float64)
    # ||mu||^2 + sum (1 + 4 - 2 * 2) = 1 + 3
    assert frechet_distance(a, b) == pytest.approx(4.0, abs=0.3)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_diversity_copies_and_report():
    x = torch.zeros(4, 1, 2, 2)
    x[1] += 1
    assert class_diversity(x, [0, 0, 1, 1]) == pytest.approx(1.0)  # class 0: distance 2, class 1: 0
    ref = torch.zeros(3, 1, 2, 2)
    assert copies(x, ref, 0.5).tolist() == [True, False, True, True]
    judge = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    assert judge_features(judge, x).shape == (4, 3)
    rep = prototype_report(torch.rand(6, 1, 2, 2) + 3, [0, 0, 0, 1, 1, 1], judge, torch.rand(10, 1, 2, 2),
                           torch.tensor([0, 1] * 5))
    assert set(rep) == {"read", "forced", "rejected", "copies", "nn_dist", "frechet", "diversity"}
    assert rep["copies"] == 0 and rep["nn_dist"] > 3
