"""captum-invert: which inputs does a trained classifier map to a given class distribution?

Captum-style inversion methods (subclasses of ``captum.attr.Attribution``)::

    from captum_invert import BackwardPassInversion
    x = BackwardPassInversion(model).attribute(target=3, n_samples=64, seed=0)
"""
from ._core import (
    BackwardPassInversion, ForwardPassInversion, GeneralizedInversion, InversionError, LayerInversion,
    LearnedInversion,
    InversionMethod,
)
from ._core.baselines import (
    ActivationMaximization, DatasetSearch, ExactInversion, MiddleFilter, PixelImportance,
    PseudoInverseInversion, TopBottomFilter, stability_report,
)
from .blocks.plan import InversionPlan
from .blocks import register_activation
from . import priors

__version__ = "0.1.0"

__all__ = ["ActivationMaximization", "DatasetSearch", "ExactInversion", "MiddleFilter",
           "PixelImportance", "PseudoInverseInversion", "TopBottomFilter", "stability_report",
           "BackwardPassInversion", "ForwardPassInversion", "GeneralizedInversion", "InversionPlan", "LayerInversion", "LearnedInversion", "InversionError", "InversionMethod", "register_activation",
           "priors", "__version__"]
