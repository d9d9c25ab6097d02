"""Distribution targets on many-class models: the residuals per Levenberg-Marquardt step do not
grow with the number of classes, and verification stays the max-abs rule over every class."""
import pytest
import torch
from torch import nn

import captum_invert.solvers.lm as lm
from captum_invert import ForwardPassInversion, GeneralizedInversion, SolverSettings

C = 500


@pytest.fixture(scope="module")
def wide_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ELU(), nn.Linear(128, 128), nn.ELU(), nn.Linear(128, C)).eval()


@pytest.fixture
def widths(monkeypatch):
    seen = []
    orig = lm.batched_jacobian

    def spy(f, x, mode="auto", has_aux=False, **kw):
        out = orig(f, x, mode, has_aux, **kw)
        seen.append(out[0].shape[1])
        return out

    monkeypatch.setattr(lm, "batched_jacobian", spy)
    return seen


def _three_class_target():
    t = torch.zeros(C)
    t[3], t[7], t[1] = 0.5, 0.3, 0.2
    return t


@pytest.mark.parametrize("method", [ForwardPassInversion, GeneralizedInversion])
def test_distribution_residuals_do_not_grow_with_classes(wide_net, widths, method):
    t = _three_class_target()
    x, d = method(wide_net, input_shape=(64,)).attribute(target=t, n_samples=8, seed=0,
                                                          return_convergence_delta=True)
    assert widths and max(widths) <= 3  # the support's three ratios, never one per class
    with torch.no_grad():
        p = wide_net(x).softmax(1)
    assert float((p - t).abs().amax()) <= 0.02
    assert torch.allclose(d, (p.double() - t.double()).abs().amax(1), atol=1e-6)


def test_mass_spread_over_the_rest_gets_a_guard(wide_net, widths):
    t = torch.full((C,), 0.4 / (C - 1))
    t[5] = 0.6  # the rest carries 0.4: no single other class may take it
    x = ForwardPassInversion(wide_net, input_shape=(64,)).attribute(target=t, n_samples=4, seed=1)
    assert max(widths) == 2  # one support ratio and the guard on the rest's largest class
    with torch.no_grad():
        p = wide_net(x).softmax(1)
    assert float((p - t).abs().amax()) <= 0.02


def test_small_class_count_keeps_full_residuals(widths):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 3)).eval()
    t = torch.tensor([0.5, 0.3, 0.2])
    x = ForwardPassInversion(net, input_shape=(16,)).attribute(target=t, n_samples=4, seed=0)
    assert max(widths) == 3  # no reduction when it would not save a product
    with torch.no_grad():
        assert float((net(x).softmax(1) - t).abs().amax()) <= 0.02


class RestFloor(nn.Module):
    """Three free support logits capped at ``cap``, seven rest logits fixed at 0: the rest keeps
    at least ``7 / (7 + 2 e^cap)`` of the mass (about 2.5% here), like a normalized head."""

    def __init__(self, cap: float = 4.9):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(12, 3)
        self.cap = cap

    def forward(self, x):
        z = self.cap * torch.tanh(self.body(x) / self.cap)
        return torch.cat([z, torch.zeros(len(x), 7)], 1)


@pytest.mark.parametrize("method", [ForwardPassInversion, GeneralizedInversion])
def test_a_rest_that_cannot_be_pushed_lower_still_gets_the_support_ratios_right(method):
    # 0.5 / 0.3 / 0.2 is within atol = 0.02 of what the model can do (0.49 / 0.29 / 0.20 with
    # 2.5% on the rest) but not within the solver's own margin (atol / 2): the residuals must keep
    # the support's ratios exact instead of trading them for the rest, and the samples that end
    # within atol are kept, not moved on by the first-order escalation
    net = RestFloor().eval()
    t = torch.zeros(10)
    t[0], t[1], t[2] = 0.5, 0.3, 0.2
    inv = method(net, input_shape=(12,))
    x, d = inv.attribute(target=t, n_samples=6, seed=0, return_convergence_delta=True)
    with torch.no_grad():
        p = net(x).softmax(1)
    assert float((p - t).abs().amax()) <= 0.02
    assert float(p[:, 3:].sum(1).min()) > 0.02  # the rest indeed stayed above its floor
    assert inv.last_stats.get("escalated", 0) == 0


def test_the_averaged_jacobian_halves_the_steps_on_a_random_resnet(widths):
    # a random-weight ResNet's pointwise Jacobian changes from point to point (plain steps partly
    # undo each other); the averaged one takes far fewer steps, and every sample still verifies.
    # Most steps are the first phase's, of one product each (the norm of the support's gaps)
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=1000).eval()
    t = torch.zeros(1000)
    t[1], t[2], t[3] = 0.5, 0.3, 0.2
    iters = {}
    for beta in (0.0, 0.5):
        widths.clear()
        inv = ForwardPassInversion(net, input_shape=(3, 32, 32),
                                   solver=SolverSettings(escalation=False, jacobian_averaging=beta))
        x = inv.attribute(target=t, n_samples=2, seed=0, atol=0.02)
        with torch.no_grad():
            assert float((net(x).softmax(1) - t).abs().amax()) <= 0.02
        iters[beta] = inv.last_stats["mean_iterations"]
    assert iters[0.5] <= 0.7 * iters[0.0], iters
    assert set(widths) == {1, 3} and widths.count(3) < widths.count(1) / 1.5, widths
