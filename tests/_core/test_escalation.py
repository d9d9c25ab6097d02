"""The escalation's fallback to the model's own gradient, on deep LeakyReLU nets (8 layers)
whose weights are the default initialisation at 4x its scale: saturated, and their surrogate
gradients point off. The nets are not trained, so they are the same on every machine (a trained
net's quirks depend on the CPU's float kernels)."""
import pytest
import torch
from torch import nn

from captum_invert import (BackwardPassInversion, ForwardPassInversion, GeneralizedInversion, InversionError,
                           SolverSettings)
from captum_invert.models import FCNN

BOX = (0.0, 1.0)
CASES = [(4, 0), (4, 8), (4, 9), (5, 3)]  # (init seed, target class)


def leaky(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = FCNN((64, 64, 64, 32, 32, 16, 16, 10), lambda: nn.LeakyReLU(0.01), True, input_shape=(1, 8, 8)).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Linear):
                m.weight.mul_(4.0)
    return net


@pytest.fixture(scope="module")
def nets():
    return {s: leaky(s) for s in {s for s, _ in CASES}}


def verified(net, target, own_gradient, n=6):
    inv = ForwardPassInversion(net, solver=SolverSettings(own_gradient=own_gradient))
    try:
        inv.attribute(target=target, n_samples=n, input_range=BOX, seed=0, max_retries=0)
        return n
    except InversionError as e:
        assert e.n_requested == n and "samples verified" in str(e)
        return e.n_verified


def test_own_gradient_verifies_what_the_surrogate_leaves_short(nets):
    surrogate = [verified(nets[s], c, False) for s, c in CASES]  # the releases before
    own = [verified(nets[s], c, True) for s, c in CASES]
    assert all(o >= s for o, s in zip(own, surrogate))
    assert sum(own) > sum(surrogate) and sum(surrogate) < 6 * len(CASES)


@pytest.mark.parametrize("method", [ForwardPassInversion, BackwardPassInversion, GeneralizedInversion])
def test_own_gradient_verifies_in_the_box(nets, method):
    x = method(nets[4]).attribute(target=8, n_samples=3, input_range=BOX, seed=0)
    with torch.no_grad():
        p = torch.softmax(nets[4](x), 1)[:, 8]
    assert (p >= 0.9).all() and x.min() >= 0 and x.max() <= 1


def test_the_fallback_is_counted_and_reached_from_the_first_start(nets):
    inv = ForwardPassInversion(nets[4])
    inv.attribute(target=0, n_samples=3, input_range=BOX, seed=0, max_retries=0, allow_unverified=True)
    s = inv.last_stats
    assert s["escalated"] >= 1 and 1 <= s["own_gradient"] <= s["escalated"] and s["own_gradient_converged"] >= 1
