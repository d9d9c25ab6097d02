"""Rules of the code's shape: one model adapter, a small base, no import cycles, public settings
only, one signature per public method."""
import ast
import inspect
import re
from pathlib import Path

import pytest

import captum_invert as ci

PKG = Path(ci.__file__).parent
ROOT = PKG.parent

# what only the adapter (captum_invert/_core/model.py) may do: call the user's model, know the
# compiled wrappers, read an output kind, discover the model's dtype and device
ADAPTER_ONLY = {
    "calls the caller's model directly": r"forward_func\(",
    "knows the compiled-model wrapper": r"CompiledModel|jit\.ScriptModule|GraphModule",
    "reads the model's output kind": r"log_probs_from|output_kind\(|_model_dtype_device",
    "turns a model output into probabilities": r"(?<![\w.])(torch\.)?(log_)?softmax\(|\.(log_)?softmax\(",
    "finds the model's dtype or device from its parameters": r"next\((iter\()?[\w.]*parameters\(\)",
}
# files outside the rule, and why
EXEMPT = {
    "_core/model.py": "the adapter itself",
    "models": "the test nets and their training loop (they are the models, not callers of them)",
    "datasets.py": "data loading",
    "blocks": "layer algebra: a chain's softmax is one of its layers",
    "_core/region.py": "softmax of a region's own affine logits (layer algebra)",
    "solvers/first_order.py": "the slope of one activation module, not the user's model",
}
# the tail residual takes the softmax of logits it computed itself through the output tail's
# own activations (layer algebra, not the model's output kind)
ALLOWED_LINES = {
    ("_core/solve.py", "torch.log_softmax(z, 1)"),
}


def _library_files():
    for p in sorted(PKG.rglob("*.py")):
        rel = p.relative_to(PKG).as_posix()
        if any(rel == e or rel.startswith(e + "/") for e in EXEMPT):
            continue
        yield rel, p.read_text()


def test_only_the_adapter_calls_the_model_or_reads_its_conventions():
    bad = []
    for rel, text in _library_files():
        for i, line in enumerate(text.splitlines(), 1):
            code = line.split("#")[0]
            for what, pat in ADAPTER_ONLY.items():
                if re.search(pat, code) and not any(rel == f and s in code for f, s in ALLOWED_LINES):
                    bad.append(f"{rel}:{i}: {what}: {line.strip()}")
    assert not bad, "\n".join(bad)


def test_the_rule_would_catch_a_violation():
    # the patterns match the code they forbid
    samples = {"calls the caller's model directly": "out = self.forward_func(x)",
               "knows the compiled-model wrapper": "isinstance(m, CompiledModel)",
               "reads the model's output kind": "lp = self.log_probs_from(out, kind)",
               "turns a model output into probabilities": "p = model(x).softmax(1)",
               "finds the model's dtype or device from its parameters": "p = next(model.parameters())"}
    for what, code in samples.items():
        assert re.search(ADAPTER_ONLY[what], code), what
    assert not re.search(ADAPTER_ONLY["turns a model output into probabilities"], "probs = adapter.probs(x)")


def test_base_is_small():
    n = len((PKG / "_core" / "base.py").read_text().splitlines())
    assert n <= 250, f"_core/base.py has {n} lines; move what grows into a module named for it"


def _imports(path: Path, module: str):
    """Modules of the package that ``path`` imports, anywhere in the file (lazy imports too).
    ``from . import name`` counts as the submodule ``name`` when there is one, else the package."""
    tree = ast.parse(path.read_text())
    pkg = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("captum_invert")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.rsplit(".", node.level - 1)[0] if node.level > 1 else pkg
                base = f"{base}.{node.module}" if node.module else base
            elif node.module and node.module.startswith("captum_invert"):
                base = node.module
            else:
                continue
            subs = [f"{base}.{a.name}" for a in node.names]
            found = [s for s in subs if _file(s) is not None]
            out |= set(found) if found else {base}
    return {m for m in out if _file(m) is not None}


def _file(module: str):
    p = ROOT / Path(*module.split("."))
    if p.with_suffix(".py").is_file():
        return p.with_suffix(".py")
    if (p / "__init__.py").is_file():
        return p / "__init__.py"
    return None


def test_no_import_cycles():
    graph = {}
    for p in PKG.rglob("*.py"):
        mod = ".".join(p.relative_to(ROOT).with_suffix("").parts)
        mod = mod[: -len(".__init__")] if mod.endswith(".__init__") else mod
        graph[mod] = _imports(p, mod)
    # a package's own __init__ re-exports its modules: importing the package is not a cycle
    # with them, so the edges out of __init__ files are left out
    inits = {m for m in graph if _file(m).name == "__init__.py"}
    edges = {m: {d for d in ds if d != m} for m, ds in graph.items() if m not in inits}
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in edges.get(m, ()):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_no_test_or_benchmark_sets_a_private_attribute_of_the_library():
    pats = [r"monkeypatch\.setattr\([^,]+,\s*[\"']_", r"\b[A-Z]\w*(Inversion|Method|Plan)\._\w+\s*=(?!=)"]
    bad = []
    for folder in ("tests", "benchmarks"):
        for p in sorted((ROOT / folder).rglob("*.py")):
            if p.name == "test_architecture.py":
                continue
            for i, line in enumerate(p.read_text().splitlines(), 1):
                if any(re.search(pt, line) for pt in pats):
                    bad.append(f"{p.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not bad, "\n".join(bad)


METHODS = ["BackwardPassInversion", "ForwardPassInversion", "GeneralizedInversion", "LayerInversion",
           "LearnedInversion", "ActivationMaximization", "DatasetSearch", "ExactInversion", "PixelImportance",
           "PseudoInverseInversion"]


@pytest.mark.parametrize("name", METHODS)
def test_attribute_is_keyword_only_after_inputs_and_target(name):
    params = list(inspect.signature(getattr(ci, name).attribute).parameters.values())
    assert [p.name for p in params[:3]] == ["self", "inputs", "target"], name
    late = [p.name for p in params[3:] if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    assert not late, f"{name}.attribute: {late} should be keyword-only"


def test_one_compute_convergence_delta_signature():
    sigs = {name: tuple((p.name, p.kind, p.default) for p in inspect.signature(
        getattr(ci, name).compute_convergence_delta).parameters.values()) for name in METHODS}
    assert len(set(sigs.values())) == 1, sigs


def test_same_meaning_same_default():
    # max_retries means the same in the three methods that share the ranked restarts
    # (LayerInversion's are plain random restarts, 3); the anchor solve's and LayerInversion's
    # max_iter differ on purpose (their docstrings say why)
    for name in ("BackwardPassInversion", "ForwardPassInversion", "GeneralizedInversion", "LayerInversion"):
        p = inspect.signature(getattr(ci, name).attribute).parameters
        assert p["max_retries"].default == (3 if name == "LayerInversion" else 10), name
        assert ("ranked" in getattr(ci, name).attribute.__doc__) == (name != "LayerInversion"), name
        assert p["min_prob"].default == 0.9 if "min_prob" in p else True
    for name in ("BackwardPassInversion", "LayerInversion"):
        doc = getattr(ci, name).attribute.__doc__
        assert re.search(r"max_iter \(int\).*\(50, not the 30", doc, re.S), name
