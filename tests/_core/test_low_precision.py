import copy

import pytest
import torch

from captum_invert import BackwardPassInversion, ForwardPassInversion, GeneralizedInversion


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cls", [ForwardPassInversion, BackwardPassInversion, GeneralizedInversion])
def test_half_precision_models_invert_and_verify_in_their_dtype(digit_nets, dtype, cls):
    net = copy.deepcopy(digit_nets[2]).to(dtype)
    targets = [0, 3, 7, 9]
    x = cls(net).attribute(target=targets, seed=0, input_range=(0.0, 1.0))
    assert x.dtype == dtype
    assert all(p.dtype == dtype for p in net.parameters())
    with torch.no_grad():
        p = torch.softmax(net(x).float(), 1)[torch.arange(4), targets]
    assert bool((p >= 0.9).all())
    assert float(x.min()) >= 0 and float(x.max()) <= 1
