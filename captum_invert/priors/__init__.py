"""Image priors as composable objects, used through one ``prior=`` keyword by
:class:`~captum_invert.ForwardPassInversion`, :class:`~captum_invert.GeneralizedInversion` and
:class:`~captum_invert.ActivationMaximization`.

A prior shapes the search; it never replaces verification: the shaped images are polished on the
untransformed model and every returned input still verifies (or an
:class:`~captum_invert.InversionError` says why not)::

    from captum_invert import ForwardPassInversion
    from captum_invert.priors import DataPrior, FourierParam, Jitter, RandomRotate, TV

    inv = ForwardPassInversion(model, input_shape=(1, 28, 28))
    x = inv.attribute(target=7, n_samples=8, input_range=(0, 1), prior="auto")
    x = inv.attribute(target=7, n_samples=8, input_range=(0, 1),
                      prior=FourierParam() + Jitter(2) + RandomRotate(10) + TV(0.1))
    x = inv.attribute(target=7, n_samples=8, input_range=(0, 1), prior=DataPrior(train_images))  # + transforms
"""
from .base import Parameterization, Penalty, PixelParam, Prior, PriorPart, Transform, as_prior
from .params import DataPrior, FourierParam, LatentNorm, PCAParam, spectrum_scale
from .penalties import L2, TV, Background, BNStats, Diversity, background_value, batchnorm_layers, bn_statistics_gap
from .shaping import (AUTO_BACKGROUND, AUTO_CHROMA_DECAY, AUTO_DECAY, AUTO_DIVERSITY, AUTO_STEPS, AUTO_STEPS_NO_BN,
                      DEFAULT_LR, DEFAULT_STEPS, auto_prior, deepinversion_prior, plugin_inversion_prior, resolve_prior,
                      shape_inputs)
from .transforms import ColorShift, Jitter, RandomFlip, RandomRotate, RandomScale, robust_transforms

__all__ = ["Prior", "PriorPart", "Parameterization", "Transform", "Penalty", "PixelParam", "as_prior",
           "FourierParam", "PCAParam", "DataPrior", "LatentNorm", "spectrum_scale", "TV", "L2", "Background", "BNStats",
           "Diversity", "background_value", "bn_statistics_gap", "batchnorm_layers", "Jitter", "RandomScale",
           "RandomRotate", "RandomFlip", "ColorShift", "robust_transforms", "auto_prior", "deepinversion_prior",
           "plugin_inversion_prior", "resolve_prior", "shape_inputs", "DEFAULT_STEPS", "DEFAULT_LR", "AUTO_STEPS",
           "AUTO_STEPS_NO_BN", "AUTO_CHROMA_DECAY", "AUTO_DECAY", "AUTO_DIVERSITY", "AUTO_BACKGROUND"]
