"""Captum's keywords (additional_forward_args, internal_batch_size, show_progress) on the
baselines, the layer and the learned method."""
import pytest
import torch
from torch import nn

from captum_invert import (DatasetSearch, ExactInversion, LayerInversion, LearnedInversion, PixelImportance,
                           PseudoInverseInversion)
from captum_invert.models import FCNN, InvertibleNet


class Flip(nn.Module):
    """A classifier whose extra argument reverses the class order (flip=True)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, flip=False):
        out = self.net(x)
        return out.flip(1) if flip else out


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return FCNN((16, 8, 4), "selu", False, (1, 4, 4)).eval()


def test_dataset_search_reads_the_extra_argument(net):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(400, 1, 4, 4, generator=g) * 6 - 3
    inv = DatasetSearch(Flip(net), images)
    plain = inv.attribute(target=[0, 1], allow_unverified=True)
    flipped = inv.attribute(target=[0, 1], allow_unverified=True, additional_forward_args=(True,))
    with torch.no_grad():
        p_flip = torch.softmax(Flip(net)(flipped, True), 1)[[0, 1], [0, 1]]
        p_plain = torch.softmax(Flip(net)(flipped, False), 1)[[0, 1], [0, 1]]
    assert bool((p_flip >= p_plain).all()) and not torch.equal(flipped, plain)
    # the cached probabilities follow the call's model
    again = inv.attribute(target=[0, 1], allow_unverified=True)
    assert torch.equal(again, plain)


@pytest.mark.parametrize("make,kw", [
    (lambda m: PixelImportance(m), dict(k=5)),
    (lambda m: PseudoInverseInversion(m), {}),
])
def test_internal_batches_and_progress_give_the_same_result(net, make, kw, capsys):
    inv = make(net)
    target = [0, 1, 2, 3, 0, 1, 2]
    whole, d = inv.attribute(target=target, allow_unverified=True, return_convergence_delta=True, **kw)
    parts, d2 = inv.attribute(target=target, allow_unverified=True, return_convergence_delta=True,
                              internal_batch_size=3, show_progress=True, **kw)
    assert torch.allclose(whole, parts) and torch.allclose(d, d2)
    assert inv.last_stats["internal_batches"] == 3
    assert type(inv).__name__ in capsys.readouterr().err  # the tqdm bar


def test_layer_inversion_in_internal_batches(net):
    inv = LayerInversion(net, "1")
    t = torch.randn(5, 8, generator=torch.Generator().manual_seed(0)) * 0.3
    x = inv.attribute(target=t, seed=0, internal_batch_size=2)
    assert x.shape == (5, 1, 4, 4) and inv.last_stats["internal_batches"] == 3
    with torch.no_grad():
        assert ((inv.activation(x) - t).norm(dim=1) / t.norm(dim=1) <= 1e-2).all()


def test_methods_that_read_layers_refuse_extra_arguments(net):
    torch.manual_seed(0)
    exact = ExactInversion(InvertibleNet(16, 2, input_shape=(1, 4, 4)))
    with pytest.raises(ValueError, match="`additional_forward_args` is not supported by ExactInversion"):
        exact.attribute(target=torch.randn(2, 16), additional_forward_args=(True,))
    learned = LearnedInversion(net, layer="logits")
    with pytest.raises(ValueError, match="`additional_forward_args` is not supported by LearnedInversion"):
        learned.attribute(torch.rand(2, 1, 4, 4), additional_forward_args=(True,))
