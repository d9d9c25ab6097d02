"""Proofs, before any work, that a target is out of reach of every input: the bounded range of
an output tail (a Tanh, Sigmoid or SELU on the logits), a normalized head (a LayerNorm before
the last Linear), and interval bounds of the logits over the input box."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .goal import Goal

__all__ = ["box_class_bounds", "box_logit_bounds", "check_reachable", "output_tail", "prob_bounds", "tail_range"]


def tail_range(tail, n_classes: int, dtype, device) -> Tuple[Tensor, Tensor]:
    """``(lo, hi)`` ``(C,)``: the range of each output of the tail (``-inf`` / ``inf`` where
    unbounded)."""
    zero = torch.zeros(n_classes, dtype=dtype, device=device)
    lo, hi = zero - math.inf, zero + math.inf
    for m, e in tail[1]:
        a, b = e.forward(m, lo), e.forward(m, hi)
        lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    return lo, hi

def prob_bounds(tail, n_classes: int) -> Tuple[Tensor, Tensor]:
    """``(p_min, p_max)`` ``(C,)`` float64: the range of each class's probability that the
    output tail's bounded range allows (p_c is largest with ``z_c = hi_c`` and every other
    ``z_j = lo_j``, smallest the other way round)."""
    lo, hi = tail_range(tail, n_classes, torch.float64, "cpu")
    eye = torch.eye(len(lo), dtype=torch.bool)
    p_max = 1 / (1 + torch.exp(lo[None, :] - hi[:, None]).masked_fill(eye, 0).sum(1))
    p_min = 1 / (1 + torch.exp(hi[None, :] - lo[:, None]).masked_fill(eye, 0).sum(1))
    return p_min, p_max

def check_reachable(adapter, goal: Goal, tail, what: str, allow_unverified: bool = False,
                     trace=None, kind: Optional[str] = None, input_range=None) -> None:
    """Raise ``ValueError`` before any work when the target is provably out of reach of every
    input: a class target above the highest probability the class can get, or a distribution
    that no reachable output comes within ``atol`` of. Three proofs: the bounded range of an
    output tail (a Tanh or Sigmoid on the logits); with ``trace`` and ``kind``, a normalized
    head (a LayerNorm before the last Linear, as in ViT, Swin, MLP-Mixer and ConvNeXt; see
    :mod:`~captum_invert.blocks.norm_head`); and interval bounds of the logits over the input
    box, or over every input without one (:func:`box_logit_bounds`), e.g. an output ReLU that no
    input turns on. Skipped with ``allow_unverified`` (the caller asked for the closest inputs
    anyway)."""
    if allow_unverified:
        return
    if tail is None:
        _check_head_reach(adapter, goal, trace, kind, what)
    else:
        _check_tail_reach(goal, tail, what)
    if trace is not None and kind in ("logits", "probs", "log_probs"):
        _check_box_reach(adapter, goal, trace, kind, input_range, what)


def _check_tail_reach(goal: Goal, tail, what: str) -> None:
    """The bounded-tail part of :func:`check_reachable`."""
    lo, hi = tail_range(tail, goal.n_classes, torch.float64, "cpu")
    p_min, p_max = prob_bounds(tail, goal.n_classes)
    names = " -> ".join(type(m).__name__ for m, _ in tail[1])
    bounds = f"the model's output activation ({names}) keeps the logits in [{float(lo.min()):.3g}, {float(hi.max()):.3g}]"
    if goal.labels is not None:
        bad = sorted({int(c) for c in goal.labels.tolist() if float(p_max[c]) < goal.min_prob})
        if bad:
            best = min(float(p_max[c]) for c in bad)
            raise ValueError(
                f"{what}: `target` class(es) {bad} cannot reach `min_prob`={goal.min_prob}: {bounds}, so no "
                f"input gives them a probability above {best:.4g}. Use min_prob below that.")
        return
    dist = goal.dist.double().cpu()
    far = (dist > p_max + goal.atol) | (dist < p_min - goal.atol)
    if bool(far.any()):
        c = int(far.any(0).nonzero()[0])
        raise ValueError(
            f"{what}: the `target` distribution is out of reach: {bounds}, so class {c}'s probability "
            f"stays in [{float(p_min[c]):.4g}, {float(p_max[c]):.4g}] for every input (atol={goal.atol}).")

def _check_head_reach(adapter, goal: Goal, trace, kind: Optional[str], what: str) -> None:
    """The normalized-head part of :func:`check_reachable`."""
    from ..blocks.norm_head import class_log_prob_bound, distribution_gap_bound, find_norm_head

    if trace is None or kind is None or kind.startswith("binary") or adapter.traceable is None:
        return
    g = torch.Generator().manual_seed(0)  # the caller's seed is not consumed
    probe = adapter.cast(torch.randn((3, *adapter.input_shape), generator=g))
    nh = find_norm_head(adapter.traceable, trace, probe, lambda o: adapter.log_probs_of(o, kind))
    if nh is None:
        return
    if goal.labels is not None:
        classes = sorted({int(c) for c in goal.labels.tolist()})
        ub = class_log_prob_bound(nh, classes, math.log(goal.min_prob))
        bad = [(c, float(u)) for c, u in zip(classes, ub.tolist()) if u < math.log(goal.min_prob)]
        if bad:
            best = max(math.exp(u) for _, u in bad)
            raise ValueError(
                f"{what}: `target` class(es) {[c for c, _ in bad]} cannot reach `min_prob`={goal.min_prob}: "
                f"{nh.describe()}, so no input gives them a probability above {best:.4g}. Use min_prob "
                "below that.")
        return
    rows = torch.unique(goal.dist.double().cpu(), dim=0)
    lower, kappa = distribution_gap_bound(nh, rows, goal.atol)
    far = lower > kappa
    if bool(far.any()):
        i = int(far.nonzero()[0])
        raise ValueError(
            f"{what}: the `target` distribution is out of reach: {nh.describe()}. On the target's classes "
            f"above atol, every input's probabilities stay at least {float(lower[i]):.3g} nats from the "
            f"target (sum p*_j log(p*_j / p_j)), and every distribution within atol={goal.atol} of it is "
            f"within {float(kappa[i]):.3g}. Pass allow_unverified=True for the closest inputs.")

def output_tail(trace) -> Optional[Tuple[nn.Module, list]]:
    """``(pre_module, [(module, entry), ...])`` when the model is a proven chain that ends in
    registered invertible activations at least one of which saturates (a bounded range, like
    SELU's exponential tail); else None."""
    from ..blocks.activations import get_inverse, is_invertible

    if trace is None or not trace.composes:
        return None
    calls = list(trace.calls)
    if calls and isinstance(calls[-1].module, (nn.Softmax, nn.LogSoftmax)):
        calls = calls[:-1]
    tail = []
    while calls and get_inverse(calls[-1].module) is not None and is_invertible(calls[-1].module):
        c = calls.pop()
        tail.insert(0, (c.module, get_inverse(c.module)))
    if not calls or not tail:
        return None
    pre = calls[-1].module
    if sum(c.module is pre for c in trace.calls) != 1:
        return None
    bounded = any(bool(torch.isfinite(torch.stack(list(e.output_range(m)))).any()) for m, e in tail)
    return (pre, tail) if bounded else None


# --- interval bounds over the input box -------------------------------------------------------------
#: elementwise modules that never decrease: an interval [lo, hi] maps to [f(lo), f(hi)]
_MONOTONE = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.ELU, nn.SELU, nn.CELU, nn.Sigmoid, nn.Tanh, nn.Softplus,
             nn.LogSigmoid, nn.Softsign, nn.Hardsigmoid, nn.MaxPool1d, nn.MaxPool2d,
             nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
             nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout)


