import math

import pytest
import torch
from torch import nn

from captum_invert import ForwardPassInversion, GeneralizedInversion
from captum_invert.blocks.norm_head import class_log_prob_bound, distribution_gap_bound, find_norm_head
from captum_invert.blocks.plan import trace_leaf_modules


class TokenNet(nn.Module):
    """Tokens -> LayerNorm -> mean over tokens (functional) -> Linear, as in a ViT or a Mixer."""

    def __init__(self, head_scale: float, between=None, pool="mean"):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 4 * 6))
        self.norm = nn.LayerNorm(6)
        self.between = between or nn.Identity()
        self.head = nn.Linear(6, 10)
        self.pool = pool
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.bias.normal_(0, 0.3)
            self.head.weight.mul_(head_scale)

    def forward(self, x):
        t = self.norm(self.body(x).view(-1, 4, 6))
        h = t.mean(1) if self.pool == "mean" else t.amax(1) if self.pool == "max" else torch.relu(t).mean(1)
        return self.head(self.between(h))


def _head(model):
    probe = torch.randn(3, 8)
    model.eval()
    return find_norm_head(model, trace_leaf_modules(model, probe), probe, lambda o: torch.log_softmax(o, 1))


def _best_prob_by_ascent(model, t, steps=300):
    # an independent search in input space: the best p_t it finds must stay under the bound
    x = torch.randn(64, 8, requires_grad=True)
    opt = torch.optim.Adam([x], 0.1)
    best = 0.0
    for _ in range(steps):
        lp = torch.log_softmax(model(x), 1)[:, t]
        best = max(best, float(lp.detach().exp().max()))
        opt.zero_grad()
        (-lp.sum()).backward()
        opt.step()
    return best


def test_class_bound_is_sound_and_tight_on_a_layernorm_head():
    model = TokenNet(head_scale=0.5)
    nh = _head(model)
    assert nh is not None and nh.norm_name == "norm" and nh.head_name == "head" and nh.zero_mean
    ub = class_log_prob_bound(nh, range(10), 0.0).exp()  # stop=0: never stops early, full bounds
    for t in (0, 5):
        found = _best_prob_by_ascent(model, t)
        assert found <= float(ub[t]) + 1e-6
    # every point of the set stays under the bound too (random directions on the sphere)
    n = nh.project(torch.randn(4000, 6, dtype=torch.float64) * 10)
    p = torch.softmax(n @ nh.A.T + nh.c, 1)
    assert bool((p.amax(0) <= ub + 1e-9).all())
    assert float((ub - p.amax(0)).max()) < 0.05  # the Frank-Wolfe gap is small


@pytest.mark.parametrize("cls", [ForwardPassInversion, GeneralizedInversion])
def test_unreachable_targets_of_a_normalized_head_are_a_clear_error_before_any_work(cls):
    model = TokenNet(head_scale=0.3)
    with pytest.raises(ValueError, match=r"cannot reach `min_prob`=0.9.*LayerNorm `norm`.*`head`.*above 0\.\d+"):
        cls(model, input_shape=(8,)).attribute(target=[2, 2], seed=0)
    dist = torch.zeros(10)
    dist[1], dist[4] = 0.7, 0.3
    with pytest.raises(ValueError, match=r"distribution is out of reach.*LayerNorm.*nats.*atol=0.02"):
        cls(model, input_shape=(8,)).attribute(target=dist, seed=0)
    # the closest inputs are still available when asked for
    x = ForwardPassInversion(model, input_shape=(8,)).attribute(target=2, seed=0, max_iter=5, max_retries=0,
                                                               allow_unverified=True)
    assert x.shape == (1, 8)


def test_reachable_targets_of_a_normalized_head_are_not_refused():
    model = TokenNet(head_scale=8.0)
    nh = _head(model)
    ub = class_log_prob_bound(nh, [5], math.log(0.9))
    assert math.isinf(float(ub[0]))  # a point of the set reaches 0.9: no bound, no refusal
    x, d = ForwardPassInversion(model, input_shape=(8,)).attribute(target=5, seed=0, return_convergence_delta=True)
    assert float(d.max()) <= 0.1


def test_the_distribution_bound_separates_reachable_from_unreachable():
    nh = _head(TokenNet(head_scale=0.3))
    far = torch.zeros(2, 10)
    far[0, 1], far[0, 4] = 0.7, 0.3
    far[1] = torch.softmax(nh.c, 0)  # the output at n = 0: reachable
    lower, kappa = distribution_gap_bound(nh, far, 0.02)
    assert float(lower[0]) > float(kappa[0])
    assert not float(lower[1]) > float(kappa[1])


@pytest.mark.parametrize("variant", ["gelu module", "max pool", "functional relu"])
def test_what_leaves_the_normalized_set_is_not_taken_for_a_normalized_head(variant):
    if variant == "gelu module":
        model = TokenNet(0.3, between=nn.GELU())
    elif variant == "max pool":
        model = TokenNet(0.3, pool="max")
    else:
        model = TokenNet(0.3, pool="relu")
    assert _head(model) is None
