"""Recording the leaf modules a model executes, and proving that they compose to the model.

Forward hooks see modules, not the functional code between them (``F.relu`` in a ``forward``,
residual additions, token selection). :func:`trace_leaf_modules` therefore re-runs the recorded
modules in order and compares the result with the model's own output; :class:`LeafTrace`
says whether that composition is exact (``composes``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Tuple

import torch
from torch import Tensor, nn

__all__ = ["LeafCall", "LeafTrace", "trace_leaf_modules", "model_mode_guard"]


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
    names = {m: n for n, m in model.named_modules()}
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
