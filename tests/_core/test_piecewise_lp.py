import copy

import pytest
import torch
from torch import nn

from captum_invert import BackwardPassInversion, ForwardPassInversion, GeneralizedInversion, PreimageRegion
from captum_invert.blocks.plan import trace_leaf_modules
from captum_invert.blocks.piecewise import linearize
from captum_invert.models import FCNN
from tests.conftest import fit_on_digits

BOX = (0.0, 1.0)


def _cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 8, 3, padding=1),
                         nn.BatchNorm2d(8), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(72, 10))


@pytest.fixture(scope="module")
def relu_nets():
    torch.manual_seed(0)
    mlp = fit_on_digits(FCNN((784, 48, 24, 10), "relu", False, (1, 28, 28)))
    cnn = fit_on_digits(_cnn())
    mixed = fit_on_digits(nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                        nn.Linear(144, 32), nn.SELU(), nn.Linear(32, 10)))
    return {"mlp": mlp, "cnn": cnn, "mixed": mixed}


def test_linearize_is_the_net_on_its_region(relu_nets):
    net = relu_nets["cnn"]
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(1, 28, 28, generator=g)
    lin = linearize(trace_leaf_modules(net, x0[None]).calls, x0)
    xf = x0.reshape(-1).double()
    assert bool((lin.A @ xf <= lin.b + 1e-12).all())
    close = xf + 1e-5 * torch.randn(50, 784, generator=g, dtype=torch.float64)
    inside = ((close @ lin.A.T) <= lin.b).all(1)
    assert int(inside.sum()) > 0
    net64 = nn.Sequential(*[m for m in _cnn()]).double()
    net64.load_state_dict({k: v.double() for k, v in net.state_dict().items()})
    net64.eval()
    with torch.no_grad():
        out = net64(close[inside].reshape(-1, 1, 28, 28))
    assert torch.allclose(out, close[inside] @ lin.G.T + lin.h, atol=1e-9)
    assert {"1", "2", "5"} <= set(lin.pattern)  # ReLU, MaxPool, ReLU


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_every_class_verifies_in_the_box(relu_nets, name):
    inv = BackwardPassInversion(relu_nets[name], input_shape=(1, 28, 28))
    target = torch.arange(10).repeat_interleave(2)
    x, delta, regions = inv.attribute(target=target.tolist(), seed=0, input_range=BOX, return_convergence_delta=True,
                                      return_regions=True)
    assert inv.last_stats["route"] == "lp"
    p = torch.softmax(relu_nets[name](x), 1)
    assert bool((p[torch.arange(20), target] >= 0.9).all())
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert len(regions) == 20 and all(isinstance(r, PreimageRegion) for r in regions)
    # each sample lies in its own region
    assert all(bool(r.contains(x[i:i + 1].double(), tol=1e-5)[0]) for i, r in enumerate(regions))


@pytest.mark.parametrize("cls", [BackwardPassInversion, GeneralizedInversion])
def test_default_route_is_the_fast_one_and_regions_are_asked_for(relu_nets, cls):
    net = relu_nets["cnn"]
    inv = cls(net, input_shape=(1, 28, 28))
    x = inv.attribute(target=[3, 8], seed=0, input_range=BOX)
    assert inv.last_stats["route"] != "lp" and not getattr(inv, "last_regions", None)
    assert bool((torch.softmax(net(x), 1)[torch.arange(2), torch.tensor([3, 8])] >= 0.9).all())
    # with internal batches the regions of every batch come back, one per sample
    x, regions = inv.attribute(target=[3, 8, 1], seed=0, input_range=BOX, return_regions=True, internal_batch_size=2)
    assert len(regions) == 3 and all(isinstance(r, PreimageRegion) for r in regions)
    assert all(bool(r.contains(x[i:i + 1].double(), tol=1e-5)[0]) for i, r in enumerate(regions))
    assert isinstance(inv.region(3, seed=0, input_range=BOX), PreimageRegion)


