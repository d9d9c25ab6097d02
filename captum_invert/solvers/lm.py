"""Batched Levenberg-Marquardt for per-sample residuals ``r(x) in R^m``.

Every step is solved in the m x m output space: ``(J J^T + lambda I) u = r``, ``dx = -J^T u``,
which equals the classical ``(J^T J + lambda I)^{-1} J^T r`` and costs ``O(m^2 n)`` instead of
``O(n^3)``. ``lambda`` is ``mu`` times the mean eigenvalue of ``J J^T`` (scale-free). A step is
accepted when the gain ratio ``rho`` (actual over predicted decrease of ``||r||^2``) is positive;
``mu`` follows Nielsen's rule: ``mu *= max(1/3, 1 - (2 rho - 1)^3)`` after an accepted step (never
below a floor), ``mu *= nu, nu *= 2`` after a rejected one.
Bounds are kept by projection, with the bound-active coordinates removed from ``J`` when the step
pushes against them. Finished samples leave the batch and cost nothing more.

With ``update='adjoint'`` the Jacobian is computed in full once, then carried from step to step by
the adjoint Broyden update (Schlenkrich, Griewank and Walther, 2010): at each trial point one
vector-Jacobian product along the residual's direction ``s = r / ||r||`` gives the exact row
``s^T J``, and ``J <- J + s (s^T J_exact - s^T J)``. A step then costs one forward and one backward
pass for any number of residuals; a rejected step recomputes the full Jacobian where it was
estimated.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor
from torch.func import jvp, vjp, vmap

__all__ = ["LMResult", "levenberg_marquardt", "levenberg_marquardt_cg", "batched_jacobian"]


@dataclass
class LMResult:
    """Outcome of :func:`levenberg_marquardt`.

    Attributes:
        x (Tensor): ``(B, *shape)`` final points.
        done (Tensor): ``(B,)`` bool, which samples met ``done_fn`` (or the tolerance).
        n_iter (Tensor): ``(B,)`` int, iterations each sample used.
        residual_norm (Tensor): ``(B,)`` final ``||r||``.
        finite (Tensor): ``(B,)`` bool, False where the residual or its Jacobian became NaN or
            infinite; such a sample stops (no step can be trusted).
        zero_grad (Tensor): ``(B,)`` bool, True where the Jacobian at the start is exactly zero
            while the residual is not (no step can move the sample); such a sample stops.
    """

    x: Tensor
    done: Tensor
    n_iter: Tensor
    residual_norm: Tensor
    finite: Optional[Tensor] = None
    zero_grad: Optional[Tensor] = None


def _autograd_vjp(f, x: Tensor, has_aux: bool = False):
    """``torch.func.vjp``'s interface on plain autograd."""
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = f(xg)
    r, aux = out if has_aux else (out, None)

    def back(cot):
        g = torch.autograd.grad(r, xg, cot, retain_graph=True, allow_unused=True)[0]
        return (torch.zeros_like(xg) if g is None else g,)

    return (r, back, aux) if has_aux else (r, back)


class _SafeVJP:
    """``torch.func.vjp``, or the same on plain autograd for a model that reads its tensors'
    data during the forward pass (e.g. onnx2torch's Slice and Reshape, which call ``.numpy()`` on
    shapes computed from the input), which torch.func's wrapped tensors do not allow. One
    instance per solve: after the first such failure it goes straight to autograd, so the
    failing forward pass is not paid again on every iteration."""

    def __init__(self) -> None:
        self.autograd = False

    def __call__(self, f, x: Tensor, has_aux: bool = False):
        if not self.autograd:
            try:
                return vjp(f, x, has_aux=has_aux)
            except RuntimeError as e:
                if "data pointer" not in str(e) and "storage" not in str(e) and "vmap" not in str(e):
                    raise
                self.autograd = True
        return _autograd_vjp(f, x, has_aux)


