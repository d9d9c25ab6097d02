"""Recording the leaf modules a model executes, and proving that they compose to the model.

Forward hooks see modules, not the functional code between them (``F.relu`` in a ``forward``,
residual additions, token selection). :func:`trace_leaf_modules` therefore re-runs the recorded
modules in order and compares the result with the model's own output; :class:`LeafTrace`
says whether that composition is exact (``composes``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import torch
from torch import Tensor, nn

__all__ = ["LeafCall", "LeafTrace", "trace_leaf_modules", "model_mode_guard", "InversionPlan", "Block",
           "layer_output"]


@dataclass
class LeafCall:
    """One executed leaf module."""

    name: str
    module: nn.Module
    in_shape: Tuple[int, ...]
    out_shape: Tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.name or '<model>'} ({type(self.module).__name__})"


@dataclass
class LeafTrace:
    """The leaf modules executed by one forward pass, in order.

    Attributes:
        calls (list of LeafCall): executed leaf modules (a module called twice appears twice).
        composes (bool): True when applying ``calls`` in order to the example input reproduces
            the model's output (so the model is exactly this chain of modules).
        output (Tensor): the model's output on the example input.
    """

    calls: List[LeafCall] = field(default_factory=list)
    composes: bool = False
    output: Tensor = None

    def run(self, x: Tensor) -> Tensor:
        for c in self.calls:
            x = c.module(x)
        return x


class model_mode_guard:
    """Context manager: puts ``model`` in eval mode and freezes its parameters' ``requires_grad``;
    on exit (also on error) restores the training flags of every submodule and every
    parameter's ``requires_grad``."""

    def __init__(self, model, eval_mode: bool = True) -> None:
        self.model = model if isinstance(model, nn.Module) else None
        self.eval_mode = eval_mode

    def __enter__(self):
        if self.model is not None:
            self._modes = [(m, m.training) for m in self.model.modules()]
            self._grads = [(p, p.requires_grad) for p in self.model.parameters()]
            if self.eval_mode:
                self.model.eval()
            for p, _ in self._grads:
                p.requires_grad_(False)
        return self

    def __exit__(self, *exc):
        if self.model is not None:
            for m, t in self._modes:
                m.training = t
            for p, g in self._grads:
                p.requires_grad_(g)
        return False


def caller_names(model: nn.Module) -> Dict[nn.Module, str]:
    """Module -> name, as the caller knows them: a wrapper (the model adapter's) whose
    ``caller_model()`` returns the caller's model names that model's modules without its own
    prefix; the wrapper's own modules keep their names."""
    names = {m: n for n, m in model.named_modules()}
    inner = model.caller_model() if callable(getattr(model, "caller_model", None)) else None
    if isinstance(inner, nn.Module):
        names.update({m: n for n, m in inner.named_modules() if n})
    return names


