"""Seed 001's square invertible nets (every layer a bijection of R^784)."""
from __future__ import annotations

from torch import nn

__all__ = ["InvertibleNet", "invertible_base", "invertible_small", "invertible_no_activations"]


class InvertibleNet(nn.Sequential):
    """``Flatten -> [Linear(d, d) -> LeakyReLU(slope)] * blocks`` (no activation if ``slope`` is None).

    Args:
        dim (int): width of every layer (784 for MNIST).
        blocks (int): number of Linear layers.
        slope (float or None): LeakyReLU negative slope; None for no activations.
        input_shape (tuple, optional): shape of one input; default ``(1, 28, 28)`` for 784.
    """

    def __init__(self, dim: int = 784, blocks: int = 4, slope=0.01, input_shape=None) -> None:
        if blocks < 1 or dim < 1:
            raise ValueError(f"`blocks` and `dim` must be positive, got {blocks}, {dim}")
        if slope is not None and not slope > 0:
            raise ValueError(f"`slope` must be > 0 (invertible) or None, got {slope}")
        layers = [nn.Flatten()]
        for _ in range(blocks):
            layers.append(nn.Linear(dim, dim))
            if slope is not None:
                layers.append(nn.LeakyReLU(slope))
        super().__init__(*layers)
        side = int(round(dim ** 0.5))
        self.input_shape = tuple(input_shape or ((1, side, side) if side * side == dim else (dim,)))


def invertible_base(dim: int = 784) -> InvertibleNet:
    """Four blocks of Linear(d, d) + LeakyReLU."""
    return InvertibleNet(dim, 4, 0.01)


def invertible_small(dim: int = 784) -> InvertibleNet:
    """One block of Linear(d, d) + LeakyReLU."""
    return InvertibleNet(dim, 1, 0.01)


def invertible_no_activations(dim: int = 784) -> InvertibleNet:
    """Four Linear(d, d), no activations."""
    return InvertibleNet(dim, 4, None)