def test_return_regions_bad_input_is_refused_before_work(relu_nets):
    selu = FCNN((784, 32, 10), "selu", False, (1, 28, 28))
    with pytest.raises(ValueError, match="return_regions=False"):
        BackwardPassInversion(selu).attribute(target=1, return_regions=True)
    with pytest.raises(ValueError, match="return_regions=False"):
        GeneralizedInversion(selu).attribute(target=1, return_regions=True)
    with pytest.raises(ValueError, match="`return_regions` must be a bool"):
        BackwardPassInversion(relu_nets["cnn"]).attribute(target=1, return_regions="yes")
    with pytest.raises(ValueError, match="prior"):
        GeneralizedInversion(relu_nets["cnn"]).attribute(target=1, return_regions=True, prior="auto")


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_every_point_of_the_region_verifies(relu_nets, name):
    net = relu_nets[name]
    inv = BackwardPassInversion(net, input_shape=(1, 28, 28))
    g = torch.Generator().manual_seed(1)
    for target in (3, 7):
        reg = inv.region(target, seed=target, input_range=BOX)
        c, r = reg.chebyshev_ball()
        assert r > 0
        # the pattern is the anchor's; the ball touches the rows it names as tight there
        assert {k for k in reg.pattern} == {lab.split(" ")[0] for lab, _, _ in reg.groups[:-2]}
        assert int(reg.tight(c, tol=1e-6 + r).sum()) >= 1 and int(reg.tight(c, tol=0.5 * r).sum()) == 0
        ball = reg.ball_points(200, seed=g).reshape(200, -1)
        assert float((ball - c.reshape(1, -1)).norm(dim=1).max()) <= r
        pts = [ball, reg.sample(100, seed=2).reshape(100, -1)]
        s = pts[1]
        lam = torch.rand(100, 1, generator=g, dtype=torch.float64)
        pts.append(lam * s + (1 - lam) * s.roll(1, 0))  # convex combinations
        pts = torch.cat(pts)
        assert bool(reg.contains(pts.reshape(-1, 1, 28, 28)).all())
        assert float(pts.min()) >= 0.0 and float(pts.max()) <= 1.0
        with torch.no_grad():
            p = torch.softmax(net(pts.reshape(-1, 1, 28, 28).float()), 1)[:, target]
        assert float(p.min()) >= 0.9
        # a point well outside (another class's sample) is not contained
        assert not bool(reg.contains(torch.zeros(1, 1, 28, 28) + 0.5).all()) or float(
            torch.softmax(net(torch.full((1, 1, 28, 28), 0.5)), 1)[0, target]) >= 0.9


def test_distribution_region_stays_within_atol(relu_nets):
    net = relu_nets["mlp"]
    inv = BackwardPassInversion(net, input_shape=(1, 28, 28))
    P = torch.tensor([0.5, 0.3, 0.2] + [0.0] * 7)
    reg = inv.region(P, seed=0, input_range=BOX)
    _, r = reg.chebyshev_ball()
    assert r > 0
    g = torch.Generator().manual_seed(0)
    pts = torch.cat([reg.ball_points(100, seed=g).reshape(100, -1), reg.sample(50, seed=0).reshape(50, -1)])
    p = torch.softmax(net(pts.reshape(-1, 1, 28, 28).float()), 1)
    assert float((p - P).abs().amax(1).max()) <= 0.02


def test_mixed_net_uses_lp_trunk_and_analytic_head(relu_nets):
    net = relu_nets["mixed"]
    inv = BackwardPassInversion(net, input_shape=(1, 28, 28))
    x, regions = inv.attribute(target=[1, 5, 8], seed=0, input_range=BOX, return_regions=True)
    assert bool((net(x).argmax(1) == torch.tensor([1, 5, 8])).all())
    reg = regions[0]
    assert reg.E is not None and reg.dim == 784 - 32
    pts = reg.sample(40, seed=0)
    assert bool(reg.contains(pts).all())
    p = torch.softmax(net(pts.float()), 1)[:, 1]
    assert float(p.min()) >= 0.9


def test_lp_samples_are_as_diverse_as_forward_pass(relu_nets):
    net = relu_nets["cnn"]
    lp, _ = BackwardPassInversion(net, input_shape=(1, 28, 28)).attribute(target=4, n_samples=6, seed=0,
                                                                          input_range=BOX, return_regions=True)
    fw = ForwardPassInversion(net, input_shape=(1, 28, 28)).attribute(target=4, n_samples=6, seed=0, input_range=BOX)
    assert float(torch.pdist(lp.reshape(6, -1)).mean()) >= 0.5 * float(torch.pdist(fw.reshape(6, -1)).mean())


