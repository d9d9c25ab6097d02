"""Interval bounds of the logits over the input box (or every input): sound on the inputs that
push hardest against them, and a refusal before any work where they prove a target out of reach."""
import copy

import pytest
import torch
from torch import nn

from captum_invert import BackwardPassInversion, ForwardPassInversion, GeneralizedInversion, InversionError
from captum_invert._core.reachability import box_logit_bounds
from captum_invert.blocks.plan import trace_leaf_modules
from captum_invert.models import FCNN, TrainConfig, train

SHAPE = (1, 8, 8)
DIGITS = (1, 28, 28)


def _nets():
    torch.manual_seed(1)
    bn = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                       nn.Conv2d(4, 6, 3), nn.ELU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(6, 10))
    with torch.no_grad():
        bn[1].running_mean.uniform_(-1, 1), bn[1].running_var.uniform_(0.5, 2), bn[1].weight.uniform_(-2, 2)
    return {"relu mlp": nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)),
            "conv bn pools": bn,
            "tanh, selu on logits": nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10), nn.SELU()),
            "leaky relu, log-softmax": nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.LeakyReLU(0.1), nn.Linear(16, 10),
                                                     nn.LogSoftmax(1))}


@pytest.mark.parametrize("name", list(_nets()))
@pytest.mark.parametrize("box", [(0.0, 1.0), (-3.0, 3.0)])
def test_bounds_hold_on_the_inputs_that_push_hardest(name, box):
    net = _nets()[name].eval()
    logits = net[:-1] if isinstance(net[-1], nn.LogSoftmax) else net
    lo, hi, margins = box_logit_bounds(trace_leaf_modules(net, torch.rand(2, *SHAPE)), box, SHAPE, list(range(10)))
    assert torch.isfinite(hi).all() and (lo < hi).all()
    g = torch.Generator().manual_seed(0)
    for c in range(10):
        x = (torch.rand(64, *SHAPE, generator=g) * (box[1] - box[0]) + box[0]).requires_grad_()
        opt = torch.optim.Adam([x], lr=0.02 * (box[1] - box[0]))
        for _ in range(100):  # push logit c up and the others down: the margins' worst case
            z = logits(x)
            loss = -(2 * z[:, c] - z.mean(1)).sum() + z[:, (c + 1) % 10].sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                x.clamp_(*box)
        with torch.no_grad():
            z = logits(x).double()
        assert (z <= hi + 1e-9).all() and (z >= lo - 1e-9).all()
        if margins is not None:
            assert ((z[:, c:c + 1] - z) <= margins[c] + 1e-9).all()
    if margins is not None:  # the margins through the last Linear are tighter than the intervals
        assert (margins[0, 1:] < hi[0] - lo[1:]).all()


def test_non_monotone_or_branching_models_are_not_bounded():
    gelu = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.GELU(), nn.Linear(8, 10))
    assert box_logit_bounds(trace_leaf_modules(gelu, torch.rand(2, *SHAPE)), (0, 1), SHAPE, [0]) is None


@pytest.fixture(scope="module")
def dead_unit_net(digits):
    """A digits ReLU MLP with a ReLU on its logits, whose output unit 3 is switched off for every
    input (its weights <= 0 on non-negative activations, bias < 0), as a unit that dies in
    training."""
    torch.manual_seed(5)
    net = train(FCNN((784, 32, 10), "relu", True, DIGITS), digits[0], TrainConfig(epochs=3, lr=1e-2, optimizer="adam"),
                progress=False)
    with torch.no_grad():
        net[-2].weight[3] = -net[-2].weight[3].abs()
        net[-2].bias[3] = -0.5
    return net


@pytest.mark.parametrize("method", [ForwardPassInversion, BackwardPassInversion, GeneralizedInversion])
@pytest.mark.parametrize("box", [(0.0, 1.0), None])
def test_dead_output_unit_is_refused_before_any_work(dead_unit_net, method, box):
    before = copy.deepcopy(dead_unit_net.state_dict())
    # every other logit is >= 0 and unit 3 is 0: p(3) <= 1 / 10
    with pytest.raises(ValueError, match=r"class\(es\) \[3\] cannot reach .*interval bounds.*above 0\.1\b") as err:
        method(dead_unit_net).attribute(target=[3, 0], input_range=box, seed=0)
    assert ("input_range" in str(err.value)) == (box is not None)
    assert all(torch.equal(v, before[k]) for k, v in dead_unit_net.state_dict().items())


def test_reachable_classes_of_the_same_net_are_not_refused(dead_unit_net):
    x = ForwardPassInversion(dead_unit_net).attribute(target=[2, 6], input_range=(0.0, 1.0), seed=0)
    p = torch.softmax(dead_unit_net(x), 1)
    assert (p[[0, 1], [2, 6]] >= 0.9).all()
    # asked for the closest inputs anyway: no proof, no refusal
    x = ForwardPassInversion(dead_unit_net).attribute(target=3, n_samples=2, input_range=(0.0, 1.0), seed=0,
                                                      max_iter=5, max_retries=0, allow_unverified=True)
    assert x.shape == (2, *DIGITS)


def test_distribution_out_of_the_box_reach_is_refused(dead_unit_net):
    dist = torch.full((10,), 0.5 / 9)
    dist[3] = 0.5
    with pytest.raises(ValueError, match=r"distribution is out of reach inside `input_range`.*class 3"):
        ForwardPassInversion(dead_unit_net).attribute(target=dist, n_samples=2, input_range=(0.0, 1.0))


def test_failure_report_says_how_far_the_bounds_got(dead_unit_net):
    # class 0 is off on every real digit of this net; the bounds over the box allow it, the solvers
    # do not find it: the diagnosis holds the bound, at least min_prob (else refused), here near 1
    with pytest.raises(InversionError) as err:
        ForwardPassInversion(dead_unit_net).attribute(target=0, n_samples=2, input_range=(0.0, 1.0), seed=0,
                                                      max_iter=5, max_retries=0)
    d = err.value.diagnosis[0]
    assert not d.out_of_reach and 0.9 <= d.bound <= 1.0
    assert "not proven out of reach" in str(err.value)
