import pytest
import torch

from captum_invert import BackwardPassInversion, ForwardPassInversion, GeneralizedInversion
from captum_invert.metrics import mean_pairwise_distance
from captum_invert.models import FCNN, TrainConfig, train

from ..blocks.test_plan import Residual, small_cnn

ALL = list(range(10)) * 10


@pytest.fixture(scope="module")
def five(digits, digit_nets, small_vit):
    fast = TrainConfig(epochs=8, optimizer="adam")
    return {
        "fcnn6": digit_nets[6],
        "vit": small_vit,
        "cnn": train(small_cnn(), digits[0], fast, progress=False),
        "relu": train(FCNN((784, 64, 32, 10), "relu", False, (1, 28, 28)), digits[0], fast, progress=False),
        "residual": train(Residual(), digits[0], fast, progress=False),
    }


@pytest.mark.parametrize("name,kinds", [
    ("fcnn6", ["analytic"]),
    ("vit", ["opaque", "analytic"]),  # the plan proves only the head's and the tail's boundaries
    ("cnn", ["opaque", "analytic"]),  # piecewise-linear trunk: LM (regions on request)
    ("relu", ["analytic", "opaque", "analytic"]),
    ("residual", ["analytic", "opaque", "analytic"]),
])
def test_every_class_verifies_on_five_models(five, name, kinds):
    model = five[name]
    inv = GeneralizedInversion(model)
    assert inv.plan.kinds == kinds
    targets = ALL
    x = inv.attribute(target=targets, seed=0)
    with torch.no_grad():
        p = torch.softmax(model(x), 1)[torch.arange(len(targets)), torch.tensor(targets)]
    assert (p >= 0.9).all()


def test_all_analytic_model_agrees_with_backward_pass(digit_nets):
    model = digit_nets[6]
    a = GeneralizedInversion(model).attribute(target=[1, 5], seed=3, init_std=0.1)
    b = BackwardPassInversion(model).attribute(target=[1, 5], seed=3, init_std=0.1)
    assert torch.equal(a, b)


def test_head_route_keeps_the_input_box_and_the_start_diversity(five):
    model = five["residual"]
    inv = GeneralizedInversion(model)
    x = inv.attribute(target=ALL[:30], seed=0, input_range=(0.0, 1.0))
    assert x.min() >= 0 and x.max() <= 1 and inv.last_stats["head"]
    xg = inv.attribute(target=7, n_samples=16, seed=1)
    xf = ForwardPassInversion(model).attribute(target=7, n_samples=16, seed=1)
    assert mean_pairwise_distance(xg) >= 0.95 * mean_pairwise_distance(xf)


def test_null_space_push_moves_the_embedding(five):
    # the tail's null-space residual: with std > 0 the class-token embeddings of one target
    # spread along sampled null directions more than with std = 0 from the same starts
    model = five["vit"]
    inv = GeneralizedInversion(model)
    emb = {}
    for std in (0.0, 1.0):
        x = inv.attribute(target=3, n_samples=12, seed=5, std=std)
        h = inv.plan.block_input(x, inv.plan.blocks[-1].start).detach()
        emb[std] = mean_pairwise_distance(h)
    assert emb[1.0] > emb[0.0]


def test_non_module_is_rejected():
    with pytest.raises(ValueError, match="nn.Module"):
        GeneralizedInversion(lambda x: x)
