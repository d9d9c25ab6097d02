import copy

import pytest
import torch

from captum_invert import InversionError, LayerInversion


def test_reconstructs_hidden_activations_of_the_fcnn(digits, digit_nets):
    model = digit_nets[6]
    imgs = digits[1].tensors[0][:8]
    for layer in ("1", "5"):
        inv = LayerInversion(model, layer)
        x, err = inv.attribute(inputs=imgs, seed=0, rtol=1e-2, return_convergence_delta=True)
        assert (err <= 1e-2).all()
        with torch.no_grad():
            a, t = inv.activation(x), inv.activation(imgs)
        rel = (a - t).flatten(1).norm(dim=1) / t.flatten(1).norm(dim=1)
        assert torch.allclose(rel.double(), err, atol=1e-5)
        assert torch.allclose(inv.compute_convergence_delta(x, t), err, atol=1e-5)
        # the preimage is not the image itself: the start was random
        assert (x - imgs).flatten(1).norm(dim=1).min() > 1.0


def test_vit_logits_as_target_activations(digits, small_vit):
    imgs = digits[1].tensors[0][:6]
    inv = LayerInversion(small_vit, small_vit.head)
    with torch.no_grad():
        target = small_vit(imgs)
    x = inv.attribute(target=target, seed=0)
    with torch.no_grad():
        assert ((small_vit(x) - target).norm(dim=1) / target.norm(dim=1) <= 1e-2).all()


def test_one_target_row_with_n_samples_gives_distinct_preimages(digit_nets):
    inv = LayerInversion(digit_nets[2], "1")
    t = torch.randn(1, 128) * 0.5
    x = inv.attribute(target=t, n_samples=3, seed=0)
    assert x.shape == (3, 1, 28, 28) and (x[0] - x[1]).norm() > 1.0


def test_failures_and_bad_arguments(digit_nets):
    model = copy.deepcopy(digit_nets[2]).train()
    inv = LayerInversion(model, "1")
    with pytest.raises(InversionError, match="rtol"):
        inv.attribute(target=torch.randn(2, 128) * 50, max_iter=1, max_retries=0, rtol=1e-6, seed=0)
    assert model.training and sum(len(m._forward_hooks) for m in model.modules()) == 0
    with pytest.raises(ValueError, match="no module named"):
        LayerInversion(model, "nope")
    with pytest.raises(ValueError, match="`target` must have shape"):
        inv.attribute(target=torch.randn(2, 7))
    with pytest.raises(ValueError, match="give `target`"):
        inv.attribute()
    with pytest.raises(ValueError, match="`rtol`"):
        inv.attribute(target=torch.randn(2, 128), rtol=0.0)