def _monotone(m: nn.Module) -> bool:
    from ..blocks.normalize import Normalize

    if isinstance(m, nn.LeakyReLU):
        return m.negative_slope >= 0
    if isinstance(m, nn.PReLU):
        return bool((m.weight >= 0).all())
    if isinstance(m, nn.ELU):
        return m.alpha >= 0
    return isinstance(m, _MONOTONE + (Normalize,))


def _affine_interval(m: nn.Module, c: Tensor, r: Tensor) -> Optional[Tuple[Tensor, Tensor]]:
    """Centre and radius of an affine module's image of the box ``c +- r``; None if ``m`` is not
    one this handles (Linear, Conv1d/2d with zero padding, BatchNorm in eval mode)."""
    def p(t):
        return None if t is None else t.detach().to(torch.float64)

    if isinstance(m, nn.Linear):
        w = p(m.weight)
        return c @ w.T + (p(m.bias) if m.bias is not None else 0), r @ w.abs().T
    if isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.padding_mode == "zeros" and isinstance(m.padding, tuple):
        conv = F.conv1d if isinstance(m, nn.Conv1d) else F.conv2d
        w, kw = p(m.weight), dict(stride=m.stride, padding=m.padding, dilation=m.dilation, groups=m.groups)
        return conv(c, w, p(m.bias), **kw), conv(r, w.abs(), None, **kw)
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and not m.training and m.running_var is not None:
        scale = 1 / torch.sqrt(p(m.running_var) + m.eps)
        shift = -p(m.running_mean) * scale
        if m.affine:
            scale, shift = scale * p(m.weight), shift * p(m.weight) + p(m.bias)
        shape = (1, -1) + (1,) * (c.dim() - 2)
        return c * scale.reshape(shape) + shift.reshape(shape), r * scale.abs().reshape(shape)
    return None


