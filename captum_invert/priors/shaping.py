"""The shaping phase shared by every method that takes ``prior=``: Adam on the prior's variables,
through its random transforms, on the goal plus the prior's penalties."""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import PixelParam, Prior, as_prior

__all__ = ["shape_inputs", "auto_prior", "resolve_prior", "deepinversion_prior", "plugin_inversion_prior",
           "DEFAULT_STEPS", "DEFAULT_LR", "AUTO_STEPS", "AUTO_STEPS_NO_BN", "AUTO_CHROMA_DECAY", "AUTO_BACKGROUND"]

#: Adam steps and learning rate of the shaping phase when the prior does not set them.
DEFAULT_STEPS = 200
DEFAULT_LR = 0.05


def _coarse(x: Tensor) -> Tensor:
    """Images ``(n, C, H, W)`` (``H, W >= 8``) at half resolution: average-pooled by 2 and
    upsampled bilinearly to their size; other inputs unchanged."""
    if x.dim() != 4 or min(x.shape[-2:]) < 8:
        return x
    low = F.avg_pool2d(x, 2, ceil_mode=True)
    return F.interpolate(low, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)


#: The data-free recipe of ``prior='auto'`` (see :func:`auto_prior`): shaping options.
AUTO_STEPS = 1000
#: prior='auto''s Adam steps on models without BatchNorm, where no statistics term helps the
#: class term shape the image: DeepInversion's 2,000. Measured in ``benchmarks/prototypes.py`` on
#: the grey ViT (6 images a class, one run): read 0.15, 0.37, 0.58, 0.73 and 0.72 after 250, 500,
#: 1,000, 2,000 and 3,000 steps.
AUTO_STEPS_NO_BN = 2000
#: the 1/f exponent of prior='auto''s Fourier amplitude: 1/f^2 (Lucid's is 1/f). Measured in
#: ``benchmarks/prototypes.py`` over exponents 1, 1.5, 2 and 3 on five nets without BatchNorm or
#: with colour inputs: 2 sits in the plateau (1.5-2) where every net read at least as well as
#: with 1; 3 is too smooth.
AUTO_DECAY = 2.0
#: prior='auto''s :class:`~captum_invert.priors.Diversity` on models with BatchNorm: weight 1
#: on a 4 x 4 grid of cells (the images' layout). Measured in ``benchmarks/prototypes.py``: on the
#: MNIST BatchNorm CNN diversity 8.9 -> 11.2 (lucent 10.7) at read 1.00 -> 0.99; on the colour
#: ResNet-18 15.8 -> 28.6 (lucent 22.5) at read 1.00; on the tests' digits CNN 4.4 -> 10.1 at
#: read 0.90 -> 0.88. On pixels (no grid) the same term dropped the digits CNN to 0.28; on the
#: SELU MLP (no BatchNorm) the grid term dropped it from 0.79 to 0.66, and its diversity is
#: already above lucent's: nets without BatchNorm get none.
AUTO_DIVERSITY = (1.0, 4)
#: prior='auto''s chroma on colour images: ``FourierParam(chroma_decay=AUTO_CHROMA_DECAY)``, one
#: faint tint per image with the shapes in luminance. Measured in ``benchmarks/prototypes.py
#: --before chroma`` (8 images a class, one run): the colour ViT read 0.41 -> 0.53 (both judges
#: 0.24 -> 0.41), the ConvNeXt 0.79 -> 0.78 (0.56 -> 0.60), the ResNet 1.00 -> 1.00. Free chroma
#: comes out as saturated colour noise.
AUTO_CHROMA_DECAY = math.inf
#: the weight of prior='auto''s :class:`~captum_invert.priors.Background` on grey images for
#: models without BatchNorm (the background estimated from the model; BatchNorm statistics
#: supply it on the others). Measured on the benchmark's nets with the data-free default's other
#: parts (4 images a class, one run; first judge / both judges): the grey ViT 0.40 / 0.23
#: without the term, 0.70 / 0.65 at weight 0.1, 0.72 / 0.72 at 0.3, 0.70 / 0.65 at 1, 0.70 / 0.68
#: at 3: a plateau over 30x (diversity 9.0 without, then 8.0, 7.5, 6.7, 6.0); the SELU MLP
#: 0.90 / 0.05 without, 1.00 / 0.90 at 0.1, 1.00 / 0.82 at 0.3. On the BatchNorm CNN it did not
#: help (0.97 / 0.97 without, 0.97 / 0.93 with).
AUTO_BACKGROUND = 0.3
AUTO_OPTIONS = {"steps": AUTO_STEPS, "coarse": 0.5, "objective": "ce", "schedule": "cosine", "betas": (0.5, 0.9)}


