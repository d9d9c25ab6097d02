import torch
from torch import nn

from captum_invert.solvers.first_order import projected_adam, surrogate_gradients


def test_surrogate_gradients_keep_values_and_pass_gradient_through_saturated_units():
    torch.manual_seed(0)  # the last Linear's weights set how much gradient the floor passes
    net = nn.Sequential(nn.Linear(3, 4), nn.SELU(), nn.ReLU(inplace=True), nn.Linear(4, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(4, 3))
        net[0].bias.fill_(-30.0)  # every unit deep in SELU's floor and dead after the ReLU
    x = torch.randn(5, 3, requires_grad=True)
    y0 = net(x)
    g0, = torch.autograd.grad(y0.sum(), x)
    assert float(g0.abs().max()) < 1e-10
    with surrogate_gradients(net, kappa=0.3):
        y1 = net(x)
        g1, = torch.autograd.grad(y1.sum(), x)
    assert torch.equal(y0, y1)
    assert float(g1.abs().min()) > 1e-3
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    g2, = torch.autograd.grad(net(x).sum(), x)
    assert torch.equal(g0, g2)


def test_surrogate_hooks_are_removed_after_an_exception():
    net = nn.Sequential(nn.Linear(3, 3), nn.Tanh())
    try:
        with surrogate_gradients(net):
            raise KeyError("boom")
    except KeyError:
        pass
    assert not net[1]._forward_hooks and not net[1]._forward_pre_hooks


def test_projected_adam_reaches_the_goal_inside_the_box():
    # residual: 3 - sum(x), done when sum(x) >= 2.9, box [0, 1]^4 (the goal needs x near the top)
    def res(x, idx):
        s = x.flatten(1).sum(1, keepdim=True)
        return (3 - s).clamp_min(0), s

    x0 = torch.zeros(6, 4)
    out = projected_adam(res, x0, 200, 0.05, lambda x, r, idx, s: s.squeeze(1) >= 2.9, (0.0, 1.0))
    assert bool(out.done.all())
    assert float(out.x.min()) >= 0 and float(out.x.max()) <= 1
    assert bool((out.x.sum(1) >= 2.9).all())
    assert int(out.n_iter.max()) < 200


def test_projected_adam_stops_on_zero_gradient():
    def res(x, idx):
        r = torch.round(x).sum(1, keepdim=True) + 5.0  # no gradient anywhere
        return r, r

    out = projected_adam(res, torch.zeros(3, 2), 50, 0.1, lambda x, r, idx, a: a.squeeze(1) <= 0)
    assert bool(out.zero_grad.all()) and not bool(out.done.any())
    assert int(out.n_iter.max()) == 0