#: stands for an unbounded input value in :func:`box_logit_bounds` (finite, so that a zero weight
#: times it is zero); logit bounds beyond ``_BIG`` count as unbounded
_HUGE, _BIG = 1e30, 1e10


def box_logit_bounds(trace, input_range: Optional[Tuple[float, float]], input_shape, classes=None, device="cpu"):
    """Interval bounds of a traced chain's logits over the input box (interval bound propagation,
    in float64), and where the chain ends in a ``Linear``, upper bounds of the margins
    ``z_c - z_j`` of ``classes`` through it (exact over the interval of its input, tighter than
    the difference of the logits' intervals).

    Args:
        trace: the model's trace (:func:`~captum_invert.blocks.plan.trace_leaf_modules`); only a
            chain (``trace.composes``) is bounded.
        input_range (tuple of float, optional): the box ``(lo, hi)`` of every input value; None:
            every input (an output unit whose weights keep it off is still bounded).
        input_shape (tuple of int): one input's shape.
        classes (list of int, optional): the classes whose margins to bound.
        device: where the model's parameters are (the bounds come back on the CPU).

    Returns:
        None where a module is not bounded here (e.g. GELU, attention); else ``(lo, hi,
        margins)``: ``lo, hi`` ``(C,)`` the logits' range, ``margins`` ``(len(classes), C)``
        upper bounds of ``z_c - z_j`` (None when the chain does not end in a Linear).
    """
    if trace is None or not trace.composes:
        return None
    calls = [c.module for c in trace.calls]
    if calls and isinstance(calls[-1], (nn.Softmax, nn.LogSoftmax)):
        calls = calls[:-1]
    box = (-_HUGE, _HUGE) if input_range is None else (float(input_range[0]), float(input_range[1]))
    lo = torch.full((1, *input_shape), box[0], dtype=torch.float64, device=device)
    hi = torch.full_like(lo, box[1])
    last_lin = max((i for i, m in enumerate(calls) if isinstance(m, nn.Linear)), default=None)
    elide = last_lin is not None and all(isinstance(m, (nn.Identity, nn.Dropout)) for m in calls[last_lin + 1:])
    margins = None
    with torch.no_grad():
        for i, m in enumerate(calls):
            if elide and i == last_lin and classes:
                w = m.weight.detach().to(torch.float64)
                bias = m.bias.detach().to(torch.float64) if m.bias is not None else torch.zeros_like(w[:, 0])
                c, r = ((lo + hi) / 2).reshape(-1), ((hi - lo) / 2).reshape(-1)
                margins = torch.stack([(w[k] - w) @ c + (w[k] - w).abs() @ r + bias[k] - bias for k in classes])
            if isinstance(m, nn.PReLU) and _monotone(m):
                w = m.weight.detach().to(torch.float64)
                lo, hi = F.prelu(lo, w), F.prelu(hi, w)
                continue
            if _monotone(m):
                lo, hi = m(lo), m(hi)
                continue
            out = _affine_interval(m, (lo + hi) / 2, (hi - lo) / 2)
            if out is None:
                return None
            lo, hi = out[0] - out[1], out[0] + out[1]
            if not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()):
                return None
    if lo.dim() != 2 or len(lo) != 1:
        return None
    lo, hi = lo[0].cpu(), hi[0].cpu()
    lo, hi = lo.masked_fill(lo < -_BIG, -math.inf), hi.masked_fill(hi > _BIG, math.inf)
    margins = None if margins is None else margins.cpu()
    return lo, hi, None if margins is None else margins.masked_fill(margins > _BIG, math.inf)


