"""Convolutional classifiers for 28x28 digits, and an independent judge with a reject class.

- :func:`bn_cnn`: a small BatchNorm CNN (conv-BN-ReLU-pool x 2, Linear), an audited net.
- :func:`judge_cnn`: a wider CNN with dropout and an 11th "no digit" output, trained by
  :func:`train_judge` on digits plus :func:`no_digit_images` (noise, blobs, gratings,
  checkerboards, flat images). A plain 10-way judge must name a digit for any input and so
  "reads" noise; the reject class lets it say that an inversion is no digit at all.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

__all__ = ["bn_cnn", "judge_cnn", "no_digit_images", "train_judge", "NO_DIGIT"]

#: The judge's reject class index ("no digit").
NO_DIGIT = 10


def bn_cnn(n_classes: int = 10, width: int = 16, in_chans: int = 1) -> nn.Sequential:
    """``[Conv3x3 -> BatchNorm2d -> ReLU -> MaxPool2d(2)] x 2``, Flatten, Linear; for
    ``(N, in_chans, 28, 28)`` inputs.

    Args:
        n_classes (int): outputs.
        width (int): channels of the first block (doubled once).
        in_chans (int): input channels.

    Returns:
        nn.Sequential with ``input_shape`` set.
    """
    w2 = 2 * width
    net = nn.Sequential(
        nn.Conv2d(in_chans, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, w2, 3, padding=1, bias=False), nn.BatchNorm2d(w2), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(w2 * 7 * 7, n_classes),
    )
    net.input_shape = (in_chans, 28, 28)
    return net


def judge_cnn(n_classes: int = 11, variant: int = 0) -> nn.Sequential:
    """The judge: two 5x5 conv layers with max pooling (LeNet-like, no BatchNorm), dropout, and
    ``n_classes`` outputs (10 digits + :data:`NO_DIGIT`). Its architecture differs from every
    audited net of the benchmarks on purpose. ``variant=1`` is a second judge of another
    architecture (three 3x3 convolutions, GELU), for agreement across judges
    (:func:`~captum_invert.metrics.judge_agreement`)."""
    if variant == 1:
        net = nn.Sequential(
            nn.Conv2d(1, 24, 3, padding=1), nn.GELU(), nn.Conv2d(24, 24, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(24, 48, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Dropout(0.3), nn.Linear(48 * 7 * 7, 96), nn.GELU(), nn.Dropout(0.3),
            nn.Linear(96, n_classes),
        )
    elif variant == 0:
        net = nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2), nn.ELU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ELU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * 7 * 7, 128), nn.ELU(), nn.Dropout(0.3),
            nn.Linear(128, n_classes),
        )
    else:
        raise ValueError(f"`variant` must be 0 or 1, got {variant!r}")
    net.input_shape = (1, 28, 28)
    return net


def no_digit_images(n: int, size: int = 28, generator: Optional[torch.Generator] = None) -> Tensor:
    """``(n, 1, size, size)`` images in ``[0, 1]`` that are no digit: uniform, Gaussian and sparse
    noise of random amplitude, smooth random blobs, sinusoidal gratings, checkerboards and
    flat grey images (an equal share of each kind), optionally blended with noise.

    Args:
        n (int): number of images.
        size (int): image side.
        generator (torch.Generator, optional): reproducibility.

    Returns:
        Tensor: ``(n, 1, size, size)`` float32.
    """
    g = generator or torch.Generator().manual_seed(0)
    r = lambda *s: torch.rand(s, generator=g)  # noqa: E731
    kinds = torch.arange(n) % 7
    out = torch.empty(n, size, size)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    for i, k in enumerate(kinds.tolist()):
        a = float(r(1)) * 0.9 + 0.1
        if k == 0:
            img = r(size, size) * a
        elif k == 1:
            img = (torch.randn((size, size), generator=g) * a * 0.5 + float(r(1))).clamp(0, 1)
        elif k == 2:
            img = (r(size, size) < 0.05 + 0.3 * float(r(1))).float() * a
        elif k == 3:  # smooth blobs: a few Gaussians
            img = torch.zeros(size, size)
            for _ in range(int(r(1) * 4) + 1):
                c = r(2) * 2 - 1
                s = float(r(1)) * 0.5 + 0.1
                img += torch.exp(-((xx - c[0]) ** 2 + (yy - c[1]) ** 2) / (2 * s * s))
            img = img / img.max() * a
        elif k == 4:  # gratings
            th, f, ph = float(r(1)) * math.pi, float(r(1)) * 12 + 2, float(r(1)) * 2 * math.pi
            img = 0.5 + 0.5 * torch.sin(f * (xx * math.cos(th) + yy * math.sin(th)) + ph)
            img = img * a
        elif k == 5:  # checkerboards
            p = int(r(1) * 6) + 1
            img = ((torch.arange(size)[:, None] // p + torch.arange(size)[None] // p) % 2).float() * a
        else:
            img = torch.full((size, size), float(r(1)))
        if float(r(1)) < 0.3:
            img = (img + 0.3 * r(size, size)).clamp(0, 1)
        out[i] = img
    return out[:, None]


def train_judge(data: TensorDataset, n_reject: Optional[int] = None, epochs: int = 12, seed: int = 0,
                cache: bool = True, progress: bool = False, variant: int = 0) -> nn.Module:
    """Train :func:`judge_cnn` on ``data`` (digits, labels 0-9) plus ``n_reject`` images of
    :func:`no_digit_images` labelled :data:`NO_DIGIT` (default: a tenth of ``len(data)``), with
    Adam (cached like :func:`~captum_invert.models.train`).

    Args:
        data (TensorDataset): ``(images (N, 1, 28, 28) in [0, 1], labels (N,))``.
        n_reject (int, optional): number of no-digit images.
        epochs (int): epochs.
        seed (int): seed of the reject images and the training.
        cache (bool): use the weight cache.
        progress (bool): show a progress bar.
        variant (int): the judge's architecture (:func:`judge_cnn`).

    Returns:
        nn.Module: the judge in eval mode (11 outputs).
    """
    from .training import TrainConfig, train

    x, y = data.tensors
    n_reject = len(x) // 10 if n_reject is None else n_reject
    xr = no_digit_images(n_reject, x.shape[-1], torch.Generator().manual_seed(seed + 1))
    xs = torch.cat([x, xr])
    ys = torch.cat([y, torch.full((n_reject,), NO_DIGIT, dtype=y.dtype)])
    return train(judge_cnn(variant=variant), TensorDataset(xs, ys),
                 TrainConfig(epochs=epochs, lr=1e-3, optimizer="adam", batch_size=64, seed=seed),
                 cache=cache, progress=progress)
