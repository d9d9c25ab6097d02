"""Normalized classifier heads: what a last Linear that reads a LayerNorm's output can produce.

A LayerNorm's output is ``gamma * n + beta`` with ``n`` of zero mean and ``||n|| <= sqrt(d)``
(``||n||^2 = d var / (var + eps)``); an RMSNorm's drops the zero mean. Averaging over tokens or
positions stays inside that convex set. So the logits ``z = W h + b`` of a ViT, Swin, MLP-Mixer or
ConvNeXt head lie in the image of a ball, whatever the input, and some targets are out of reach
of every input. Over the ball both questions below are convex, and a Frank-Wolfe gap turns an
approximate optimum into a sound bound:

- a class: an upper bound on ``max log p_t`` (concave in ``z``);
- a distribution ``p*``: a lower bound on ``min sum_j p*_j log(p*_j / p_j)`` over the classes with
  ``p*_j > atol`` (convex in ``z``). Every distribution within ``atol`` of ``p*`` (max-abs) has at
  most ``sum_j p*_j log(p*_j / (p*_j - atol))`` there, so a larger bound rules the target out.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

__all__ = ["NormHead", "find_norm_head", "class_log_prob_bound", "distribution_gap_bound"]

# modules allowed between the norm and the head's Linear (and after it): they keep the feature
# inside the convex set (identity, dropout in eval mode, flattening, averaging)
_PASS = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Flatten, nn.AdaptiveAvgPool1d,
         nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
_PASS_NAMES = ("FastAdaptiveAvgPool",)  # timm's mean over the spatial dimensions
_AFTER = (nn.Identity, nn.Dropout, nn.Flatten, nn.Softmax, nn.LogSoftmax)


@dataclass
class NormHead:
    """A proven normalized head: logits ``z = A n + c`` with ``n`` in the ball of radius
    ``radius`` (zero-mean when ``zero_mean``).

    Attributes:
        norm_name, head_name (str): the modules' names in the model.
        A (Tensor): ``(C, d)`` float64, ``W diag(gamma)``.
        c (Tensor): ``(C,)`` float64, ``W beta + b``.
        zero_mean (bool): LayerNorm (True) or RMSNorm (False).
        radius (float): ``sqrt(d)``.
    """

    norm_name: str
    head_name: str
    norm_type: str
    A: Tensor
    c: Tensor
    zero_mean: bool
    radius: float

    def describe(self) -> str:
        return (f"the model's head normalizes its {self.A.shape[1]} features ({self.norm_type} "
                f"`{self.norm_name}`) before its last Linear (`{self.head_name}`), which bounds the logits")

    def project(self, n: Tensor) -> Tensor:
        n = self._tangent(n)
        return n * (self.radius / n.norm(dim=-1, keepdim=True).clamp_min(self.radius))

    def _tangent(self, g: Tensor) -> Tensor:
        return g - g.mean(-1, keepdim=True) if self.zero_mean else g

    def vertex(self, g: Tensor) -> Tensor:
        """``argmax_n g . n`` over the set, ``(k, d)``."""
        g = self._tangent(g)
        return self.radius * g / g.norm(dim=-1, keepdim=True).clamp_min(1e-300)

    def support(self, g: Tensor) -> Tensor:
        """``max_n g . n`` over the set, ``(k,)`` for ``g`` ``(k, d)``."""
        return self.radius * self._tangent(g).norm(dim=-1)


def _norm_affine(norm: nn.Module, d: int):
    w = getattr(norm, "weight", None)
    b = getattr(norm, "bias", None)
    g = torch.ones(d, dtype=torch.float64) if w is None else w.detach().double().cpu().reshape(-1)
    be = torch.zeros(d, dtype=torch.float64) if b is None else b.detach().double().cpu().reshape(-1)
    return g, be


def find_norm_head(model: nn.Module, trace, probe: Tensor,
                   log_probs: Callable[[Tensor], Tensor]) -> Optional[NormHead]:
    """The model's normalized head, or None.

    Proven in two ways: structurally (the last executed Linear is reached from a 1-D LayerNorm or
    RMSNorm through identity, dropout, flattening and average pooling modules only, and nothing but
    those, Softmax or LogSoftmax follows it), and on ``probe`` inputs (the model's log-probabilities
    are the Linear's, and every feature the Linear reads lies in the set, so functional code between
    them, e.g. token selection or a mean, kept it there).

    Args:
        model (nn.Module): the model, in eval mode.
        trace (LeafTrace): its leaf calls (see :func:`~captum_invert.blocks.plan.trace_leaf_modules`).
        probe (Tensor): ``(B, *input_shape)`` inputs of the model's dtype and device.
        log_probs (callable): model output -> log-probabilities ``(B, C)``.

    Returns:
        NormHead or None
    """
    if trace is None or not trace.calls:
        return None
    calls = list(trace.calls)
    while calls and isinstance(calls[-1].module, _AFTER):
        calls.pop()
    if len(calls) < 2 or not isinstance(calls[-1].module, nn.Linear):
        return None
    head_call = calls.pop()
    head = head_call.module
    if sum(c.module is head for c in trace.calls) != 1:
        return None
    while calls and (isinstance(calls[-1].module, _PASS) or type(calls[-1].module).__name__ in _PASS_NAMES):
        calls.pop()
    if not calls:
        return None
    norm_call = calls[-1]
    norm = norm_call.module
    rms = getattr(nn, "RMSNorm", None)
    is_ln = isinstance(norm, nn.LayerNorm)
    is_rms = rms is not None and isinstance(norm, rms)
    shape = tuple(getattr(norm, "normalized_shape", ()))
    d = head.in_features
    if not (is_ln or is_rms) or shape != (d,):
        return None
    gamma, beta = _norm_affine(norm, d)
    if bool((gamma.abs() <= 1e-12 * gamma.abs().max().clamp_min(1e-300)).any()):
        return None
    seen = {}
    handle = head.register_forward_hook(lambda m, i, o: seen.update(h=i[0], z=o))
    try:
        with torch.no_grad():
            out = model(probe)
    except Exception:  # noqa: BLE001
        return None
    finally:
        handle.remove()
    h, z = seen.get("h"), seen.get("z")
    if h is None or h.dim() != 2 or z.shape != out.shape:
        return None
    h, z = h.double().cpu(), z.double().cpu()
    lp = log_probs(out).double().cpu()
    if not bool(torch.allclose(torch.log_softmax(z, 1), lp, rtol=1e-3, atol=1e-3)):
        return None
    n = (h - beta) / gamma
    if is_ln and bool((n.mean(1).abs() > 1e-3).any()):
        return None
    if bool((n.pow(2).sum(1) > d * (1 + 1e-3)).any()):
        return None
    W = head.weight.detach().double().cpu()
    b = head.bias.detach().double().cpu() if head.bias is not None else torch.zeros(W.shape[0], dtype=torch.float64)
    return NormHead(norm_call.name, head_call.name, type(norm).__name__, W * gamma, W @ beta + b, is_ln,
                    math.sqrt(d))


def _ascend(nh: NormHead, f: Callable[..., Tensor], k: int, stop, steps: int, fw_steps: int = 300) -> Tensor:
    """Upper bounds ``(k,)`` on ``max f(A n + c)`` over the set, for ``f`` concave in ``z`` with
    ``k`` rows: projected Adam, then the Frank-Wolfe gap at the best point. A row stops once its
    value reaches ``stop`` (a float or ``(k,)``: no bound below it can follow); its bound is then
    ``inf``."""
    d = nh.A.shape[1]
    n = torch.zeros(k, d, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([n], lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=1e-3)
    best = torch.full((k,), -math.inf, dtype=torch.float64)
    best_n = torch.zeros(k, d, dtype=torch.float64)
    live = torch.ones(k, dtype=torch.bool)
    for _ in range(steps):
        v = f(n @ nh.A.T + nh.c)
        better = v.detach() > best
        best = torch.where(better, v.detach(), best)
        best_n[better] = n.detach()[better]
        if stop is not None:
            live &= best < stop
            if not bool(live.any()):
                break
        opt.zero_grad()
        (-v.sum()).backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            n.copy_(nh.project(n))
    if not bool(live.any()):  # every row reached ``stop``: nothing to bound
        return torch.full((k,), math.inf, dtype=torch.float64)
    # Frank-Wolfe with a line search: on a ball (a strongly convex set) its gap closes fast
    gam = torch.logspace(-4, 0, 24, dtype=torch.float64)
    m = best_n
    for _ in range(fw_steps):
        v, g = _value_grad(nh, f, m)
        s_ = nh.vertex(g)
        gap = (g * (s_ - m)).sum(1)
        if bool((gap <= 1e-9 * (1 + v.abs())).all()):
            break
        cand = m[:, None] + gam[None, :, None] * (s_ - m)[:, None]  # (k, G, d)
        with torch.no_grad():
            vals = f((cand @ nh.A.T + nh.c).reshape(-1, nh.A.shape[0]), rep=len(gam)).view(len(m), -1)
        j = vals.argmax(1)
        up = vals.gather(1, j[:, None]).squeeze(1) > v
        m = torch.where(up[:, None], cand[torch.arange(len(m)), j], m)
    v, g = _value_grad(nh, f, m)
    bound = v + nh.support(g) - (g * m).sum(1)
    return torch.where(live, bound, torch.full_like(bound, math.inf))


def _value_grad(nh: NormHead, f, m: Tensor):
    m = m.detach().requires_grad_(True)
    v = f(m @ nh.A.T + nh.c)
    g, = torch.autograd.grad(v.sum(), m)
    return v.detach(), g


def class_log_prob_bound(nh: NormHead, classes: Sequence[int], log_min_prob: float,
                         steps: int = 500) -> Tensor:
    """``(k,)`` upper bounds on ``max log p_t`` over every input, one per class in ``classes``
    (``inf`` where a point reaching ``log_min_prob`` was found: not ruled out)."""
    t = torch.as_tensor(list(classes), dtype=torch.long)
    def f(z, rep=1):
        return z.gather(1, t.repeat_interleave(rep)[:, None]).squeeze(1) - torch.logsumexp(z, 1)

    return _ascend(nh, f, len(t),
                   log_min_prob, steps)


def distribution_gap_bound(nh: NormHead, dist: Tensor, atol: float, steps: int = 500):
    """Lower bounds on the gap ``D(p) = sum_j p*_j log(p*_j / p_j)`` over the classes with
    ``p*_j > atol``, and the most ``D`` that a distribution within ``atol`` of ``p*`` can have.

    Args:
        nh (NormHead): the head.
        dist (Tensor): ``(k, C)`` target distributions.
        atol (float): the max-abs tolerance.

    Returns:
        (Tensor, Tensor): ``lower`` ``(k,)`` (``-inf`` where a point within ``kappa`` was found)
        and ``kappa`` ``(k,)``; ``lower > kappa`` rules the target out.
    """
    P = dist.double().cpu()
    w = torch.where(P > atol, P, torch.zeros_like(P))
    kappa = (w * (P.clamp_min(1e-300).log() - (P - atol).clamp_min(1e-300).log())).sum(1)
    ent = (w * P.clamp_min(1e-300).log()).sum(1)
    def f(z, rep=1):
        return (w.repeat_interleave(rep, 0) * torch.log_softmax(z, 1)).sum(1) - ent.repeat_interleave(rep)

    ub = _ascend(nh, f, len(P), -kappa, steps)
    return -ub, kappa
