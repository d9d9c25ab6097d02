"""Metrics of generated inputs: verification, diversity, distance to the training set."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .blocks.plan import model_mode_guard

__all__ = ["class_probabilities", "target_probability", "mean_pairwise_distance",
           "nearest_distance"]


def class_probabilities(model: nn.Module, x: Tensor, batch_size: int = 1024) -> Tensor:
    """Softmax of ``model(x)`` (or its output as is when the model ends in ``nn.Softmax``), in
    eval mode (restored afterwards), shape ``(N, C)``."""
    from ._core.base import InversionMethod

    out = []
    with model_mode_guard(model), torch.no_grad():
        last = [m for m in model.modules() if next(iter(m.children()), None) is None]
        kind = "probs" if last and isinstance(last[-1], nn.Softmax) else (
            "log_probs" if last and isinstance(last[-1], nn.LogSoftmax) else "logits")
        for i in range(0, len(x), batch_size):
            out.append(InversionMethod.log_probs_from(model(x[i:i + batch_size]), kind).exp())
    return torch.cat(out) if out else torch.zeros(0)


def target_probability(model: nn.Module, x: Tensor, labels) -> Tensor:
    """``(N,)`` probability the model gives each sample's label."""
    p = class_probabilities(model, x)
    lab = torch.as_tensor(labels, device=p.device).reshape(-1).expand(len(p))
    return p.gather(1, lab[:, None]).squeeze(1)


def mean_pairwise_distance(x: Tensor) -> float:
    """Mean L2 distance between distinct samples of ``x`` ``(N, ...)`` (0 for N < 2): the
    diversity of a set of inversions."""
    n = len(x)
    if n < 2:
        return 0.0
    d = torch.cdist(x.reshape(n, -1).double(), x.reshape(n, -1).double())
    return float(d.sum() / (n * (n - 1)))


def nearest_distance(x: Tensor, reference: Tensor, batch_size: int = 512,
                     labels: Optional[Tensor] = None, reference_labels: Optional[Tensor] = None) -> Tensor:
    """``(N,)`` L2 distance from each sample to its nearest reference (e.g. training) image;
    with labels, only references of the same label count.

    Args:
        x (Tensor): ``(N, ...)`` samples.
        reference (Tensor): ``(M, ...)`` reference images, same per-item shape.
        labels, reference_labels (Tensor, optional): ``(N,)`` and ``(M,)``.

    Returns:
        Tensor: ``(N,)`` float64.
    """
    xf = x.reshape(len(x), -1).double()
    rf = reference.reshape(len(reference), -1).double().to(xf.device)
    out = torch.empty(len(xf), dtype=torch.float64)
    for i in range(0, len(xf), batch_size):
        d = torch.cdist(xf[i:i + batch_size], rf)
        if labels is not None and reference_labels is not None:
            same = labels[i:i + batch_size, None].to(d.device) == reference_labels[None].to(d.device)
            d = torch.where(same, d, torch.full_like(d, float("inf")))
        out[i:i + batch_size] = d.amin(1).cpu()
    return out
