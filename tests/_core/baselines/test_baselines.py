import json

import pytest
import torch
from torch import nn

from captum_invert import (ActivationMaximization, DatasetSearch, ExactInversion, InversionError,
                           MiddleFilter, PixelImportance, PseudoInverseInversion, TopBottomFilter,
                           stability_report)
from captum_invert._core.baselines import seed001_loss, total_variation
from captum_invert.models import FCNN, InvertibleNet


def test_pseudo_inverse_is_the_minimum_norm_least_squares_solution():
    torch.manual_seed(0)
    slp = FCNN((30, 5), "identity", False)
    inv = PseudoInverseInversion(slp)
    x = inv.attribute(target=[2], allow_unverified=True).double()
    z = torch.full((1, 5), -10.0, dtype=torch.float64)
    z[0, 2] = 10.0
    W, b = slp[1].weight.double(), slp[1].bias.double()
    ref = torch.linalg.lstsq(W, (z - b).T, driver="gelsd").solution.T  # min-norm for wide W
    assert torch.allclose(x, ref, atol=1e-5)
    assert torch.allclose(x @ W.T + b, z, atol=1e-4)  # 30 > 5: the logits are hit exactly
    # without biases, seed 002's SLP variant
    x0 = inv.attribute(target=[2], use_bias=False, allow_unverified=True).double()
    assert torch.allclose(x0 @ W.T, z, atol=1e-4)


def test_pseudo_inverse_through_leaky_relu_layers_classifies(digit_nets):
    from captum_invert.models import MLP

    mlp = MLP(784, 10, input_shape=(1, 28, 28))
    torch.manual_seed(1)
    x = PseudoInverseInversion(mlp).attribute(target=list(range(10)))  # verified, or an error
    assert x.shape == (10, 1, 28, 28)
    # 784 -> 30 -> 30 -> 10 through invertible LeakyReLUs: the minimum-norm preimage of the ideal
    # logits (10 on the class, -10 elsewhere) gives back those logits
    ideal = torch.full((10, 10), -10.0)
    ideal[torch.arange(10), torch.arange(10)] = 10.0
    with torch.no_grad():
        assert float((mlp(x) - ideal).abs().max()) < 0.05


@pytest.mark.parametrize("p", [0.05, 0.2])
def test_filters_keep_the_right_fractions(p):
    M = torch.randn(200, 300, dtype=torch.float64)
    kept = (TopBottomFilter(p)(M) != 0).double().mean()
    assert abs(float(kept) - 2 * p) < 0.01
    C = MiddleFilter(p)(M)
    lo, hi = torch.quantile(M.flatten(), torch.tensor([p, 1 - p], dtype=torch.float64))
    assert C.min() >= lo - 1e-9 and C.max() <= hi + 1e-9
    at_bounds = ((C == C.min()) | (C == C.max())).double().mean()
    assert abs(float(at_bounds) - 2 * p) < 0.01
    with pytest.raises(ValueError, match="`p`"):
        TopBottomFilter(0.7)


def test_pixel_importance_ranking_matches_brute_force():
    torch.manual_seed(0)
    model = FCNN((16, 8, 3), "selu", False, (1, 4, 4))
    pi = PixelImportance(model)
    x = pi.attribute(target=[1], k=5, levels=254, allow_unverified=True)[0].flatten()
    ideal = torch.tensor([-10.0, 10.0, -10.0])
    brute = []
    for i in range(16):
        e = torch.zeros(1, 1, 4, 4)
        e.view(-1)[i] = 1.0
        with torch.no_grad():
            brute.append(-(model(e)[0] - ideal).abs().sum().item())
    order = sorted(range(16), key=lambda i: -brute[i])[:5]
    painted = x.nonzero().squeeze(1).tolist()
    assert sorted(painted) == sorted(order)
    assert [i for i in x.argsort(descending=True)[:5].tolist()] == order  # descending intensity
    assert x.max() == 1.0 and (x[x > 0] < 1.0).sum() == 4


def test_dataset_search_best_and_mean(digits, digit_nets):
    model = digit_nets[2]
    images = digits[0].tensors[0][:300]
    ds = DatasetSearch(model, images)
    P = ds.probabilities()
    best = ds.attribute(target=4, allow_unverified=True)
    assert torch.equal(best[0], images[int((P[:, 4]).argmax())])
    mean = ds.attribute(target=4, mode="mean", percentile=10, allow_unverified=True)
    d = (P - torch.nn.functional.one_hot(torch.tensor(4), 10).double()).abs().amax(1)
    sel = images[d <= torch.quantile(d, 0.1)]
    assert torch.allclose(mean[0], sel.mean(0), atol=1e-6)
    with pytest.raises(ValueError, match="`mode`"):
        ds.attribute(target=1, mode="median")


