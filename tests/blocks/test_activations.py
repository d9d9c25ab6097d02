import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from captum_invert.blocks.activations import get_inverse, interior, invert, is_invertible

MODULES = [nn.SELU(), nn.LeakyReLU(0.01), nn.LeakyReLU(0.3), nn.ELU(), nn.ELU(0.5), nn.CELU(2.0),
           nn.Tanh(), nn.Sigmoid(), nn.Identity(), nn.Softplus(), nn.Softplus(beta=2.0)]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: repr(m))
@settings(max_examples=60, deadline=None)
@given(y=st.floats(-8.0, 8.0))
def test_inverse_of_forward_is_identity_on_the_domain(module, y):
    x = torch.tensor([y], dtype=torch.float64)
    out = get_inverse(module).forward(module, x)
    lo, hi = get_inverse(module).output_range(module)
    if not (lo < out < hi):  # saturated in float64: not in the open range, nothing to invert
        return
    back = invert(module, out)
    assert torch.allclose(back, x, rtol=1e-6, atol=1e-6), (module, y, back)
    # the registry's forward is the module's own forward
    assert torch.allclose(out, module(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("module,bad", [(nn.SELU(), -1.76), (nn.Tanh(), 1.0), (nn.Sigmoid(), -0.1),
                                        (nn.ELU(0.5), -0.6), (nn.Softplus(), 0.0)])
def test_out_of_domain_raises(module, bad):
    with pytest.raises(ValueError, match="outside its range"):
        invert(module, torch.tensor([bad], dtype=torch.float64))


def test_selu_range_starts_at_minus_lambda_alpha():
    lo, hi = get_inverse(nn.SELU()).output_range(nn.SELU())
    assert math.isclose(float(lo), -1.7580993408473766, rel_tol=1e-12) and hi == math.inf


def test_non_invertible_instances_are_rejected():
    assert not is_invertible(nn.LeakyReLU(0.0))
    assert not is_invertible(nn.ReLU())
    with pytest.raises(ValueError, match="slope"):
        invert(nn.LeakyReLU(0.0), torch.zeros(1))


def test_interior_shrinks_bounded_ends_only():
    x = torch.zeros(1, dtype=torch.float64)
    lo, hi = interior(get_inverse(nn.SELU()), nn.SELU(), 0.05, x)
    assert float(lo) == pytest.approx(-1.7580993408473766 * 0.95) and hi == math.inf
    lo, hi = interior(get_inverse(nn.Sigmoid()), nn.Sigmoid(), 0.1, x)
    assert float(lo) == pytest.approx(0.05) and float(hi) == pytest.approx(0.95)


def test_batchnorm_eval_is_inverted_elementwise():
    bn = nn.BatchNorm1d(5)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    with torch.no_grad():
        bn.weight.uniform_(-2, 2)
    bn.eval()
    x = torch.randn(7, 5, dtype=torch.float64)
    y = bn.double()(x)
    assert torch.allclose(invert(bn, y), x, atol=1e-10)
