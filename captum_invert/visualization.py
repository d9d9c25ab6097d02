"""Figures: grids of inversions per class with their probabilities, singular spectra."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

__all__ = ["plot_inversion_grid", "plot_singular_spectra"]


def _as_image(x: Tensor, value_range=None):
    x = x.detach().cpu().double()
    if x.dim() == 1:
        side = int(round(x.numel() ** 0.5))
        x = x.reshape(side, side) if side * side == x.numel() else x[None]
    if x.dim() == 3:
        x = x[0] if x.shape[0] == 1 else x.permute(1, 2, 0)
    lo, hi = (float(x.min()), float(x.max())) if value_range is None else value_range
    x = x.clamp(lo, hi)
    return ((x - lo) / (hi - lo if hi > lo else 1.0)).numpy()


def plot_inversion_grid(
    rows: Sequence[Tuple[str, Tensor, Optional[Tensor]]],
    class_names: Optional[Sequence[str]] = None,
    title: Optional[str] = None,
    cell: float = 1.0,
    value_range: Optional[Tuple[float, float]] = None,
):
    """A grid like the seed paper's Fig. 3: one row per method or model, one column per class.

    Each image is min-max scaled for display (inversions are often far outside the pixel range),
    or shown on a fixed ``value_range``, and captioned with its target probability when given.

    Args:
        rows (sequence): ``(row_label, images, probs)`` with ``images`` of shape ``(C, ...)``
            (one per class, image-shaped or flat squares) and ``probs`` ``(C,)`` or None.
        class_names (sequence of str, optional): column titles; default ``0..C-1``.
        title (str, optional): figure title.
        cell (float): inches per image.
        value_range (tuple, optional): ``(lo, hi)`` shown as black and white (e.g. the pixel
            box); default: each image min-max scaled.

    Returns:
        matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("`rows` must hold at least one (label, images, probs) row")
    ncol = len(rows[0][1])
    names = list(class_names) if class_names is not None else [str(i) for i in range(ncol)]
    fig, axes = plt.subplots(len(rows), ncol, figsize=(cell * ncol + 1.2, cell * 1.25 * len(rows)),
                             squeeze=False)
    for r, (label, imgs, probs) in enumerate(rows):
        if len(imgs) != ncol:
            raise ValueError(f"row {label!r} has {len(imgs)} images, expected {ncol}")
        for c in range(ncol):
            ax = axes[r][c]
            ax.imshow(_as_image(imgs[c], value_range), cmap="gray", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if probs is not None:
                ax.set_xlabel(f"p={float(probs[c]):.3f}", fontsize=7, labelpad=1)
            if r == 0:
                ax.set_title(names[c], fontsize=9)
            if c == 0:
                ax.set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_singular_spectra(model: nn.Module, cond_num: Optional[float] = 100.0):
    """Singular values of every ``nn.Linear`` of ``model`` (log scale), with the cut
    ``sigma_1 / cond_num`` that :class:`~captum_invert.BackwardPassInversion` applies.

    Returns:
        matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    layers: List[Tuple[str, nn.Linear]] = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not layers:
        raise ValueError("`model` has no nn.Linear layer")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, m in layers:
        s = torch.linalg.svdvals(m.weight.detach().double().cpu())
        line, = ax.semilogy(s.numpy(), label=f"{name} {tuple(m.weight.shape)}")
        if cond_num:
            ax.axhline(float(s[0]) / cond_num, color=line.get_color(), ls=":", lw=0.8)
    ax.set_xlabel("index")
    ax.set_ylabel("singular value")
    ax.set_title("singular spectra (dotted: sigma_1 / cond_num)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
