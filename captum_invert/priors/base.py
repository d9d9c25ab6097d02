"""The pieces of an image prior and how they compose.

A :class:`Prior` is one parameterization (how an image is made from free variables), a list of
random transforms (applied to the image before the model sees it while shaping), and a list of
penalties (added to the loss). Pieces compose with ``+``::

    prior = FourierParam() + Jitter(2) + RandomRotate(10) + TV(0.05)
"""
from __future__ import annotations

import contextlib
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

__all__ = ["PriorPart", "Parameterization", "Transform", "Penalty", "Prior", "PixelParam", "as_prior"]


class PriorPart:
    """A piece of a prior; ``a + b`` gives the :class:`Prior` holding both."""

    def __add__(self, other) -> "Prior":
        return as_prior(self) + other

    def __radd__(self, other) -> "Prior":
        if other == 0:  # sum([...])
            return as_prior(self)
        return as_prior(other) + self


class Parameterization(PriorPart):
    """Maps free variables ``z`` to images inside ``input_range``.

    Subclasses implement :meth:`init` and :meth:`image`. :meth:`setup` is called once per call of
    a method with the input shape and box, before :meth:`init`.
    """

    def setup(self, input_shape: Tuple[int, ...], input_range: Optional[Tuple[float, float]]) -> None:
        self.input_shape = tuple(input_shape)
        self.input_range = input_range

    def init(self, n: int, gen: torch.Generator, dtype=torch.float32, device="cpu") -> Tensor:
        """``n`` random starting variables (drawn on the CPU from ``gen``)."""
        raise NotImplementedError

    def image(self, z: Tensor) -> Tensor:
        """Images ``(n, *input_shape)`` of the variables ``z``."""
        raise NotImplementedError

    def from_image(self, x: Tensor) -> Optional[Tensor]:
        """Variables whose image is (close to) ``x``, for user-given ``inputs``; None if the
        parameterization cannot represent given images (then ``inputs`` are used as the solver's
        starts only)."""
        return None

    def _squash(self, raw: Tensor) -> Tensor:
        """Into the box: ``lo + (hi - lo) * sigmoid(raw)`` with a box (Lucid's choice, smooth at
        the edges), else ``raw``."""
        if self.input_range is None:
            return raw
        lo, hi = self.input_range
        return lo + (hi - lo) * torch.sigmoid(raw)

    def _unsquash(self, x: Tensor) -> Tensor:
        if self.input_range is None:
            return x
        lo, hi = self.input_range
        p = ((x - lo) / (hi - lo)).clamp(1e-4, 1 - 1e-4)
        return torch.log(p) - torch.log1p(-p)


class PixelParam(Parameterization):
    """Free pixels (no parameterization): ``x = squash(z)``; starts ``N(0, init_std^2)`` around
    the box's centre.

    Args:
        init_std (float): standard deviation of the starts (in sigmoid units with a box).
    """

    def __init__(self, init_std: float = 0.5) -> None:
        self.init_std = init_std

    def init(self, n, gen, dtype=torch.float32, device="cpu"):
        z = torch.randn((n, *self.input_shape), generator=gen, dtype=torch.float64) * self.init_std
        return z.to(dtype=dtype, device=device)

    def image(self, z):
        return self._squash(z)

    def from_image(self, x):
        return self._unsquash(x)

    def __repr__(self) -> str:
        return f"PixelParam(init_std={self.init_std})"


class Transform(PriorPart):
    """A random, differentiable image transform applied while shaping (transformation
    robustness). ``__call__(x, gen) -> x`` draws its randomness from ``gen``."""

    def __call__(self, x: Tensor, gen: torch.Generator) -> Tensor:
        raise NotImplementedError