def test_generalized_inversion_plans_lp_when_asked_and_says_why(relu_nets):
    net = relu_nets["cnn"]
    inv = GeneralizedInversion(net, input_shape=(1, 28, 28), lp=True)
    assert inv.plan.kinds == ["lp"]
    assert "analytic (LP)" in str(inv.plan) and "linear program" in str(inv.plan)
    x = inv.attribute(target=2, n_samples=2, seed=0, input_range=BOX)
    assert inv.last_stats["route"] == "lp" and len(inv.last_regions) == 2
    fast = GeneralizedInversion(net, input_shape=(1, 28, 28))
    assert "lp" not in fast.plan.kinds and fast.plan.regions
    assert "certified regions on request" in str(fast.plan) and "whole model" in str(fast.plan)
    fast.attribute(target=2, n_samples=2, seed=0, input_range=BOX)
    assert fast.last_stats["route"] != "lp"
    assert bool((torch.softmax(net(x), 1)[:, 2] >= 0.9).all())


def test_model_left_unchanged(relu_nets):
    net = relu_nets["cnn"]
    net.train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    BackwardPassInversion(net, input_shape=(1, 28, 28)).attribute(target=0, seed=0, input_range=BOX)
    assert net.training and all(m.training for m in net.modules())
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert all(p.requires_grad for p in net.parameters())
    net.eval()


def test_unsupported_and_too_large_models_are_named():
    gelu = nn.Sequential(nn.Conv2d(1, 2, 3), nn.GELU(), nn.Flatten(), nn.Linear(2 * 26 * 26, 10))
    with pytest.raises(ValueError, match=r"'1' \(GELU\).*ForwardPassInversion"):
        BackwardPassInversion(gelu, input_shape=(1, 28, 28)).attribute(target=0)
    big = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 10))
    with pytest.raises(ValueError, match="too large for the dense linear program.*return_regions=False"):
        BackwardPassInversion(big, input_shape=(3, 224, 224)).attribute(target=0, return_regions=True)
    selu = FCNN((784, 16, 10), "selu", False, (1, 28, 28))
    with pytest.raises(ValueError, match="region\\(\\): certified regions .* need a model with piecewise-linear modules"):
        BackwardPassInversion(selu).region(0)
    with pytest.raises(ValueError, match="`spread`"):
        BackwardPassInversion(_cnn().eval(), input_shape=(1, 28, 28)).attribute(target=0, spread=2.0)


def test_linearize_handles_hardtanh_leaky_relu_and_maxpool1d():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(1, 3, 3, padding=1), nn.LeakyReLU(0.1), nn.MaxPool1d(2), nn.Flatten(),
                        nn.Linear(3 * 8, 12), nn.ReLU6(), nn.Linear(12, 4)).double().eval()
    x0 = torch.randn(1, 16, dtype=torch.float64) * 3
    lin = linearize(trace_leaf_modules(net, x0[None]).calls, x0)
    assert [g[0] for g in lin.groups] == ["1 (LeakyReLU)", "2 (MaxPool1d)", "5 (ReLU6) upper", "5 (ReLU6) lower"]
    assert lin.pattern["5"].dtype == torch.int8 and set(lin.pattern["5"].tolist()) <= {-1, 0, 1}
    g = torch.Generator().manual_seed(0)
    scale = 10 ** (-3 * torch.rand(400, 1, generator=g, dtype=torch.float64))
    pts = x0.reshape(1, -1) + scale * torch.randn(400, 16, generator=g, dtype=torch.float64)
    inside = (pts @ lin.A.T <= lin.b).all(1)
    assert 0 < int(inside.sum()) < 400  # some points leave the pattern, some keep it
    with torch.no_grad():
        assert torch.allclose(net(pts[inside].reshape(-1, 1, 16)), pts[inside] @ lin.G.T + lin.h, atol=1e-10)


