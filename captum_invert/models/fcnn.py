"""Fully connected classifiers of the seed papers."""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from torch import nn

__all__ = ["FCNN", "seed_fcnn", "SLP", "MLP", "SEED_DEPTHS"]

_ACTIVATIONS = {
    "selu": nn.SELU,
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "relu": nn.ReLU,
    "identity": nn.Identity,
}

#: Hidden widths of the seed paper's 1-, 2- and 6-layer nets (inputs and the 10 classes excluded).
SEED_DEPTHS = {1: (), 2: (128,), 6: (512, 256, 128, 64, 32)}


class FCNN(nn.Sequential):
    """``Flatten -> [Linear -> activation] * L`` with optional activation after the last Linear.

    Args:
        widths (sequence of int): ``(in_features, hidden..., out_features)``, at least two.
        activation (str or callable): a name in ``selu, leaky_relu, elu, tanh, sigmoid, relu,
            identity`` or a zero-argument callable returning a module.
        final_activation (bool): put the activation after the last Linear too (the seed paper
            does, with SELU). Default: True.
        input_shape (tuple, optional): shape of one input, e.g. ``(1, 28, 28)``; stored as
            ``self.input_shape`` for the inversion methods. Default: ``(widths[0],)``.
    """

    def __init__(
        self,
        widths: Sequence[int],
        activation: Union[str, Callable[[], nn.Module]] = "selu",
        final_activation: bool = True,
        input_shape: Optional[Tuple[int, ...]] = None,
    ) -> None:
        widths = tuple(int(w) for w in widths)
        if len(widths) < 2 or min(widths) < 1:
            raise ValueError(f"`widths` needs at least two positive ints, got {widths}")
        if isinstance(activation, str):
            if activation not in _ACTIVATIONS:
                raise ValueError(
                    f"`activation` must be one of {sorted(_ACTIVATIONS)} or a callable, "
                    f"got {activation!r}"
                )
            act = _ACTIVATIONS[activation]
        elif callable(activation):
            act = activation
        else:
            raise ValueError(f"`activation` must be a name or a callable, got {activation!r}")
        layers = [nn.Flatten()]
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(a, b))
            if final_activation or i < len(widths) - 2:
                layers.append(act())
        super().__init__(*layers)
        if input_shape is None:
            input_shape = (widths[0],)
        if int(torch.tensor(input_shape).prod()) != widths[0]:
            raise ValueError(f"`input_shape` {input_shape} does not hold {widths[0]} values")
        self.widths = widths
        self.input_shape = tuple(input_shape)


def seed_fcnn(depth: int, in_features: int = 784, n_classes: int = 10, input_shape=None) -> FCNN:
    """The seed paper's SELU nets: a SELU after every Linear, the last one included.

    Args:
        depth (int): number of Linear layers, 1, 2 or 6 (widths in :data:`SEED_DEPTHS`).
        in_features (int): input size (784 for 28x28 images).
        n_classes (int): number of classes.
        input_shape (tuple, optional): e.g. ``(1, 28, 28)``; default: a square image when
            ``in_features`` is a square, else ``(in_features,)``.

    Returns:
        FCNN: the untrained net.
    """
    if depth not in SEED_DEPTHS:
        raise ValueError(f"`depth` must be one of {sorted(SEED_DEPTHS)}, got {depth!r}")
    if input_shape is None:
        side = int(round(in_features ** 0.5))
        input_shape = (1, side, side) if side * side == in_features else (in_features,)
    return FCNN((in_features, *SEED_DEPTHS[depth], n_classes), "selu", True, input_shape)


def SLP(in_features: int = 784, n_classes: int = 10, input_shape=None) -> FCNN:
    """Seed 002's single-layer perceptron: one Linear, logits out."""
    side = int(round(in_features ** 0.5))
    shape = input_shape or ((1, side, side) if side * side == in_features else (in_features,))
    return FCNN((in_features, n_classes), "identity", False, shape)


def MLP(in_features: int = 784, n_classes: int = 10, hidden: int = 30, input_shape=None) -> FCNN:
    """Seed 002's MLP: two hidden layers of 30 with LeakyReLU (alpha 0.01), logits out."""
    side = int(round(in_features ** 0.5))
    shape = input_shape or ((1, side, side) if side * side == in_features else (in_features,))
    return FCNN((in_features, hidden, hidden, n_classes), "leaky_relu", False, shape)