def check_weight(weight) -> float:
    """A penalty weight: a finite number >= 0, else ValueError naming ``weight``."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (0 <= weight < float("inf")):
        raise ValueError(f"`weight` must be a finite number >= 0, got {weight!r}")
    return float(weight)


class Penalty(PriorPart):
    """A term added to the loss while shaping: ``__call__(x, z) -> (n,)`` per-sample penalty of the
    images ``x`` (untransformed) and variables ``z``. :meth:`hooks` is a context in which the
    penalty may observe the model's activations (e.g. BatchNorm inputs); :meth:`batch_term` adds a
    scalar computed from what it observed."""

    weight: float = 1.0

    def setup(self, model, log_probs, input_shape, input_range, dtype=torch.float32, device="cpu") -> None:
        """Called once when shaping starts, with the model (eval mode), its output ->
        log-probabilities map, the shape of one input, the box (or None), and the inputs' dtype
        and device."""

    def hooks(self, model) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def __call__(self, x: Tensor, z: Tensor) -> Tensor:
        return torch.zeros(len(x), dtype=x.dtype, device=x.device)

    def batch_term(self) -> Optional[Tensor]:
        return None


_OBJECTIVES = ("hinge", "ce")
_SCHEDULES = ("constant", "cosine")


class Prior(PriorPart):
    """A parameterization, transforms and penalties, and how the shaping phase runs.

    Args:
        param (Parameterization, optional): default :class:`PixelParam`.
        transforms (sequence of Transform): applied in order while shaping.
        penalties (sequence of Penalty): added to the loss.
        steps (int, optional): Adam steps of the shaping phase (default 200).
        lr (float, optional): Adam's learning rate there (default 0.05).
        copies (int, optional): augmented copies of each image per step (an augmentation
            ensemble, Plug-In Inversion's; default 1). Each copy draws its own transforms; the
            class term is their mean, and the model sees them in one batch.
        coarse (float, optional): fraction of the steps at half resolution (coarse to fine,
            DeepInversion's multi-resolution schedule): the image is average-pooled by 2 and
            upsampled before the model and the penalties see it (images of at least 8 pixels;
            default 0).
        objective (str, optional): ``'hinge'`` (default): the class term stops pushing once the
            class reaches the shaping aim, and the penalties alone shape the image after that;
            ``'ce'``: the class's cross-entropy keeps pushing past the aim for every step (with
            a cosine schedule the penalties are annealed with it), so the image keeps moving
            deeper into the class as the prior's terms improve.
        schedule (str, optional): ``'constant'`` (default) or ``'cosine'`` learning rate.
        betas (tuple of float, optional): Adam's betas (default ``(0.9, 0.999)``;
            DeepInversion uses ``(0.5, 0.9)``).
    """

    def __init__(self, param: Optional[Parameterization] = None, transforms: Sequence[Transform] = (),
                 penalties: Sequence[Penalty] = (), steps: Optional[int] = None,
                 lr: Optional[float] = None, copies: Optional[int] = None, coarse: Optional[float] = None,
                 objective: Optional[str] = None, schedule: Optional[str] = None,
                 betas: Optional[Tuple[float, float]] = None) -> None:
        if param is not None and not isinstance(param, Parameterization):
            raise ValueError(f"`param` must be a Parameterization, got {type(param).__name__}")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise ValueError(f"`steps` must be an int >= 1, got {steps!r}")
        if lr is not None and not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"`lr` must be a number > 0, got {lr!r}")
        if copies is not None and (isinstance(copies, bool) or not isinstance(copies, int) or copies < 1):
            raise ValueError(f"`copies` must be an int >= 1, got {copies!r}")
        if coarse is not None and not (isinstance(coarse, (int, float)) and 0 <= coarse < 1):
            raise ValueError(f"`coarse` must be a fraction in [0, 1), got {coarse!r}")
        if objective is not None and objective not in _OBJECTIVES:
            raise ValueError(f"`objective` must be one of {_OBJECTIVES}, got {objective!r}")
        if schedule is not None and schedule not in _SCHEDULES:
            raise ValueError(f"`schedule` must be one of {_SCHEDULES}, got {schedule!r}")
        if betas is not None and not (isinstance(betas, (tuple, list)) and len(betas) == 2
                                      and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas)):
            raise ValueError(f"`betas` must be a pair of numbers in [0, 1), e.g. (0.5, 0.9), got {betas!r}")
        self.param = param
        self.transforms: List[Transform] = list(transforms)
        self.penalties: List[Penalty] = list(penalties)
        self.steps, self.lr = steps, lr
        self.copies, self.coarse, self.objective, self.schedule = copies, coarse, objective, schedule
        self.betas = tuple(betas) if betas is not None else None

    def _options(self) -> dict:
        return {k: getattr(self, k) for k in ("steps", "lr", "copies", "coarse", "objective", "schedule", "betas")}

    def __add__(self, other) -> "Prior":
        o = as_prior(other)
        if self.param is not None and o.param is not None:
            raise ValueError(f"a prior has one parameterization; got {self.param!r} and {o.param!r}")
        mine, theirs = self._options(), o._options()
        opts = {k: mine[k] if mine[k] is not None else theirs[k] for k in mine}
        return Prior(self.param or o.param, self.transforms + o.transforms, self.penalties + o.penalties, **opts)

    def with_options(self, steps: Optional[int] = None, lr: Optional[float] = None, **options) -> "Prior":
        """The same prior with other shaping options (``steps``, ``lr``, ``copies``, ``coarse``,
        ``objective``, ``schedule``, ``betas``); options not given are kept."""
        opts = self._options()
        bad = set(options) - set(opts)
        if bad:
            raise ValueError(f"unknown shaping option(s) {sorted(bad)}; accepted: {sorted(opts)}")
        opts.update({k: v for k, v in dict(options, steps=steps, lr=lr).items() if v is not None})
        return Prior(self.param, self.transforms, self.penalties, **opts)

    def parameterization(self) -> Parameterization:
        return self.param if self.param is not None else PixelParam()

    def transform(self, x: Tensor, gen: torch.Generator) -> Tensor:
        for t in self.transforms:
            x = t(x, gen)
        return x

    @contextlib.contextmanager
    def hooks(self, model: nn.Module):
        with contextlib.ExitStack() as stack:
            for p in self.penalties:
                stack.enter_context(p.hooks(model))
            yield

    def penalty(self, x: Tensor, z: Tensor) -> Tensor:
        """Per-sample ``(n,)`` penalty plus the batch terms. A batch term is a mean over the
        batch (like the class term of one sample), so each sample carries it whole: its weight
        against the class term does not depend on the batch size."""
        tot = torch.zeros(len(x), dtype=x.dtype, device=x.device)
        for p in self.penalties:
            tot = tot + p(x, z)
            b = p.batch_term()
            if b is not None:
                tot = tot + b
        return tot

    def __repr__(self) -> str:
        parts = [repr(self.parameterization())] + [repr(t) for t in self.transforms] + [
            repr(p) for p in self.penalties]
        opts = ", ".join(f"{k}={v!r}" for k, v in self._options().items() if v is not None)
        return " + ".join(parts) + (f" ({opts})" if opts else "")


def as_prior(p) -> Prior:
    """A :class:`Prior` from a prior, one of its parts, or a list of parts."""
    if isinstance(p, Prior):
        return p
    if isinstance(p, Parameterization):
        return Prior(p)
    if isinstance(p, Transform):
        return Prior(None, [p])
    if isinstance(p, Penalty):
        return Prior(None, (), [p])
    if isinstance(p, (list, tuple)):
        out = Prior(None)
        for q in p:
            out = out + q
        return out
    raise ValueError(f"`prior` must be None, 'auto', a Prior or a prior part (parameterization, "
                     f"transform, penalty) or a list of them, got {type(p).__name__}")
