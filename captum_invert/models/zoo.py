"""A zoo of timm and torchvision architectures sized for 1x32x32 digits (MNIST padded by 2), for
the zoo benchmark (``benchmarks/zoo.py``) and the family tests: the models a user brings, at a
size this CPU trains in seconds to a minute."""
from __future__ import annotations

from typing import Callable, Dict

import torch
from torch import nn

__all__ = ["ZOO", "zoo_model", "pad_to_32", "recalibrate_batchnorm"]

IMG = 32


def _tv_resnet18(tiny: bool) -> nn.Module:
    from torchvision.models.resnet import BasicBlock, ResNet

    m = ResNet(BasicBlock, [1, 1, 1, 1] if tiny else [2, 2, 2, 2], num_classes=10)
    m.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    return m


def _tv_mobilenet(tiny: bool) -> nn.Module:
    from torchvision.models import mobilenet_v3_small

    m = mobilenet_v3_small(num_classes=10, width_mult=0.25 if tiny else 0.5)
    c = m.features[0][0]
    m.features[0][0] = nn.Conv2d(1, c.out_channels, c.kernel_size, c.stride, c.padding, bias=False)
    return m


def _timm(name: str, **kw) -> Callable[[bool], nn.Module]:
    def build(tiny: bool) -> nn.Module:
        import timm

        args = dict(kw.get("tiny" if tiny else "small", {}))
        return timm.create_model(name, pretrained=False, num_classes=10, in_chans=1, **args)

    return build


def _mixer(tiny: bool) -> nn.Module:
    from timm.models.mlp_mixer import MlpMixer

    return MlpMixer(num_classes=10, img_size=IMG, in_chans=1, patch_size=4, num_blocks=1 if tiny else 4,
                    embed_dim=32 if tiny else 128)


def _bn_mlp(tiny: bool) -> nn.Module:
    w = 32 if tiny else 256
    return nn.Sequential(nn.Flatten(), nn.Linear(IMG * IMG, w), nn.BatchNorm1d(w), nn.ReLU(),
                         nn.Linear(w, w), nn.BatchNorm1d(w), nn.ReLU(), nn.Linear(w, 10))


#: name -> builder(tiny) of a 10-class model of 1x32x32 inputs
ZOO: Dict[str, Callable[[bool], nn.Module]] = {
    "resnet18 (torchvision)": _tv_resnet18,
    "mobilenet_v3_small (torchvision)": _tv_mobilenet,
    "efficientnet (timm)": lambda tiny: _timm("tinynet_e" if tiny else "efficientnet_b0")(tiny),
    "convnext_atto (timm)": _timm("convnext_atto", tiny={"depths": (1, 1, 1, 1), "dims": (16, 32, 64, 128)}),
    "vit (timm)": _timm("vit_tiny_patch16_224",
                        small={"img_size": IMG, "patch_size": 4, "depth": 4, "embed_dim": 96, "num_heads": 3},
                        tiny={"img_size": IMG, "patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2}),
    "deit distilled (timm)": _timm("deit_tiny_distilled_patch16_224",
                                   small={"img_size": IMG, "patch_size": 4, "depth": 4, "embed_dim": 96,
                                          "num_heads": 3},
                                   tiny={"img_size": IMG, "patch_size": 8, "depth": 1, "embed_dim": 32,
                                         "num_heads": 2}),
    "mlp-mixer (timm)": _mixer,
    "swin (timm)": _timm("swin_tiny_patch4_window7_224",
                         small={"img_size": IMG, "window_size": 4, "embed_dim": 48, "depths": (2, 2),
                                "num_heads": (3, 6)},
                         tiny={"img_size": IMG, "window_size": 4, "embed_dim": 16, "depths": (1, 1),
                               "num_heads": (1, 2)}),
    "bn-mlp": _bn_mlp,
}


def zoo_model(name: str, tiny: bool = False) -> nn.Module:
    """A fresh (untrained) zoo model of ``(N, 1, 32, 32)`` inputs and 10 logits; ``tiny`` for
    tests. ``input_shape`` is set on it."""
    if name not in ZOO:
        raise ValueError(f"`name` must be one of {', '.join(ZOO)}, got {name!r}")
    m = ZOO[name](tiny)
    m.input_shape = (1, IMG, IMG)
    return m


def pad_to_32(x: torch.Tensor) -> torch.Tensor:
    """``(N, 1, 28, 28)`` digits zero-padded to ``(N, 1, 32, 32)`` (LeNet's input size)."""
    return nn.functional.pad(x, (2, 2, 2, 2))


def recalibrate_batchnorm(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics as the plain average over ``images``
    (one pass in train mode, no gradient). After a short training run, running averages with a
    small momentum (torchvision's MobileNetV3 uses 0.01) are still far from the data, and the
    eval-mode model is at chance. Returns the model in eval mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model.eval()
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            model(images[i:i + batch_size])
    for m, mom in zip(bns, saved):
        m.momentum = mom
    return model.eval()
