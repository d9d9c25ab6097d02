"""Colour test nets: classifiers of colour digits (``(N, 3, 32, 32)``, see
:func:`~captum_invert.datasets.colour_digits`), as users have them (a torchvision ResNet-18 with
BatchNorm, a timm ViT, a timm ConvNeXt), and colour judges of other architectures with a
"no digit" class (:data:`~captum_invert.models.cnn.NO_DIGIT`)."""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
from torch import nn
from torch.utils.data import TensorDataset

__all__ = ["COLOUR_NETS", "colour_model", "colour_judge", "train_colour_judge", "colour_no_digit_images"]

IMG = 32


def _resnet18() -> nn.Module:
    from torchvision.models import resnet18

    return resnet18(num_classes=10)


def _timm(name: str, **kw) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, num_classes=10, **kw)

    return build


#: name -> builder of a 10-class model of ``(N, 3, 32, 32)`` inputs
COLOUR_NETS: Dict[str, Callable[[], nn.Module]] = {
    "resnet18 (torchvision)": _resnet18,
    "vit (timm)": _timm("vit_tiny_patch16_224", img_size=IMG, patch_size=4, depth=4, embed_dim=96, num_heads=3),
    "convnext_atto (timm)": _timm("convnext_atto"),
}


def colour_model(name: str) -> nn.Module:
    """A fresh (untrained) colour net by name (:data:`COLOUR_NETS`), ``input_shape`` set."""
    if name not in COLOUR_NETS:
        raise ValueError(f"`name` must be one of {', '.join(COLOUR_NETS)}, got {name!r}")
    m = COLOUR_NETS[name]()
    m.input_shape = (3, IMG, IMG)
    return m


def colour_judge(n_classes: int = 11, width: int = 32, seed_arch: int = 0) -> nn.Sequential:
    """A colour judge: LeNet-like (5x5 convolutions, ELU, max pooling, dropout, no BatchNorm),
    unlike every audited colour net. ``seed_arch=1`` gives a second judge with 3x3 kernels and
    one more convolution, so that two judges differ in architecture, not only in seed."""
    w2 = 2 * width
    if seed_arch == 0:
        body = [nn.Conv2d(3, width, 5, padding=2), nn.ELU(), nn.MaxPool2d(2),
                nn.Conv2d(width, w2, 5, padding=2), nn.ELU(), nn.MaxPool2d(2)]
    else:
        body = [nn.Conv2d(3, width, 3, padding=1), nn.ELU(), nn.Conv2d(width, width, 3, padding=1), nn.ELU(),
                nn.MaxPool2d(2), nn.Conv2d(width, w2, 3, padding=1), nn.ELU(), nn.MaxPool2d(2)]
    net = nn.Sequential(*body, nn.Flatten(), nn.Dropout(0.3), nn.Linear(w2 * 8 * 8, 128), nn.ELU(),
                        nn.Dropout(0.3), nn.Linear(128, n_classes))
    net.input_shape = (3, IMG, IMG)
    return net


def colour_no_digit_images(n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``(n, 3, 32, 32)`` colour images that are no digit: the grey no-digit images
    (:func:`~captum_invert.models.cnn.no_digit_images`: noise, blobs, gratings, checkerboards,
    flat) coloured like the digits, half of them with independent noise per channel."""
    from ..datasets import colour_images
    from .cnn import no_digit_images

    g = generator or torch.Generator().manual_seed(0)
    grey = no_digit_images(n, 28, g)
    seed = int(torch.randint(0, 2 ** 31 - 1, (1,), generator=g))
    x = colour_images(grey, IMG, seed)
    noisy = torch.rand(n, generator=g) < 0.5
    amp = torch.rand((n, 1, 1, 1), generator=g)
    x[noisy] = (x[noisy] + (torch.rand((int(noisy.sum()), 3, IMG, IMG), generator=g) - 0.5) * amp[noisy]).clamp(0, 1)
    return x


def train_colour_judge(data: TensorDataset, seed_arch: int = 0, epochs: int = 10, seed: int = 0,
                       cache: bool = True, progress: bool = False) -> nn.Module:
    """Train :func:`colour_judge` on colour digits plus a tenth as many
    :func:`colour_no_digit_images` labelled ``NO_DIGIT`` (Adam, cached).

    Args:
        data (TensorDataset): ``(images (N, 3, 32, 32) in [0, 1], labels (N,))``.
        seed_arch (int): which judge architecture (0 or 1).
        epochs (int): epochs.
        seed (int): seed of the reject images and the training.
        cache (bool): use the weight cache.
        progress (bool): show a progress bar.

    Returns:
        nn.Module: the judge in eval mode (11 outputs).
    """
    from .cnn import NO_DIGIT
    from .training import TrainConfig, train

    x, y = data.tensors
    n_reject = len(x) // 10
    xr = colour_no_digit_images(n_reject, torch.Generator().manual_seed(seed + 1 + 100 * seed_arch))
    xs, ys = torch.cat([x, xr]), torch.cat([y, torch.full((n_reject,), NO_DIGIT, dtype=y.dtype)])
    return train(colour_judge(seed_arch=seed_arch), TensorDataset(xs, ys),
                 TrainConfig(epochs=epochs, lr=1e-3, optimizer="adam", batch_size=64, seed=seed + seed_arch),
                 cache=cache, progress=progress)
