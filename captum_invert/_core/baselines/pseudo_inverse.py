"""PseudoInverseInversion and its matrix filters (seed 002's analytical method)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..batching import batched_attribute
from ...blocks.chain import Chain, build_chain
from ..base import InversionMethod, count_reasons

__all__ = ["PseudoInverseInversion", "TopBottomFilter", "MiddleFilter"]


@dataclass(frozen=True)
class TopBottomFilter:
    """Keep only the entries of a matrix in its top and bottom ``p`` fraction (by value); zero
    the rest (seed 002)."""

    p: float

    def __post_init__(self):
        if not 0 < self.p <= 0.5:
            raise ValueError(f"`p` must be in (0, 0.5], got {self.p}")

    def __call__(self, M: Tensor) -> Tensor:
        lo, hi = torch.quantile(M.flatten(), torch.tensor([self.p, 1 - self.p], dtype=M.dtype, device=M.device))
        return torch.where((M <= lo) | (M >= hi), M, torch.zeros_like(M))


@dataclass(frozen=True)
class MiddleFilter:
    """Clip the entries of a matrix to its ``p`` and ``1 - p`` percentiles (seed 002)."""

    p: float

    def __post_init__(self):
        if not 0 <= self.p < 0.5:
            raise ValueError(f"`p` must be in [0, 0.5), got {self.p}")

    def __call__(self, M: Tensor) -> Tensor:
        lo, hi = torch.quantile(M.flatten(), torch.tensor([self.p, 1 - self.p], dtype=M.dtype, device=M.device))
        return M.clamp(lo, hi)


class PseudoInverseInversion(InversionMethod):
    r"""Moore-Penrose inversion layer by layer, with activation inverses and no null-space noise:
    the minimum-norm solution of every Linear (seed 002, "Inverting MLPs", analytical method).

    The target is a logit vector: ``logit_high`` (+10) for the class and ``logit_low`` (-10) for
    the others, as in seed 002. It is clipped into the range of an output activation (a SELU on
    the logits cannot go below -1.7581), and an out-of-range value inside the net is clipped too.
    Optional ``filter`` (:class:`TopBottomFilter`, :class:`MiddleFilter`) is applied to every
    pseudo-inverse matrix; ``use_bias=False`` drops the biases, as seed 002 did for its SLP.
    The result is verified like every method's; seed 002's images are often not (use
    ``allow_unverified=True`` to see them anyway).

    Args:
        forward_func (nn.Module): a chain of Linear layers and invertible activations.
        input_shape (tuple of int, optional): shape of one input.
    """

    @batched_attribute
    def attribute(self, inputs=None, target=None, *, n_samples: Optional[int] = None,
                  logit_high: float = 10.0, logit_low: float = -10.0, filter=None,
                  use_bias: bool = True, cond_num: float = float("inf"), min_prob: float = 0.9,
                  return_convergence_delta: bool = False, allow_unverified: bool = False):
        r"""Minimum-norm preimages of the ideal logits of each target class.

        Args:
            inputs: must be None (kept for Captum's signature).
            target (int or sequence of int): classes.
            n_samples (int, optional): samples for an int target (all equal: the method is
                deterministic).
            logit_high, logit_low (float): the ideal logits.
            filter (callable, optional): applied to every pseudo-inverse matrix.
            use_bias (bool): subtract the biases (False: ignore them).
            cond_num (float): singular-value cap of the pseudo-inverses (default: none).
            min_prob (float): the verification threshold.
            return_convergence_delta, allow_unverified: as in the other methods.

        Returns:
            Tensor or (Tensor, Tensor): inputs ``(N, *input_shape)`` (and ``1 - p_target``).
        """
        if inputs is not None:
            raise ValueError("`inputs` must be None: the pseudo-inverse starts from the target logits")
        if not logit_high > logit_low:
            raise ValueError(f"`logit_high` must exceed `logit_low`, got {logit_high}, {logit_low}")
        if filter is not None and not callable(filter):
            raise ValueError("`filter` must be None, a TopBottomFilter, a MiddleFilter or a callable")
        with self.adapter.guard():
            kind, n_classes, trace = self._probe()
            self._need_softmax(kind, "PseudoInverseInversion")
            goal = self._parse_target(target, n_samples, n_classes, min_prob, 0.02)
            if goal.labels is None:
                raise ValueError("`target` must be class indices for PseudoInverseInversion")
            if trace is None or not trace.composes:
                raise ValueError("PseudoInverseInversion needs a model that is a chain of modules "
                                 "(Linear and invertible activations)")
            chain = build_chain(trace.calls, cond_num, self.adapter.dtype_device[1],
                                "PseudoInverseInversion")
            chain.set_boxes(0.0, None)
            N = goal.n
            z = torch.full((N, n_classes), float(logit_low), dtype=torch.float64, device=chain.device)
            z[torch.arange(N), goal.labels.to(chain.device)] = float(logit_high)
            why = [""] * N
            y = z
            for k in reversed(range(len(chain.layers))):
                layer = chain.layers[k]
                lo, hi = (chain.boxes[k + 1][:2] if k + 1 < len(chain.layers) else chain.out_box[:2])
                y = _clip_open(y, lo, hi)
                bad = torch.zeros(N, dtype=torch.bool, device=y.device)
                a = Chain.invert_elems(layer.post, y, bad, why)
                P = layer.inv.pinv if filter is None else filter(layer.inv.pinv)
                b = layer.inv.bias if use_bias else torch.zeros_like(layer.inv.bias)
                y = (a - b) @ P.T
            bad = torch.zeros(N, dtype=torch.bool, device=y.device)
            x = Chain.invert_elems(chain.pre, _clip_open(y, *chain.boxes[0][:2]), bad, why)
            x = x.reshape(N, *self.input_shape)
            ok, delta, _ = self._verify(x, goal, kind)
            reasons = count_reasons(["the minimum-norm preimage of the ideal logits does not reach "
                                     f"p >= {min_prob}" if not o else "" for o in ok.tolist()])
            return self._finish(x, ok, delta, reasons, allow_unverified, return_convergence_delta,
                                "PseudoInverseInversion", goal, kind, None)


def _clip_open(y: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Clip into the open interval (lo, hi), a hair inside bounded ends."""
    span = torch.where(torch.isfinite(hi - lo), hi - lo, torch.ones_like(lo))
    return torch.maximum(torch.minimum(y, hi - 1e-6 * span), lo + 1e-6 * span)
