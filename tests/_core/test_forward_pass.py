import copy

import pytest
import torch

from captum.attr import Attribution
from captum_invert import ForwardPassInversion, InversionError

ALL = list(range(10)) * 10


def _p(model, x, labels):
    with torch.no_grad():
        return torch.softmax(model(x), 1)[torch.arange(len(labels)), torch.tensor(labels)]


@pytest.mark.parametrize("which", ["fcnn6", "vit"])
def test_every_class_verifies_from_random_starts(digit_nets, small_vit, which):
    model = digit_nets[6] if which == "fcnn6" else small_vit
    inv = ForwardPassInversion(model)
    assert isinstance(inv, Attribution) and inv.input_shape == (1, 28, 28)
    x, delta = inv.attribute(target=ALL, seed=0, max_iter=30, return_convergence_delta=True)
    p = _p(model, x, ALL)
    assert (p >= 0.9).all()
    assert torch.allclose(delta, 1 - p.double(), atol=1e-5)


def test_given_inputs_are_the_starting_points(digit_nets):
    model = digit_nets[2]
    x0 = torch.randn(3, 1, 28, 28)
    inv = ForwardPassInversion(model)
    x = inv.attribute(inputs=x0, target=[3, 1, 4], seed=0, max_retries=0)
    assert (_p(model, x, [3, 1, 4]) >= 0.9).all()
    # the solver moves each start only as far as it needs to: closer to its own start
    d = torch.cdist(x.flatten(1), x0.flatten(1))
    assert (d.argmin(1) == torch.arange(3)).all()


def test_bounds_hold(small_vit):
    model = small_vit
    inv = ForwardPassInversion(model)
    x = inv.attribute(target=ALL[:30], seed=0, input_range=(0.0, 1.0), allow_unverified=True)
    assert x.min() >= 0 and x.max() <= 1
    assert (_p(model, x, ALL[:30]) >= 0.9).float().mean() >= 0.9


def test_distribution_target(small_vit):
    p = torch.tensor([0.0, 0.6, 0.0, 0.0, 0.4, 0.0, 0.0, 0.0, 0.0, 0.0])
    x = ForwardPassInversion(small_vit).attribute(target=p, n_samples=4, seed=0, atol=0.03)
    with torch.no_grad():
        got = torch.softmax(small_vit(x), 1)
    assert ((got - p).abs().amax(1) <= 0.03).all()


def test_seed_reproduces(digit_nets):
    inv = ForwardPassInversion(digit_nets[6])
    assert torch.equal(inv.attribute(target=[1, 2], seed=3), inv.attribute(target=[1, 2], seed=3))
    assert not torch.equal(inv.attribute(target=[1, 2], seed=3), inv.attribute(target=[1, 2], seed=4))


def test_model_unchanged_and_failures_reported(small_vit):
    model = copy.deepcopy(small_vit)
    model.train()
    before = ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()],
              {k: v.clone() for k, v in model.state_dict().items()})
    inv = ForwardPassInversion(model)
    with pytest.raises(InversionError) as e:
        inv.attribute(target=3, n_samples=2, max_iter=2, max_retries=1, seed=0, input_range=(0.0, 1e-4))
    assert e.value.n_verified == 0 and "Levenberg-Marquardt" in str(e.value)
    inv.attribute(target=3, n_samples=2, seed=0)
    after = ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()],
             model.state_dict())
    assert before[0] == after[0] and before[1] == after[1]
    assert all(torch.equal(before[2][k], after[2][k]) for k in before[2])
    assert all(p.grad is None for p in model.parameters())
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0


@pytest.mark.parametrize("kwargs,match", [
    (dict(target=3, max_iter=-1), "`max_iter`"),
    (dict(target=3, residual="l2"), "`residual`"),
    (dict(target=3, inputs=torch.zeros(2, 3)), "`inputs`"),
    (dict(target=[1, 2], inputs=torch.zeros(3, 1, 28, 28)), "3 samples|differs"),
    (dict(target=3, init_std=0), "`init_std`"),
])
def test_bad_arguments(digit_nets, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ForwardPassInversion(digit_nets[2]).attribute(**kwargs)


def test_wrong_input_shape_is_reported(small_vit):
    with pytest.raises(ValueError, match="input_shape"):
        ForwardPassInversion(small_vit, input_shape=(1, 20, 20)).attribute(target=1)


def test_saturating_output_tail_is_detected(digit_nets, small_vit):
    from captum_invert.blocks.plan import trace_leaf_modules

    x = torch.zeros(2, 1, 28, 28)
    pre, tail = ForwardPassInversion._output_tail(trace_leaf_modules(digit_nets[6], x))
    assert pre is digit_nets[6][-2] and [type(m).__name__ for m, _ in tail] == ["SELU"]
    assert ForwardPassInversion._output_tail(trace_leaf_modules(small_vit, x)) is None


def test_selu_logits_converge_from_first_starts_in_the_box(mnist_nets):
    # the seed nets put a SELU on the logits: from bright uniform starts the target logit sits in
    # SELU's exponential tail where log p is flat; the pre-activation residual must get >= 99% of
    # first starts there within 30 iterations (log-prob residual alone: ~91% on class 1)
    model = mnist_nets[6]
    inv = ForwardPassInversion(model)
    x = inv.attribute(target=ALL * 2, seed=0, input_range=(0.0, 1.0), max_iter=30, max_retries=0,
                      allow_unverified=True)
    assert (_p(model, x, ALL * 2) >= 0.9).float().mean() >= 0.99
    assert inv.last_stats["converged_first_start"] >= 198


def test_class_residual_is_the_log_odds_so_a_linear_two_class_model_converges_in_one_step():
    # the log-odds of a linear 2-class model are linear in x, so one Newton step lands on the
    # aim; on log p_t (slope 1 - p_t) the same step falls short of p = 0.9
    torch.manual_seed(0)
    model = torch.nn.Linear(20, 2)
    x0 = 0.01 * torch.randn(64, 20)
    x, delta = ForwardPassInversion(model).attribute(inputs=x0, target=[i % 2 for i in range(64)], max_iter=1,
                                                     max_retries=0, return_convergence_delta=True)
    assert float(delta.max()) <= 0.1
    with torch.no_grad():
        p = torch.softmax(model(x), 1)[torch.arange(64), torch.arange(64) % 2]
    assert float(p.min()) >= 0.9


def test_saturated_other_logits_under_an_elu_tail_do_not_poison_the_jacobian():
    # ELU(-100) is exactly -1 in float32, whose inverse is -inf; only the target's column may be
    # inverted, or the zero-weighted gradient becomes NaN and every step is rejected
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 3), torch.nn.ELU())
    with torch.no_grad():
        model[0].bias[2] = -100.0
        model[0].weight[2].zero_()
    x = ForwardPassInversion(model).attribute(target=[0, 1] * 8, seed=0, max_retries=0)
    with torch.no_grad():
        p = torch.softmax(model(x), 1)[torch.arange(16), torch.arange(16) % 2]
    assert float(p.min()) >= 0.9


def test_a_nan_jacobian_stops_the_sample_and_is_named_in_the_error():
    class NaNGrad(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(6, 3)

        def forward(self, x):
            return self.lin(x) + 0 * torch.sqrt(x - x).sum(1, keepdim=True)  # d sqrt(0) = inf -> NaN

    with pytest.raises(InversionError) as ei:
        ForwardPassInversion(NaNGrad()).attribute(target=[0, 1, 2], seed=0, max_retries=0)
    e = ei.value
    assert e.n_verified == 0
    assert any("NaN or infinite" in r for r in e.reasons) and sum(e.reasons.values()) == 3
