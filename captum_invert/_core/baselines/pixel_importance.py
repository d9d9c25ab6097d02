"""PixelImportance: seed 002's empirical baseline."""
from __future__ import annotations

from typing import Optional

import torch

from ..batching import batched_attribute
from ..base import InversionMethod, count_reasons

__all__ = ["PixelImportance"]


class PixelImportance(InversionMethod):
    r"""Seed 002's empirical method: score every pixel by how close the logits of an image with
    only that pixel lit come to the ideal logits, then paint the best pixels.

    The score of pixel ``i`` is ``-|| f(e_i) - z* ||_1`` with ``e_i`` the one-hot image (value
    ``on``) and ``z*`` the ideal logits (``logit_high`` for the class, ``logit_low`` elsewhere).
    The top ``k`` pixels are painted with descending intensity in ``levels`` steps (seed: 254),
    from ``on`` down; all other pixels are 0. One batched forward pass of ``n_pixels`` one-hot
    images serves every class.

    Args:
        forward_func (nn.Module or callable): the classifier.
        input_shape (tuple of int, optional): shape of one input.
    """

    @batched_attribute
    def attribute(self, inputs=None, target=None, *, n_samples: Optional[int] = None, k: int = 100,
                  levels: int = 254, on: float = 1.0, logit_high: float = 10.0,
                  logit_low: float = -10.0, min_prob: float = 0.9,
                  return_convergence_delta: bool = False, allow_unverified: bool = False):
        r"""One image per target.

        Args:
            inputs: must be None.
            target (int or sequence of int): classes.
            n_samples (int, optional): copies for an int target (deterministic).
            k (int): pixels painted.
            levels (int): intensity levels of the painted pixels.
            on (float): value of a lit pixel.
            logit_high, logit_low (float): the ideal logits.
            min_prob (float): the verification threshold.

        Returns:
            Tensor or (Tensor, Tensor): images ``(N, *input_shape)`` (and ``1 - p_target``).
        """
        if inputs is not None:
            raise ValueError("`inputs` must be None")
        n_pix = 1
        for s in self.input_shape:
            n_pix *= s
        if not (isinstance(k, int) and 1 <= k <= n_pix):
            raise ValueError(f"`k` must be an int in [1, {n_pix}], got {k!r}")
        if not (isinstance(levels, int) and levels >= 1):
            raise ValueError(f"`levels` must be an int >= 1, got {levels!r}")
        dtype, device = self.adapter.dtype_device
        with self.adapter.guard():
            kind, n_classes, _ = self._probe()
            self._need_softmax(kind, "PixelImportance")
            goal = self._parse_target(target, n_samples, n_classes, min_prob, 0.02)
            if goal.labels is None:
                raise ValueError("`target` must be class indices for PixelImportance")
            scores = self.pixel_scores(on, logit_high, logit_low, n_classes)  # (C, n_pix)
            order = scores.argsort(dim=1, descending=True)[:, :k]
            ranks = torch.arange(k, dtype=torch.float64)
            value = on * torch.floor(levels * (1 - ranks / k)).clamp_min(1) / levels
            img = torch.zeros(n_classes, n_pix, dtype=torch.float64)
            img.scatter_(1, order.cpu(), value.expand(n_classes, k))
            x = img[goal.labels].reshape(goal.n, *self.input_shape).to(dtype=dtype, device=device)
            ok, delta, _ = self._verify(x, goal, kind)
            reasons = count_reasons([f"the painted image does not reach p >= {min_prob}" if not o else ""
                                     for o in ok.tolist()])
            return self._finish(x, ok, delta, reasons, allow_unverified, return_convergence_delta,
                                "PixelImportance", goal, kind, None)

    def pixel_scores(self, on: float = 1.0, logit_high: float = 10.0, logit_low: float = -10.0,
                     n_classes: Optional[int] = None):
        """``(C, n_pixels)`` scores ``-||f(e_i) - z*_c||_1`` of every pixel for every class."""
        dtype, device = self.adapter.dtype_device
        n_pix = 1
        for s in self.input_shape:
            n_pix *= s
        eye = torch.eye(n_pix, dtype=dtype, device=device) * on
        outs = []
        with self.adapter.guard(), torch.no_grad():
            for i in range(0, n_pix, 1024):
                outs.append(self.adapter(eye[i:i + 1024].reshape(-1, *self.input_shape)).double().cpu())
        logits = torch.cat(outs)  # (n_pix, C)
        C = logits.shape[1] if n_classes is None else n_classes
        ideal = torch.full((C, C), float(logit_low), dtype=torch.float64)
        ideal.fill_diagonal_(float(logit_high))
        return -(logits[None, :, :] - ideal[:, None, :]).abs().sum(2)
