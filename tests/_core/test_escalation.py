"""The escalation's fallback to the model's own gradient: a deep LeakyReLU net (8 layers, Adam
3e-2 x 10 on 8,000 MNIST digits, 24% accuracy) on which the surrogate gradient makes the
residual grow, and the model's own gradient reaches the class that real digits reach."""
import pytest
import torch
from torch import nn

from captum_invert import (BackwardPassInversion, ForwardPassInversion, GeneralizedInversion, InversionError,
                           SolverSettings)
from captum_invert.models import FCNN, TrainConfig, train

BOX = (0.0, 1.0)


@pytest.fixture(scope="module")
def deep_leaky(mnist):
    net = FCNN((784, 400, 200, 100, 50, 25, 16, 16, 10), lambda: nn.LeakyReLU(0.01), True, input_shape=(1, 28, 28))
    return train(net, mnist[0], TrainConfig(epochs=10, lr=3e-2, optimizer="adam", seed=0), progress=False).eval()


def test_real_digits_reach_class_3(deep_leaky, mnist):
    x, y = mnist[1].tensors
    with torch.no_grad():
        p = torch.softmax(deep_leaky(x[y == 3]), 1)[:, 3]
    assert int((p >= 0.9).sum()) >= 2


def test_surrogate_alone_leaves_class_3_short(deep_leaky):
    inv = ForwardPassInversion(deep_leaky, solver=SolverSettings(own_gradient=False))  # the releases before
    with pytest.raises(InversionError, match="0 of 3 samples verified"):
        inv.attribute(target=3, n_samples=3, input_range=BOX, seed=0)


@pytest.mark.parametrize("method", [ForwardPassInversion, BackwardPassInversion, GeneralizedInversion])
def test_own_gradient_verifies_class_3_in_the_box(deep_leaky, method):
    x = method(deep_leaky).attribute(target=3, n_samples=3, input_range=BOX, seed=0)
    with torch.no_grad():
        p = torch.softmax(deep_leaky(x), 1)[:, 3]
    assert (p >= 0.9).all() and x.min() >= 0 and x.max() <= 1


def test_the_fallback_is_counted_and_reached_from_the_first_start(deep_leaky):
    inv = ForwardPassInversion(deep_leaky)
    inv.attribute(target=3, n_samples=3, input_range=BOX, seed=0, max_retries=0, allow_unverified=True)
    s = inv.last_stats
    assert s["escalated"] == 3 and s["own_gradient"] == 3 and s["own_gradient_converged"] >= 1
