"""Registry of invertible elementwise modules: module type -> forward, inverse, output range.

Supporting a new activation is one call to :func:`register_activation`. Every entry works on
float64 tensors and reads its parameters from the module instance (LeakyReLU's slope, ELU's
alpha, ...). ``output_range`` is the open interval the module maps R onto; the inverse is
defined exactly there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple, Type

import torch
from torch import Tensor, nn

__all__ = [
    "ElementwiseInverse",
    "register_activation",
    "get_inverse",
    "is_invertible",
    "registered_types",
    "interior",
    "invert",
]

_SELU_LAMBDA = 1.0507009873554804934193349852946
_SELU_ALPHA = 1.6732632423543772848170429916717

Range = Tuple[Tensor, Tensor]


@dataclass(frozen=True)
class ElementwiseInverse:
    """One registry entry.

    Attributes:
        forward: ``(module, y) -> f(y)``, the module's map in float64.
        inverse: ``(module, y) -> f^{-1}(y)``, defined on ``output_range``.
        output_range: ``module -> (lo, hi)``, tensors broadcastable to one feature vector
            (``-inf`` / ``inf`` where unbounded); the image of R.
        check: ``module -> None``; raises ``ValueError`` when this instance is not invertible
            (e.g. LeakyReLU with slope 0).
    """

    forward: Callable[[nn.Module, Tensor], Tensor]
    inverse: Callable[[nn.Module, Tensor], Tensor]
    output_range: Callable[[nn.Module], Range]
    check: Callable[[nn.Module], None] = lambda m: None


_REGISTRY: Dict[Type[nn.Module], ElementwiseInverse] = {}


def register_activation(module_type: Type[nn.Module], entry: ElementwiseInverse) -> None:
    """Register (or replace) the inverse of an elementwise, strictly monotone module type."""
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(f"`module_type` must be an nn.Module subclass, got {module_type!r}")
    _REGISTRY[module_type] = entry


def get_inverse(module: nn.Module) -> Optional[ElementwiseInverse]:
    """The entry for ``type(module)`` (exact type first, then base classes), or None."""
    entry = _REGISTRY.get(type(module))
    if entry is None:
        for t, e in _REGISTRY.items():
            if isinstance(module, t):
                return e
    return entry


def is_invertible(module: nn.Module) -> bool:
    """True if the module has a registry entry and this instance passes its check."""
    e = get_inverse(module)
    if e is None:
        return False
    try:
        e.check(module)
    except ValueError:
        return False
    return True


def registered_types() -> Tuple[Type[nn.Module], ...]:
    return tuple(_REGISTRY)


def interior(entry: ElementwiseInverse, module: nn.Module, margin: float, like: Tensor) -> Range:
    """The output range shrunk by ``margin`` at each bounded end.

    A bound ``lo`` moves to ``lo + margin * (f(0) - lo)``: ``margin`` is the fraction of the
    distance between the value at 0 and the asymptote, the same rule for every activation (for
    SELU, ELU and Sigmoid it floors the pre-activation near ``log(margin)``).

    Returns:
        (Tensor, Tensor): ``lo, hi`` in ``like``'s dtype and device.
    """
    lo, hi = (t.to(like) for t in entry.output_range(module))
    f0 = entry.forward(module, torch.zeros((), dtype=like.dtype, device=like.device))
    lo_m = torch.where(torch.isfinite(lo), lo + margin * (f0 - lo), lo)
    hi_m = torch.where(torch.isfinite(hi), hi - margin * (hi - f0), hi)
    return lo_m, hi_m


def invert(module: nn.Module, y: Tensor) -> Tensor:
    """The registry inverse of ``module`` at ``y``, checked: raises ``ValueError`` naming the
    module and its range when ``y`` leaves the range (where the inverse is undefined)."""
    entry = get_inverse(module)
    if entry is None:
        raise ValueError(f"{type(module).__name__} has no registered inverse")
    entry.check(module)
    lo, hi = (t.to(y) for t in entry.output_range(module))
    if not bool(((y > lo) & (y < hi)).all()):
        raise ValueError(
            f"{type(module).__name__}: value outside its range ({float(lo.min()):.6g}, "
            f"{float(hi.max()):.6g}); the inverse is undefined there"
        )
    return entry.inverse(module, y)


def _t(v: float) -> Tensor:
    return torch.tensor(float(v), dtype=torch.float64)


_INF = float("inf")


def _unbounded(m):
    return _t(-_INF), _t(_INF)


def _identity_entry() -> ElementwiseInverse:
    return ElementwiseInverse(lambda m, y: y, lambda m, y: y, _unbounded)


def _selu_inv(m, y):
    # y >= 0: y / lambda ; y < 0: log(1 + y / (lambda alpha))
    return torch.where(y >= 0, y / _SELU_LAMBDA,
                       torch.log1p(torch.clamp(y, max=0.0) / (_SELU_LAMBDA * _SELU_ALPHA)))


def _elu_inv(alpha):
    def inv(m, y):
        a = alpha(m)
        return torch.where(y >= 0, y, torch.log1p(torch.clamp(y, max=0.0) / a))

    return inv


def _leaky_check(m):
    if not m.negative_slope > 0:
        raise ValueError(
            f"LeakyReLU(negative_slope={m.negative_slope}) is not invertible: the slope must be > 0"
        )


def _alpha_check(name):
    def check(m):
        if not getattr(m, name) > 0:
            raise ValueError(f"{type(m).__name__}({name}={getattr(m, name)}) is not invertible")

    return check


def _softplus_inv(m, y):
    # inverse of log1p(exp(beta x)) / beta, linear above threshold
    by = m.beta * y
    return torch.where(by > m.threshold, y,
                       torch.log(-torch.expm1(-by.clamp_min(1e-300))) / m.beta + y)


def _prelu_check(m):
    if not bool((m.weight > 0).all()):
        raise ValueError("PReLU is invertible only with positive slopes")


def _prelu_fwd(m, y):
    w = m.weight.detach().to(y)
    return torch.where(y >= 0, y, w * y)


def _prelu_inv(m, y):
    w = m.weight.detach().to(y)
    return torch.where(y >= 0, y, y / w)


register_activation(nn.Identity, _identity_entry())
register_activation(nn.Dropout, _identity_entry())  # eval mode only (checked by the plan)
register_activation(
    nn.SELU,
    ElementwiseInverse(lambda m, y: torch.selu(y), _selu_inv,
                       lambda m: (_t(-_SELU_LAMBDA * _SELU_ALPHA), _t(_INF))),
)
register_activation(
    nn.ELU,
    ElementwiseInverse(lambda m, y: nn.functional.elu(y, m.alpha), _elu_inv(lambda m: m.alpha),
                       lambda m: (_t(-m.alpha), _t(_INF)), _alpha_check("alpha")),
)
register_activation(
    nn.CELU,
    ElementwiseInverse(lambda m, y: nn.functional.celu(y, m.alpha),
                       lambda m, y: torch.where(y >= 0, y, m.alpha * torch.log1p(
                           torch.clamp(y, max=0.0) / m.alpha)),
                       lambda m: (_t(-m.alpha), _t(_INF)), _alpha_check("alpha")),
)
register_activation(
    nn.LeakyReLU,
    ElementwiseInverse(lambda m, y: nn.functional.leaky_relu(y, m.negative_slope),
                       lambda m, y: torch.where(y >= 0, y, y / m.negative_slope),
                       _unbounded, _leaky_check),
)
register_activation(nn.PReLU, ElementwiseInverse(_prelu_fwd, _prelu_inv, _unbounded, _prelu_check))
register_activation(
    nn.Tanh, ElementwiseInverse(lambda m, y: torch.tanh(y), lambda m, y: torch.atanh(y),
                                lambda m: (_t(-1.0), _t(1.0)))
)
register_activation(
    nn.Sigmoid, ElementwiseInverse(lambda m, y: torch.sigmoid(y), lambda m, y: torch.logit(y),
                                   lambda m: (_t(0.0), _t(1.0)))
)
register_activation(
    nn.Softplus,
    ElementwiseInverse(lambda m, y: nn.functional.softplus(y, m.beta, m.threshold), _softplus_inv,
                       lambda m: (_t(0.0), _t(_INF)), _alpha_check("beta")),
)


def _bn_check(m):
    if m.training:
        raise ValueError(f"{type(m).__name__} in training mode is not elementwise; call .eval()")
    if m.running_mean is None or m.running_var is None:
        raise ValueError(f"{type(m).__name__} without running statistics is not supported")
    if m.affine and not bool((m.weight != 0).all()):
        raise ValueError(f"{type(m).__name__} with a zero weight is not invertible")


def _bn_scale_shift(m, like):
    scale = torch.rsqrt(m.running_var.detach().to(like) + m.eps)
    shift = -m.running_mean.detach().to(like) * scale
    if m.affine:
        w, b = m.weight.detach().to(like), m.bias.detach().to(like)
        scale, shift = scale * w, shift * w + b
    return scale, shift


def _bn_fwd(m, y):
    s, t = _bn_scale_shift(m, y)
    return y * s + t


def _bn_inv(m, y):
    s, t = _bn_scale_shift(m, y)
    return (y - t) / s


register_activation(nn.BatchNorm1d, ElementwiseInverse(_bn_fwd, _bn_inv, _unbounded, _bn_check))

from .normalize import Normalize  # noqa: E402  (the adapter's pixel-space normalisation)

register_activation(Normalize, ElementwiseInverse(lambda m, y: m(y), lambda m, y: m.inverse(y), _unbounded))

# math is used by entries registered by users; keep the import visible
_ = math