def _prelu_ceil_nets():
    torch.manual_seed(3)
    # odd sizes, so that ceil_mode adds a window the floor would drop: 25 -> 13, 11 -> 6
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.PReLU(4), nn.MaxPool2d(2, ceil_mode=True),
                         nn.Conv2d(4, 4, 3), nn.PReLU(), nn.MaxPool2d(2, ceil_mode=True),
                         nn.Flatten(), nn.Linear(144, 10))
    one_d = nn.Sequential(nn.Conv1d(1, 3, 3), nn.PReLU(3), nn.MaxPool1d(2, ceil_mode=True), nn.Flatten(),
                          nn.Linear(3 * 13, 10))  # 27 -> 25 -> 13
    for net in (conv, one_d):
        for m in net.modules():
            if isinstance(m, nn.PReLU):
                m.weight.data.uniform_(-0.3, 0.4)  # negative slopes too: still piecewise-linear
    return {"conv": (conv.eval(), (1, 27, 27)), "one_d": (one_d.eval(), (1, 27))}


@pytest.mark.parametrize("name", ["conv", "one_d"])
def test_linearize_prelu_and_ceil_mode_is_the_net_on_its_region(name):
    net, shape = _prelu_ceil_nets()[name]
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(shape, generator=g)
    lin = linearize(trace_leaf_modules(net, x0[None]).calls, x0)
    xf = x0.reshape(-1).double()
    assert bool((lin.A @ xf <= lin.b + 1e-12).all())
    close = xf + 1e-6 * torch.randn(200, xf.numel(), generator=g, dtype=torch.float64)
    inside = ((close @ lin.A.T) <= lin.b).all(1)
    assert int(inside.sum()) > 0
    net64 = copy.deepcopy(net).double()
    with torch.no_grad():
        out = net64(close[inside].reshape(-1, *shape))
        assert torch.allclose(out, close[inside] @ lin.G.T + lin.h, atol=1e-9)
        # a far point leaves the pattern: the rows say so, and the map no longer holds there
        far = xf + 0.5 * torch.randn(1, xf.numel(), generator=g, dtype=torch.float64)
        if not bool(((far @ lin.A.T) <= lin.b).all()):
            assert not torch.allclose(net64(far.reshape(-1, *shape)), far @ lin.G.T + lin.h, atol=1e-6)
    pools = [n for n, m in net.named_modules() if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d))]
    assert set(pools) <= set(lin.pattern)


def test_prelu_and_ceil_mode_nets_take_the_lp_route_and_regions_verify():
    net, shape = _prelu_ceil_nets()["conv"]
    with torch.no_grad():
        net[-1].weight.mul_(20)  # an untrained net: make its classes reachable
    inv = BackwardPassInversion(net, input_shape=shape)
    x, _ = inv.attribute(target=[2, 6], seed=0, input_range=BOX, return_regions=True)
    assert inv.last_stats["route"] == "lp"
    assert bool((net(x).softmax(1)[torch.arange(2), torch.tensor([2, 6])] >= 0.9).all())
    reg = inv.region(2, seed=0, input_range=BOX)
    pts = torch.cat([reg.ball_points(50, seed=1).reshape(50, -1), reg.sample(50, seed=2).reshape(50, -1)])
    with torch.no_grad():
        p = net(pts.reshape(-1, *shape).float()).softmax(1)[:, 2]
    assert float(p.min()) >= 0.9


def test_conv_regions_store_their_local_rows_sparse(relu_nets):
    reg = BackwardPassInversion(relu_nets["cnn"], input_shape=(1, 28, 28)).region(4, seed=0, input_range=BOX)
    A = reg.A
    dense_bytes = A.numel() * A.element_size()
    assert reg.nbytes < 0.25 * dense_bytes  # a conv net's pattern rows are mostly zeros
    g = torch.Generator().manual_seed(0)
    x = torch.cat([reg.sample(20, seed=g), torch.rand(20, 1, 28, 28, dtype=torch.float64)])
    # the stored rows answer exactly as the dense ones
    assert torch.equal(reg.contains(x), ((x.reshape(40, -1) @ A.T - reg.b) <= 1e-9).all(1))
    assert torch.equal(reg.tight(), (reg.b - A @ reg.anchor.reshape(-1)) <= 1e-7)