def batched_jacobian(f: Callable[[Tensor], Tensor], x: Tensor, mode: str = "auto",
                     has_aux: bool = False, _vjp: Optional[_SafeVJP] = None):
    """Per-sample Jacobians of ``f: (B, n) -> (B, m)``, assuming samples do not interact.

    Reverse mode costs m vector-Jacobian products on one forward pass, forward mode n
    Jacobian-vector products; ``'auto'`` picks the smaller.

    Args:
        f (callable): the function; with ``has_aux`` it returns ``(r, aux)`` and ``aux`` (no
            gradient) is passed through.
        x (Tensor): ``(B, n)``.
        mode (str): ``'auto'``, ``'reverse'`` or ``'forward'``.

    Returns:
        (Tensor, Tensor) or (Tensor, Tensor, Tensor): ``r = f(x)`` of shape ``(B, m)``, ``J`` of
        shape ``(B, m, n)`` and, with ``has_aux``, ``aux``.
    """
    B, n = x.shape
    safe_vjp = _vjp or _SafeVJP()
    if mode not in ("auto", "reverse", "forward"):
        raise ValueError(f"`mode` must be 'auto', 'reverse' or 'forward', got {mode!r}")
    if has_aux:
        r, vjp_fn, aux = safe_vjp(f, x, has_aux=True)
        aux = aux.detach()
        if not safe_vjp.autograd and (mode == "forward" or (mode == "auto" and r.shape[1] > n)):
            return (*batched_jacobian(lambda z: f(z)[0], x, "forward", _vjp=safe_vjp), aux)
        return (*_reverse(r, vjp_fn), aux)
    r, vjp_fn = safe_vjp(f, x)
    m = r.shape[1]
    if safe_vjp.autograd or mode == "reverse" or (mode == "auto" and m <= n):
        return _reverse(r, vjp_fn)
    eye = torch.eye(n, dtype=x.dtype, device=x.device)[:, None, :].expand(n, B, n)
    try:
        J = vmap(lambda t: jvp(f, (x,), (t,))[1])(eye).permute(1, 2, 0)
    except RuntimeError:  # a model torch.func cannot run: n reverse products instead
        return _reverse(r, vjp_fn)
    return r.detach(), J.detach()


def _accept_and_update(rnorm, rtn, pred, act, mu, nu, damping_floor) -> Tensor:
    """Gain-ratio test and Nielsen's damping update for the samples ``act`` (in place on
    ``mu``, ``nu``); returns which trial points are accepted."""
    rho = (rnorm[act].pow(2) - rtn.pow(2)) / pred.clamp_min(torch.finfo(rtn.dtype).tiny)
    good = torch.isfinite(rtn) & (rtn < rnorm[act]) & (rho > 0)
    shrink = torch.clamp(1 - (2 * rho.clamp(max=1.0) - 1) ** 3, min=1 / 3)
    mu[act] = torch.where(good, (mu[act] * shrink).clamp_min(damping_floor), mu[act] * nu[act])
    nu[act] = torch.where(good, torch.full_like(nu[act], 2.0), nu[act] * 2)
    return good


