"""Random, differentiable transforms (transformation robustness: Lucid; Plug-In Inversion,
Ghiasi et al. 2022). An image that keeps its class under small shifts, rescalings and rotations
cannot rely on single-pixel noise."""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Transform

__all__ = ["Jitter", "RandomScale", "RandomRotate", "RandomFlip", "ColorShift", "affine", "robust_transforms"]


def affine(x: Tensor, theta: Tensor) -> Tensor:
    """Warp images ``(n, C, H, W)`` by per-sample affine maps ``theta`` ``(n, 2, 3)`` (normalized
    coordinates), bilinear, edges replicated."""
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _uniform(n, lo, hi, gen) -> Tensor:
    return torch.rand(n, generator=gen, dtype=torch.float64) * (hi - lo) + lo


def _theta(a, b, c, d, tx, ty) -> Tensor:
    """``(n, 2, 3)`` affine maps ``[[a, b, tx], [c, d, ty]]`` from ``(n,)`` entries."""
    return torch.stack([torch.stack([a, b, tx], -1), torch.stack([c, d, ty], -1)], -2)


def _check_image(x: Tensor, what: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{what} needs image inputs (N, C, H, W), got shape {tuple(x.shape)}")


class Jitter(Transform):
    """Random translation by up to ``pixels`` in each direction (sub-pixel, bilinear)."""

    def __init__(self, pixels: float = 2.0) -> None:
        if not pixels >= 0:
            raise ValueError(f"`pixels` must be >= 0, got {pixels!r}")
        self.pixels = pixels

    def __call__(self, x, gen):
        _check_image(x, "Jitter")
        n, _, h, w = x.shape
        one, zero = torch.ones(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
        return affine(x, _theta(one, zero, zero, one, _uniform(n, -1, 1, gen) * 2 * self.pixels / w,
                                _uniform(n, -1, 1, gen) * 2 * self.pixels / h))

    def __repr__(self) -> str:
        return f"Jitter({self.pixels})"


class RandomScale(Transform):
    """Random zoom by a factor in ``scales = (lo, hi)``."""

    def __init__(self, scales: Tuple[float, float] = (0.9, 1.1)) -> None:
        lo, hi = scales
        if not 0 < lo <= hi:
            raise ValueError(f"`scales` must be (lo, hi) with 0 < lo <= hi, got {scales!r}")
        self.scales = (float(lo), float(hi))

    def __call__(self, x, gen):
        _check_image(x, "RandomScale")
        s = 1.0 / _uniform(len(x), *self.scales, gen)
        return affine(x, _theta(s, 0.0 * s, 0.0 * s, s, 0.0 * s, 0.0 * s))

    def __repr__(self) -> str:
        return f"RandomScale({self.scales})"


class RandomRotate(Transform):
    """Random rotation by up to ``degrees`` either way."""

    def __init__(self, degrees: float = 10.0) -> None:
        if not degrees >= 0:
            raise ValueError(f"`degrees` must be >= 0, got {degrees!r}")
        self.degrees = degrees

    def __call__(self, x, gen):
        _check_image(x, "RandomRotate")
        a = _uniform(len(x), -1, 1, gen) * math.radians(self.degrees)
        return affine(x, _theta(a.cos(), -a.sin(), a.sin(), a.cos(), 0.0 * a, 0.0 * a))

    def __repr__(self) -> str:
        return f"RandomRotate({self.degrees})"


class RandomFlip(Transform):
    """Flip each image with probability ``p`` along ``dims`` (Plug-In Inversion uses horizontal
    flips on natural images; they change the class of digits and letters, so
    :func:`~captum_invert.priors.auto_prior` never adds them)."""

    def __init__(self, p: float = 0.5, dims: Sequence[int] = (-1,)) -> None:
        if not 0 <= p <= 1:
            raise ValueError(f"`p` must be in [0, 1], got {p!r}")
        self.p, self.dims = p, tuple(dims)

    def __call__(self, x, gen):
        flip = (torch.rand(len(x), generator=gen) < self.p).to(x.device)
        return torch.where(flip.view(-1, *([1] * (x.dim() - 1))), x.flip(self.dims), x)

    def __repr__(self) -> str:
        return f"RandomFlip(p={self.p}, dims={self.dims})"


class ColorShift(Transform):
    r"""A random colour shift per image and channel (Plug-In Inversion, Ghiasi et al. 2022):
    ``x' = (x - c) * exp(s) + c + m`` with ``c`` the box centre (0.5 without a box argument),
    ``m ~ U(-shift, shift)`` and ``s ~ U(-log_scale, log_scale)``. An image whose class survives
    it cannot rest on exact pixel values. The result is not clamped: the model sees it as is.

    Args:
        shift (float): largest additive shift.
        log_scale (float): largest log contrast change.
        center (float): value that the contrast change keeps.
    """

    def __init__(self, shift: float = 0.1, log_scale: float = 0.1, center: float = 0.5) -> None:
        if not shift >= 0 or not log_scale >= 0:
            raise ValueError(f"`shift` and `log_scale` must be >= 0, got {shift!r}, {log_scale!r}")
        self.shift, self.log_scale, self.center = float(shift), float(log_scale), float(center)

    def __call__(self, x, gen):
        _check_image(x, "ColorShift")
        n, c = x.shape[:2]
        m = (_uniform(n * c, -1, 1, gen) * self.shift).reshape(n, c, 1, 1).to(x)
        s = (_uniform(n * c, -1, 1, gen) * self.log_scale).exp().reshape(n, c, 1, 1).to(x)
        return (x - self.center) * s + self.center + m

    def __repr__(self) -> str:
        return f"ColorShift({self.shift}, {self.log_scale})"


def robust_transforms(input_shape) -> list:
    """The default transforms for images ``(C, H, W)`` with ``H, W >= 8``: jitter by
    ``max(1, H // 14)`` pixels, scale 0.9-1.1, rotation up to 10 degrees (Lucid's set, smaller;
    no flips, which change the class of digits and text); ``[]`` for other inputs."""
    shape = tuple(input_shape)
    if len(shape) != 3 or min(shape[1:]) < 8:
        return []
    return [Jitter(max(1, shape[1] // 14)), RandomScale((0.9, 1.1)), RandomRotate(10.0)]
