"""Proofs, before any work, that a target is out of reach of every input: the bounded range of
an output tail (a Tanh, Sigmoid or SELU on the logits) and a normalized head (a LayerNorm before
the last Linear)."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from .goal import Goal

__all__ = ["check_reachable", "output_tail", "prob_bounds", "tail_range"]


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
                     trace=None, kind: Optional[str] = None) -> None:
    """Raise ``ValueError`` before any work when the target is provably out of reach of every
    input: a class target above the highest probability the class can get, or a distribution
    that no reachable output comes within ``atol`` of. Two proofs: the bounded range of an
    output tail (a Tanh or Sigmoid on the logits), and, with ``trace`` and ``kind``, a
    normalized head (a LayerNorm before the last Linear, as in ViT, Swin, MLP-Mixer and
    ConvNeXt; see :mod:`~captum_invert.blocks.norm_head`). Skipped with ``allow_unverified``
    (the caller asked for the closest inputs anyway)."""
    if allow_unverified:
        return
    if tail is None:
        _check_head_reach(adapter, goal, trace, kind, what)
        return
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
