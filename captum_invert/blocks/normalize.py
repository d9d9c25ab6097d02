"""Pixel-space inputs for a model that expects normalised ones.

timm and torchvision models take ``(x - mean) / std`` per channel, with ``x`` a pixel image in
``[0, 1]``. :class:`Normalize` is that map as the first module of the model the methods see, so
the box, the priors and the returned images stay in pixel space. It is an elementwise affine
map: the analytic back-pass inverts it (registered in :mod:`.activations`) and the LP route
linearises it like a BatchNorm (:data:`.piecewise.AFFINE_TYPES`).
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple, Union

import torch
from torch import Tensor, nn

__all__ = ["Normalize", "normalized", "IMAGENET_MEAN", "IMAGENET_STD"]

#: the ImageNet statistics that timm and torchvision use by default
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Stat = Union[float, Sequence[float], Tensor]


def _values(v: Stat, name: str, channels: int) -> Tuple[float, ...]:
    if isinstance(v, Tensor):
        v = v.detach().reshape(-1).tolist()
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = (float(v),)
    try:
        vals = tuple(float(t) for t in v)
    except (TypeError, ValueError):
        raise ValueError(f"`normalize`: {name} must be a number or a sequence of numbers (one per channel), "
                         f"got {v!r}") from None
    if len(vals) not in (1, channels):
        raise ValueError(f"`normalize`: {name} has {len(vals)} values but the input has {channels} channel(s) "
                         f"(input_shape[0]); give one value, or one per channel")
    if not all(math.isfinite(t) for t in vals):
        raise ValueError(f"`normalize`: {name} must be finite, got {vals}")
    return vals


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel (dimension 1 of ``(N, C, ...)``).

    Args:
        mean (float or sequence of float): one value, or one per channel.
        std (float or sequence of float): one positive value, or one per channel.
        input_shape (tuple of int): one input's shape, ``(C, ...)``; flat ``(N, prod(shape))``
            tensors (as the back-pass chain passes them) are reshaped to it.
    """

    def __init__(self, mean: Stat, std: Stat, input_shape: Sequence[int]) -> None:
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        c = self.input_shape[0] if len(self.input_shape) > 1 else 1
        m, s = _values(mean, "mean", c), _values(std, "std", c)
        if not all(t > 0 for t in s):
            raise ValueError(f"`normalize`: std must be positive, got {s}")
        tail = (1,) * (len(self.input_shape) - 1)
        width = max(len(m), len(s))
        self.register_buffer("mean", torch.tensor(m, dtype=torch.float64).expand(width).reshape(width, *tail).clone())
        self.register_buffer("std", torch.tensor(s, dtype=torch.float64).expand(width).reshape(width, *tail).clone())

    def _shaped(self, x: Tensor):
        flat = x.dim() == 2 and len(self.input_shape) > 1
        return (x.reshape(len(x), *self.input_shape) if flat else x), flat

    def forward(self, x: Tensor) -> Tensor:
        y, flat = self._shaped(x)
        y = (y - self.mean.to(y)) / self.std.to(y)
        return y.reshape(x.shape) if flat else y

    def inverse(self, y: Tensor) -> Tensor:
        """Pixel values of normalised ``y`` (same shape)."""
        x, flat = self._shaped(y)
        x = x * self.std.to(x) + self.mean.to(x)
        return x.reshape(y.shape) if flat else x

    def extra_repr(self) -> str:
        r = lambda t: ", ".join(f"{v:.4g}" for v in t.reshape(-1).tolist())  # noqa: E731
        return f"mean=({r(self.mean)}), std=({r(self.std)})"


def normalized(model: nn.Module, normalize, input_shape: Sequence[int]) -> nn.Module:
    """``model`` behind its normalisation, as one module of pixel inputs
    (``nn.Sequential(Normalize, model)``; ``model`` itself when ``normalize`` is None), for
    code that trains or calls the model outside the adapter (hardening)."""
    if normalize is None:
        return model
    return nn.Sequential(Normalize(normalize[0], normalize[1], input_shape), model)