def _reverse(r: Tensor, vjp_fn):
    # one VJP per residual on a shared forward pass (a loop, not vmap: attention's backward has
    # no batching rule and vmap would fall back to a per-sample loop)
    rows = []
    for j in range(r.shape[1]):
        cot = torch.zeros_like(r)
        cot[:, j] = 1
        rows.append(vjp_fn(cot)[0])
    return r.detach(), torch.stack(rows, 1).detach()


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
    has_aux: bool = False,
    update: str = "exact",
    averaging: float = 0.0,
) -> LMResult:
    """Solve ``r(x) = 0`` for every sample of a batch.

    Args:
        residual_fn (callable): ``(x, idx) -> r``; ``x`` is ``(b, *shape)``, ``idx`` the ``(b,)``
            indices of those samples in the batch, ``r`` is ``(b, m)``. Samples must not interact.
        x0 (Tensor): ``(B, *shape)`` starting points.
        max_iter (int): iterations per sample.
        done_fn (callable, optional): ``(x, r, idx, aux) -> (b,) bool``, a sample is finished
            when True (``aux`` is None without ``has_aux``). Default: ``||r|| <= tol``.
        bounds (tuple, optional): ``(lo, hi)``: numbers, or tensors shaped like one sample
            (per-coordinate; ``-inf`` / ``inf`` where unbounded).
        tol (float): residual tolerance of the default ``done_fn``.
        damping (float): initial ``mu``.
        damping_floor (float): smallest ``mu``.
        jacobian (str): ``'auto'``, ``'reverse'`` or ``'forward'``.
        has_aux (bool): ``residual_fn`` returns ``(r, aux)``; ``aux`` (e.g. the log-probabilities
            of the same forward pass) goes to ``done_fn``, saving a forward pass.
        update (str): ``'exact'`` (the Jacobian at every trial point: m vector-Jacobian products
            in reverse mode) or ``'adjoint'`` (adjoint Broyden updates: one product per step
            after the first; reverse mode only, used when ``m > 1``).
        averaging (float): weight ``beta`` in ``[0, 1)`` of the past in the Jacobian that the
            steps use, ``J_bar <- beta J_bar + (1 - beta) J(x)`` after each accepted step (reset
            to ``J(x)`` after a rejected one); 0 is the plain Jacobian. The change
            ``r(x + dx) - r(x)`` is the Jacobian averaged along the step; on a ReLU network the
            pointwise Jacobian is piecewise constant and varies from point to point, and
            successive plain steps partly undo each other. Only with ``update='exact'``.

    Returns:
        LMResult
    """
    if max_iter < 0:
        raise ValueError(f"`max_iter` must be >= 0, got {max_iter}")
    if update not in ("exact", "adjoint"):
        raise ValueError(f"`update` must be 'exact' or 'adjoint', got {update!r}")
    if not 0.0 <= averaging < 1.0:
        raise ValueError(f"`averaging` must be in [0, 1), got {averaging}")
    if averaging > 0 and update == "adjoint":
        raise ValueError("`averaging` needs update='exact': the adjoint updates already carry an estimated Jacobian")
    shape = x0.shape[1:]
    B = x0.shape[0]
    x = x0.detach().reshape(B, -1).clone()
    if bounds is not None:  # floats, or tensors of one sample's shape (per-coordinate bounds)
        bounds = tuple(torch.as_tensor(b, dtype=x.dtype, device=x.device).expand(x0.shape[1:]).reshape(-1)
                       for b in bounds)
        x = torch.maximum(torch.minimum(x, bounds[1]), bounds[0])
    dev = x.device
    done_fn = done_fn or (lambda xx, rr, ii, aux: rr.norm(dim=1) <= tol)
    all_idx = torch.arange(B, device=dev)

    def f_for(idx):
        return lambda z: residual_fn(z.view(len(idx), *shape), idx)

    safe_vjp = _SafeVJP()

    def jac(idx, z):
        out = batched_jacobian(f_for(idx), z, jacobian, has_aux, _vjp=safe_vjp)
        return out if has_aux else (*out, None)

    # residual and Jacobian at the current points; a trial point is evaluated with its Jacobian
    # in the same pass, so an accepted step (the usual case) costs one Jacobian evaluation
    r, J, aux = jac(all_idx, x)
    adjoint = update == "adjoint" and jacobian != "forward" and 1 < r.shape[1] <= x.shape[1]
    exact = torch.ones(B, dtype=torch.bool, device=dev)  # J is the true Jacobian (not an estimate)

    def trial(idx, z, J_old):
        if not adjoint:
            return jac(idx, z)
        out = safe_vjp(f_for(idx), z, has_aux=has_aux)
        rt, back = out[0].detach(), out[1]
        s_ = rt / rt.norm(dim=1, keepdim=True).clamp_min(torch.finfo(rt.dtype).tiny)
        sJ = back(s_)[0].detach()
        Jt = J_old + s_[:, :, None] * (sJ - (s_[:, None, :] @ J_old).squeeze(1))[:, None, :]
        return rt, Jt, (out[2].detach() if has_aux else None)

    with torch.no_grad():
        done = done_fn(x.view(B, *shape), r, all_idx, aux).to(dev)
    rnorm = r.norm(dim=1)
    finite = torch.isfinite(r).all(1) & torch.isfinite(J).flatten(1).all(1)
    zero_grad = ~done & (J.flatten(1) == 0).all(1) & (r != 0).any(1)
    n_iter = torch.zeros(B, dtype=torch.long, device=dev)
    mu = torch.full((B,), float(damping), dtype=x.dtype, device=dev)
    nu = torch.full((B,), 2.0, dtype=x.dtype, device=dev)
    m = r.shape[1]
    eye = torch.eye(m, dtype=x.dtype, device=dev)
    beta = averaging
    Jbar = J.clone() if beta > 0 else J  # the Jacobian the steps use (J itself for adjoint updates)
    for _ in range(max_iter):
        act = (~done & finite & ~zero_grad).nonzero().squeeze(1)
        if act.numel() == 0:
            break
        full = act.numel() == B  # every sample active: work on the tensors, no gathers
        xa, ra, Ja = (x, r, Jbar) if full else (x[act], r[act], Jbar[act])
        JJ = Ja @ Ja.transpose(1, 2)
        scale = JJ.diagonal(dim1=1, dim2=2).mean(1).clamp_min(torch.finfo(x.dtype).tiny)
        lam = (mu[act] * scale)[:, None, None]
        u = torch.linalg.solve(JJ + lam * eye, ra.unsqueeze(-1))
        dx = -(Ja.transpose(1, 2) @ u).squeeze(-1)
        if bounds is not None:
            blocked = ((xa <= bounds[0]) & (dx < 0)) | ((xa >= bounds[1]) & (dx > 0))
            if bool(blocked.any()):
                Jf = Ja * (~blocked)[:, None, :]
                u = torch.linalg.solve(Jf @ Jf.transpose(1, 2) + lam * eye, ra.unsqueeze(-1))
                dx = -(Jf.transpose(1, 2) @ u).squeeze(-1)
        xt = xa + dx
        if bounds is not None:
            xt = torch.maximum(torch.minimum(xt, bounds[1]), bounds[0])
        rt, Jt, auxt = trial(act, xt, Ja)  # Ja is J's own rows where adjoint updates use it
        rtn = rt.norm(dim=1)
        dxe = xt - xa  # the step actually taken (after projection)
        pred = ra.pow(2).sum(1) - (ra + (Ja @ dxe.unsqueeze(-1)).squeeze(-1)).pow(2).sum(1)
        good = _accept_and_update(rnorm, rtn, pred, act, mu, nu, damping_floor)
        n_iter[act] += 1
        acc = act[good]
        if full and bool(good.all()):
            Jbar = beta * Jbar + (1 - beta) * Jt if beta > 0 else Jt
            x, r, J, rnorm = xt, rt, Jt, rtn
            with torch.no_grad():
                done = done_fn(x.view(B, *shape), r, act, auxt).to(dev)
            finite = torch.isfinite(J).flatten(1).all(1)
            exact[:] = not adjoint
        elif acc.numel():
            if beta > 0:
                Jbar[acc] = beta * Jbar[acc] + (1 - beta) * Jt[good]
            x[acc], r[acc], J[acc], rnorm[acc] = xt[good], rt[good], Jt[good], rtn[good]
            with torch.no_grad():
                done[acc] = done_fn(xt[good].view(len(acc), *shape), rt[good], acc,
                                    None if auxt is None else auxt[good]).to(dev)
            finite[acc] = torch.isfinite(Jt[good]).flatten(1).all(1)
            exact[acc] = not adjoint
        if beta > 0:  # a rejected step: back to the Jacobian at the point
            bad = act[~good]
            if bad.numel():
                Jbar[bad] = J[bad]
        if adjoint:  # a rejected step from an estimated Jacobian: recompute it in full
            redo = act[~good & ~exact[act] & ~done[act]]
            if redo.numel():
                r[redo], J[redo], _ = jac(redo, x[redo])
                rnorm[redo] = r[redo].norm(dim=1)
                exact[redo] = True
                finite[redo] = torch.isfinite(J[redo]).flatten(1).all(1)
    return LMResult(x.view(B, *shape), done, n_iter, rnorm, finite, zero_grad)