def _ends_in_logits(trace, kind: str) -> bool:
    """The model's output is its traced chain's logits, or their (log-)softmax over the classes."""
    calls = trace.calls if trace is not None else []
    ends_soft = bool(calls) and isinstance(calls[-1].module, (nn.Softmax, nn.LogSoftmax))
    return ends_soft == (kind != "logits") and not (ends_soft and calls[-1].module.dim not in (1, -1))


def box_class_bounds(trace, kind: str, input_range, input_shape, classes, device="cpu") -> Optional[Tensor]:
    """``(len(classes),)`` float64 upper bounds of the classes' probabilities over the input box
    (or every input), from :func:`box_logit_bounds`; None where the model is not covered (or its
    output is not its chain's logits)."""
    got = box_logit_bounds(trace, input_range, input_shape, classes, device) if _ends_in_logits(trace, kind) else None
    if got is None:
        return None
    lo, hi, margins = got
    eye = torch.eye(len(lo), dtype=torch.bool)[classes]
    if margins is not None:  # log p_c <= -log(1 + sum_j exp(-max(z_c - z_j)))
        gaps = (-margins).masked_fill(eye, -math.inf)
    else:
        gaps = (lo[None, :] - hi[classes][:, None]).masked_fill(eye, -math.inf)
    return torch.exp(-torch.logsumexp(torch.cat([torch.zeros(len(classes), 1, dtype=gaps.dtype), gaps], 1), 1))


def _check_box_reach(adapter, goal: Goal, trace, kind: str, input_range, what: str) -> None:
    """The input-box part of :func:`check_reachable`: a class whose probability's upper bound over
    the box is below ``min_prob`` (or a distribution outside the probabilities' ranges by more
    than ``atol``) is refused. A model whose output is not its chain's logits is skipped."""
    n_calls = len(trace.calls)
    box = "" if input_range is None else f" inside `input_range`=({input_range[0]:g}, {input_range[1]:g})"
    src = "every input" if input_range is None else "the box"
    how = f"interval bounds of the logits, propagated from {src} through the model's {n_calls} modules,"
    fix = ("Widen `input_range` (or pass input_range=None), or " if input_range is not None else "")
    slack = 1e-6  # float rounding of the bounds
    if goal.labels is not None:
        classes = sorted({int(c) for c in goal.labels.tolist()})
        ub = box_class_bounds(trace, kind, input_range, adapter.input_shape, classes, adapter.device)
        if ub is None:
            return
        bad = [(c, float(u)) for c, u in zip(classes, ub.tolist()) if u * (1 + slack) < goal.min_prob]
        if bad:
            best = max(u for _, u in bad)
            raise ValueError(
                f"{what}: `target` class(es) {[c for c, _ in bad]} cannot reach `min_prob`={goal.min_prob}"
                f"{box}: {how} show that no input{' in the box' if box else ''} gives them a probability above "
                f"{best:.4g}. {fix or ''}{'use' if fix else 'Use'} min_prob below that.")
        return
    got = (box_logit_bounds(trace, input_range, adapter.input_shape, device=adapter.device)
           if _ends_in_logits(trace, kind) else None)
    if got is None:
        return
    lo, hi, _ = got
    eye = torch.eye(len(lo), dtype=torch.bool)
    p_max = 1 / (1 + torch.exp(lo[None, :] - hi[:, None]).masked_fill(eye, 0).sum(1))
    p_min = 1 / (1 + torch.exp(hi[None, :] - lo[:, None]).masked_fill(eye, 0).sum(1))
    dist = goal.dist.double().cpu()
    far = (dist > p_max + goal.atol + slack) | (dist < p_min - goal.atol - slack)
    if bool(far.any()):
        c = int(far.any(0).nonzero()[0])
        raise ValueError(
            f"{what}: the `target` distribution is out of reach{box}: {how} keep class {c}'s "
            f"probability in [{float(p_min[c]):.4g}, {float(p_max[c]):.4g}] for every input{' in the box' if box else ''} "
            f"(atol={goal.atol}). {fix or ''}{'pass' if fix else 'Pass'} allow_unverified=True for the closest inputs.")
