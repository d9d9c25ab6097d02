"""Vision Transformers for MNIST-sized images, built on timm's ``VisionTransformer``.

The seed paper fine-tunes ViT-tiny (hidden 192, 12 layers, 3 heads) on MNIST with 4x4 patches,
trained with AdamW for 32 epochs, batch 32, with an EMA of the weights. Here:

- :func:`vit_mnist` builds that architecture (any size) with 1 input channel and 4x4 patches on a
  28x28 grid; :func:`vit_mnist_small` is a CPU-sized configuration (dim 96, depth 4, 3 heads).
- :func:`load_pretrained_vit` adapts a pretrained timm checkpoint (e.g. ``vit_tiny_patch16_224``):
  the RGB patch kernel is summed to one channel and resampled from 16x16 to 4x4 with timm's
  FlexiViT resampling (``timm.layers.resample_patch_embed``), the position embeddings are
  resampled to the 7x7 grid (``timm.layers.resample_abs_pos_embed``), and a head of another
  class count is dropped.
- Offline, models are trained from scratch with :func:`~captum_invert.models.train` and
  ``TrainConfig(optimizer='adamw', ...)``; we follow AdamW and skip the EMA.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Union

import torch
from torch import Tensor

__all__ = ["vit_mnist", "vit_mnist_small", "load_pretrained_vit"]


def vit_mnist(embed_dim: int = 192, depth: int = 12, num_heads: int = 3, img_size: int = 28,
              patch_size: int = 4, in_chans: int = 1, num_classes: int = 10,
              checkpoint: Union[None, str, Path, Dict[str, Tensor]] = None):
    """A timm ``VisionTransformer`` for ``(N, in_chans, img_size, img_size)`` inputs.

    Args:
        embed_dim, depth, num_heads: transformer size (defaults: ViT-tiny).
        img_size (int): image side (28).
        patch_size (int): patch side (4: a 7x7 grid of tokens).
        in_chans (int): input channels (1).
        num_classes (int): classes (10).
        checkpoint (str, Path or dict, optional): weights to adapt with
            :func:`load_pretrained_vit` (a state dict, a file, or ``'timm:<model name>'``).

    Returns:
        timm.models.vision_transformer.VisionTransformer with ``input_shape`` set.
    """
    from timm.models.vision_transformer import VisionTransformer

    if img_size % patch_size:
        raise ValueError(f"`patch_size` ({patch_size}) must divide `img_size` ({img_size})")
    model = VisionTransformer(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                              num_classes=num_classes, embed_dim=embed_dim, depth=depth,
                              num_heads=num_heads)
    model.input_shape = (in_chans, img_size, img_size)
    if checkpoint is not None:
        load_pretrained_vit(model, checkpoint)
    return model


def vit_mnist_small(**kw):
    """The CPU-sized ViT of the benchmarks: dim 96, depth 4, 3 heads, 4x4 patches."""
    kw.setdefault("embed_dim", 96)
    kw.setdefault("depth", 4)
    kw.setdefault("num_heads", 3)
    return vit_mnist(**kw)


def load_pretrained_vit(model, checkpoint) -> Dict[str, list]:
    """Load a (differently shaped) pretrained ViT checkpoint into ``model``.

    Args:
        model: a timm ``VisionTransformer``.
        checkpoint: a state dict, a path to one, or ``'timm:<name>'`` (downloads through timm;
            needs internet).

    Returns:
        dict: ``{'missing': [...], 'unexpected': [...]}`` keys of the non-strict load.
    """
    from timm.layers import resample_abs_pos_embed, resample_patch_embed

    if isinstance(checkpoint, str) and checkpoint.startswith("timm:"):
        import timm

        sd = timm.create_model(checkpoint[5:], pretrained=True).state_dict()
    elif isinstance(checkpoint, (str, Path)):
        sd = torch.load(checkpoint, map_location="cpu", weights_only=True)
    elif isinstance(checkpoint, dict):
        sd = dict(checkpoint)
    else:
        raise ValueError("`checkpoint` must be a state dict, a path or 'timm:<name>'")
    own = model.state_dict()
    w = sd.get("patch_embed.proj.weight")
    if w is not None:
        tgt = own["patch_embed.proj.weight"]
        if w.shape[1] != tgt.shape[1]:
            if tgt.shape[1] != 1:
                raise ValueError(f"cannot map {w.shape[1]} input channels to {tgt.shape[1]}")
            w = w.sum(1, keepdim=True)
        if w.shape[-2:] != tgt.shape[-2:]:
            w = resample_patch_embed(w, list(tgt.shape[-2:]))
        sd["patch_embed.proj.weight"] = w
    pe = sd.get("pos_embed")
    if pe is not None and pe.shape != own["pos_embed"].shape:
        grid = model.patch_embed.grid_size
        sd["pos_embed"] = resample_abs_pos_embed(pe, list(grid), num_prefix_tokens=model.num_prefix_tokens)
    for k in ("head.weight", "head.bias"):
        if k in sd and sd[k].shape != own[k].shape:
            del sd[k]
    bad = [k for k in sd if k in own and sd[k].shape != own[k].shape]
    if bad:
        raise ValueError(f"checkpoint shapes do not fit the model for: {bad[:5]}")
    res = model.load_state_dict(sd, strict=False)
    return {"missing": list(res.missing_keys), "unexpected": list(res.unexpected_keys)}
