"""Feature functions that gradient methods cannot invert, and the feature perturbations of seed
003's analyses. LBP and HOG need scikit-image (``pip install captum-invert[features]``)."""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

from .metrics import normalized_reconstruction_error  # noqa: F401 - its former home

__all__ = ["lbp_features", "hog_features", "binarized", "binarize", "dropout", "drop_smallest",
           "keep_top_k", "zero_top_k", "interpolate", "sample_from_histograms"]


def _skimage():
    try:
        import skimage.feature  # noqa: F401

        return skimage.feature
    except ImportError as e:  # pragma: no cover
        raise ImportError("LBP and HOG features need scikit-image: pip install 'captum-invert[features]'") from e


def _gray(x: Tensor) -> np.ndarray:
    x = x.detach().cpu().float()
    if x.dim() == 4:
        x = x.mean(1)
    return x.numpy()


def lbp_features(x: Tensor, points: int = 8, radius: float = 1.0, cells: int = 4) -> Tensor:
    """Histograms of uniform local binary patterns over a ``cells x cells`` grid (seed 003's LBP
    at MNIST scale): ``(N, cells * cells * (points + 2))``. Not differentiable."""
    sk = _skimage()
    imgs = _gray(x)
    out = []
    for im in imgs:
        codes = sk.local_binary_pattern((im * 255).astype(np.uint8), points, radius, "uniform")
        H, W = codes.shape
        hs = []
        for i in range(cells):
            for j in range(cells):
                c = codes[i * H // cells:(i + 1) * H // cells, j * W // cells:(j + 1) * W // cells]
                hs.append(np.bincount(c.astype(int).ravel(), minlength=points + 2)[: points + 2] / max(c.size, 1))
        out.append(np.concatenate(hs))
    return torch.tensor(np.stack(out), dtype=torch.float32)


def hog_features(x: Tensor, orientations: int = 9, cell: int = 7, block: int = 2) -> Tensor:
    """Histograms of oriented gradients (scikit-image's ``hog``), ``(N, d)``. Not
    differentiable."""
    sk = _skimage()
    return torch.tensor(np.stack([
        sk.hog(im, orientations=orientations, pixels_per_cell=(cell, cell),
               cells_per_block=(block, block), feature_vector=True)
        for im in _gray(x)
    ]), dtype=torch.float32)


def binarized(feature_fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """A feature function returning ``feature_fn``'s codes binarized to {0, 1} (positive or
    not): the binary codes of seed 003."""
    def fn(x: Tensor) -> Tensor:
        return (torch.as_tensor(feature_fn(x)) > 0).float()

    return fn


# --- perturbations of feature vectors (N, d) -------------------------------------------------
def binarize(f: Tensor) -> Tensor:
    """Signs kept, every magnitude equal, the norm unchanged: ``sign(f) * ||f|| / sqrt(d)``."""
    d = f.shape[1]
    return torch.sign(f) * (f.norm(dim=1, keepdim=True) / d ** 0.5)


def dropout(f: Tensor, p: float = 0.5, gen: Optional[torch.Generator] = None) -> Tensor:
    """Zero a random fraction ``p`` of the entries, then rescale to the original norm."""
    keep = (torch.rand(f.shape, generator=gen) >= p).to(f)
    g = f * keep
    return g * (f.norm(dim=1, keepdim=True) / g.norm(dim=1, keepdim=True).clamp_min(1e-12))


def drop_smallest(f: Tensor, frac: float = 0.5) -> Tensor:
    """Zero the fraction ``frac`` of entries with the smallest magnitude (per sample)."""
    k = int(round(frac * f.shape[1]))
    if k == 0:
        return f.clone()
    idx = f.abs().argsort(dim=1)[:, :k]
    return f.scatter(1, idx, 0.0)


def keep_top_k(f: Tensor, k: int) -> Tensor:
    """Keep the ``k`` largest entries per sample, zero the rest."""
    idx = f.argsort(dim=1, descending=True)[:, k:]
    return f.scatter(1, idx, 0.0)


def zero_top_k(f: Tensor, k: int) -> Tensor:
    """Zero the ``k`` largest entries per sample."""
    idx = f.argsort(dim=1, descending=True)[:, :k]
    return f.scatter(1, idx, 0.0)


def interpolate(f1: Tensor, f2: Tensor, steps: int = 8) -> Tensor:
    """``(steps, d)`` features on the segment from ``f1`` to ``f2`` (``(d,)`` each)."""
    t = torch.linspace(0, 1, steps, dtype=f1.dtype)[:, None]
    return (1 - t) * f1[None] + t * f2[None]


def sample_from_histograms(bank: Tensor, n: int, alpha: float = 1.0,
                           gen: Optional[torch.Generator] = None) -> Tensor:
    """Random feature vectors, each dimension drawn independently from that dimension's
    empirical distribution over ``bank`` ``(M, d)`` (its histogram), scaled by ``alpha`` (seed
    003's random samples)."""
    M, d = bank.shape
    rows = torch.randint(0, M, (n, d), generator=gen)
    return alpha * bank[rows, torch.arange(d)[None, :].expand(n, d)]