def auto_prior(model, input_shape: Tuple[int, ...], reference: Optional[Tensor] = None,
               input_range: Optional[Tuple[float, float]] = None) -> Prior:
    """A prior chosen from the model and the input shape, with no per-model tuning.

    - with ``reference`` images: :func:`~captum_invert.priors.DataPrior` (their principal
      subspace and Gaussian, with the robust transforms), plus
      :class:`~captum_invert.priors.BNStats` where the model has BatchNorm layers;
    - images ``(C, H, W)`` with ``H, W >= 8`` and no data (the data-free recipe, chosen by
      ``benchmarks/prototypes.py``): :func:`~captum_invert.priors.robust_transforms`, the
      class's cross-entropy pushed past the verification threshold for
      :data:`AUTO_STEPS` Adam steps (betas ``(0.5, 0.9)``, cosine schedule), the first half at
      half resolution (coarse to fine), and

      - colour images (3 channels), and models without BatchNorm:
        :class:`~captum_invert.priors.FourierParam` (a 1/f^2 spectrum, :data:`AUTO_DECAY`; Lucid's
        is 1/f; and on colour images Lucid's natural colour decorrelation with one tint per image,
        :data:`AUTO_CHROMA_DECAY`: the shapes are drawn in luminance) at learning rate 0.2,
        and Plug-In Inversion's
        random :class:`~captum_invert.priors.ColorShift` ``(0.1, 0.1)`` among the transforms:
        the natural-image prior; without BatchNorm for :data:`AUTO_STEPS_NO_BN` steps (no
        statistics term helps the class term there, and the read share keeps rising to 2,000);
      - other images (grey, or not 3 channels) on a model with BatchNorm running statistics:
        free pixels at learning rate 0.1 and :class:`~captum_invert.priors.BNStats`
        ``(0.1, first=10, form='l2')`` (DeepInversion's statistics: the model's own record of
        its training data). Measured: on a colour ResNet the statistics lowered the read share
        (1.00 without them, 0.79 with free pixels and them), on the grey CNN the natural-image
        prior did (0.86 against 1.00);
      - grey images (not 3 channels) with a box on models without BatchNorm, also
        :class:`~captum_invert.priors.Background` (weight :data:`AUTO_BACKGROUND`): the image
        stays near the constant image the model is least sure about (black on digit nets),
        the role BatchNorm's statistics play on the others. Without it such nets are as sure
        about large bright blobs as about strokes, and no judge reads them;
      - on models with BatchNorm, both with :class:`~captum_invert.priors.Diversity` between the
        images of one target, on a 4 x 4 grid of cells (:data:`AUTO_DIVERSITY`): their layouts
        spread past lucent's diversity at the same read share;
    - other inputs: free pixels (plus BNStats where it applies).

    Args:
        model: the classifier.
        input_shape (tuple of int): shape of one input.
        reference (Tensor, optional): ``(M, *input_shape)`` reference images.
        input_range (tuple of float, optional): the box of the images.

    Returns:
        Prior
    """
    from .params import DataPrior, FourierParam
    from .penalties import Background, BNStats, Diversity, batchnorm_layers
    from .transforms import ColorShift, robust_transforms

    has_bn = bool(batchnorm_layers(model))
    transforms = robust_transforms(input_shape)
    if reference is not None:
        prior = DataPrior(reference)
        return prior + BNStats(0.1) if has_bn else prior
    if not transforms:
        return Prior(None) + BNStats(0.1) if has_bn else Prior(None)
    if has_bn:  # spread a class's layouts
        extra = [Diversity(AUTO_DIVERSITY[0], grid=AUTO_DIVERSITY[1])]
    elif input_shape[0] != 3 and input_range is not None:  # grey, no statistics: a blank background
        extra = [Background(AUTO_BACKGROUND)]
    else:
        extra = []
    if has_bn and input_shape[0] != 3:
        return Prior(PixelParam(), transforms, [BNStats(0.1, first=10.0, form="l2")] + extra, lr=0.1,
                     **AUTO_OPTIONS)
    options = AUTO_OPTIONS if has_bn else {**AUTO_OPTIONS, "steps": AUTO_STEPS_NO_BN}
    param = FourierParam(decay=AUTO_DECAY, chroma_decay=AUTO_CHROMA_DECAY if input_shape[0] == 3 else None)
    return Prior(param, transforms + [ColorShift(0.1, 0.1)], extra, lr=0.2, **options)


