"""Why samples did not verify: the per-sample diagnosis that an InversionError carries."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .reachability import box_class_bounds, output_tail, prob_bounds

__all__ = ["SampleDiagnosis", "diagnose", "format_diagnosis", "check_reference"]

#: A unit counts as saturated where its derivative is below this fraction of its mean slope.
SATURATED_SLOPE = 0.01


@dataclass
class SampleDiagnosis:
    """The diagnosis of one sample that did not verify.

    Attributes:
        index (int): the sample's position in the request.
        target (int or None): its class (None for a distribution target).
        reached (float): the target class's probability at the returned point (for a
            distribution: ``1 - delta``, the max-abs gap subtracted from 1).
        grad_norm (float): L2 norm of the gradient of the target's log-odds (a distribution:
            of the squared log-probability gap) with respect to the input there. Near zero:
            no first-order method can move the sample.
        saturated (list): ``(layer name, module type, fraction)`` of the activation layers where
            at least half of the units have a derivative below 1% of the activation's mean
            slope (saturated or dead), most saturated first.
        out_of_reach (bool): the model's bounded output activation (a Tanh or Sigmoid on the
            logits) keeps the target's probability below ``min_prob`` for every input: proven
            unreachable. False means only "not reached".
        bound (float or None): that highest reachable probability, when bounded; otherwise the
            upper bound that interval bounds of the logits over the input box give (at least
            ``min_prob``, or the call would have been refused before any work), None where
            they do not apply.
        reference (tuple or None): ``(k, m)``: ``k`` of the ``m`` reference inputs of the
            target's class meet the goal (with ``reference=`` only).
        reference_labelled (bool): the reference had labels, so ``m`` counts the inputs of the
            target's class only (else every reference input).
    """

    index: int
    target: Optional[int]
    reached: float
    grad_norm: float
    saturated: List[Tuple[str, str, float]] = field(default_factory=list)
    out_of_reach: bool = False
    bound: Optional[float] = None
    reference: Optional[Tuple[int, int]] = None
    reference_labelled: bool = False


def _slope(m: nn.Module, a: Tensor) -> Optional[Tensor]:
    from ..solvers.first_order import _mean_slope

    try:
        with torch.enable_grad():
            z = a.detach().clone().requires_grad_(True)
            g, = torch.autograd.grad(m(z.clone()).sum(), z)
    except Exception:  # noqa: BLE001
        return None
    return g.abs().reshape(len(a), -1) / _mean_slope(m)


def check_reference(reference, input_shape) -> Optional[Tuple[Tensor, Optional[Tensor]]]:
    """``(X, y)`` from ``reference`` (a tensor of inputs, or a pair of inputs and int labels),
    checked; ValueError naming the argument otherwise."""
    if reference is None:
        return None
    X, y = (reference, None) if isinstance(reference, Tensor) else (tuple(reference) + (None,))[:2] \
        if isinstance(reference, (tuple, list)) else (None, None)
    if not isinstance(X, Tensor) or tuple(X.shape[1:]) != tuple(input_shape) or len(X) == 0:
        raise ValueError(f"`reference` must be a tensor of inputs (M, {', '.join(map(str, input_shape))}) or a "
                         f"pair (inputs, labels) with int labels (M,), got "
                         f"{tuple(X.shape) if isinstance(X, Tensor) else type(reference).__name__}")
    if y is not None:
        y = torch.as_tensor(y)
        if y.dtype.is_floating_point or y.dtype == torch.bool or y.shape != (len(X),):
            raise ValueError(f"`reference` labels must be an int tensor of shape ({len(X)},), got "
                             f"{y.dtype} {tuple(y.shape)}")
    return X, y


def diagnose(method, x: Tensor, index: Tensor, goal, kind: str, input_range=None,
             reference=None) -> List[SampleDiagnosis]:
    """Diagnose the samples ``x`` (``goal`` restricted to them) of ``method`` on its model, which
    must be in eval mode (the caller holds the model guard). One forward and one backward pass."""
    from ..blocks.plan import caller_names
    from ..solvers.first_order import SURROGATE_ACTIVATIONS

    adapter = method.adapter
    model = adapter.traceable
    x = adapter.cast(x.detach())
    n = len(x)
    sat: Dict[str, Tuple[str, Tensor]] = {}
    handles = []
    if model is not None:
        for m, name in caller_names(model).items():
            if isinstance(m, SURROGATE_ACTIVATIONS):
                def hook(mod, args, out, name=name):
                    a = args[0] if args and isinstance(args[0], Tensor) else None
                    if a is None or len(a) != n or name in sat:
                        return
                    s = _slope(mod, a)
                    if s is not None:
                        sat[name] = (type(mod).__name__, (s < SATURATED_SLOPE).double().mean(1).cpu())
                handles.append(m.register_forward_hook(hook))
    try:
        with torch.enable_grad():
            xr = x.clone().requires_grad_(True)
            lp = adapter.log_probs(xr, kind)
            gl = goal.to(lp.device)
            if gl.labels is not None:
                t = gl.labels[:, None]
                f = lp.gather(1, t) - torch.logsumexp(lp.scatter(1, t, -math.inf), 1, keepdim=True)
            else:
                logP = gl.dist.to(lp).clamp_min(gl.atol / (2 * gl.n_classes)).log()
                f = 0.5 * (lp - logP).pow(2).sum(1)
            g, = torch.autograd.grad(f.sum(), xr, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    gn = torch.zeros(n) if g is None else g.reshape(n, -1).norm(dim=1).double().cpu()
    probs = lp.detach().exp().double().cpu()
    reached = 1.0 - goal.delta(probs)
    # provably out of reach: a bounded output activation (the check made before any work); else
    # how far the interval bounds over the box got
    bound = None
    if goal.labels is not None and not kind.startswith("binary"):
        try:
            p = adapter.probe()
            tail = output_tail(p.trace)
            classes = sorted({int(c) for c in goal.labels.tolist()})
            ub = box_class_bounds(p.trace, kind, input_range, adapter.input_shape, classes, adapter.device)
            bound = None if ub is None else dict(zip(classes, ub.tolist()))
            if tail is not None:  # the tail's cap where it is the smaller
                cap = prob_bounds(tail, p.n_classes)[1].tolist()
                bound = {c: min(cap[c], bound[c]) if bound else cap[c] for c in classes}
        except Exception:  # noqa: BLE001
            bound = None
    ref_hits = None
    if reference is not None:
        ref_hits = _reference_reach(method, reference, goal, kind, input_range)
    out = []
    for j in range(n):
        tj = int(goal.labels[j]) if goal.labels is not None else None
        layers = sorted(((name, typ, float(fr[j])) for name, (typ, fr) in sat.items() if float(fr[j]) >= 0.25),
                        key=lambda r: -r[2])
        b = bound[tj] if bound is not None and tj is not None else None
        out.append(SampleDiagnosis(
            index=int(index[j]), target=tj, reached=float(reached[j]), grad_norm=float(gn[j]), saturated=layers,
            out_of_reach=b is not None and b < goal.min_prob, bound=b,
            reference=None if ref_hits is None else ref_hits.get(tj if tj is not None else -1),
            reference_labelled=reference is not None and reference[1] is not None and tj is not None))
    return out


def _reference_reach(method, reference, goal, kind, input_range) -> Dict[int, Tuple[int, int]]:
    """``class -> (k, m)``: ``k`` of the ``m`` reference inputs of the class meet the goal
    (key -1 for distribution targets: every reference input, against each sample's goal)."""
    X, y = reference
    P = method.adapter.probs(X, kind, batch_size=256)
    inside = torch.ones(len(X), dtype=torch.bool)
    if input_range is not None:
        flat = X.reshape(len(X), -1)
        inside = ((flat >= input_range[0]) & (flat <= input_range[1])).all(1).cpu()
    out = {}
    if goal.labels is not None:
        for c in goal.labels.unique().tolist():
            sel = (y == c) if y is not None else torch.ones(len(X), dtype=torch.bool)
            hit = (P[:, c] >= goal.min_prob) & inside
            out[c] = (int((hit & sel.cpu()).sum()), int(sel.sum()))
    else:
        ok = ((P[None] - goal.dist[:, None].to(P)).abs().amax(2) <= goal.atol).any(0) & inside
        out[-1] = (int(ok.sum()), len(X))
    return out


def format_diagnosis(diag: List[SampleDiagnosis], min_prob: float) -> List[str]:
    """One line per target class (or one for distribution targets) summarizing ``diag``."""
    groups: Dict[Optional[int], List[SampleDiagnosis]] = {}
    for d in diag:
        groups.setdefault(d.target, []).append(d)
    lines = []
    for t, ds in sorted(groups.items(), key=lambda kv: (kv[0] is None, kv[0] if kv[0] is not None else 0)):
        what = f"class {t}" if t is not None else "distribution target"
        best = max(d.reached for d in ds)
        gmin, gmax = min(d.grad_norm for d in ds), max(d.grad_norm for d in ds)
        counts: Dict[Tuple[str, str], List[float]] = {}
        for d in ds:
            for name, typ, fr in d.saturated:
                counts.setdefault((name, typ), []).append(fr)
        sat = sorted(((k, sum(v) / len(ds)) for k, v in counts.items()), key=lambda kv: -kv[1])[:3]
        sat_s = ", ".join(f"{name or 'model'} ({typ}, {100 * fr:.0f}% of units)" for (name, typ), fr in sat) \
            if sat else "none"
        if ds[0].out_of_reach:
            reach = (f"provably out of reach: the output activation caps its probability at {ds[0].bound:.4g} "
                     f"< min_prob={min_prob}")
        elif ds[0].bound is not None and ds[0].bound < 0.9995:  # a bound that says something
            reach = (f"not proven out of reach (the solvers did not find it; interval bounds of the logits "
                     f"allow p up to {ds[0].bound:.4g})")
        else:
            reach = "not proven out of reach (the solvers did not find it)"
        line = (f"{what}: {len(ds)} sample(s); best probability reached {best:.3g}; input-gradient norm "
                f"{gmin:.2g} to {gmax:.2g}; saturated layers: {sat_s}; {reach}")
        if ds[0].reference is not None:
            k, m = ds[0].reference
            line += (f"; {k} of {m} reference inputs of class {t} reach the target" if ds[0].reference_labelled
                     else f"; {k} of {m} reference inputs reach the target")
            if k:
                line += " (pass some as `inputs=` to start from them)"
        lines.append(line)
    return lines
