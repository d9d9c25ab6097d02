"""Solving to the goal on the model: the solver settings, the phased Levenberg-Marquardt, the
first-order escalation of stalled samples, the prior's shaping phase and verification by the
caller's model. One copy, used by every method."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from ..solvers.lm import LMResult, levenberg_marquardt
from .goal import Goal, goal_residual
from .model import ModelAdapter
from .reachability import tail_range

__all__ = ["SolverSettings", "make_generator", "random_starts", "verify", "phased_lm", "escalate",
           "solve_to_goal", "shaped_starts", "step_scale"]


@dataclass(frozen=True)
class SolverSettings:
    """How the methods solve: pass one as ``solver=`` to any method's constructor.

    Args:
        escalation (bool): samples that Levenberg-Marquardt leaves short of the goal get up to
            ``5 * max_iter`` steps of projected Adam with surrogate gradients
            (:func:`escalate`). False: the Levenberg-Marquardt path alone. Default: True.
        jacobian_averaging (float): weight in ``[0, 1)`` of the past in the Jacobian of the
            Levenberg-Marquardt steps (``averaging`` of
            :func:`~captum_invert.solvers.levenberg_marquardt`); 0 is the pointwise Jacobian.
            Default: 0.5.
        lp (bool): GeneralizedInversion plans a piecewise-linear chain as one ``analytic (LP)``
            block, so that every call goes through linear programming (certified regions,
            seconds per sample); False keeps it opaque (Levenberg-Marquardt, milliseconds;
            regions when asked for with ``return_regions=True`` or ``region()``). Default: False.
    """

    escalation: bool = True
    jacobian_averaging: float = 0.5
    lp: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.escalation, bool):
            raise ValueError(f"SolverSettings: `escalation` must be a bool, got {self.escalation!r}")
        a = self.jacobian_averaging
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0.0 <= a < 1.0:
            raise ValueError(f"SolverSettings: `jacobian_averaging` must be a float in [0, 1), got {a!r}")
        if not isinstance(self.lp, bool):
            raise ValueError(f"SolverSettings: `lp` must be a bool, got {self.lp!r}")


def make_generator(seed) -> torch.Generator:
    """A CPU generator from an int seed, a Generator (used as is) or None (fresh entropy)."""
    if isinstance(seed, torch.Generator):
        return seed
    g = torch.Generator()
    if seed is None:
        g.seed()
    elif isinstance(seed, int) and not isinstance(seed, bool):
        g.manual_seed(seed)
    else:
        raise ValueError(f"`seed` must be an int, a torch.Generator or None, got {seed!r}")
    return g


def random_starts(n: int, shape: Tuple[int, ...], input_range, gen: torch.Generator,
                  init_std: float = 1.0, dtype=torch.float32, device="cpu") -> Tensor:
    """Random initial inputs: uniform in ``input_range`` when given, else ``N(0, init_std^2)``.

    Drawn on the CPU from ``gen`` (reproducible on every device), then moved.
    """
    if input_range is not None:
        lo, hi = input_range
        x = torch.rand((n, *shape), generator=gen, dtype=torch.float64) * (hi - lo) + lo
    else:
        x = torch.randn((n, *shape), generator=gen, dtype=torch.float64) * init_std
    return x.to(dtype=dtype, device=device)


def verify(adapter: ModelAdapter, x: Tensor, goal: Goal, kind: str, input_range=None
           ) -> Tuple[Tensor, Tensor, Tensor]:
    """Run the caller's model (its dtype and device) on ``x``.

    Returns:
        (Tensor, Tensor, Tensor): ``ok`` bool ``(N,)`` (the goal met, finite, inside
        ``input_range``), ``delta`` ``(N,)`` and the probabilities ``(N, C)``, on the CPU.
    """
    with torch.no_grad():
        probs = adapter.log_probs(x, kind).exp().to(torch.float64)
    g = goal.to(probs.device)
    ok = g.ok(probs) & torch.isfinite(probs).all(1)
    flat = x.reshape(len(x), -1)
    ok &= torch.isfinite(flat).all(1).to(ok.device)
    if input_range is not None:
        ok &= ((flat >= input_range[0]) & (flat <= input_range[1])).all(1).to(ok.device)
    return ok.cpu(), g.delta(probs).cpu(), probs.cpu()


def phased_lm(res, done, reach, x0: Tensor, max_iter: int, bounds, averaging: float = 0.0) -> LMResult:
    """:func:`~captum_invert.solvers.levenberg_marquardt` on ``res``; with ``reach = (res1,
    done1)`` (a cheaper residual that gets a distribution target's support its mass, see
    :class:`~captum_invert._core.goal.ReducedDistResidual`) first up to ``max_iter`` iterations
    on it, then the main solve from there (iterations add)."""
    kw = dict(max_iter=max_iter, bounds=bounds, has_aux=True, averaging=averaging)
    if reach is None:
        return levenberg_marquardt(res, x0, done_fn=done, **kw)
    first = levenberg_marquardt(reach[0], x0, done_fn=reach[1], **kw)
    ok = first.finite if first.finite is not None else torch.ones_like(first.done)
    x1 = torch.where(ok.reshape(-1, *[1] * (x0.dim() - 1)).to(x0.device), first.x, x0)
    sol = levenberg_marquardt(res, x1, done_fn=done, **kw)
    sol.n_iter = sol.n_iter + first.n_iter
    return sol


def step_scale(x: Tensor, bounds) -> Tensor:
    """``(B,)`` a natural length per sample: the mean width of a bounded box, else twice the
    root-mean-square of the point (an input's typical spread), at least 1e-3."""
    B = len(x)
    flat = x.reshape(B, -1)
    rms = (2 * flat.pow(2).mean(1).sqrt()).clamp_min(1e-3)
    if bounds is None:
        return rms
    lo, hi = (torch.as_tensor(b, dtype=x.dtype, device=x.device).expand(x.shape[1:]).reshape(-1) for b in bounds)
    w = hi - lo
    if bool(torch.isfinite(w).all()):
        return w.mean().expand(B).clone()
    return rms


def escalate(adapter: ModelAdapter, settings: SolverSettings, stats: Dict, res, done, loose, sol: LMResult,
             bounds, max_iter: int) -> LMResult:
    """The escalation of samples the Levenberg-Marquardt left short of the goal (not for
    non-finite ones, nor for those within the goal's own tolerance, ``loose``): up to
    ``5 * max_iter`` steps of :func:`~captum_invert.solvers.projected_adam` on the same residual
    from where they stalled (a sample whose residual has not dropped by 1% in
    ``max(10, max_iter // 2)`` steps stops early), with
    :func:`~captum_invert.solvers.surrogate_gradients` through the model's activations. Values,
    and so ``done`` and every verification, stay the model's own.

    Returns ``sol`` with those samples' points, ``done`` and ``n_iter`` updated. ``stats`` gets
    ``escalated`` (samples), ``escalated_converged`` and ``first_order_steps``."""
    from ..solvers.first_order import projected_adam, surrogate_gradients

    stalled = (~sol.done & sol.finite).nonzero().squeeze(1)
    if stalled.numel() == 0 or not settings.escalation:
        return sol
    if loose is not None:  # short of the solver's margin but within the goal's tolerance: kept
        with torch.no_grad():
            r_s, aux_s = res(sol.x[stalled], stalled)
            stalled = stalled[~loose(sol.x[stalled], r_s, stalled, aux_s).to(stalled.device)]
        if stalled.numel() == 0:
            return sol
    xs = sol.x[stalled].detach()
    lr = 0.05 * step_scale(xs, bounds)
    with surrogate_gradients(adapter.traceable):
        esc = projected_adam(lambda v, idx: res(v, stalled[idx]), xs, 5 * max_iter, lr,
                             lambda v, r, idx, aux: done(v, r, stalled[idx], aux), bounds,
                             patience=max(10, max_iter // 2))
    x = sol.x.clone()
    x[stalled] = esc.x.to(x)
    d = sol.done.clone()
    d[stalled] = esc.done
    n_iter = sol.n_iter.clone()
    n_iter[stalled] += esc.n_iter
    zero = sol.zero_grad.clone() if sol.zero_grad is not None else torch.zeros_like(d)
    zero[stalled] = zero[stalled] & ~esc.done
    stats["escalated"] = stats.get("escalated", 0) + int(stalled.numel())
    stats["escalated_converged"] = stats.get("escalated_converged", 0) + int(esc.done.sum())
    stats["first_order_steps"] = stats.get("first_order_steps", 0) + int(esc.n_iter.sum())
    rn = sol.residual_norm.clone()
    rn[stalled] = esc.residual_norm.to(rn)
    return LMResult(x, d, n_iter, rn, sol.finite, zero)


def solve_to_goal(adapter: ModelAdapter, settings: SolverSettings, stats: Dict, x0: Tensor, goal: Goal,
                  kind: str, max_iter: int, input_range, residual: str = "log_prob", stop: float = 0.5,
                  tail=None) -> Tuple[LMResult, Tensor, Tensor, Tensor]:
    """Levenberg-Marquardt from ``x0`` towards ``goal`` on the caller's model, then the
    escalation of stalled samples, then verification.

    Residuals (``residual``):

    - ``'log_prob'`` (default): the goal's residuals on log-probabilities
      (:func:`~captum_invert._core.goal.goal_residual`): for a class target one residual on the
      class's log-odds (one vector-Jacobian product per iteration; a sample stops once ``p_t``
      has covered the fraction ``stop`` of the way from ``min_prob`` to the aim), for a
      distribution ``log p(x) - log p*`` or fewer reduced residuals.
    - ``'prob'``: ``p(x) - p*`` with ``p*`` the aimed-at distribution (C residuals; bounded,
      but its gradient vanishes where the softmax saturates).

    With ``tail`` (see :func:`~captum_invert._core.reachability.output_tail`: the model ends in
    saturating invertible activations, e.g. a SELU on the logits) the ``'log_prob'`` residuals
    are measured before that tail: the logits the goal needs are mapped back through the tail's
    exact inverse and compared with the pre-activations, which a forward hook reads. In the
    exponential tail of SELU the log-probability is nearly flat and Newton steps crawl; the
    pre-activation residual is linear there.

    Returns:
        (LMResult, Tensor, Tensor, Tensor): the solver's result; a bool ``(N,)`` mask of samples
        that reached the goal (stopped by the solver or verified by the model); and the model's
        verification of the solution, ``ok`` ``(N,)`` and ``delta`` ``(N,)``.
    """
    dtype, device = adapter.solver_dtype, adapter.device
    gl = goal.to(device)

    def lp_of(xx):
        return adapter.log_probs(xx, kind, dtype)

    use_tail = tail is not None and residual == "log_prob"
    captured = {}
    handle = None
    loose = None
    if use_tail:
        pre, elems = tail
        handle = pre.register_forward_hook(lambda m, i, o: captured.__setitem__("a", o))
        zero = torch.zeros(gl.n_classes, dtype=dtype, device=device)
        lo, hi = tail_range(tail, gl.n_classes, dtype, device)  # shrunk a little at bounded ends
        span = torch.where(torch.isfinite(hi - lo), hi - lo, torch.ones_like(lo))
        lo_m, hi_m = lo + 1e-3 * span, hi - 1e-3 * span

        def tail_fwd(a):
            for m, e in elems:
                a = e.forward(m, a)
            return a

        def tail_inv(z):
            for m, e in reversed(elems):
                z = e.inverse(m, z)
            return z

        def logits_of(xx):
            adapter(xx)
            a = captured.pop("a").to(dtype)
            return a, tail_fwd(a)
    reach = None
    if residual == "prob":
        P = gl.aim(dtype)

        def res(xx, idx):
            p = lp_of(xx).exp()
            return p - P[idx], p

        def done(xx, rr, idx, p):
            return goal.subset(idx.cpu()).to(device).ok(p)
    else:
        gr = goal_residual(gl, dtype, stop)
        done, loose = gr.done, gr.loose
        if not use_tail:
            def res(xx, idx):
                return gr(lp_of(xx), idx)
            if gr.reach is not None:
                reach = (lambda xx, idx: gr.reach[0](lp_of(xx), idx), gr.reach[1])
        elif gl.labels is not None:
            safe = tail_fwd(zero)[None]  # in the tail's range: the inverse is finite there

            def res(xx, idx):
                a, z = logits_of(xx)
                t = gl.labels[idx][:, None]
                others = torch.logsumexp(z.scatter(1, t, -math.inf), 1, keepdim=True)
                # only the target column is inverted: a saturated other logit (ELU's -1) has
                # an infinite inverse, and its zero-weighted gradient would still be NaN
                z_need = safe.expand_as(z).scatter(
                    1, t, torch.minimum(torch.maximum(others + gr.log_odds, lo_m[t]), hi_m[t]))
                r = (tail_inv(z_need).gather(1, t) - a.gather(1, t)).clamp_min(0.0)
                return r, torch.log_softmax(z, 1).gather(1, t)
        else:
            def res(xx, idx):
                a, z = logits_of(xx)
                c = (z - gr.logP[idx]).mean(1, keepdim=True)
                z_need = torch.minimum(torch.maximum(gr.logP[idx] + c, lo_m), hi_m)
                return tail_inv(z_need) - a, torch.log_softmax(z, 1)

    try:
        x0 = x0.to(dtype=dtype, device=device)
        sol = phased_lm(res, done, reach, x0, max_iter, input_range, settings.jacobian_averaging)
        sol = escalate(adapter, settings, stats, res, done, loose, sol, input_range, max_iter)
    finally:
        if handle is not None:
            handle.remove()
    ok, delta, _ = verify(adapter, sol.x, goal, kind, input_range)
    return sol, sol.done.cpu() | ok, ok, delta


def shaped_starts(adapter: ModelAdapter, stats: Dict, prior, goal: Goal, kind: str, input_range, gen,
                  inputs: Optional[Tensor] = None) -> Tensor:
    """The shaping phase of a ``prior`` (see :func:`~captum_invert.priors.shape_inputs`):
    ``(goal.n, *input_shape)`` images in the model's dtype and device, from the prior's random
    variables, or from ``inputs`` where the parameterization can represent them."""
    from ..priors import shape_inputs

    dtype, device = adapter.dtype_device
    # the shaping aims ten times closer to certainty than verification needs: the image lands
    # inside the class region, not on its boundary, and the polish barely moves it
    x, st = shape_inputs(adapter.module, lambda o: adapter.log_probs_of(o, kind), prior, adapter.input_shape,
                         input_range, gen, labels=goal.labels, dist=goal.dist,
                         aim=1.0 - (1.0 - goal.min_prob) / 10, x0=inputs, n=goal.n, dtype=dtype, device=device)
    stats["shaping_steps"] = stats.get("shaping_steps", 0) + st["steps"] * goal.n
    return x