def test_activation_maximization_verifies_and_tv_smooths(digit_nets):
    model = digit_nets[2]
    am = ActivationMaximization(model)
    x = am.attribute(target=[3, 7], seed=0, input_range=(0.0, 1.0))
    assert x.min() >= 0 and x.max() <= 1
    with torch.no_grad():
        assert (torch.softmax(model(x), 1)[[0, 1], [3, 7]] >= 0.9).all()
    rough = am.attribute(target=[3] * 4, seed=1, max_iter=60, allow_unverified=True)
    smooth = am.attribute(target=[3] * 4, seed=1, max_iter=60, tv=0.05, allow_unverified=True)
    assert total_variation(smooth).mean() < total_variation(rough).mean()
    with pytest.raises(ValueError, match="images"):
        am.attribute(target=1, start="dataset")


def _well_conditioned(dim=64, blocks=3, slope=0.5, seed=0):
    torch.manual_seed(seed)
    net = InvertibleNet(dim, blocks, slope, input_shape=(dim,))
    for m in net:
        if isinstance(m, nn.Linear):
            q, _ = torch.linalg.qr(torch.randn(dim, dim))
            m.weight.data.copy_(q * 1.5)
    return net


def test_exact_inversion_reconstructs_and_generates():
    net = _well_conditioned()
    x = torch.randn(8, 64)
    with torch.no_grad():
        y = net(x)
    ex = ExactInversion(net)
    xr, err = ex.attribute(target=y, return_convergence_delta=True)
    assert ((xr - x).norm(dim=1) / x.norm(dim=1)).max() < 1e-4 and err.max() < 1e-4
    ys = ex.sample_outputs([0, 1, 2], gen=0)
    assert ys.shape == (3, 64) and abs(float(ys[2].mean()) - 4.0) < 0.5
    xg = ex.attribute(target=ys.float())
    with torch.no_grad():
        assert torch.allclose(net(xg).double(), ys, atol=1e-3)


def test_exact_inversion_rejects_non_bijective_nets():
    with pytest.raises(ValueError, match="not a square invertible"):
        ExactInversion(FCNN((20, 10), "leaky_relu", False)).attribute(target=torch.zeros(2, 10))


def test_stability_report_measured_within_predicted():
    for slope in (0.5, 0.01):
        rep = stability_report(_well_conditioned(slope=slope), input_shape=(64,))
        assert 0 < rep["measured_amplification"] <= rep["predicted_amplification"] * (1 + 1e-6)
        assert len(rep["layers"]) == 3 and all(l["inverse_slope"] == 1 / slope for l in rep["layers"])


def test_seed001_loss_prefers_the_class_gaussian():
    lab = torch.tensor([0, 1, 2, 3] * 16)
    good = 2.0 * lab[:, None].float() + torch.randn(64, 32)
    bad = good + 3.0
    assert seed001_loss(good, lab) < seed001_loss(bad, lab)


def test_unverified_baseline_results_raise_unless_asked(digit_nets):
    model = digit_nets[2]
    with pytest.raises(InversionError):
        PixelImportance(model).attribute(target=list(range(10)), k=3, min_prob=0.99)


def test_compare_cli_writes_figure_and_table(tmp_path):
    from captum_invert.cli import main

    out = tmp_path / "c"
    assert main(["compare", "--out", str(out), "--samples-per-class", "1", "--epochs", "2",
                 "--vit-epochs", "1", "--judge-epochs", "2", "--prior-steps", "20", "--max-retries", "0",
                 "--no-progress"]) == 0
    rows = json.loads((out / "methods.json").read_text())["methods"]
    names = [r["method"] for r in rows]
    assert "pseudo-inverse (MLP)" in names and "forward pass, ViT" in names and len(names) == 17
    # every method that takes a prior has a DataPrior row, and every row the judge's columns
    assert {"activation maximization + DataPrior", "forward pass + DataPrior, ViT",
            "generalized + DataPrior, ViT"} <= set(names)
    # a digit the judge reads is also its pick among the digits alone; read and rejected exclude
    assert all(0 <= r["judge read"] <= r["judge forced"] <= 1 and r["judge read"] + r["judge rejected"] <= 1 + 1e-9
               for r in rows)
    assert all(r["Frechet (judge)"] >= 0 and r["class NN dist"] > 0 for r in rows)
    assert (out / "methods.png").stat().st_size > 20_000
