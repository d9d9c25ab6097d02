"""ActivationMaximization: gradient ascent on the input (Simonyan et al. 2014; the MIFace
attack of Fredrikson et al. 2015 is the same idea)."""
from __future__ import annotations

import math
from typing import Optional

import torch

from ...priors import resolve_prior
from ..batching import batched_attribute
from ..base import InversionMethod, count_reasons, make_generator, random_starts

__all__ = ["ActivationMaximization"]


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation of images ``(N, C, H, W)`` per sample (0 for flat inputs)."""
    if x.dim() < 4:
        return torch.zeros(len(x), dtype=x.dtype, device=x.device)
    return ((x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).sum(1)
            + (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).sum(1))


class ActivationMaximization(InversionMethod):
    r"""Gradient ascent on the input: maximize ``log p_t(x) - l2 ||x||^2 - tv TV(x)`` with Adam,
    projected on ``input_range``, until ``p_t >= min_prob`` (Simonyan, Vedaldi & Zisserman 2014,
    "Deep Inside Convolutional Networks"; Fredrikson et al. 2015's model-inversion attack).

    Starts are random (as :class:`~captum_invert.ForwardPassInversion`'s), the given ``inputs``,
    or, as the prior work did, the :class:`~captum_invert.DatasetSearch` image of the class
    (``start='dataset'`` with ``images``).

    Args:
        forward_func (nn.Module or callable): any differentiable classifier.
        input_shape (tuple of int, optional): shape of one input.
        images (Tensor, optional): images for ``start='dataset'``.
        output, select, solver: see :class:`~captum_invert.InversionMethod`.
    """

    def __init__(self, forward_func, input_shape=None, images=None, **options) -> None:
        super().__init__(forward_func, input_shape, **options)
        self.images = images

    @batched_attribute
    def attribute(self, inputs=None, target=None, *, n_samples: Optional[int] = None,
                  max_iter: int = 500, lr: float = 0.05, l2: float = 0.0, tv: float = 0.0,
                  input_range=None, start: str = "random", init_std: float = 0.1,
                  min_prob: float = 0.9, seed=None, prior=None, return_convergence_delta: bool = False,
                  allow_unverified: bool = False):
        r"""Ascend the target class's log-probability.

        Args:
            inputs (Tensor, optional): starting points.
            target (int or sequence of int): classes.
            n_samples (int, optional): number of samples.
            max_iter (int): Adam steps.
            lr (float): Adam's learning rate.
            l2, tv (float): weights of the L2 and total-variation penalties.
            input_range (tuple, optional): box, kept by projection after every step.
            start (str): ``'random'`` or ``'dataset'``.
            init_std (float): random starts' standard deviation (no ``input_range``).
            min_prob (float): stop and verification threshold.
            seed: reproducibility.
            prior (optional): an image prior (:mod:`captum_invert.priors`), ``'auto'`` or None.
                With a prior the ascent runs on the prior's variables, through its transforms,
                with its penalties (:func:`~captum_invert.priors.shape_inputs`), for ``max_iter``
                steps at ``lr`` unless the prior sets its own; ``l2`` and ``tv`` must then be 0
                (put :class:`~captum_invert.priors.L2` / :class:`~captum_invert.priors.TV` in the
                prior). There is no polish: what does not verify raises as usual.

        Returns:
            Tensor or (Tensor, Tensor): inputs ``(N, *input_shape)`` (and ``1 - p_target``).
        """
        self._check_solver_args(max_iter, 0, init_std)
        if not (lr > 0 and l2 >= 0 and tv >= 0):
            raise ValueError("`lr` must be > 0 and `l2`, `tv` >= 0")
        if start not in ("random", "dataset"):
            raise ValueError(f"`start` must be 'random' or 'dataset', got {start!r}")
        if start == "dataset" and self.images is None:
            raise ValueError("start='dataset' needs `images` in the constructor")
        input_range = self._check_range(input_range)
        n_inputs = self._check_inputs(inputs)
        gen = make_generator(seed)
        dtype, device = self.adapter.dtype_device
        prior = resolve_prior(prior, self.adapter.module, self.input_shape, input_range)
        if prior is not None:
            if l2 or tv:
                raise ValueError("`l2` and `tv` must be 0 with a `prior`: add priors.L2 / priors.TV to the prior")
            prior = prior.with_options(steps=prior.steps or max_iter, lr=prior.lr or lr)
        self.last_stats = {}
        with self.adapter.guard():
            kind, n_classes, _ = self._probe()
            goal = self._parse_target(target, n_samples, n_classes, min_prob, 0.02, n_inputs)
            if goal.labels is None:
                raise ValueError("`target` must be class indices for ActivationMaximization")
            x = None  # the start: given, the dataset's image, or random (the prior's own draw)
            if inputs is not None:
                x = inputs.detach().to(dtype=dtype, device=device).clone()
            elif start == "dataset":
                from .dataset_search import DatasetSearch

                x = self._sibling(DatasetSearch, self.images, self.input_shape).attribute(
                    target=goal.labels.tolist(), allow_unverified=True).to(dtype=dtype, device=device)
            if prior is not None:
                x = self._shaped_starts(prior, goal, kind, input_range, gen, x)
                ok, delta, _ = self._verify(x, goal, kind, input_range)
                reasons = count_reasons([f"the prior's ascent did not reach p >= {min_prob} in "
                                         f"{prior.steps} steps" if not o else "" for o in ok.tolist()])
                return self._finish(x, ok, delta, reasons, allow_unverified, return_convergence_delta,
                                    "ActivationMaximization", goal, kind, input_range)
            if x is None:
                x = random_starts(goal.n, self.input_shape, input_range, gen, init_std, dtype, device)
            x.requires_grad_(True)
            opt = torch.optim.Adam([x], lr=lr)
            lab = goal.labels.to(device)
            log_min = math.log(min_prob)
            for _ in range(max_iter):
                lp = self.adapter.log_probs(x, kind).gather(1, lab[:, None]).squeeze(1)
                todo = (lp < log_min).detach()
                if not bool(todo.any()):
                    break
                obj = lp - l2 * x.flatten(1).pow(2).sum(1) - tv * total_variation(x)
                opt.zero_grad()
                (-(obj * todo).sum()).backward()
                opt.step()
                if input_range is not None:
                    with torch.no_grad():
                        x.clamp_(*input_range)
            x = x.detach()
            ok, delta, _ = self._verify(x, goal, kind, input_range)
            reasons = count_reasons([f"gradient ascent did not reach p >= {min_prob} in {max_iter} steps"
                                     if not o else "" for o in ok.tolist()])
            return self._finish(x, ok, delta, reasons, allow_unverified, return_convergence_delta,
                                "ActivationMaximization", goal, kind, input_range)
