"""Batched Levenberg-Marquardt for per-sample residuals ``r(x) in R^m``.

Every step is solved in the m x m output space: ``(J J^T + lambda I) u = r``, ``dx = -J^T u``,
which equals the classical ``(J^T J + lambda I)^{-1} J^T r`` and costs ``O(m^2 n)`` instead of
``O(n^3)``. ``lambda`` is ``mu`` times the mean eigenvalue of ``J J^T`` (scale-free), with ``mu``
divided by 3 after an accepted step (down to a floor) and multiplied by 4 after a rejected one.
Bounds are kept by projection, with the bound-active coordinates removed from ``J`` when the step
pushes against them. Finished samples leave the batch and cost nothing more.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor
from torch.func import jvp, vjp, vmap

__all__ = ["LMResult", "levenberg_marquardt", "batched_jacobian"]


@dataclass
class LMResult:
    """Outcome of :func:`levenberg_marquardt`.

    Attributes:
        x (Tensor): ``(B, *shape)`` final points.
        done (Tensor): ``(B,)`` bool, which samples met ``done_fn`` (or the tolerance).
        n_iter (Tensor): ``(B,)`` int, iterations each sample used.
        residual_norm (Tensor): ``(B,)`` final ``||r||``.
    """

    x: Tensor
    done: Tensor
    n_iter: Tensor
    residual_norm: Tensor


def batched_jacobian(f: Callable[[Tensor], Tensor], x: Tensor, mode: str = "auto") -> Tuple[Tensor, Tensor]:
    """Per-sample Jacobians of ``f: (B, n) -> (B, m)``, assuming samples do not interact.

    Reverse mode costs m vector-Jacobian products, forward mode n Jacobian-vector products;
    ``'auto'`` picks the smaller.

    Returns:
        (Tensor, Tensor): ``r = f(x)`` of shape ``(B, m)`` and ``J`` of shape ``(B, m, n)``.
    """
    B, n = x.shape
    if mode not in ("auto", "reverse", "forward"):
        raise ValueError(f"`mode` must be 'auto', 'reverse' or 'forward', got {mode!r}")
    r, vjp_fn = vjp(f, x)
    m = r.shape[1]
    if mode == "reverse" or (mode == "auto" and m <= n):
        if m == 1:
            J = vjp_fn(torch.ones_like(r))[0][:, None, :]
        else:
            eye = torch.eye(m, dtype=r.dtype, device=r.device)[:, None, :].expand(m, B, m)
            J = vmap(vjp_fn)(eye)[0].permute(1, 0, 2)
        return r.detach(), J.detach()
    eye = torch.eye(n, dtype=x.dtype, device=x.device)[:, None, :].expand(n, B, n)
    J = vmap(lambda t: jvp(f, (x,), (t,))[1])(eye).permute(1, 2, 0)
    return r.detach(), J.detach()


def levenberg_marquardt(
    residual_fn: Callable[[Tensor, Tensor], Tensor],
    x0: Tensor,
    max_iter: int = 30,
    done_fn: Optional[Callable[[Tensor, Tensor, Tensor], Tensor]] = None,
    bounds: Optional[Tuple[float, float]] = None,
    tol: float = 1e-6,
    damping: float = 1e-3,
    damping_floor: float = 1e-9,
    jacobian: str = "auto",
) -> LMResult:
    """Solve ``r(x) = 0`` for every sample of a batch.

    Args:
        residual_fn (callable): ``(x, idx) -> r``; ``x`` is ``(b, *shape)``, ``idx`` the ``(b,)``
            indices of those samples in the batch, ``r`` is ``(b, m)``. Samples must not interact.
        x0 (Tensor): ``(B, *shape)`` starting points.
        max_iter (int): iterations per sample.
        done_fn (callable, optional): ``(x, r, idx) -> (b,) bool``, a sample is finished when
            True. Default: ``||r|| <= tol``.
        bounds (tuple, optional): ``(lo, hi)`` box for every coordinate.
        tol (float): residual tolerance of the default ``done_fn``.
        damping (float): initial ``mu``.
        damping_floor (float): smallest ``mu``.
        jacobian (str): ``'auto'``, ``'reverse'`` or ``'forward'``.

    Returns:
        LMResult
    """
    if max_iter < 0:
        raise ValueError(f"`max_iter` must be >= 0, got {max_iter}")
    shape = x0.shape[1:]
    B = x0.shape[0]
    x = x0.detach().reshape(B, -1).clone()
    if bounds is not None:
        x.clamp_(bounds[0], bounds[1])
    dev = x.device
    done_fn = done_fn or (lambda xx, rr, ii: rr.norm(dim=1) <= tol)
    all_idx = torch.arange(B, device=dev)
    with torch.no_grad():
        r = residual_fn(x.view(B, *shape), all_idx).detach()
        done = done_fn(x.view(B, *shape), r, all_idx).to(dev)
    rnorm = r.norm(dim=1)
    n_iter = torch.zeros(B, dtype=torch.long, device=dev)
    mu = torch.full((B,), float(damping), dtype=x.dtype, device=dev)
    for _ in range(max_iter):
        act = (~done).nonzero().squeeze(1)
        if act.numel() == 0:
            break
        xa = x[act]
        f = lambda z: residual_fn(z.view(len(act), *shape), act)  # noqa: E731
        ra, J = batched_jacobian(f, xa, jacobian)
        m = ra.shape[1]
        JJ = J @ J.transpose(1, 2)
        scale = JJ.diagonal(dim1=1, dim2=2).mean(1).clamp_min(torch.finfo(x.dtype).tiny)
        eye = torch.eye(m, dtype=x.dtype, device=dev)
        lam = (mu[act] * scale)[:, None, None]
        u = torch.linalg.solve(JJ + lam * eye, ra.unsqueeze(-1))
        dx = -(J.transpose(1, 2) @ u).squeeze(-1)
        if bounds is not None:
            blocked = ((xa <= bounds[0]) & (dx < 0)) | ((xa >= bounds[1]) & (dx > 0))
            if bool(blocked.any()):
                Jf = J * (~blocked)[:, None, :]
                JJ = Jf @ Jf.transpose(1, 2)
                u = torch.linalg.solve(JJ + lam * eye, ra.unsqueeze(-1))
                dx = -(Jf.transpose(1, 2) @ u).squeeze(-1)
        xt = xa + dx
        if bounds is not None:
            xt = xt.clamp(bounds[0], bounds[1])
        with torch.no_grad():
            rt = residual_fn(xt.view(len(act), *shape), act).detach()
        rtn = rt.norm(dim=1)
        good = torch.isfinite(rtn) & (rtn < ra.norm(dim=1))
        n_iter[act] += 1
        mu[act] = torch.where(good, (mu[act] / 3).clamp_min(damping_floor), mu[act] * 4)
        acc = act[good]
        if acc.numel():
            x[acc] = xt[good]
            r[acc] = rt[good]
            rnorm[acc] = rtn[good]
            with torch.no_grad():
                done[acc] = done_fn(xt[good].view(len(acc), *shape), rt[good], acc).to(dev)
    return LMResult(x.view(B, *shape), done, n_iter, rnorm)
