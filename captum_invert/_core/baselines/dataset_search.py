"""DatasetSearch: the prior work's data-driven baseline (cited by seed 000)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..batching import batched_attribute
from ..base import InversionMethod, count_reasons

__all__ = ["DatasetSearch"]


class DatasetSearch(InversionMethod):
    r"""Answer "which input gives this output?" from a dataset instead of by inversion.

    - ``mode='best'``: the image that maximizes the target probability;
    - ``mode='mean'``: the mean of the images whose outputs lie within the lowest
      ``percentile`` (25 by default) of distance to the ideal output (the one-hot of the class,
      or the target distribution), the prior work's prototype.

    Args:
        forward_func (nn.Module or callable): the classifier.
        images (Tensor or TensorDataset): ``(M, *input_shape)`` images to search (e.g. the
            training set); their outputs are computed once and cached.
        input_shape (tuple of int, optional): default ``images.shape[1:]``.
        output, select, solver: see :class:`~captum_invert.InversionMethod`.
    """

    def __init__(self, forward_func, images, input_shape=None, **options) -> None:
        if hasattr(images, "tensors"):
            images = images.tensors[0]
        if not isinstance(images, Tensor) or images.dim() < 2 or len(images) == 0:
            raise ValueError("`images` must be a non-empty tensor (M, *input_shape) or a TensorDataset")
        super().__init__(forward_func, input_shape or tuple(images.shape[1:]), **options)
        self.images = images
        self._probs = None
        self._probs_for = None

    def probabilities(self) -> Tensor:
        """``(M, C)`` model probabilities of the searched images (cached)."""
        if self._probs is None or self._probs_for is not self.adapter:
            self._probs_for = self.adapter  # additional_forward_args give the call its own adapter
            self._probs = self.adapter.probs(self.images, self._probe()[0])
        return self._probs

    @batched_attribute
    def attribute(self, inputs=None, target=None, *, n_samples: Optional[int] = None, mode: str = "best",
                  percentile: float = 25.0, min_prob: float = 0.9, atol: float = 0.02,
                  return_convergence_delta: bool = False, allow_unverified: bool = False):
        r"""One image per target.

        Args:
            inputs: must be None.
            target: a class, classes, or a distribution (as in the other methods).
            n_samples (int, optional): copies for one target.
            mode (str): ``'best'`` or ``'mean'``.
            percentile (float): in (0, 100], for ``'mean'``.
            min_prob, atol: the verification criteria.

        Returns:
            Tensor or (Tensor, Tensor): images ``(N, *input_shape)`` (and delta).
        """
        if inputs is not None:
            raise ValueError("`inputs` must be None")
        if mode not in ("best", "mean"):
            raise ValueError(f"`mode` must be 'best' or 'mean', got {mode!r}")
        if not 0 < percentile <= 100:
            raise ValueError(f"`percentile` must be in (0, 100], got {percentile}")
        with self.adapter.guard():
            kind, n_classes, _ = self._probe()
            goal = self._parse_target(target, n_samples, n_classes, min_prob, atol)
            P = self.probabilities()
            ideal = goal.dist if goal.dist is not None else torch.nn.functional.one_hot(
                goal.labels, n_classes).double()
            picks = []
            for i in range(goal.n):
                d = (P - ideal[i]).abs().amax(1)
                if mode == "best":
                    picks.append(self.images[int(d.argmin())])
                else:
                    cut = torch.quantile(d, percentile / 100.0)
                    picks.append(self.images[d <= cut].double().mean(0).to(self.images.dtype))
            dtype, device = self.adapter.dtype_device
            x = torch.stack(picks).to(dtype=dtype, device=device)
            ok, delta, _ = self._verify(x, goal, kind)
            reasons = count_reasons([f"no {mode} image of the dataset meets the target" if not o else ""
                                     for o in ok.tolist()])
            return self._finish(x, ok, delta, reasons, allow_unverified, return_convergence_delta,
                                "DatasetSearch", goal, kind, None)
