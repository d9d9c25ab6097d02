import inspect

import pytest
import torch

from captum_invert import (ActivationMaximization, BackwardPassInversion, ForwardPassInversion,
                           GeneralizedInversion, InversionError)

TARGETS = [c for c in range(10) for _ in range(3)]


@pytest.mark.parametrize("cls", [ForwardPassInversion, BackwardPassInversion, GeneralizedInversion,
                                 ActivationMaximization])
def test_internal_batches_verify_every_sample_and_keep_the_order(digit_nets, cls):
    net = digit_nets[2]
    inv = cls(net)
    x, d = inv.attribute(target=TARGETS, seed=0, internal_batch_size=7, return_convergence_delta=True)
    assert x.shape == (len(TARGETS), 1, 28, 28) and d.shape == (len(TARGETS),)
    assert inv.last_stats["internal_batches"] == 5
    with torch.no_grad():
        p = torch.softmax(net(x), 1)[torch.arange(len(TARGETS)), TARGETS]
    assert bool((p >= 0.9).all())
    x2 = cls(net).attribute(target=TARGETS, seed=0, internal_batch_size=7)
    assert torch.equal(x, x2)  # a seeded batched call is reproducible
    assert {"internal_batch_size", "show_progress"} <= set(inspect.signature(cls.attribute).parameters)
    assert "internal_batch_size" in cls.attribute.__doc__


def test_batched_failures_are_one_error_with_global_indices(digit_nets, capsys):
    net = digit_nets[6]
    with pytest.raises(InversionError) as ei:  # unreachable: p >= 1 - 1e-12 inside a tiny box
        ForwardPassInversion(net).attribute(target=[0, 1, 2, 3, 4], seed=0, input_range=(0.0, 1e-3),
                                            min_prob=1 - 1e-9, max_iter=2, max_retries=0,
                                            internal_batch_size=2, show_progress=True)
    e = ei.value
    assert e.n_requested == 5 and e.result.shape[0] == 5 and e.verified.shape == (5,)
    assert sorted(s.index for s in e.diagnosis) == (~e.verified).nonzero().squeeze(1).tolist()
    assert [s.target for s in sorted(e.diagnosis, key=lambda s: s.index)] == [
        t for t, v in zip([0, 1, 2, 3, 4], e.verified.tolist()) if not v]


def test_bad_batching_arguments_are_value_errors(digit_nets):
    inv = ForwardPassInversion(digit_nets[1])
    with pytest.raises(ValueError, match="internal_batch_size"):
        inv.attribute(target=0, internal_batch_size=0)
    with pytest.raises(ValueError, match="show_progress"):
        inv.attribute(target=0, show_progress="yes")


class _Scaled(torch.nn.Module):
    """A classifier with an extra argument: logits of ``net(x)`` times ``scale``, plus ``bias``."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, scale, bias=None):
        z = self.net(x) * scale
        return z if bias is None else z + bias


@pytest.mark.parametrize("cls", [ForwardPassInversion, GeneralizedInversion, ActivationMaximization])
def test_additional_forward_args_reach_the_model(digit_nets, cls):
    model = _Scaled(digit_nets[2])
    bias = torch.zeros(1, 10)
    bias[0, 3] = 50.0  # with this bias class 3 wins everywhere: other targets need a large push
    inv = cls(model, input_shape=(1, 28, 28))
    x = inv.attribute(target=[1, 3], seed=0, additional_forward_args=(2.0, bias))
    with torch.no_grad():
        p = torch.softmax(model(x, 2.0, bias), 1)
    assert bool((p[torch.arange(2), torch.tensor([1, 3])] >= 0.9).all())
    assert not model._forward_hooks and model.training  # the caller's model is unchanged
    with pytest.raises(ValueError, match="additional_forward_args"):
        inv.attribute(target=[1, 3], additional_forward_args=(2.0, torch.zeros(2, 10)))


def test_batched_inputs_with_n_samples(digit_nets):
    net = digit_nets[2]
    x0 = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    x = ForwardPassInversion(net).attribute(inputs=x0, target=[1, 2, 3, 4, 5], n_samples=5, seed=0,
                                            internal_batch_size=2)
    assert x.shape == (5, 1, 28, 28)