def _math_attention():
    """Context selecting PyTorch's composite ("math") attention kernel, which has forward-mode
    and double-backward rules (the fused CPU kernels have neither)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.MATH])
    except Exception:  # pragma: no cover - older torch
        import contextlib

        return contextlib.nullcontext()


def _jvp_or_double_vjp(f, x, JT, r0):
    """``v -> J v``: forward mode, with the math attention kernel when a fused kernel has no
    forward-mode rule; else reverse-over-reverse (``J^T u`` is linear in ``u``, so the VJP of
    ``u -> J^T u`` is ``J v``)."""
    try:
        jvp(f, (x,), (torch.zeros_like(x),))
        return lambda v: jvp(f, (x,), (v,))[1]
    except (NotImplementedError, RuntimeError):
        pass
    try:
        with _math_attention():
            jvp(f, (x,), (torch.zeros_like(x),))

        def fwd(v):
            with _math_attention():
                return jvp(f, (x,), (v,))[1]

        return fwd
    except (NotImplementedError, RuntimeError):
        u0 = torch.zeros_like(r0)
        _, back = vjp(JT, u0)
        return lambda v: back(v)[0]


def levenberg_marquardt_cg(
    residual_fn: Callable[[Tensor, Tensor], Tensor],
    x0: Tensor,
    max_iter: int = 30,
    done_fn: Optional[Callable] = None,
    bounds: Optional[Tuple] = None,
    tol: float = 1e-6,
    damping: float = 1e-3,
    damping_floor: float = 1e-9,
    cg_iters: int = 20,
) -> LMResult:
    """Matrix-free Levenberg-Marquardt for many residuals per sample (e.g. a whole activation).

    The step solves ``(J J^T + lambda I) u = r`` by batched conjugate gradients, each CG
    iteration one vector-Jacobian product and one Jacobian-vector product (``torch.func``), so the
    cost does not grow with the number of residuals m as the explicit solver's m VJPs do.
    ``lambda = mu * ||J^T r||^2 / ||r||^2`` (a Rayleigh quotient of ``J J^T``); acceptance, the
    damping rule and the bounds are those of :func:`levenberg_marquardt`.

    Args:
        residual_fn (callable): ``(x, idx) -> r``, ``r`` of shape ``(b, m)``.
        x0 (Tensor): ``(B, *shape)`` starting points.
        max_iter, done_fn, bounds, tol, damping, damping_floor: as in
            :func:`levenberg_marquardt` (``done_fn(x, r, idx, None)``).
        cg_iters (int): conjugate-gradient iterations per step.

    Returns:
        LMResult
    """
    shape = x0.shape[1:]
    B = x0.shape[0]
    x = x0.detach().reshape(B, -1).clone()
    if bounds is not None:
        bounds = tuple(torch.as_tensor(b, dtype=x.dtype, device=x.device).expand(shape).reshape(-1)
                       for b in bounds)
        x = torch.maximum(torch.minimum(x, bounds[1]), bounds[0])
    dev = x.device
    done_fn = done_fn or (lambda xx, rr, ii, aux: rr.norm(dim=1) <= tol)
    all_idx = torch.arange(B, device=dev)
    with torch.no_grad():
        r = residual_fn(x.view(B, *shape), all_idx).detach()
        done = done_fn(x.view(B, *shape), r, all_idx, None).to(dev)
    rnorm = r.norm(dim=1)
    n_iter = torch.zeros(B, dtype=torch.long, device=dev)
    mu = torch.full((B,), float(damping), dtype=x.dtype, device=dev)
    nu = torch.full((B,), 2.0, dtype=x.dtype, device=dev)
    tiny = torch.finfo(x.dtype).tiny
    safe_vjp = _SafeVJP()
    for _ in range(max_iter):
        act = (~done).nonzero().squeeze(1)
        if act.numel() == 0:
            break
        xa, ra = x[act], r[act]
        f = lambda z: residual_fn(z.view(len(act), *shape), act).reshape(len(act), -1)  # noqa: E731
        r0, vjp_fn = safe_vjp(f, xa)
        JT = lambda u: vjp_fn(u)[0]  # noqa: E731
        Jv = _jvp_or_double_vjp(f, xa, JT, r0)
        g = JT(ra)
        lam = mu[act] * g.pow(2).sum(1) / ra.pow(2).sum(1).clamp_min(tiny)
        # CG on (J J^T + lam I) u = r, batched; finished systems freeze
        u = torch.zeros_like(ra)
        res_cg = ra.clone()
        p = res_cg.clone()
        rs = res_cg.pow(2).sum(1)
        for _ in range(cg_iters):
            Ap = Jv(JT(p)) + lam[:, None] * p
            alpha = rs / (p * Ap).sum(1).clamp_min(tiny)
            u = u + alpha[:, None] * p
            res_cg = res_cg - alpha[:, None] * Ap
            rs_new = res_cg.pow(2).sum(1)
            if bool((rs_new <= 1e-12 * ra.pow(2).sum(1)).all()):
                break
            p = res_cg + (rs_new / rs.clamp_min(tiny))[:, None] * p
            rs = rs_new
        dx = -JT(u).detach()
        xt = xa + dx
        if bounds is not None:
            xt = torch.maximum(torch.minimum(xt, bounds[1]), bounds[0])
        with torch.no_grad():
            rt = residual_fn(xt.view(len(act), *shape), act).reshape(len(act), -1).detach()
        rtn = rt.norm(dim=1)
        pred = ra.pow(2).sum(1) - (ra + Jv(xt - xa).detach()).pow(2).sum(1)
        good = _accept_and_update(rnorm, rtn, pred, act, mu, nu, damping_floor)
        n_iter[act] += 1
        acc = act[good]
        if acc.numel():
            x[acc], r[acc], rnorm[acc] = xt[good], rt[good], rtn[good]
            with torch.no_grad():
                done[acc] = done_fn(xt[good].view(len(acc), *shape), rt[good], acc, None).to(dev)
    return LMResult(x.view(B, *shape), done, n_iter, rnorm)
