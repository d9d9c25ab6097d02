"""Public entry points that run the caller's model must leave it unchanged, also in train mode
with batch statistics (BatchNorm would update its running stats in a train-mode forward)."""
import torch
from torch import nn

from captum_invert import BackwardPassInversion, DatasetSearch, LayerInversion, PixelImportance
from captum_invert.blocks.plan import InversionPlan


def _bn_model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.BatchNorm1d(12), nn.SELU(), nn.Linear(12, 3))
    m.input_shape = (1, 4, 4)
    with torch.no_grad():
        m[2].running_mean.uniform_(-1, 1)
    return m.train()


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}, [x.training for x in m.modules()]


def _same(a, b):
    return all(torch.equal(a[0][k], b[0][k]) for k in a[0]) and a[1] == b[1]


def test_convergence_delta_dataset_search_and_pixel_scores_leave_the_model_unchanged():
    m = _bn_model()
    before = _state(m)
    BackwardPassInversion(m).compute_convergence_delta(torch.randn(5, 1, 4, 4), target=[0, 1, 2, 0, 1])
    assert _same(before, _state(m))
    DatasetSearch(m, torch.rand(20, 1, 4, 4)).probabilities()
    assert _same(before, _state(m))
    PixelImportance(m).pixel_scores()
    assert _same(before, _state(m))


def test_plan_block_input_and_layer_activation_leave_the_model_unchanged():
    m = _bn_model()
    before = _state(m)
    plan = InversionPlan(m, torch.randn(4, 1, 4, 4))
    plan.block_input(torch.randn(5, 1, 4, 4), 3)
    assert _same(before, _state(m))
    LayerInversion(m, "3").activation(torch.randn(5, 1, 4, 4))
    assert _same(before, _state(m))
