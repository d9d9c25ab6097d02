"""The shaping phase shared by every method that takes ``prior=``: Adam on the prior's variables,
through its random transforms, on the goal plus the prior's penalties."""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor, nn

from .base import Prior, as_prior

__all__ = ["shape_inputs", "auto_prior", "resolve_prior", "DEFAULT_STEPS", "DEFAULT_LR"]

#: Adam steps and learning rate of the shaping phase when the prior does not set them.
DEFAULT_STEPS = 200
DEFAULT_LR = 0.05


def auto_prior(model, input_shape: Tuple[int, ...], reference: Optional[Tensor] = None) -> Prior:
    """A prior chosen from the model and the input shape, with no per-model tuning:

    - with ``reference`` images: :func:`~captum_invert.priors.DataPrior` (their principal
      subspace and Gaussian, with the robust transforms);
    - else images ``(C, H, W)`` with ``H, W >= 8``: :class:`~captum_invert.priors.FourierParam`
      (Lucid's 1/f spectrum), :func:`~captum_invert.priors.robust_transforms` and
      :class:`~captum_invert.priors.TV` (weight 0.1);
    - other inputs: free pixels;
    - any BatchNorm layer with running statistics adds :class:`~captum_invert.priors.BNStats`.

    Args:
        model: the classifier.
        input_shape (tuple of int): shape of one input.
        reference (Tensor, optional): ``(M, *input_shape)`` reference images.

    Returns:
        Prior
    """
    from .params import DataPrior, FourierParam
    from .penalties import TV, BNStats
    from .transforms import robust_transforms

    image = bool(robust_transforms(input_shape))
    if reference is not None:
        prior = DataPrior(reference)
    elif image:
        prior = Prior(FourierParam()) + robust_transforms(input_shape) + TV(0.1)
    else:
        prior = Prior(None)
    if isinstance(model, nn.Module) and any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None for m in model.modules()):
        prior = prior + BNStats(1.0)
    return prior


def resolve_prior(prior, model, input_shape) -> Optional[Prior]:
    """``None``, ``'auto'`` (:func:`auto_prior`), or a prior / its parts, as a :class:`Prior`."""
    if prior is None:
        return None
    if isinstance(prior, str):
        if prior != "auto":
            raise ValueError(f"`prior` must be None, 'auto', a Prior or prior parts, got {prior!r}")
        return auto_prior(model, input_shape)
    return as_prior(prior)


def shape_inputs(model: Callable[[Tensor], Tensor], log_probs: Callable[[Tensor], Tensor], prior: Prior,
                 input_shape: Tuple[int, ...], input_range, gen: torch.Generator,
                 labels: Optional[Tensor] = None, dist: Optional[Tensor] = None, aim: float = 0.95,
                 x0: Optional[Tensor] = None, n: Optional[int] = None, steps: Optional[int] = None,
                 lr: Optional[float] = None, dtype=torch.float32, device="cpu",
                 until: Optional[Callable[[Tensor], Tensor]] = None) -> Tuple[Tensor, dict]:
    r"""Shape inputs with a prior: Adam on the prior's variables ``z`` minimizing, per sample,

    - for a class ``t``: ``max(0, logit(aim) - (z_t - logsumexp(z_others)))`` on the transformed
      image (a hinge on the class's log-odds: once the class is confident enough the prior's
      penalties alone shape the image);
    - for a distribution ``p*``: ``KL(p* || p)``;

    plus the prior's penalties on the untransformed image.

    Args:
        model (callable): the classifier (already in eval mode, parameters frozen).
        log_probs (callable): model output -> log-probabilities ``(n, C)``.
        prior (Prior): the prior.
        input_shape (tuple): shape of one input.
        input_range (tuple, optional): box of the images.
        gen (torch.Generator): randomness of the starts and transforms.
        labels (Tensor, optional): ``(n,)`` classes; or ``dist`` ``(n, C)``.
        aim (float): the class probability the hinge aims at.
        x0 (Tensor, optional): starting images, turned into the prior's variables where the
            parameterization can represent images (``from_image``); default (or where it
            cannot) the prior's random init of ``n`` variables.
        steps, lr: Adam steps and learning rate (default: ``prior.steps`` / ``prior.lr``, else
            :data:`DEFAULT_STEPS` / :data:`DEFAULT_LR`).
        until (callable, optional): ``x -> (n,) bool``; when every sample is True on the
            untransformed image (checked every 10 steps), stop.

    Returns:
        (Tensor, dict): images ``(n, *input_shape)`` (detached) and stats (``steps``).
    """
    steps = steps if steps is not None else (prior.steps or DEFAULT_STEPS)
    lr = lr if lr is not None else (prior.lr or DEFAULT_LR)
    param = prior.parameterization()
    param.setup(input_shape, input_range)
    z = None if x0 is None else param.from_image(x0.detach().to(dtype=dtype, device=device))
    z = param.init(n, gen, dtype, device) if z is None else z.to(dtype=dtype, device=device).clone()
    z.requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    log_odds = math.log(aim) - math.log1p(-aim)
    lab = labels.to(device)[:, None] if labels is not None else None
    P = dist.to(device=device, dtype=dtype) if dist is not None else None
    done_steps = 0
    groups = labels if labels is not None else torch.unique(dist, dim=0, return_inverse=True)[1]
    for p in prior.penalties:
        if hasattr(p, "groups"):  # penalties that compare the samples of one target
            p.groups = groups
    with prior.hooks(model):
        for step in range(steps):
            x = param.image(z)
            lp = log_probs(model(prior.transform(x, gen)))
            if lab is not None:
                odds = lp.gather(1, lab) - torch.logsumexp(lp.scatter(1, lab, -math.inf), 1, keepdim=True)
                goal = (log_odds - odds.squeeze(1)).clamp_min(0)
            else:
                goal = (P * (P.clamp_min(1e-12).log() - lp)).sum(1)
            loss = (goal + prior.penalty(x, z)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done_steps = step + 1
            if until is not None and step % 10 == 9:
                with torch.no_grad():
                    if bool(until(param.image(z)).all()):
                        break
    with torch.no_grad():
        x = param.image(z).detach()
    return x, {"steps": done_steps}
