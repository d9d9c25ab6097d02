"""Activation patterns of piecewise-linear nets as linear constraints.

Once the pattern of every ReLU, LeakyReLU, PReLU, Hardtanh/ReLU6 and MaxPool is fixed, a chain of
Linear, Conv, pooling, eval-mode BatchNorm, Flatten and those modules is an affine map of its
input, and the inputs that keep the pattern form a polytope. :func:`linearize` computes, at one
input (the *anchor*), that affine map and the rows ``A x <= b`` of the polytope, in float64.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .normalize import Normalize

__all__ = ["LP_MAX_ENTRIES", "AFFINE_TYPES", "KINK_TYPES", "is_piecewise_linear", "needs_lp", "Linearization", "linearize",
           "split_piecewise", "constraint_count", "lp_fits"]

# dense float64 entries the LP may hold (constraint matrix, Jacobian): 2e8 = 1.6 GB
LP_MAX_ENTRIES = 200_000_000

AFFINE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                nn.BatchNorm1d, nn.BatchNorm2d, nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, Normalize)
KINK_TYPES = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.Hardtanh, nn.MaxPool1d, nn.MaxPool2d)  # ReLU6 is a Hardtanh


def is_piecewise_linear(m: nn.Module) -> bool:
    """True for the module types :func:`linearize` handles."""
    if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d)):
        return not getattr(m, "return_indices", False)
    return isinstance(m, AFFINE_TYPES + KINK_TYPES)


def needs_lp(m: nn.Module, in_shape) -> bool:
    """True for a module the analytic back-pass cannot invert but the LP can (a kink, a
    convolution, pooling, a BatchNorm on feature maps, a Linear on more than two dims)."""
    if isinstance(m, (nn.ReLU, nn.Hardtanh, nn.MaxPool1d, nn.MaxPool2d, nn.Conv1d, nn.Conv2d,
                      nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.BatchNorm2d)):
        return True
    if isinstance(m, nn.Linear):
        return len(in_shape) != 2
    return False


def split_piecewise(calls: Sequence) -> Optional[Tuple[list, list]]:
    """Split executed leaf calls into a piecewise-linear trunk (every call up to the last one that
    :func:`needs_lp`) and the rest (an analytic chain). None when no call needs the LP.

    Raises:
        ValueError: a trunk module is neither piecewise-linear nor supported (names it).
    """
    calls = list(calls)
    idx = [i for i, c in enumerate(calls) if needs_lp(c.module, c.in_shape)]
    if not idx:
        return None
    stop = idx[-1] + 1
    for c in calls[:stop]:
        if not is_piecewise_linear(c.module):
            raise ValueError(
                f"module '{c.name}' ({type(c.module).__name__}) sits among piecewise-linear layers but is "
                "not one of them. The linear-programming back-pass handles Linear, Conv1d/2d, ReLU, "
                "LeakyReLU, PReLU, Hardtanh/ReLU6, MaxPool1d/2d, AvgPool, AdaptiveAvgPool2d, "
                "eval-mode BatchNorm, Flatten, Dropout and Identity. Use ForwardPassInversion or "
                "GeneralizedInversion, which work on any differentiable model.")
    return calls[:stop], calls[stop:]


def lp_fits(trunk: Sequence, d: int) -> bool:
    """Whether the dense LP of ``trunk`` on ``d`` inputs stays within :data:`LP_MAX_ENTRIES`."""
    units = max(_units(c.out_shape) for c in trunk)
    return d * max(constraint_count(trunk) + 2 * d, units) <= LP_MAX_ENTRIES


def _units(shape) -> int:
    return math.prod(shape[1:])


def constraint_count(calls: Sequence) -> int:
    """Rows of the pattern polytope of ``calls`` (before dropping constant rows)."""
    m = 0
    for c in calls:
        mod = c.module
        if isinstance(mod, (nn.ReLU, nn.LeakyReLU, nn.PReLU)):
            m += _units(c.in_shape)
        elif isinstance(mod, nn.Hardtanh):
            m += 2 * _units(c.in_shape)
        elif isinstance(mod, (nn.MaxPool1d, nn.MaxPool2d)):
            k = mod.kernel_size if isinstance(mod.kernel_size, int) else math.prod(mod.kernel_size)
            k = k * k if isinstance(mod, nn.MaxPool2d) and isinstance(mod.kernel_size, int) else k
            m += _units(c.out_shape) * max(k - 1, 0)
    return m


@dataclass
class Linearization:
    """A piecewise-linear chain fixed to its activation pattern at an anchor.

    Attributes:
        A (Tensor): ``(m, d)`` float64; with ``b`` ``(m,)``: the pattern's polytope
            ``A @ x.flatten() <= b`` (constant rows dropped).
        groups (list of (str, int, int)): ``(label, start, stop)`` row ranges, one per kink module,
            e.g. ``('features.1 (ReLU)', 0, 6272)``.
        G (Tensor): ``(k, d)``; with ``h`` ``(k,)``: the chain's output ``G x + h`` on the polytope.
        pattern (dict): per kink module name, the pattern: a bool mask of active units (ReLU,
            LeakyReLU), an int8 state -1/0/1 (Hardtanh: below, between, above) or the argmax
            indices (MaxPool), each of the module's output shape without the batch.
    """

    A: Tensor
    b: Tensor
    groups: List[Tuple[str, int, int]]
    G: Tensor
    h: Tensor
    pattern: Dict[str, Tensor] = field(default_factory=dict)


def _f64(m: nn.Module, cache: dict, device) -> nn.Module:
    if m not in cache:
        c = copy.deepcopy(m).to(dtype=torch.float64, device=device)
        c.eval()
        cache[m] = c
    return cache[m]


def linearize(calls: Sequence, x0: Tensor) -> Linearization:
    """The affine map and the pattern polytope of a piecewise-linear chain at one input.

    Forward-mode in float64: the anchor and the ``d`` columns of the Jacobian (one per input
    value) go through every module; each kink fixes its pattern at the anchor and adds its rows.

    Args:
        calls (sequence of LeafCall): the chain's executed leaf modules, in order (checked by
            :func:`is_piecewise_linear`).
        x0 (Tensor): the anchor, ``input_shape`` (no batch).

    Returns:
        Linearization
    """
    cache: dict = {}
    x = x0.detach().to(torch.float64).reshape(1, *x0.shape)
    d = x.numel()
    J = torch.eye(d, dtype=torch.float64, device=x.device).reshape(d, *x0.shape)
    x_flat = x.reshape(-1)
    rows_A, rows_b, groups, pattern = [], [], [], {}
    n_rows = 0

    def add(label, grad: Tensor, off: Tensor):
        # rows ``grad @ x <= off``; grad (d, r) columns, off (r,)
        nonlocal n_rows
        g = grad.T.contiguous()
        keep = g.abs().amax(1) > 0
        g, off = g[keep], off[keep]
        rows_A.append(g)
        rows_b.append(off)
        groups.append((label, n_rows, n_rows + len(g)))
        n_rows += len(g)

    def rows_for(zv: Tensor, Jz: Tensor, sign: Tensor, label: str):
        # units with sign s: s * z(x) <= 0 ; z(x) = Jz^T x + (zv - Jz^T x0)
        z = zv.reshape(-1)
        Jf = Jz.reshape(d, -1)
        c = z - x_flat @ Jf
        s = sign.reshape(-1).to(torch.float64)
        nz = s != 0
        add(label, Jf[:, nz] * s[nz], -c[nz] * s[nz])

    for call in calls:
        m = call.module
        label = f"{call.name} ({type(m).__name__})"
        if isinstance(m, (nn.Softmax, nn.LogSoftmax)):
            raise ValueError(f"'{call.name}': softmax inside the piecewise-linear chain")
        if isinstance(m, (nn.Dropout, nn.Identity)):
            continue
        if isinstance(m, (nn.Flatten, nn.Unflatten)):
            x, J = m(x), m(J) if isinstance(m, nn.Unflatten) else J.reshape(d, *m(x).shape[1:])
            continue
        if isinstance(m, AFFINE_TYPES):
            f = _f64(m, cache, x.device)
            with torch.no_grad():
                y = f(x)
                J = f(J) - f(torch.zeros_like(J[:1]))
            x = y
            continue
        if isinstance(m, (nn.ReLU, nn.LeakyReLU, nn.PReLU)):
            act = x[0] > 0
            pattern[call.name] = act.clone()
            rows_for(x[0], J, torch.where(act, -1.0, 1.0).to(torch.float64), label)
            if isinstance(m, nn.PReLU):  # one slope, or one per channel (dimension 1)
                w = m.weight.detach().to(dtype=torch.float64, device=x.device)
                slope = w.reshape(-1, *([1] * (x.dim() - 2))) if w.numel() > 1 else w.reshape(())
            else:
                slope = torch.tensor(0.0 if isinstance(m, nn.ReLU) else float(m.negative_slope), dtype=torch.float64)
            scale = torch.where(act, torch.ones((), dtype=torch.float64, device=x.device), slope)
            x, J = x * scale, J * scale
            continue
        if isinstance(m, nn.Hardtanh):
            lo, hi = float(m.min_val), float(m.max_val)
            st = torch.where(x[0] <= lo, -1, torch.where(x[0] >= hi, 1, 0)).to(torch.int8)
            pattern[call.name] = st
            # below: z <= lo ; above: z >= hi ; between: lo <= z <= hi
            z = x[0].reshape(-1)
            Jf = J.reshape(d, -1)
            c = z - x_flat @ Jf
            s = st.reshape(-1)
            up = s <= 0  # z <= hi (between, below: z <= lo is stronger; use lo for below)
            bound_up = torch.where(s < 0, torch.tensor(lo, dtype=torch.float64), torch.tensor(hi, dtype=torch.float64))
            add(label + " upper", Jf[:, up], (bound_up - c)[up])
            dn = s >= 0
            bound_dn = torch.where(s > 0, torch.tensor(hi, dtype=torch.float64), torch.tensor(lo, dtype=torch.float64))
            add(label + " lower", -Jf[:, dn], (c - bound_dn)[dn])
            mid = (st == 0).to(torch.float64)
            x = x.clamp(lo, hi)
            J = J * mid
            continue
        if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d)):
            two = isinstance(m, nn.MaxPool2d)
            z = x if two else x.unsqueeze(2)
            Jz = J if two else J.unsqueeze(2)
            C, H, W = z.shape[1:]
            ks = m.kernel_size if two else (1, m.kernel_size)
            st = m.stride if two else (1, m.stride)
            pd = m.padding if two else (0, m.padding)
            dl = m.dilation if two else (1, m.dilation)
            y, idx = F.max_pool2d(z, ks, st, pd, dl, ceil_mode=m.ceil_mode, return_indices=True)
            pattern[call.name] = idx[0].clone() if two else idx[0, :, 0].clone()
            # window member indices (in H*W) of every output position; -1 = padding
            ids = torch.arange(H * W, dtype=torch.float64).reshape(1, 1, H, W)
            pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
            k2, p2, s2, d2 = pair(ks), pair(pd), pair(st if st is not None else ks), pair(dl)
            # ceil_mode: the last windows reach past the input; pad them with non-members
            extra = [max(0, (y.shape[2 + i] - 1) * s2[i] + d2[i] * (k2[i] - 1) + 1 - ((H, W)[i] + 2 * p2[i]))
                     for i in range(2)]
            ids = F.pad(ids, (p2[1], p2[1] + extra[1], p2[0], p2[0] + extra[0]), value=-1.0)
            win = F.unfold(ids, k2, dilation=d2, stride=s2)[0].to(torch.long)  # (k, L)
            L = win.shape[1]
            am = idx[0].reshape(C, L)  # (C, L) argmax index in H*W
            zf = z[0].reshape(C, H * W)
            Jf = Jz.reshape(d, C, H * W)
            cf = zf - torch.einsum("d,dcp->cp", x_flat, Jf)
            ch = torch.arange(C)[:, None, None].expand(C, win.shape[0], L)
            member = win[None].expand(C, -1, -1)
            sel = (member >= 0) & (member != am[:, None, :])
            cc, mm, aa = ch[sel], member[sel], am[:, None, :].expand(C, win.shape[0], L)[sel]
            # z_member - z_argmax <= 0
            grad = Jf[:, cc, mm] - Jf[:, cc, aa]
            off = cf[cc, aa] - cf[cc, mm]
            add(label, grad, off)
            Jy = torch.gather(Jf, 2, am.reshape(1, C, L).expand(d, C, L))
            x = y if two else y[:, :, 0]
            J = Jy.reshape(d, *x.shape[1:])
            continue
        raise ValueError(f"module '{call.name}' ({type(m).__name__}) is not piecewise-linear")
    if rows_A:
        A, b = torch.cat(rows_A), torch.cat(rows_b)
    else:
        A, b = torch.zeros(0, d, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    G = J.reshape(d, -1).T.contiguous()
    h = x.reshape(-1) - G @ x_flat
    return Linearization(A, b, groups, G, h, pattern)
