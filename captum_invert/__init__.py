"""captum-invert: which inputs does a trained classifier map to a given class distribution?

Captum-style inversion methods (subclasses of ``captum.attr.Attribution``)::

    from captum_invert import BackwardPassInversion
    x = BackwardPassInversion(model).attribute(target=3, n_samples=64, seed=0)

The names below are imported on first use (PEP 562), so that ``import captum_invert`` and the
command line's ``--help`` / ``--version`` do not load torch.
"""
import importlib

__version__ = "0.1.0"

_WHERE = {
    "BackwardPassInversion": "._core", "ForwardPassInversion": "._core", "GeneralizedInversion": "._core",
    "InversionError": "._core", "LayerInversion": "._core", "LearnedInversion": "._core",
    "InversionMethod": "._core", "SampleDiagnosis": "._core", "ModelAdapter": "._core.model",
    "SolverSettings": "._core.solve",
    "ActivationMaximization": "._core.baselines", "DatasetSearch": "._core.baselines",
    "ExactInversion": "._core.baselines", "MiddleFilter": "._core.baselines",
    "PixelImportance": "._core.baselines", "PseudoInverseInversion": "._core.baselines",
    "TopBottomFilter": "._core.baselines", "stability_report": "._core.baselines",
    "InversionPlan": ".blocks.plan", "register_activation": ".blocks", "PreimageRegion": "._core.region",
    "generate": ".generation", "harden": ".hardening", "audit": ".auditing", "AuditReport": ".auditing",
}
_MODULES = ("priors", "metrics", "visualization", "datasets", "models", "blocks", "solvers", "features")

__all__ = sorted(_WHERE) + ["priors", "__version__"]


def __getattr__(name):
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    elif name in _MODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE) | set(_MODULES))
