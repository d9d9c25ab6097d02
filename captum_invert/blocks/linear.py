"""Inverting one Linear layer: SVD with a capped condition number, pseudo-inverse and null space.

The factorization is cached per layer, keyed on the parameters' identity and version counters
(so an optimizer step or an in-place edit invalidates it) and on ``cond_num``.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

__all__ = ["LinearInverse", "linear_inverse", "capped_svd"]


@dataclass(frozen=True)
class LinearInverse:
    """Float64 inverse data of ``y = x W^T + b`` with ``W`` of shape ``(m, n)``.

    Attributes:
        weight (Tensor): ``(m, n)`` float64.
        bias (Tensor): ``(m,)`` float64 (zeros without bias).
        pinv (Tensor): ``(n, m)``, the pseudo-inverse after zeroing singular values below
            ``sigma_1 / cond_num``.
        null (Tensor): ``(n, n - r)``, orthonormal basis of the (capped) null space.
        range_basis (Tensor): ``(m, r)``, orthonormal basis of the kept column space.
        row_basis (Tensor): ``(n, r)``, orthonormal basis of the kept row space (the complement
            of ``null``).
        gram (Tensor): ``(m, m)``, ``pinv^T pinv``: ``||pinv y||^2 = y^T gram y``.
        singular_values (Tensor): all singular values, descending.
        rank (int): number of kept singular values ``r``.
        cond (float): condition number of the kept part, ``sigma_1 / sigma_r`` (<= cond_num).
    """

    weight: Tensor
    bias: Tensor
    pinv: Tensor
    null: Tensor
    range_basis: Tensor
    row_basis: Tensor
    gram: Tensor
    singular_values: Tensor
    rank: int
    cond: float

    @property
    def full_row_rank(self) -> bool:
        """True when every output direction is kept (any target is reachable)."""
        return self.rank == self.weight.shape[0]

    def null_noise(self, n: int, gen: torch.Generator) -> Tensor:
        """``(n, in_features)`` standard Gaussian vectors of the null space (isotropic in it).

        Drawn as ``N xi`` or as the projection of an isotropic vector, whichever is cheaper:
        both have the same distribution.
        """
        d, (m_in, r) = self.null.shape[1], self.row_basis.shape
        if d <= r:
            xi = torch.randn((n, d), generator=gen).to(self.null.device, torch.float64)
            return xi @ self.null.T
        eps = torch.randn((n, m_in), generator=gen).to(self.null.device, torch.float64)
        return eps - (eps @ self.row_basis) @ self.row_basis.T

    def solution_norm(self, y: Tensor) -> Tensor:
        """``(B,)`` norm of :meth:`solve` without forming it (uses the m x m ``gram``)."""
        t = y - self.bias
        return ((t @ self.gram) * t).sum(1).clamp_min(0).sqrt()

    def solve(self, y: Tensor) -> Tensor:
        """Minimum-norm least-squares ``x`` with ``x W^T + b ~= y``; ``y`` is ``(B, m)``."""
        return (y - self.bias) @ self.pinv.T


def capped_svd(weight: Tensor, cond_num: float):
    """SVD of ``weight`` in float64 with singular values below ``sigma_1 / cond_num`` dropped.

    Returns:
        (U_r, S_r, V_r, V_null, S): kept factors (``(m, r)``, ``(r,)``, ``(n, r)``), the null-space
        basis ``(n, n - r)`` and all singular values.
    """
    W = weight.detach().to(torch.float64)
    U, S, Vh = torch.linalg.svd(W, full_matrices=True)
    if S.numel() == 0 or S[0] == 0:
        r = 0
    else:
        r = int(((S >= S[0] / cond_num) & (S > 0)).sum())
    return U[:, :r], S[:r], Vh[:r].T, Vh[r:].T, S


_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def linear_inverse(layer: nn.Linear, cond_num: float = 100.0,
                   device: Optional[torch.device] = None) -> LinearInverse:
    """The cached :class:`LinearInverse` of ``layer`` (computed in float64).

    Args:
        layer (nn.Linear): the layer; not modified.
        cond_num (float): cap on the condition number, > 1 (``inf`` keeps every nonzero
            singular value).
        device (torch.device, optional): where to put the result; default the weight's device.

    Returns:
        LinearInverse
    """
    if not cond_num > 1:
        raise ValueError(f"`cond_num` must be > 1, got {cond_num}")
    w, b = layer.weight, layer.bias
    key = (
        w.data_ptr(), w._version, None if b is None else (b.data_ptr(), b._version),
        float(cond_num), str(device or w.device),
    )
    per_layer = _CACHE.setdefault(layer, {})
    hit = per_layer.get(key)
    if hit is not None:
        return hit
    U, S_r, V, N, S = capped_svd(w, cond_num)
    pinv = (V / S_r) @ U.T if S_r.numel() else torch.zeros(w.shape[1], w.shape[0], dtype=torch.float64)
    bias = b.detach().to(torch.float64) if b is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    dev = device or w.device
    inv = LinearInverse(
        weight=w.detach().to(torch.float64).to(dev), bias=bias.to(dev), pinv=pinv.to(dev),
        null=N.to(dev), range_basis=U.to(dev), row_basis=V.to(dev), gram=(pinv.T @ pinv).to(dev),
        singular_values=S.to(dev), rank=int(S_r.numel()),
        cond=float(S_r[0] / S_r[-1]) if S_r.numel() else float("inf"),
    )
    per_layer.clear()  # keep one entry per layer: the parameters changed or cond_num did
    per_layer[key] = inv
    return inv
