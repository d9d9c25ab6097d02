"""What the samples must reach: the :class:`Goal`, target parsing and argument checks, and the
goal as residuals on log-probabilities (small objects that the solvers call)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = ["Goal", "TargetType", "parse_target", "goal_residual", "ClassResidual", "DistResidual",
           "ReducedDistResidual", "check_prob", "check_pos", "check_inputs", "check_solver_args",
           "check_analytic_args", "check_range"]

TargetType = Union[int, Sequence[int], Tensor]


@dataclass
class Goal:
    """What each sample must reach.

    Exactly one of ``labels`` (``(N,)`` int64: the class must get probability >= ``min_prob``)
    and ``dist`` (``(N, C)``: max-abs difference of the probabilities <= ``atol``) is set.
    """

    labels: Optional[Tensor]
    dist: Optional[Tensor]
    n_classes: int
    min_prob: float = 0.9
    atol: float = 0.02

    @property
    def n(self) -> int:
        return len(self.labels) if self.labels is not None else len(self.dist)

    def subset(self, idx: Tensor) -> "Goal":
        return Goal(None if self.labels is None else self.labels[idx.to(self.labels.device)],
                    None if self.dist is None else self.dist[idx.to(self.dist.device)],
                    self.n_classes, self.min_prob, self.atol)

    def to(self, device) -> "Goal":
        return Goal(None if self.labels is None else self.labels.to(device),
                    None if self.dist is None else self.dist.to(device),
                    self.n_classes, self.min_prob, self.atol)

    def aim(self, dtype=torch.float64) -> Tensor:
        """The distribution an analytic method aims at, ``(N, C)``: for a class, probability
        ``(1 + min_prob) / 2`` on it and the rest spread evenly (a margin above ``min_prob``)."""
        if self.dist is not None:
            return self.dist.to(dtype)
        dev = self.labels.device
        p = (1.0 + self.min_prob) / 2.0
        out = torch.full((self.n, self.n_classes), (1.0 - p) / max(self.n_classes - 1, 1),
                         dtype=dtype, device=dev)
        out[torch.arange(self.n, device=dev), self.labels] = p
        return out

    def delta(self, probs: Tensor) -> Tensor:
        """Per-sample max-abs gap between ``probs`` ``(N, C)`` and the aimed-at distribution (the
        one-hot of the class for a class target, i.e. ``1 - p_target``)."""
        if self.labels is not None:
            lab = self.labels.to(probs.device)
            return 1.0 - probs.gather(1, lab[:, None]).squeeze(1)
        return (probs - self.dist.to(probs)).abs().amax(1)

    def ok(self, probs: Tensor) -> Tensor:
        """Bool ``(N,)``: which samples meet the goal."""
        d = self.delta(probs)
        return d <= (1.0 - self.min_prob) if self.labels is not None else d <= self.atol


def check_prob(name, v, lo=0.0, hi=1.0):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (lo < v < hi):
        raise ValueError(f"`{name}` must be a float in ({lo}, {hi}), got {v!r}")


def check_pos(name, v, allow_zero=False, integer=False):
    ok_type = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok_type or not (v >= 0 if allow_zero else v > 0) or (
        not integer and not math.isfinite(v)
    ):
        kind = "an int" if integer else "a finite number"
        raise ValueError(f"`{name}` must be {kind} {'>= 0' if allow_zero else '> 0'}, got {v!r}")



def check_inputs(inputs, input_shape) -> Optional[int]:
    """``None`` or the number of rows of ``inputs`` after checking its shape."""
    if inputs is None:
        return None
    if not isinstance(inputs, Tensor) or tuple(inputs.shape[1:]) != input_shape:
        raise ValueError(
            f"`inputs` must be a tensor of shape (N, {', '.join(map(str, input_shape))}), "
            f"got {tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__}"
        )
    return len(inputs)

def check_solver_args(max_iter, max_retries, init_std) -> None:
    check_pos("max_iter", max_iter, integer=True)
    check_pos("max_retries", max_retries, allow_zero=True, integer=True)
    check_pos("init_std", init_std)

def check_analytic_args(std, cond_num, margin) -> None:
    if isinstance(std, bool) or not isinstance(std, (int, float)) or not (std >= 0 and math.isfinite(std)):
        raise ValueError(f"`std` must be a finite float >= 0, got {std!r}")
    if isinstance(cond_num, bool) or not isinstance(cond_num, (int, float)) or not cond_num > 1:
        raise ValueError(f"`cond_num` must be a number > 1 (inf allowed), got {cond_num!r}")
    check_prob("margin", margin, 0.0, 0.5)

def check_range(input_range) -> Optional[Tuple[float, float]]:
    if input_range is None:
        return None
    try:
        lo, hi = (float(v) for v in input_range)
    except Exception:
        raise ValueError(f"`input_range` must be None or a pair (lo, hi), got {input_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"`input_range` must satisfy lo < hi (finite), got {input_range!r}")
    return lo, hi


def parse_target(target: TargetType, n_samples: Optional[int], n_classes: int,
                  min_prob: float, atol: float, n_inputs: Optional[int] = None) -> Goal:
    check_prob("min_prob", min_prob)
    check_prob("atol", atol)
    if n_samples is not None:
        check_pos("n_samples", n_samples, integer=True)
    if n_inputs is not None and n_samples is not None and n_samples != n_inputs:
        raise ValueError(f"`n_samples` ({n_samples}) differs from the number of `inputs` ({n_inputs})")
    n = n_inputs if n_inputs is not None else n_samples
    accepted = ("an int class index, a sequence of ints (one per sample), or a float tensor "
                "holding a class distribution of shape (C,) or (N, C)")
    if target is None:
        raise ValueError(f"`target` is required: {accepted}")
    if isinstance(target, bool):
        raise ValueError(f"`target` must be {accepted}, got a bool")
    if isinstance(target, Tensor) and target.is_floating_point():
        t = target.detach().to("cpu", torch.float64)
        if t.dim() == 1:
            t = t[None].expand(n or 1, -1)
        if t.dim() != 2 or t.shape[1] != n_classes:
            raise ValueError(f"`target` distribution must have shape ({n_classes},) or (N, {n_classes}), "
                             f"got {tuple(target.shape)}")
        if n is not None and t.shape[0] != n:
            raise ValueError(f"`target` has {t.shape[0]} rows but {n} samples were asked for")
        if not torch.isfinite(t).all() or (t < 0).any() or not torch.allclose(
            t.sum(1), torch.ones(len(t), dtype=t.dtype), atol=1e-4
        ):
            raise ValueError("`target` distribution must be finite, non-negative and sum to 1 per row")
        return Goal(None, t.clone(), n_classes, min_prob, atol)
    if isinstance(target, Tensor):
        if target.dim() > 1:
            raise ValueError(f"`target` class indices must be a 0-d or 1-d int tensor, got shape {tuple(target.shape)}")
        target = target.tolist()
    if isinstance(target, int):
        labels = [target] * (n or 1)
    elif isinstance(target, (list, tuple)):
        labels = list(target)
        if not labels or not all(isinstance(v, int) and not isinstance(v, bool) for v in labels):
            raise ValueError(f"`target` must be {accepted}, got {target!r}")
        if n is not None and len(labels) != n:
            raise ValueError(f"`target` has {len(labels)} entries but {n} samples were asked for")
    else:
        raise ValueError(f"`target` must be {accepted}, got {type(target).__name__}")
    bad = [v for v in labels if not 0 <= v < n_classes]
    if bad:
        raise ValueError(f"`target` class index {bad[0]} is out of range [0, {n_classes})")
    return Goal(torch.tensor(labels, dtype=torch.int64), None, n_classes, min_prob, atol)


class ClassResidual:
    """A class target as one residual on log-probabilities ``lp`` ``(b, C)``: the one-sided
    ``max(0, logit(aim) - log-odds_t)`` with ``aim = (1 + min_prob) / 2`` and ``log-odds_t =
    log p_t - logsumexp(log p_others)`` (Newton steps on ``log p_t`` crawl as ``p_t -> 1``; the
    log-odds stay linear in the logits there).

    Calling it with ``(lp, idx)`` (``idx`` the rows of the goal) returns ``(r, log p_t)``.
    :meth:`done` stops a sample once ``p_t`` covered the fraction ``stop`` of the way from
    ``min_prob`` to ``aim``; :meth:`loose` once it meets ``min_prob``."""

    n_residuals = 1
    weakest = 1.0
    reach = None

    def __init__(self, goal: Goal, stop: float) -> None:
        self.labels = goal.labels
        aim = (1.0 + goal.min_prob) / 2
        self.log_odds = math.log(aim) - math.log1p(-aim)
        self.log_stop = math.log(goal.min_prob + stop * (aim - goal.min_prob))
        self.log_min = math.log(goal.min_prob)

    def __call__(self, lp: Tensor, idx: Tensor):
        t = self.labels[idx][:, None]
        lp_t = lp.gather(1, t)
        odds = lp_t - torch.logsumexp(lp.scatter(1, t, -math.inf), 1, keepdim=True)
        return (self.log_odds - odds).clamp_min(0.0), lp_t

    def done(self, x, r, idx, lp_t) -> Tensor:
        return lp_t.squeeze(1) >= self.log_stop - 1e-12

    def loose(self, x, r, idx, lp_t) -> Tensor:
        return lp_t.squeeze(1) >= self.log_min


class DistResidual:
    """A distribution target as ``C`` residuals ``lp - log p*`` (zero entries of ``p*`` raised to
    ``atol / 2C``, renormalized; ``logP`` ``(N, C)``). :meth:`done` within ``atol / 2`` of the
    target on every class, :meth:`loose` within ``atol``."""

    weakest = 1.0
    reach = None

    def __init__(self, goal: Goal, dtype) -> None:
        self.dist, self.atol = goal.dist, goal.atol
        P = goal.dist.to(dtype).clamp_min(goal.atol / (2 * goal.n_classes))
        self.logP = (P / P.sum(1, keepdim=True)).log()
        self.n_residuals = goal.n_classes

    def __call__(self, lp: Tensor, idx: Tensor):
        return lp - self.logP[idx], lp

    def _gap(self, lp, idx):
        return (lp.exp() - self.dist[idx].to(lp)).abs().amax(1)

    def done(self, x, r, idx, lp) -> Tensor:
        return self._gap(lp, idx) <= self.atol / 2

    def loose(self, x, r, idx, lp) -> Tensor:
        return self._gap(lp, idx) <= self.atol


# the support's log-odds residual, scaled down: where the model cannot push its rest as low as
# aimed, the least-squares compromise then leaves the support's ratios almost exact
_GROUP_WEIGHT = 0.1


class ReducedDistResidual(DistResidual):
    """Residuals for a distribution target whose number does not grow with the classes (build
    it with :meth:`build`, which returns None when they would not be fewer than the ``C`` full
    ones).

    The classes whose target mass exceeds ``atol / 2`` form the support ``S`` (at most ``k`` per
    row); every other class is pooled into one rest group of target mass ``rho*``. Residuals:

    - ``k - 1`` ratios inside the support, ``(log p_j - log p_ref) - (log p*_j - log p*_ref)``
      with ``ref`` the support's largest class;
    - one on the support's log-odds against the rest, scaled by 0.1. When ``rho*`` is within the
      rest mass that the tolerance allows (``delta = atol (1 - rho*) / (2 max p*_S)``) it is
      one-sided: the rest only has to stay under ``rho* + delta / 2``, so a model that cannot
      push its rest lower (e.g. a normalized head) still gets the support's ratios exact;
    - when the target puts more than ``atol / 4`` on the rest, one one-sided guard residual that
      keeps the rest's largest class within ``atol / 2`` of its target.

    A step then costs ``k`` (or ``k + 1``) vector-Jacobian products instead of ``C``; ``done``
    and verification still read all ``C`` probabilities (the max-abs rule).

    ``reach`` is a first phase of one residual (one product per step): the norm of the ``k``
    gaps between each support class's log-ratio to the rest and its aim, until their
    target-weighted mean is within one nat. It lifts every support class from a start where they
    carry no mass, each in proportion to its gap."""

    weakest = _GROUP_WEIGHT

    @classmethod
    def build(cls, goal: Goal, dtype) -> Optional["ReducedDistResidual"]:
        P = goal.dist.to(dtype)
        keep = P > goal.atol / 2
        k = int(keep.sum(1).max())
        guard = bool((P.masked_fill(keep, 0.0).sum(1) > goal.atol / 4).any())
        if k == 0 or k + int(guard) >= goal.n_classes or bool(keep.all(1).any()):
            return None
        return cls(goal, dtype, keep, k, guard)

    def __init__(self, goal: Goal, dtype, keep: Tensor, k: int, guard: bool) -> None:
        super().__init__(goal, dtype)
        P = goal.dist.to(dtype)
        self.keep, self.guard = keep, guard
        rest_P = P.masked_fill(keep, 0.0).sum(1)
        self.S = S = P.topk(k, 1).indices  # (N, k): the support, largest first; padding masked out
        self.maskS = maskS = keep.gather(1, S)
        logPS = P.gather(1, S).clamp_min(1e-300).log()
        self.inner = (logPS[:, 1:] - logPS[:, :1]).masked_fill(~maskS[:, 1:], 0.0)
        delta = goal.atol * (1 - rest_P) / (2 * P.gather(1, S[:, :1]).squeeze(1))
        self.one_sided = rest_P < delta
        rho = torch.where(self.one_sided, rest_P + delta / 2, rest_P)  # the rest mass aimed at
        self.odds = (1 - rho).log() - rho.log()  # the support's log-odds against the rest
        self.cap = (P + goal.atol / 2).log()
        self.n_residuals = k + int(guard)
        self.ratio = (logPS - rho.log()[:, None]).masked_fill(~maskS, 0.0)  # each support class to the rest
        w = P.gather(1, S).masked_fill(~maskS, 0.0)
        self.w = w / w.sum(1, keepdim=True)
        self.reach = (self.reach_residual, self.reach_done)

    def _group(self, lp, idx):
        kp = self.keep[idx]
        return (torch.logsumexp(lp.masked_fill(~kp, -math.inf), 1)
                - torch.logsumexp(lp.masked_fill(kp, -math.inf), 1))

    def __call__(self, lp: Tensor, idx: Tensor):
        lS = lp.gather(1, self.S[idx])
        r_in = ((lS[:, 1:] - lS[:, :1]) - self.inner[idx]) * self.maskS[idx, 1:]
        gap = self.odds[idx] - self._group(lp, idx)
        r_g = _GROUP_WEIGHT * torch.where(self.one_sided[idx], gap.clamp_min(0.0), gap)[:, None]
        r = torch.cat([r_in, r_g], 1)
        if self.guard:
            over = (lp - self.cap[idx]).masked_fill(self.keep[idx], -math.inf).amax(1, keepdim=True).clamp_min(0.0)
            r = torch.cat([r, over], 1)
        return r, lp

    def _gaps(self, lp, idx):  # (N, k): each support class's log-ratio to the rest, short of its aim
        rest = torch.logsumexp(lp.masked_fill(self.keep[idx], -math.inf), 1, keepdim=True)
        return (self.ratio[idx] - (lp.gather(1, self.S[idx]) - rest)).masked_fill(~self.maskS[idx], 0.0)

    def reach_residual(self, lp, idx):
        """One residual (one product per step): the norm of the support's gaps."""
        return self._gaps(lp, idx).norm(dim=1, keepdim=True), lp

    def reach_done(self, x, r, idx, lp):
        """Within a nat on the target-weighted mean: the main phase finishes the work."""
        return (self.w[idx] * self._gaps(lp, idx)).sum(1) <= 1.0


def goal_residual(goal: Goal, dtype, stop: float = 0.5):
    """The goal as residuals on log-probabilities: a :class:`ClassResidual` for a class target,
    else a :class:`ReducedDistResidual` where it has fewer residuals than classes, else a
    :class:`DistResidual`. ``stop``: see :class:`ClassResidual`."""
    if goal.labels is not None:
        return ClassResidual(goal, stop)
    return ReducedDistResidual.build(goal, dtype) or DistResidual(goal, dtype)
