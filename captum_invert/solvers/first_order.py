"""The escalation of a stalled root-finding: projected Adam on the same residual, with surrogate
gradients through saturated activations.

Levenberg-Marquardt stalls on nets whose hidden units sit deep in a saturated regime (SELU's or
ELU's exponential floor, a sigmoid's flat ends, dead ReLUs): the input gradient there is
exponentially small, the linear model behind each step is wrong, and steps are rejected or tiny.
Two changes fix that, each on its own insufficient (see the numerics notes of the docs):

- :func:`surrogate_gradients`: every elementwise activation passes gradient ``f'(a) + kappa * s``
  (``s`` the activation's mean slope on [-1, 1]); values are unchanged, so every residual and
  every verification is the model's own. Saturated units pass a signal again.
- :func:`projected_adam`: per-coordinate normalized steps, whose length does not depend on how
  small the gradient is, projected onto the box.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor, nn

from .lm import LMResult

__all__ = ["SURROGATE_ACTIVATIONS", "surrogate_gradients", "projected_adam"]

#: Elementwise activation modules that :func:`surrogate_gradients` changes.
SURROGATE_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU,
                         nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardsigmoid,
                         nn.Hardswish, nn.Softplus, nn.Softsign, nn.LogSigmoid)


def _mean_slope(m: nn.Module) -> float:
    """``(f(1) - f(-1)) / 2`` of an elementwise module (1.0 when it cannot be evaluated on a
    scalar pair, e.g. a per-channel PReLU)."""
    p = next(iter(m.parameters()), None)
    dt = p.dtype if p is not None else torch.get_default_dtype()
    dev = p.device if p is not None else "cpu"
    try:
        with torch.no_grad():
            y = m(torch.tensor([-1.0, 1.0], dtype=dt, device=dev).clone())
        s = float(y[1] - y[0]) / 2
    except Exception:  # noqa: BLE001
        return 1.0
    return abs(s) if s == s and s != 0 else 1.0


@contextlib.contextmanager
def surrogate_gradients(model, kappa: float = 0.3):
    """Within the context, every elementwise activation module of ``model`` (the types in
    :data:`SURROGATE_ACTIVATIONS`) returns its own values but passes the gradient
    ``f'(a) + kappa * s``, with ``s = (f(1) - f(-1)) / 2`` its mean slope near 0.

    The floor is a fraction of the unit's typical slope: where a unit is active its gradient
    barely changes, where it is saturated or dead the gradient is ``kappa * s`` instead of
    (nearly) zero. Activations called as functions (``F.relu``) are not seen. The hooks are
    removed on exit, also after an exception.

    Args:
        model (nn.Module or callable): the model (a callable that is not a module: no change).
        kappa (float): the floor, as a fraction of the mean slope.
    """
    handles = []
    if isinstance(model, nn.Module) and kappa > 0:
        stash = {}
        for m in model.modules():
            if not isinstance(m, SURROGATE_ACTIVATIONS):
                continue
            k = kappa * _mean_slope(m)
            inplace = bool(getattr(m, "inplace", False))

            def pre(mod, args, inplace=inplace):
                a = args[0]
                stash.setdefault(id(mod), []).append(a)
                return (a.clone(),) + tuple(args[1:]) if inplace else None

            def post(mod, args, out, k=k):
                a = stash[id(mod)].pop()
                if not isinstance(out, Tensor) or not isinstance(a, Tensor) or a.shape != out.shape \
                        or not torch.is_grad_enabled():
                    return None
                return out + k * (a - a.detach())

            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def projected_adam(
    residual_fn: Callable[[Tensor, Tensor], Tuple[Tensor, Optional[Tensor]]],
    x0: Tensor,
    steps: int,
    lr,
    done_fn: Callable[[Tensor, Tensor, Tensor, Optional[Tensor]], Tensor],
    bounds: Optional[Tuple] = None,
    betas: Tuple[float, float] = (0.9, 0.999),
    patience: Optional[int] = None,
) -> LMResult:
    """Batched projected Adam on ``||r(x)||^2 / 2`` per sample, until ``done_fn`` holds.

    Each sample's gradient is divided by its root-mean-square before the Adam update, so the
    step length does not depend on the gradient's scale (an exponentially small gradient moves
    as far as a large one). Finished samples leave the batch; a sample whose gradient is exactly
    zero stops.

    Args:
        residual_fn (callable): ``(x, idx) -> (r, aux)`` as for
            :func:`~captum_invert.solvers.levenberg_marquardt` with ``has_aux``.
        x0 (Tensor): ``(B, *shape)`` starting points.
        steps (int): at most this many steps per sample.
        lr (float or Tensor): step size, a number or ``(B,)`` (in the units of ``x``).
        done_fn (callable): ``(x, r, idx, aux) -> (b,) bool``.
        bounds (tuple, optional): ``(lo, hi)``, numbers or tensors of one sample's shape.
        betas (tuple): Adam's moment decay rates.
        patience (int, optional): stop a sample whose best ``||r||`` has not dropped by 1% in
            this many steps (a plateau, or a target out of reach); default no early stop.

    Returns:
        LMResult: ``n_iter`` counts the steps; ``zero_grad`` marks samples stopped by a zero
        gradient.
    """
    shape, B = x0.shape[1:], x0.shape[0]
    x = x0.detach().reshape(B, -1).clone()
    dev, dt = x.device, x.dtype
    if bounds is not None:
        bounds = tuple(torch.as_tensor(b, dtype=dt, device=dev).expand(shape).reshape(-1) for b in bounds)
        x = torch.maximum(torch.minimum(x, bounds[1]), bounds[0])
    lr = torch.as_tensor(lr, dtype=dt, device=dev).expand(B).clone()
    m = torch.zeros_like(x)
    v = torch.zeros_like(x)
    t = torch.zeros(B, dtype=dt, device=dev)
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    zero = torch.zeros(B, dtype=torch.bool, device=dev)
    n_iter = torch.zeros(B, dtype=torch.long, device=dev)
    rnorm = torch.full((B,), float("inf"), dtype=dt, device=dev)
    best = torch.full((B,), float("inf"), dtype=dt, device=dev)
    since = torch.zeros(B, dtype=torch.long, device=dev)
    stalled = torch.zeros(B, dtype=torch.bool, device=dev)
    b1, b2 = betas
    for step in range(steps + 1):
        act = (~done & ~zero & ~stalled).nonzero().squeeze(1)
        if act.numel() == 0:
            break
        xa = x[act].requires_grad_(True)
        with torch.enable_grad():
            r, aux = residual_fn(xa.view(len(act), *shape), act)
            g, = torch.autograd.grad(0.5 * r.pow(2).sum(), xa)
        r = r.detach()
        aux = aux.detach() if aux is not None else None
        rnorm[act] = r.norm(dim=1)
        better = rnorm[act] < 0.99 * best[act]
        best[act] = torch.where(better, rnorm[act], best[act])
        since[act] = torch.where(better, torch.zeros_like(since[act]), since[act] + 1)
        if patience is not None:
            stalled[act] = since[act] > patience
        with torch.no_grad():
            fin = done_fn(xa.detach().view(len(act), *shape), r, act, aux).to(dev)
        done[act] = fin
        if step == steps:
            break
        keep = ~fin & torch.isfinite(g).all(1)
        rms = g.pow(2).mean(1).sqrt()
        zero[act[~fin & (rms == 0)]] = True
        keep &= rms > 0
        if not bool(keep.any()):
            continue
        a = act[keep]
        gk = g[keep] / rms[keep, None]
        t[a] += 1
        m[a] = b1 * m[a] + (1 - b1) * gk
        v[a] = b2 * v[a] + (1 - b2) * gk.pow(2)
        mh = m[a] / (1 - b1 ** t[a])[:, None]
        vh = v[a] / (1 - b2 ** t[a])[:, None]
        xn = x[a] - lr[a, None] * mh / (vh.sqrt() + 1e-8)
        if bounds is not None:
            xn = torch.maximum(torch.minimum(xn, bounds[1]), bounds[0])
        x[a] = xn
        n_iter[a] += 1
    finite = torch.isfinite(rnorm) | done
    return LMResult(x.view(B, *shape), done, n_iter, rnorm, finite, zero)