def trace_leaf_modules(model: nn.Module, example: Tensor, rtol: float = 1e-5) -> LeafTrace:
    """Run ``model(example)`` with forward hooks on every leaf module and record the calls.

    The hooks are removed before returning, also on error. The model is not otherwise touched
    (call it under :class:`model_mode_guard` for eval mode).

    Args:
        model (nn.Module): the model.
        example (Tensor): a batch of inputs, ``(B, *input_shape)``.
        rtol (float): relative tolerance of the composition check.

    Returns:
        LeafTrace
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module to be traced, got {type(model).__name__}")
    trace = LeafTrace()
    names = caller_names(model)
    handles = []

    def hook(mod, inp, out):
        if isinstance(out, Tensor) and len(inp) >= 1 and isinstance(inp[0], Tensor):
            trace.calls.append(LeafCall(names.get(mod, "?"), mod, tuple(inp[0].shape), tuple(out.shape)))
        else:
            trace.calls.append(LeafCall(names.get(mod, "?"), mod, (), ()))

    try:
        leaves = [m for m in model.modules() if next(iter(m.children()), None) is None]
        for m in leaves:
            handles.append(m.register_forward_hook(hook))
        with torch.no_grad():
            out = model(example)
    finally:
        for h in handles:
            h.remove()
    trace.output = out
    if isinstance(out, Tensor) and trace.calls and all(c.in_shape for c in trace.calls):
        try:
            with torch.no_grad():
                again = trace.run(example)
            trace.composes = again.shape == out.shape and bool(
                torch.allclose(again, out, rtol=rtol, atol=rtol * float(out.abs().max()) + 1e-6)
            )
        except Exception:
            trace.composes = False
    return trace


# --------------------------------------------------------------------------------------------
# InversionPlan: blocks of executed leaf modules, analytic or opaque, with proven boundaries.
# --------------------------------------------------------------------------------------------
class _Stop(Exception):
    pass


def layer_output(model, layer: nn.Module, x: Tensor) -> Tensor:
    """The output of ``layer`` when ``model`` runs on ``x``; the forward pass stops there (the
    layers above cost nothing). Gradients flow when ``x`` requires them.

    Raises:
        ValueError: ``layer`` is not executed, or does not return a tensor.
    """
    out = {}

    def grab(m, i, o):
        out["a"] = o
        raise _Stop

    h = layer.register_forward_hook(grab)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        h.remove()
    if "a" not in out:
        raise ValueError("`layer` is not executed by the model's forward pass")
    if not isinstance(out["a"], Tensor):
        raise ValueError("`layer` must return a tensor")
    return out["a"]


def _is_analytic(call: LeafCall, last: bool) -> bool:
    from .activations import is_invertible

    m = call.module
    if isinstance(m, nn.Linear):
        return len(call.in_shape) == 2
    if isinstance(m, (nn.Softmax, nn.LogSoftmax)):
        return last and m.dim in (1, -1) and len(call.in_shape) == 2
    if isinstance(m, nn.Flatten):
        return True
    return is_invertible(m) and len(call.in_shape) >= 1


@dataclass
class Block:
    """A run of executed leaf modules inverted one way.

    Attributes:
        kind (str): ``'analytic'`` (back-pass), ``'lp'`` (piecewise-linear: linear programming on
            each activation pattern; printed as ``analytic (LP)``) or ``'opaque'``
            (Levenberg-Marquardt).
        start, stop (int): indices into the trace's calls, ``[start, stop)``.
        calls (list of LeafCall): the modules.
        in_shape, out_shape (tuple): shapes of the block's input and output (batch first).
    """

    kind: str
    start: int
    stop: int
    calls: List[LeafCall]
    in_shape: Tuple[int, ...]
    out_shape: Tuple[int, ...]


class InversionPlan:
    """How a model is split into blocks for :class:`~captum_invert.GeneralizedInversion`.

    Forward hooks record the executed leaf modules. Each is *analytic* (Linear on
    ``(N, features)``, registered invertible activations, Flatten, Identity, Dropout and
    BatchNorm in eval mode, a final Softmax/LogSoftmax) or *opaque* (anything else: attention,
    LayerNorm, convolutions, ReLU, pooling, unknown modules). Hooks cannot see functional code
    between modules (a ViT's class-token selection, residual additions), so every boundary is
    proven: the input captured before leaf call ``i`` is injected into a run of the model on a
    different input, and the boundary is kept only if the model's output is reproduced (a split
    inside a residual block fails this: its skip path still carries the other input). A segment
    between kept boundaries is analytic only if all its modules are analytic and running them in
    order reproduces the segment's output; else it is opaque. Adjacent blocks of one kind merge.
    A boundary between two opaque calls is not proven (its blocks would merge back), so a
    224-px ResNet costs a couple of proofs, not one per layer.

    Args:
        model (nn.Module): the model (run in eval mode while planning; restored).
        example (Tensor): ``(B, *input_shape)`` example inputs (B >= 2 recommended).
        split_points (sequence of str, optional): module names where blocks must start; each
            must pass the same proof (a ``ValueError`` names the one that does not).
        rtol (float): tolerance of the proofs.
        ends_only (bool): prove only the boundaries of the leading and trailing runs of analytic
            calls (what GeneralizedInversion uses: an analytic head and tail around one opaque
            middle); analytic calls in the middle (e.g. an EfficientNet's BatchNorms) stay
            inside the opaque block.
        lp (bool): a chain (no functional code) of piecewise-linear modules (Linear, Conv,
            ReLU, MaxPool, AvgPool, BatchNorm, ...) below an optional analytic tail becomes one
            ``'lp'`` block, inverted by linear programming, when its dense constraint matrix
            fits (:data:`~captum_invert.blocks.piecewise.LP_MAX_ENTRIES`); False (default)
            keeps the analytic/opaque split (``regions`` still says whether such a chain fits).

    Attributes:
        blocks (list of Block): from input to output.
        calls (list of LeafCall): every executed leaf module.
        n_proofs (int): boundaries proven (two forward passes each).
        piecewise (bool): the model is a chain of piecewise-linear modules (below an optional
            analytic tail): GeneralizedInversion solves it whole by Levenberg-Marquardt.
        regions (bool): ``piecewise``, and its dense LP fits: certified regions can be asked
            for (``return_regions=True``, ``region()``).
    """

    def __init__(self, model: nn.Module, example: Tensor, split_points=None, rtol: float = 1e-4,
                 ends_only: bool = False, lp: bool = False) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError("`model` must be an nn.Module to be planned")
        self.model = model
        with model_mode_guard(model):
            trace = trace_leaf_modules(model, example)
            self.calls = trace.calls
            self.output = trace.output
            n = len(self.calls)
            if n == 0:
                raise ValueError(f"{type(model).__name__} executes no leaf module")
            dummy = _other_input(example)
            ref = trace.output
            names = [c.name for c in self.calls]
            forced = []
            for sp in split_points or []:
                if sp not in names:
                    raise ValueError(f"`split_points`: no executed module is named {sp!r}; "
                                     f"executed: {', '.join(names)}")
                forced.append(names.index(sp))
            kinds = [_is_analytic(c, j == n - 1) for j, c in enumerate(self.calls)]
            if ends_only and not all(kinds):
                first = kinds.index(False)
                last = n - 1 - kinds[::-1].index(False)
                kinds = [k and (j < first or j > last) for j, k in enumerate(kinds)]
            ok_split = [True] + [False] * (n - 1)
            captured = [None] * n
            self.n_proofs = 0
            for i in range(1, n):
                # a boundary between two opaque calls would only merge back: not worth a proof
                # (two forward passes each; a 224-px ResNet has ~60 of them)
                if not (kinds[i - 1] or kinds[i] or i in forced):
                    continue
                self.n_proofs += 1
                try:
                    captured[i] = self.block_input(example, i)
                    ok_split[i] = _close(self._run_injected(dummy, i, captured[i]), ref, rtol)
                except Exception:  # noqa: BLE001
                    ok_split[i] = False
            captured[0] = example
            for i, sp in zip(forced, split_points or []):
                if not ok_split[i]:
                    raise ValueError(f"`split_points`: the model cannot be split before {sp!r}: "
                                     "feeding that module its input does not reproduce the output "
                                     "(a skip connection or functional code crosses it)")
            bounds = [i for i in range(n) if ok_split[i]] + [n]
            segs = []
            for a, b in zip(bounds[:-1], bounds[1:]):
                calls = self.calls[a:b]
                analytic = all(kinds[j] for j in range(a, b))
                if analytic:
                    with torch.no_grad():
                        h = captured[a]
                        for c in calls:
                            h = c.module(h)
                    target = captured[b] if b < n else ref
                    analytic = _close(h, target, rtol)
                segs.append((a, b, "analytic" if analytic else "opaque"))
            merged: List[List] = []
            for a, b, k in segs:
                if merged and merged[-1][2] == k and a not in forced:
                    merged[-1][1] = b
                else:
                    merged.append([a, b, k])
            self.blocks = [
                Block(k, a, b, self.calls[a:b], self.calls[a].in_shape, self.calls[b - 1].out_shape)
                for a, b, k in merged
            ]
            cut, fits = self._lp_cut(math.prod(example.shape[1:])) if trace.composes and not forced else (None, False)
            self.piecewise, self.regions = cut is not None, cut is not None and fits
            if lp and self.regions:
                self.blocks = [Block(kd, a, b, self.calls[a:b], self.calls[a].in_shape, self.calls[b - 1].out_shape)
                               for a, b, kd in cut]

    def _lp_cut(self, d: int):
        """``([(start, stop, kind)], fits)``: a chain whose modules below its analytic tail are
        all piecewise-linear is one LP block (plus that tail); ``fits``: its dense LP fits.
        ``(None, False)`` for any other model."""
        from .piecewise import lp_fits, split_piecewise

        calls = self.calls
        end = len(calls) - 1 if isinstance(calls[-1].module, (nn.Softmax, nn.LogSoftmax)) else len(calls)
        try:
            split = split_piecewise(calls[:end])
        except ValueError:
            return None, False
        if split is None:
            return None, False
        k = len(split[0])
        plain = (nn.Linear, nn.Flatten, nn.Identity, nn.Dropout)
        if all(isinstance(c.module, plain) for c in calls[k:end]):
            k = len(calls)
        elif not all(_is_analytic(c, j == len(calls) - 1) for j, c in enumerate(calls) if j >= k):
            return None, False
        return [(0, k, "lp")] + ([(k, len(calls), "analytic")] if k < len(calls) else []), lp_fits(split[0], d)

    def route(self, block: "Block") -> str:
        """How :class:`~captum_invert.GeneralizedInversion` inverts ``block``, and why."""
        if block.kind == "lp":
            return ("linear program per activation pattern: certified regions, seconds per sample "
                    "(the plan was built with lp=True)")
        if self.piecewise:
            why = ("one Levenberg-Marquardt solve of the whole model: a piecewise-linear chain has no "
                   "closed-form inverse, and the blocks' null-space moves measured no more diverse samples "
                   "at twice the cost")
            return why + ("; certified regions on request (return_regions=True, region(): a linear program "
                          "per sample)" if self.regions else "; its dense LP is too large for certified regions")
        if block.kind == "analytic":
            j, n = self.blocks.index(block), len(self.blocks)
            if n == 1:
                return "the whole model is analytic: its closed-form back-pass (as BackwardPassInversion)"
            if j == 0:
                return ("analytic head: the solver works on its output, then its closed-form back-pass "
                        "(null-space noise) gives the inputs")
            if j == n - 1:
                return ("analytic tail: its closed-form back-pass gives the target's embedding and a "
                        "null-space direction for the solver")
            return "analytic, between opaque blocks: solved with them by Levenberg-Marquardt"
        last = self.calls[-1]
        first = next((c for c in block.calls if not _is_analytic(c, c is last)), block.calls[0])
        return (f"Levenberg-Marquardt: {first.name} ({type(first.module).__name__}) has no closed-form "
                "inverse")

    # --- running parts of the model -------------------------------------------------------
    def _call_index(self, i: int) -> int:
        """How many times leaf call ``i``'s module ran before call ``i``."""
        mod = self.calls[i].module
        return sum(1 for c in self.calls[:i] if c.module is mod)

    def _input_of(self, i: int, run) -> Tensor:
        """Run ``run()`` and return the input of leaf call ``i`` (the rest is skipped)."""
        mod, k = self.calls[i].module, self._call_index(i)
        seen, out = [0], {}

        def grab(m, inp):
            if seen[0] == k:
                out["x"] = inp[0]
                raise _Stop
            seen[0] += 1

        h = mod.register_forward_pre_hook(grab)
        try:
            run()
        except _Stop:
            pass
        finally:
            h.remove()
        if "x" not in out:
            raise RuntimeError(f"leaf call {i} ({self.calls[i]}) was not reached")
        return out["x"]

    def block_input(self, x: Tensor, i: int) -> Tensor:
        """The input of leaf call ``i`` when the model runs on ``x`` (the rest is skipped), in eval
        mode (restored)."""
        if i == 0:
            return x
        with model_mode_guard(self.model):
            return self._input_of(i, lambda: self.model(x))

    def _run_injected(self, x: Tensor, i: int, u: Tensor) -> Tensor:
        mod, k = self.calls[i].module, self._call_index(i)
        seen = [0]

        def pre(m, inp):
            hit = seen[0] == k
            seen[0] += 1
            return (u, *inp[1:]) if hit else None

        h = mod.register_forward_pre_hook(pre)
        try:
            return self.model(x)
        finally:
            h.remove()

    def run_from(self, i: int, u: Tensor, stop: int = None, input_shape=None) -> Tensor:
        """Run the model from leaf call ``i`` with input ``u``; return the input of leaf call
        ``stop`` (or the model's output when ``stop`` is None). Calls before ``i`` run on zeros
        and are discarded. A solver's inner loop: call it under :class:`model_mode_guard`."""
        shape = input_shape if input_shape is not None else self.calls[0].in_shape[1:]
        x = torch.zeros((len(u), *shape), dtype=u.dtype, device=u.device) if i > 0 else u
        run = (lambda: self._run_injected(x, i, u)) if i > 0 else (lambda: self.model(u))
        return run() if stop is None else self._input_of(stop, run)

    # --- display --------------------------------------------------------------------------
    @property
    def kinds(self) -> List[str]:
        return [b.kind for b in self.blocks]

    def __str__(self) -> str:
        rows = [("block", "kind", "modules", "input", "output")]
        routes = [f"  block {j}: {self.route(b)}" for j, b in enumerate(self.blocks)]
        for j, b in enumerate(self.blocks):
            mods = [f"{c.name} ({type(c.module).__name__})" for c in b.calls]
            if len(mods) > 4:
                mods = mods[:2] + [f"... {len(mods) - 4} more ..."] + mods[-2:]
            rows.append((str(j), "analytic (LP)" if b.kind == "lp" else b.kind, ", ".join(mods), str(tuple(b.in_shape[1:])),
                         str(tuple(b.out_shape[1:]))))
        w = [max(len(r[c]) for r in rows) for c in range(5)]
        lines = [" | ".join(r[c].ljust(w[c]) for c in range(5)) for r in rows]
        lines.insert(1, "-+-".join("-" * x for x in w))
        shown = self.model.caller_model() if callable(getattr(self.model, "caller_model", None)) else self.model
        return (f"InversionPlan({type(shown).__name__})\n" + "\n".join(lines) + "\nroutes:\n"
                + "\n".join(routes))

    __repr__ = __str__


def _other_input(x: Tensor) -> Tensor:
    g = torch.Generator(device="cpu").manual_seed(12345)
    return (torch.randn(x.shape, generator=g, dtype=torch.float64) * (x.double().std() + 1) + 0.37).to(x)


def _close(a, b, rtol) -> bool:
    if not (isinstance(a, Tensor) and isinstance(b, Tensor)) or a.shape != b.shape:
        return False
    return bool(torch.allclose(a, b, rtol=rtol, atol=rtol * (float(b.abs().max()) + 1e-6)))
