"""Penalties: total variation, L2, and BatchNorm-statistics matching (DeepInversion)."""
from __future__ import annotations

import contextlib
import warnings
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Penalty, check_weight

__all__ = ["TV", "L2", "Background", "BNStats", "Diversity", "background_value", "bn_statistics_gap",
           "batchnorm_layers"]


class TV(Penalty):
    """``weight *`` the mean absolute difference of neighbouring pixels (anisotropic total
    variation, per sample); favours piecewise-smooth images (Mahendran & Vedaldi 2015)."""

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = check_weight(weight)

    def __call__(self, x, z):
        if x.dim() < 4:
            return torch.zeros(len(x), dtype=x.dtype, device=x.device)
        dy = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
        dx = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
        return self.weight * (dx + dy)

    def __repr__(self) -> str:
        return f"TV({self.weight})"


class L2(Penalty):
    """``weight *`` the mean squared distance of the pixels to ``center`` (default 0)."""

    def __init__(self, weight: float = 1.0, center: float = 0.0) -> None:
        self.weight, self.center = check_weight(weight), center

    def __call__(self, x, z):
        return self.weight * (x - self.center).flatten(1).pow(2).mean(1)

    def __repr__(self) -> str:
        return f"L2({self.weight})"


def background_value(model, log_probs, input_shape, input_range, levels: int = 5, dtype=torch.float32,
                     device="cpu") -> float:
    """The constant image the model is least sure about: of ``levels`` evenly spaced values of
    the box ``input_range`` (its ends included), the one whose constant image has the largest
    output entropy. A blank background carries no class evidence; a trained classifier is
    unsure there and confident far from its data (on grey digit nets: black).

    Args:
        model (callable): the classifier (eval mode).
        log_probs (callable): model output -> log-probabilities ``(n, C)``.
        input_shape (tuple of int): shape of one input.
        input_range (tuple of float): the box ``(lo, hi)``.
        levels (int): number of values tried (>= 2).
        dtype, device: those of the model's inputs.

    Returns:
        float: the value.
    """
    lo, hi = float(input_range[0]), float(input_range[1])
    values = torch.linspace(lo, hi, levels, dtype=torch.float64)
    x = values.to(dtype=dtype, device=device).view(-1, *([1] * len(input_shape))).expand(-1, *input_shape)
    with torch.no_grad():
        lp = log_probs(model(x.contiguous())).double()
    entropy = -(lp.exp() * lp.clamp_min(-1e30)).sum(1).cpu()
    entropy = torch.where(torch.isfinite(entropy), entropy, torch.full_like(entropy, -1.0))
    return float(values[int(entropy.argmax())])


class Background(Penalty):
    r"""A blank background: per sample, ``weight *`` the mean absolute distance of the pixels to
    a background value, as a fraction of the box's width. The image must then show its class
    with as little change from a blank canvas as it can: strokes on a background instead of
    the large bright blobs a grey net without BatchNorm is also sure about. Without data, the
    value comes from the model (:func:`background_value`: the constant image it is least sure
    about).

    Args:
        weight (float): the term's weight.
        value (float, optional): the background; None estimates it from the model when shaping
            starts (that needs ``input_range``; without a box the term is off and warns).
    """

    def __init__(self, weight: float = 1.0, value: Optional[float] = None) -> None:
        self.weight = check_weight(weight)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not abs(value) < float("inf")):
            raise ValueError(f"Background: `value` must be None (estimated from the model) or a finite "
                             f"number, e.g. 0.0 for black, got {value!r}")
        self.value = None if value is None else float(value)
        #: the background used by the last shaping (the estimate where ``value`` is None)
        self.value_: Optional[float] = self.value
        self._width = 1.0

    def setup(self, model, log_probs, input_shape, input_range, dtype=torch.float32, device="cpu") -> None:
        self._width = 1.0 if input_range is None else float(input_range[1] - input_range[0])
        if self.value is not None:
            self.value_ = self.value
        elif input_range is None:
            self.value_ = None
            warnings.warn("Background: no `input_range`, so the background cannot be estimated and the term "
                          "is off; pass input_range=(lo, hi) or Background(weight, value=...)", UserWarning,
                          stacklevel=4)
        else:
            self.value_ = background_value(model, log_probs, input_shape, input_range, dtype=dtype, device=device)

    def __call__(self, x, z):
        if self.value_ is None:
            return torch.zeros(len(x), dtype=x.dtype, device=x.device)
        return self.weight * (x - self.value_).abs().flatten(1).mean(1) / self._width

    def __repr__(self) -> str:
        return f"Background({self.weight}{'' if self.value is None else f', value={self.value}'})"