def deepinversion_prior(input_shape: Tuple[int, ...], bn_weight: float = 0.01, flips: bool = True,
                        steps: int = 2000) -> Prior:
    """DeepInversion's published recipe (Yin et al. 2020) as a configuration of this library's
    parts: free pixels, :class:`~captum_invert.priors.BNStats` in its ``'l2'`` form with the first
    layer x10 (weight 0.01 on ImageNet, as published), TV 1e-4 and L2 1e-5 on the pixels, random
    roll by 1/14 of the side, flips (the paper's; they change the class of digits), Adam at 0.25
    with betas ``(0.5, 0.9)`` and a cosine schedule, half the steps at half resolution, and the
    cross-entropy pushed for every step.

    Args:
        input_shape (tuple of int): ``(C, H, W)``.
        bn_weight (float): weight of the BatchNorm term.
        flips (bool): random horizontal flips.
        steps (int): Adam steps.

    Returns:
        Prior
    """
    from .penalties import L2, TV, BNStats
    from .transforms import Jitter, RandomFlip

    c, h, w = input_shape
    t = [Jitter(max(1, h // 14))] + ([RandomFlip()] if flips else [])
    return Prior(PixelParam(), t, [BNStats(bn_weight, first=10.0, form="l2"), TV(1e-4), L2(1e-5)],
                 steps=steps, lr=0.25, coarse=0.5, objective="ce", schedule="cosine", betas=(0.5, 0.9))


def plugin_inversion_prior(input_shape: Tuple[int, ...], copies: int = 8, flips: bool = True,
                           steps: int = 400) -> Prior:
    """Plug-In Inversion's published recipe (Ghiasi et al. 2022) as a configuration of this
    library's parts: free pixels and no regularisers; an ensemble of ``copies`` augmented copies
    per step, each with its own random jitter, scale, flip and colour shift; the first third of
    the steps at half resolution (the paper grows its canvas); Adam at 0.1; cross-entropy.

    Args:
        input_shape (tuple of int): ``(C, H, W)``.
        copies (int): augmented copies per step.
        flips (bool): random horizontal flips.
        steps (int): Adam steps.

    Returns:
        Prior
    """
    from .transforms import ColorShift, Jitter, RandomFlip, RandomScale

    c, h, w = input_shape
    t = [Jitter(max(1, h // 8)), RandomScale((0.8, 1.2))] + ([RandomFlip()] if flips else []) + [ColorShift(0.1, 0.1)]
    return Prior(PixelParam(), t, steps=steps, lr=0.1, copies=copies, coarse=1 / 3, objective="ce")


def resolve_prior(prior, model, input_shape, input_range=None) -> Optional[Prior]:
    """``None``, ``'auto'`` (:func:`auto_prior`), or a prior / its parts, as a :class:`Prior`."""
    if prior is None:
        return None
    if isinstance(prior, str):
        if prior != "auto":
            raise ValueError(f"`prior` must be None, 'auto', a Prior or prior parts, got {prior!r}")
        return auto_prior(model, input_shape, input_range=input_range)
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
    copies = prior.copies or 1
    coarse_steps = int((prior.coarse or 0.0) * steps)
    hinge = (prior.objective or "hinge") == "hinge"
    param = prior.parameterization()
    param.setup(input_shape, input_range)
    z = None if x0 is None else param.from_image(x0.detach().to(dtype=dtype, device=device))
    z = param.init(n, gen, dtype, device) if z is None else z.to(dtype=dtype, device=device).clone()
    z.requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr, betas=prior.betas or (0.9, 0.999))
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if prior.schedule == "cosine" else None)
    log_odds = math.log(aim) - math.log1p(-aim)
    lab = labels.to(device)[:, None] if labels is not None else None
    P = dist.to(device=device, dtype=dtype) if dist is not None else None
    done_steps = 0
    groups = labels if labels is not None else torch.unique(dist, dim=0, return_inverse=True)[1]
    for p in prior.penalties:
        p.setup(model, log_probs, input_shape, input_range, dtype, device)
        if hasattr(p, "groups"):  # penalties that compare the samples of one target
            p.groups = groups
    with prior.hooks(model):
        for step in range(steps):
            x = param.image(z)
            if step < coarse_steps:
                x = _coarse(x)
            xt = torch.cat([prior.transform(x, gen) for _ in range(copies)]) if copies > 1 else prior.transform(x, gen)
            lp = log_probs(model(xt)).reshape(copies, len(x), -1)
            if lab is not None:
                lab_c = lab.expand(copies, -1, -1)
                lp_t = lp.gather(2, lab_c).squeeze(2)
                if hinge:
                    odds = lp_t - torch.logsumexp(lp.scatter(2, lab_c, -math.inf), 2)
                    goal = (log_odds - odds).clamp_min(0).mean(0)
                else:
                    goal = -lp_t.mean(0)
            else:
                goal = (P * (P.clamp_min(1e-12).log() - lp)).sum(2).mean(0)
            loss = (goal + prior.penalty(x, z)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            done_steps = step + 1
            if until is not None and step % 10 == 9:
                with torch.no_grad():
                    if bool(until(param.image(z)).all()):
                        break
    with torch.no_grad():
        x = param.image(z).detach()
    return x, {"steps": done_steps}
