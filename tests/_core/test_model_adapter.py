"""The model adapter: multi-head outputs, declared and detected output kinds, compiled models,
and the solver settings reaching every route."""
import copy

import pytest
import torch
from torch import nn

import captum_invert._core.solve as solve
from captum_invert import (BackwardPassInversion, ForwardPassInversion, GeneralizedInversion, InversionError,
                           ModelAdapter, SolverSettings)
from captum_invert.metrics import class_probabilities


class Detector(nn.Module):
    """A detector-style net: (box regression, landmarks, class softmax); the landmark head runs
    last, so the last executed module is a Linear, not the Softmax."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(6, 32), nn.Tanh())
        self.cls = nn.Sequential(nn.Linear(32, 4), nn.Softmax(dim=1))
        self.box = nn.Linear(32, 4)
        self.marks = nn.Linear(32, 10)
        with torch.no_grad():  # every class reachable from the bounded trunk
            self.cls[0].weight.mul_(20.0)

    def forward(self, x):
        h = self.trunk(x)
        p = self.cls(h)
        return self.box(h), self.marks(h), p  # the landmarks run after the softmax


class ClassHead(nn.Module):
    """The wrapper a user writes: the third output only."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        b, lm, p = self.m(x)
        return p


def _p(model, x, c):
    with torch.no_grad():
        return float(model(x)[2][:, c].min())


def test_a_multi_head_model_inverts_with_the_selector():
    det = Detector()
    for select in (2, -1):
        x = ForwardPassInversion(det, input_shape=(6,), select=select).attribute(target=3, n_samples=4, seed=0)
        assert _p(det, x, 3) >= 0.9


def test_a_wrapped_head_of_probabilities_is_read_from_its_values():
    # the last executed module is the landmark Linear; the output itself is rows of probabilities
    det = Detector()
    probe = ModelAdapter(ClassHead(det), (6,)).probe()
    assert probe.kind == "probs" and "probabilities" in probe.how
    x = ForwardPassInversion(ClassHead(det), input_shape=(6,)).attribute(target=1, n_samples=3, seed=0)
    assert _p(det, x, 1) >= 0.9
    # metrics read it the same way (not a softmax of probabilities)
    with torch.no_grad():
        assert torch.allclose(class_probabilities(ClassHead(det), x), det(x)[2].double(), atol=1e-6)


def test_the_output_kind_can_be_declared_and_the_error_names_how_it_was_read():
    class Capped(nn.Module):  # probabilities, but no class can pass 0.55
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.lin = nn.Linear(5, 4)

        def forward(self, x):
            return 0.8 * torch.softmax(self.lin(x), 1) + 0.05

    m = Capped()
    assert ModelAdapter(m, (5,)).probe().kind == "probs"
    with pytest.raises(InversionError, match=r"read as probs \(its rows are probabilities.*output="):
        ForwardPassInversion(m, input_shape=(5,)).attribute(target=0, seed=0, max_iter=5, max_retries=0)
    # declared as logits: the softmax of the probabilities, and the error says it was declared
    assert ModelAdapter(m, (5,), output="logits").probe().kind == "logits"
    with pytest.raises(InversionError, match="declared as 'logits'"):
        ForwardPassInversion(m, input_shape=(5,), output="logits").attribute(target=0, seed=0, max_iter=5,
                                                                             max_retries=0)


def test_log_probabilities_are_detected_and_bad_keywords_refused():
    m = nn.Sequential(nn.Linear(5, 3), nn.LogSoftmax(1))
    assert ModelAdapter(m, (5,)).probe().kind == "log_probs"
    assert ModelAdapter(nn.Linear(5, 3), (5,)).probe().kind == "logits"
    with pytest.raises(ValueError, match="`output` must be one of"):
        ForwardPassInversion(m, input_shape=(5,), output="softmax")
    with pytest.raises(ValueError, match="`select`"):
        ForwardPassInversion(m, input_shape=(5,), select=1.5)
    with pytest.raises(ValueError, match="`solver` must be"):
        ForwardPassInversion(m, input_shape=(5,), solver={"escalation": False})
    with pytest.raises(ValueError, match="jacobian_averaging"):
        SolverSettings(jacobian_averaging=1.0)
    with pytest.raises(ValueError, match="`ranked_restarts` must be a bool"):
        SolverSettings(ranked_restarts="yes")
    with pytest.raises(ValueError, match="`own_gradient` must be a bool"):
        SolverSettings(own_gradient=1)


def test_a_model_output_object_gives_its_logits_and_extra_args_reach_a_selected_head():
    class Out:
        def __init__(self, logits):
            self.logits = logits

    class HF(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(1)
            self.lin = nn.Linear(5, 3)

        def forward(self, x, scale=1.0):
            return Out(self.lin(x) * scale)

    m = HF()
    x = ForwardPassInversion(m, input_shape=(5,)).attribute(target=2, seed=0)
    assert float(m(x).logits.softmax(1)[0, 2]) >= 0.9

    class Dict(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = HF()

        def forward(self, x, scale):
            return {"out": self.m(x, scale).logits}

    d = Dict()
    x = ForwardPassInversion(d, input_shape=(5,), select="out").attribute(
        target=1, seed=0, additional_forward_args=(torch.tensor(0.5),))
    assert float(d(x, 0.5)["out"].softmax(1)[0, 1]) >= 0.9


@pytest.fixture(scope="module")
def scripted():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    return net, torch.jit.script(copy.deepcopy(net))


def test_layer_methods_refuse_a_compiled_model_before_any_work(scripted):
    net, ts = scripted
    with pytest.raises(ValueError, match="compiled.*ForwardPassInversion"):
        BackwardPassInversion(ts, input_shape=(6,))
    with pytest.raises(ValueError, match="compiled.*opaque"):
        GeneralizedInversion(ts, input_shape=(6,)).plan  # noqa: B018
    x = GeneralizedInversion(ts, input_shape=(6,)).attribute(target=1, seed=0)
    assert float(net(x).softmax(1)[0, 1]) >= 0.9
    with pytest.raises(ValueError, match="not an nn.Module"):
        BackwardPassInversion(lambda v: net(v), input_shape=(6,))


def test_every_route_reads_the_jacobian_averaging_setting(monkeypatch):
    # GeneralizedInversion's opaque middle solves with the settings' averaging, as
    # ForwardPassInversion does (it did not before the settings were public)
    seen = []
    real = solve.levenberg_marquardt

    def spy(*a, **kw):
        seen.append(kw.get("averaging"))
        return real(*a, **kw)

    monkeypatch.setattr(solve, "levenberg_marquardt", spy)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 3))
    with torch.no_grad():
        net[-1].weight.mul_(10.0)
    for cls in (ForwardPassInversion, GeneralizedInversion):
        for beta in (0.5, 0.0):
            seen.clear()
            settings = None if beta == 0.5 else SolverSettings(jacobian_averaging=beta)
            cls(net, input_shape=(6,), solver=settings).attribute(target=2, n_samples=2, seed=0)
            assert seen and set(seen) == {beta}, (cls.__name__, seen)