class Diversity(Penalty):
    r"""Pushes the samples of one call apart (Lucid's diversity objective, on the images): per
    sample, ``weight *`` its mean cosine similarity to the other samples of the same target,
    the images centred on the batch mean. Samples of different targets do not interact.

    Args:
        weight (float): the term's weight.
        grid (int, optional): compare images ``(C, H, W)`` average-pooled to about ``grid x grid``
            cells (their layout, not their texture): the samples then differ in where their
            strokes lie, not in high-frequency noise. None compares the pixels.
    """

    def __init__(self, weight: float = 1.0, grid: Optional[int] = None) -> None:
        self.weight = check_weight(weight)
        if grid is not None and (isinstance(grid, bool) or not isinstance(grid, int) or grid < 1):
            raise ValueError(f"Diversity: `grid` must be None or an int >= 1, got {grid!r}")
        self.grid = grid
        self.groups: Optional[Tensor] = None  # set by the shaping loop: (n,) target ids

    def __call__(self, x, z):
        n = len(x)
        if n < 2:
            return torch.zeros(n, dtype=x.dtype, device=x.device)
        if self.grid is not None and x.dim() == 4:
            x = F.avg_pool2d(x, (max(1, x.shape[-2] // self.grid), max(1, x.shape[-1] // self.grid)))
        f = x.reshape(n, -1)
        f = f - f.mean(0, keepdim=True)
        f = f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)
        sim = f @ f.T
        same = torch.ones(n, n, dtype=torch.bool, device=x.device)
        if self.groups is not None:
            g = self.groups.to(x.device)
            same = g[:, None] == g[None, :]
        same.fill_diagonal_(False)
        cnt = same.sum(1).clamp_min(1)
        return self.weight * (sim * same).sum(1) / cnt

    def __repr__(self) -> str:
        return f"Diversity({self.weight}{'' if self.grid is None else f', grid={self.grid}'})"


def _bn_gap(inp: Tensor, bn: nn.modules.batchnorm._BatchNorm, form: str = "relative") -> Tensor:
    dims = [0] + list(range(2, inp.dim()))
    mean = inp.mean(dims)
    var = inp.var(dims, unbiased=False)
    if form == "l2":
        return (mean - bn.running_mean.to(inp)).norm() + (var - bn.running_var.to(inp)).norm()
    rv = bn.running_var.to(inp) + bn.eps
    return ((mean - bn.running_mean.to(inp)).pow(2) / rv).mean() + (torch.log(var + bn.eps) - rv.log()).pow(2).mean()


_BN_FORMS = ("relative", "l2")


def batchnorm_layers(model) -> List[nn.Module]:
    """The BatchNorm layers of ``model`` that keep running statistics (``[]`` for models that
    are no ``nn.Module``)."""
    if not isinstance(model, nn.Module):
        return []
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and m.running_mean is not None]


class BNStats(Penalty):
    r"""BatchNorm-statistics matching (Yin et al. 2020, DeepInversion): the batch's per-channel
    mean and variance at the input of every BatchNorm layer should be the layer's running
    statistics (those of the training data). A batch term (it needs several samples; a batch
    that mixes targets matches the training data's mixture best), carried whole by every sample.
    Layers without running statistics are skipped, and a model with none gives a warning.

    Args:
        weight (float): weight of the term.
        first (float): extra factor on the first BatchNorm layer executed (DeepInversion: 10),
            which sees statistics closest to the pixels.
        form (str): ``'relative'`` (default): scale-free, averaged over layers and channels,
            ``(mu - mu_run)^2 / var_run + (log var - log var_run)^2``; ``'l2'``: DeepInversion's
            ``||mu - mu_run||_2 + ||var - var_run||_2`` per layer, summed over layers.
    """

    def __init__(self, weight: float = 1.0, first: float = 1.0, form: str = "relative") -> None:
        self.weight = check_weight(weight)
        if isinstance(first, bool) or not isinstance(first, (int, float)) or not 0 <= first < float("inf"):
            raise ValueError(f"`first` must be a finite number >= 0, got {first!r}")
        if form not in _BN_FORMS:
            raise ValueError(f"`form` must be one of {_BN_FORMS}, got {form!r}")
        self.first, self.form = float(first), form
        self._terms: List[Tensor] = []
        #: the per-layer terms (floats, weight 1, first layer unscaled) of the last batch term
        self.last_layer_terms: List[float] = []

    @contextlib.contextmanager
    def hooks(self, model):
        layers = batchnorm_layers(model)
        if not layers:
            warnings.warn("BNStats: the model has no BatchNorm layer with running statistics, so the "
                          "BatchNorm-statistics term does nothing; drop BNStats from the prior (or use "
                          "prior='auto', which adds it only where it applies)", UserWarning, stacklevel=4)
        handles = [m.register_forward_pre_hook(lambda mod, i: self._terms.append(_bn_gap(i[0], mod, self.form)))
                   for m in layers]
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            self._terms = []

    def batch_term(self) -> Optional[Tensor]:
        if not self._terms:
            return None
        t = torch.stack(self._terms)
        self.last_layer_terms = [float(v) for v in t.detach()]
        w = torch.ones_like(t)
        w[0] = self.first
        t = (t * w).sum() if self.form == "l2" else (t * w).sum() / w.sum()
        self._terms = []
        return t * self.weight

    def __repr__(self) -> str:
        extra = (f", first={self.first}" if self.first != 1 else "") + (f", form={self.form!r}" if self.form != "relative" else "")
        return f"BNStats({self.weight}{extra})"


def bn_statistics_gap(model: nn.Module, x: Tensor) -> float:
    """The :class:`BNStats` gap (weight 1) of a batch ``x`` on ``model`` (eval mode, restored),
    a number >= 0 that is 0 when every BatchNorm layer sees its running statistics."""
    from ..blocks.plan import model_mode_guard

    pen = BNStats(1.0)
    with model_mode_guard(model), pen.hooks(model), torch.no_grad():
        model(x)
        t = pen.batch_term()
    return 0.0 if t is None else float(t)
