"""Solving to the goal on the model: the solver settings, the phased Levenberg-Marquardt, the
first-order escalation of stalled samples, the prior's shaping phase and verification by the
caller's model. One copy, used by every method."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from ..solvers.lm import LMResult, levenberg_marquardt
from .goal import Goal, goal_residual
from .model import ModelAdapter
from .reachability import tail_range

__all__ = ["SolverSettings", "make_generator", "random_starts", "varied_draws", "Restarts", "verify",
           "phased_lm", "escalate", "solve_to_goal", "shaped_starts", "step_scale", "DRAWS_PER_STEP"]

#: Draws that :class:`Restarts` ranks per sample and restart, per solver step the sample has
#: used so far (a step is a forward and a backward pass, about three forward passes; ranking a
#: draw is one): ranking costs about what the solves it follows cost. At least ``max_iter``
#: steps' worth, at most ``32 * max_iter`` draws.
DRAWS_PER_STEP = 3


@dataclass(frozen=True)
class SolverSettings:
    """How the methods solve: pass one as ``solver=`` to any method's constructor.

    Args:
        escalation (bool): samples that Levenberg-Marquardt leaves short of the goal get up to
            ``5 * max_iter`` steps of projected Adam with surrogate gradients
            (:func:`escalate`). False: the Levenberg-Marquardt path alone. Default: True.
        own_gradient (bool): samples that the escalation's surrogate gradients leave short get
            the same budget again with the model's own gradient, from the same points (the
            surrogate can point the wrong way on a deep LeakyReLU net); False: the surrogate
            alone (the releases before). Default: True.
        jacobian_averaging (float): weight in ``[0, 1)`` of the past in the Jacobian of the
            Levenberg-Marquardt steps (``averaging`` of
            :func:`~captum_invert.solvers.levenberg_marquardt`); 0 is the pointwise Jacobian.
            Default: 0.5.
        ranked_restarts (bool): each restart starts from the best of many ranked draws, some
            crossed with what earlier starts found (:class:`Restarts`); False: plain random
            draws like the first start's (the releases before). Default: True.
        lp (bool): GeneralizedInversion plans a piecewise-linear chain as one ``analytic (LP)``
            block, so that every call goes through linear programming (certified regions,
            seconds per sample); False keeps it opaque (Levenberg-Marquardt, milliseconds;
            regions when asked for with ``return_regions=True`` or ``region()``). Default: False.
    """

    escalation: bool = True
    jacobian_averaging: float = 0.5
    lp: bool = False
    ranked_restarts: bool = True
    own_gradient: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.escalation, bool):
            raise ValueError(f"SolverSettings: `escalation` must be a bool, got {self.escalation!r}")
        a = self.jacobian_averaging
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0.0 <= a < 1.0:
            raise ValueError(f"SolverSettings: `jacobian_averaging` must be a float in [0, 1), got {a!r}")
        if not isinstance(self.lp, bool):
            raise ValueError(f"SolverSettings: `lp` must be a bool, got {self.lp!r}")
        if not isinstance(self.ranked_restarts, bool):
            raise ValueError(f"SolverSettings: `ranked_restarts` must be a bool, got {self.ranked_restarts!r}")
        if not isinstance(self.own_gradient, bool):
            raise ValueError(f"SolverSettings: `own_gradient` must be a bool, got {self.own_gradient!r}")


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


def varied_draws(n: int, shape: Tuple[int, ...], input_range, gen: torch.Generator,
                 init_std: float = 1.0) -> Tensor:
    """``(n, *shape)`` float64 CPU draws that differ in their overall intensity and scale, not
    only in their pixels: independent uniform draws in a box all have the same mean and the
    same look (the law of large numbers), so restarts from them explore nothing new.

    Each draw is a noise field at a random resolution (the full one with probability 1/2, else
    the last two dimensions at ``1/2, 1/4, ...`` of their size, bilinearly upsampled; inputs of
    one dimension keep the full resolution), with a random intensity ``q ~ U(0, 1)``: either
    scaled by ``q`` or, with probability 1/2, kept only where a second field is below ``q`` (a
    random share of the input switched on). Inside ``input_range = (lo, hi)`` the draw is
    ``lo + (hi - lo) * v``, so 0 is the low end; without it the field is standard normal with
    standard deviation ``2 q init_std``.
    """
    dt = torch.float64
    bounded = input_range is not None
    spatial = len(shape) >= 2 and min(shape[-2:]) >= 4
    levels = []
    if spatial:
        h, w = shape[-2:]
        k = 1
        while min(h, w) >> k >= 1:
            levels.append((max(1, h >> k), max(1, w >> k)))
            k += 1
    full = torch.rand(n, generator=gen) < 0.5 if levels else torch.ones(n, dtype=torch.bool)
    pick = torch.randint(max(1, len(levels)), (n,), generator=gen)

    def field():
        f = torch.rand((n, *shape), generator=gen, dtype=dt) if bounded else \
            torch.randn((n, *shape), generator=gen, dtype=dt)
        for j, size in enumerate(levels):
            rows = (~full & (pick == j)).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            lead = (len(rows), int(torch.tensor(shape[:-2]).prod()) if len(shape) > 2 else 1)
            low = torch.rand((*lead, *size), generator=gen, dtype=dt) if bounded else \
                torch.randn((*lead, *size), generator=gen, dtype=dt)
            up = torch.nn.functional.interpolate(low, size=shape[-2:], mode="bilinear", align_corners=False)
            if not bounded:  # upsampling averages: back to unit spread
                up = up / up.flatten(1).std(1).clamp_min(1e-12).reshape(-1, 1, 1, 1)
            f[rows] = up.reshape(len(rows), *shape)
        return f

    v = field()
    one = (n,) + (1,) * len(shape)
    q = torch.rand(one, generator=gen, dtype=dt)
    masked = (torch.rand(one, generator=gen) < 0.5)
    if bounded:
        v = torch.where(masked, torch.where(field() < q, v, torch.zeros_like(v)), v * q)
        lo, hi = input_range
        return lo + (hi - lo) * v
    return v * (2 * init_std) * torch.where(masked, q.sqrt(), q)


class Restarts:
    """The starts of every attempt after the first, for the samples that failed: per sample,
    ``DRAWS_PER_STEP`` candidates per solver step it has used so far (at least
    ``DRAWS_PER_STEP * max_iter``, at most ``32 * max_iter``), ranked by the goal's score at the
    candidate (one forward pass each, no gradient), the best one kept. Half the candidates are fresh :func:`varied_draws`; the
    other half cross a fresh draw with what earlier attempts found, ``l * y + (1 - l) * draw``
    with ``l ~ U(0, 1)`` and ``y`` the sample's own best point so far or, with equal chance, a
    verified sample of the same target. The score is the target's log-odds (a class) or minus
    ``KL(p* || p)`` (a distribution); the best point so far is kept per sample
    (:meth:`best`), and each attempt's best probability (:attr:`trace`) goes into the failure
    report.

    Args:
        adapter (ModelAdapter): the caller's model.
        goal (Goal): the call's whole goal (``N`` samples).
        kind (str): how the model's output is read.
        shape (tuple): one input's shape.
        input_range, gen, init_std, max_iter: as in the methods' ``attribute``.
        ranked (bool): False: :meth:`starts` gives plain random draws (``SolverSettings(
            ranked_restarts=False)``); the best points are kept either way.
    """

    def __init__(self, adapter: ModelAdapter, goal: Goal, kind: str, shape, input_range, gen,
                 init_std: float = 1.0, max_iter: int = 30, ranked: bool = True) -> None:
        self.max_iter, self.ranked = max_iter, ranked
        self.n_draws = DRAWS_PER_STEP * max_iter
        self.work = torch.zeros(goal.n, dtype=torch.long)  # solver steps each sample has used so far
        self.adapter, self.goal, self.kind, self.shape = adapter, goal, kind, tuple(shape)
        self.input_range, self.gen, self.init_std = input_range, gen, init_std
        self.x_best: Optional[Tensor] = None
        self.s_best = torch.full((goal.n,), -math.inf, dtype=torch.float64)
        self.p_best = torch.zeros(goal.n, dtype=torch.float64)
        self.ok = torch.zeros(goal.n, dtype=torch.bool)
        self.trace = []  # per attempt: (samples tried, best p among those that failed)
        key = goal.labels.double()[:, None] if goal.labels is not None else goal.dist.double()
        self.group = torch.unique(key.cpu(), dim=0, return_inverse=True)[1]

    def _score(self, x: Tensor, idx: Tensor) -> Tuple[Tensor, Tensor]:
        """``(score, p)`` float64 ``(b,)`` on the CPU: the score and the target's probability
        (for a distribution, ``1 - delta``)."""
        with torch.no_grad():
            lp = self.adapter.log_probs(self.adapter.cast(x), self.kind).double().cpu()
        g = self.goal.subset(idx)
        if g.labels is not None:
            t = g.labels.cpu()[:, None]
            lt = lp.gather(1, t).squeeze(1)
            other = torch.logsumexp(lp.scatter(1, t, -math.inf), 1)
            s = lt - other
        else:
            P = g.dist.double().cpu()
            s = (P * (lp - P.clamp_min(1e-300).log())).sum(1)
        s = torch.nan_to_num(s, nan=-math.inf)
        return s, 1.0 - g.delta(lp.exp())

    def update(self, idx: Tensor, x: Tensor, ok: Tensor, steps: Optional[Tensor] = None) -> None:
        """Record an attempt: the samples ``idx`` ``(b,)`` ended at ``x`` ``(b, *shape)``, ``ok``
        ``(b,)`` of them verified, after ``steps`` ``(b,)`` solver steps each (default
        ``max_iter``)."""
        idx, ok = idx.cpu(), ok.cpu()
        self.work[idx] += steps.cpu().long() if steps is not None else self.max_iter
        if self.x_best is None:
            self.x_best = torch.zeros((self.goal.n, *self.shape), dtype=torch.float64)
        s = torch.full((len(idx),), math.inf, dtype=torch.float64)  # a verified point is the best
        p = torch.ones(len(idx), dtype=torch.float64)
        bad = (~ok).nonzero().squeeze(1)
        if bad.numel():  # only the failed ones are run again
            s[bad], p[bad] = self._score(x[bad.to(x.device)], idx[bad])
        better = s > self.s_best[idx]
        rows = idx[better]
        self.x_best[rows] = x[better.to(x.device)].detach().double().cpu()
        self.s_best[rows], self.p_best[rows] = s[better], p[better]
        self.ok[idx] |= ok
        self.trace.append((len(idx), float(self.p_best[idx[~ok]].max()) if bad.numel() else None))

    def best(self, idx: Tensor) -> Tensor:
        """The best points so far of the samples ``idx``, float64 on the CPU."""
        return self.x_best[idx.cpu()]

    def keep_best(self, x: Tensor, delta: Tensor, ok: Tensor) -> None:
        """Put each failed sample's best point so far into ``x`` ``(N, *shape)`` and its gap into
        ``delta`` ``(N,)`` (in place), so that a failure returns and diagnoses the best found."""
        failed = (~ok).nonzero().squeeze(1)
        if failed.numel() and self.x_best is not None:
            x[failed.to(x.device)] = self.best(failed).to(x)
            delta[failed] = 1.0 - self.p_best[failed]

    def starts(self, idx: Tensor) -> Tensor:
        """``(len(idx), *shape)`` starts for the samples ``idx``, in the model's dtype and device:
        plain random draws (:func:`random_starts`) before any attempt was recorded, or with
        ``ranked=False``; else the ranked ones."""
        idx = idx.cpu()
        if not self.ranked or self.x_best is None:
            return self.adapter.cast(random_starts(len(idx), self.shape, self.input_range, self.gen, self.init_std,
                                                   torch.float64))
        lo, hi = DRAWS_PER_STEP * self.max_iter, 32 * self.max_iter
        K = self.n_draws = int(min(max(DRAWS_PER_STEP * float(self.work[idx].double().median()), lo), hi))
        m, nd = len(idx), len(self.shape)
        numel = max(1, int(torch.tensor(self.shape).prod()))
        cap = max(1, (1 << 22) // numel)  # candidates per forward pass: about 32 MB of float64
        best_s = torch.full((m,), -math.inf, dtype=torch.float64)
        best_x = self.x_best[idx].clone()
        sibs = {int(g): (self.ok & (self.group == g)).nonzero().squeeze(1) for g in self.group[idx].unique()}
        for a in range(0, m * K, cap):
            slot = torch.arange(a, min(a + cap, m * K)) // K  # which of the m samples
            owner = idx[slot]
            n = len(slot)
            cand = varied_draws(n, self.shape, self.input_range, self.gen, self.init_std)
            partner = self.x_best[owner]
            for g, pool in sibs.items():  # half the partners: a verified sample of the same target
                rows = ((self.group[owner] == g) & (torch.rand(n, generator=self.gen) < 0.5)).nonzero().squeeze(1)
                if pool.numel() and rows.numel():
                    partner[rows] = self.x_best[pool[torch.randint(len(pool), (len(rows),), generator=self.gen)]]
            lam = torch.rand((n,) + (1,) * nd, generator=self.gen, dtype=torch.float64)
            cross = (torch.rand(n, generator=self.gen) < 0.5).reshape(-1, *[1] * nd)
            cand = torch.where(cross, lam * partner + (1 - lam) * cand, cand)
            s, _ = self._score(cand, owner)
            for j in slot.unique().tolist():
                here = (slot == j).nonzero().squeeze(1)
                k = here[s[here].argmax()]
                if s[k] > best_s[j]:
                    best_s[j], best_x[j] = s[k], cand[k]
        return self.adapter.cast(best_x)

    def report(self, max_iter: int, escalation: bool) -> str:
        """The stages tried, their budgets and the best probability the failed samples reached
        after each (one string for all of them)."""
        per = (f"each start Levenberg-Marquardt up to {max_iter} iterations"
               + (f" then projected Adam up to {5 * max_iter} steps" if escalation else ""))
        first = self.trace[0][1] if self.trace else None
        out = f"{per}; from random starts best p {first:.3g}" if first is not None else per
        if len(self.trace) > 1:
            last = self.trace[-1][1]
            how = (f"{self.n_draws} ranked draws per sample (crossed with the best point so far and verified "
                   "samples of the same target)" if self.ranked else "random starts")
            out += (f"; after {len(self.trace) - 1} restart(s) from {how} best p "
                    + (f"{last:.3g}" if last is not None else "-"))
        return out


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
    and so ``done`` and every verification, stay the model's own. Samples that the surrogate
    leaves short then get the same budget with the model's own gradient, from the same points;
    each keeps the better of the two.

    Returns ``sol`` with those samples' points, ``done`` and ``n_iter`` updated. ``stats`` gets
    ``escalated`` (samples), ``escalated_converged``, ``own_gradient`` (samples given the own
    gradient), ``own_gradient_converged`` and ``first_order_steps``."""
    from ..solvers.first_order import SURROGATE_ACTIVATIONS, projected_adam, surrogate_gradients

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

    def adam(rows):  # projected Adam on the samples stalled[rows], from where the LM left them
        return projected_adam(lambda v, idx: res(v, stalled[rows[idx]]), xs[rows], 5 * max_iter, lr[rows],
                              lambda v, r, idx, aux: done(v, r, stalled[rows[idx]], aux), bounds,
                              patience=max(10, max_iter // 2))

    every = torch.arange(len(stalled), device=stalled.device)
    with surrogate_gradients(adapter.traceable):
        esc = adam(every)
    # The surrogate is a guess at a direction where the model's gradient vanishes; where it is
    # wrong (a deep LeakyReLU net whose true gradient works: the surrogate's slope floor makes the
    # residual grow), the samples it left short get the model's own gradient, from the same points.
    short = every[~esc.done & ~esc.zero_grad]
    model = adapter.traceable
    if short.numel() and settings.own_gradient and isinstance(model, nn.Module) and any(
            isinstance(m, SURROGATE_ACTIVATIONS) for m in model.modules()):
        own = adam(short)
        better = own.done | (own.residual_norm < esc.residual_norm[short])
        take = short[better]
        esc.x[take], esc.done[take] = own.x[better].to(esc.x), own.done[better]
        esc.residual_norm[take] = own.residual_norm[better].to(esc.residual_norm)
        esc.n_iter[short] += own.n_iter
        stats["own_gradient"] = stats.get("own_gradient", 0) + int(short.numel())
        stats["own_gradient_converged"] = stats.get("own_gradient_converged", 0) + int(own.done.sum())
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
