import pytest
import torch
from torch import nn

from captum_invert.blocks.plan import InversionPlan
from captum_invert.models import FCNN, seed_fcnn, vit_mnist

X = torch.randn(2, 1, 28, 28)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.f, self.a, self.act = nn.Flatten(), nn.Linear(784, 64), nn.SELU()
        self.b, self.act2, self.c = nn.Linear(64, 64), nn.SELU(), nn.Linear(64, 10)
        self.input_shape = (1, 28, 28)

    def forward(self, x):
        h = self.act(self.a(self.f(x)))
        h = h + self.act2(self.b(h))  # the skip crosses b and act2
        return self.c(h)


def small_cnn():
    m = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2), nn.ReLU(), nn.Flatten(),
                      nn.Linear(8 * 13 * 13, 32), nn.SELU(), nn.Linear(32, 10))
    m.input_shape = (1, 28, 28)
    return m


def test_chain_of_linear_and_selu_is_one_analytic_block():
    plan = InversionPlan(seed_fcnn(6), X)
    assert plan.kinds == ["analytic"] and len(plan.blocks[0].calls) == 13


def test_vit_head_is_analytic_below_the_token_selection():
    plan = InversionPlan(vit_mnist(embed_dim=48, depth=2, num_heads=3), X)
    assert plan.kinds[0] == "opaque" and plan.kinds[-1] == "analytic"
    tail = plan.blocks[-1]
    assert [c.name for c in tail.calls] == ["fc_norm", "head_drop", "head"]
    assert tail.in_shape[1:] == (48,)  # the class token, after the functional selection
    # every attention block and the final LayerNorm are opaque
    opaque = [c.name for b in plan.blocks if b.kind == "opaque" for c in b.calls]
    assert "blocks.1.attn.qkv" in opaque and "norm" in opaque
    text = str(plan)
    assert "analytic" in text and "head (Linear)" in text


def test_cnn_with_linear_selu_head():
    for lp, first in ((False, "opaque"), (True, "lp")):
        plan = InversionPlan(small_cnn(), X, lp=lp)
        assert plan.kinds == [first, "analytic"]
        assert [type(c.module).__name__ for c in plan.blocks[1].calls] == ["Flatten", "Linear", "SELU", "Linear"]
    assert "analytic (LP)" in str(plan)


def test_relu_mlp_alternates_and_relu_is_opaque():
    relu = FCNN((784, 64, 32, 10), "relu", False, (1, 28, 28))
    assert InversionPlan(relu, X, lp=True).kinds == ["lp"]
    plan = InversionPlan(relu, X, lp=False)
    assert plan.kinds == ["analytic", "opaque", "analytic", "opaque", "analytic"]
    assert all(isinstance(c.module, nn.ReLU) for b in plan.blocks if b.kind == "opaque" for c in b.calls)


def test_residual_connection_is_not_split_inside():
    plan = InversionPlan(Residual(), X)
    assert plan.kinds == ["analytic", "opaque", "analytic"]
    assert [c.name for c in plan.blocks[1].calls] == ["act", "b", "act2"]
    with pytest.raises(ValueError, match="cannot be split before 'b'"):
        InversionPlan(Residual(), X, split_points=["b"])
    with pytest.raises(ValueError, match="no executed module"):
        InversionPlan(Residual(), X, split_points=["nope"])


def test_explicit_split_point_starts_a_block():
    plan = InversionPlan(seed_fcnn(2), X, split_points=["3"])
    assert plan.kinds == ["analytic", "analytic"] and plan.blocks[1].calls[0].name == "3"


def test_plan_leaves_no_hooks_and_restores_mode():
    m = Residual().train()
    InversionPlan(m, X)
    assert m.training and sum(len(x._forward_pre_hooks) + len(x._forward_hooks) for x in m.modules()) == 0


def test_plan_proves_only_boundaries_next_to_analytic_calls():
    torch.manual_seed(0)
    trunk = []
    for _ in range(12):
        trunk += [nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()]
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), *trunk, nn.Flatten(), nn.Linear(4 * 36, 16),
                          nn.SELU(), nn.Linear(16, 5)).eval()
    runs = [0]
    model.register_forward_pre_hook(lambda m, i: runs.__setitem__(0, runs[0] + 1))
    plan = InversionPlan(model, torch.randn(2, 1, 6, 6), lp=False)
    assert [b.kind for b in plan.blocks] == ["opaque", "analytic"]
    assert plan.blocks[1].start == 25  # the Flatten: the trunk's 25 convolutions and ReLUs stay one block
    # 30 leaf calls: every boundary proven would cost two forward passes each (~60)
    assert runs[0] <= 12


def test_ends_only_keeps_middle_analytic_calls_in_the_opaque_block():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, 4)).eval()
    x = torch.randn(2, 16)
    assert InversionPlan(model, x, lp=False).kinds == ["analytic", "opaque", "analytic", "opaque", "analytic"]
    plan = InversionPlan(model, x, ends_only=True, lp=False)
    assert plan.kinds == ["analytic", "opaque", "analytic"]
    assert [c.name for c in plan.blocks[1].calls] == ["2", "3", "4"]
