"""Inversion methods, each a captum.attr.Attribution."""
from .backward_pass import BackwardPassInversion
from .forward_pass import ForwardPassInversion
from .generalized import GeneralizedInversion
from .layer import LayerInversion
from .learned import LearnedInversion
from .base import Goal, InversionError, InversionMethod
from .model import ModelAdapter
from .solve import SolverSettings
from .diagnosis import SampleDiagnosis

__all__ = ["BackwardPassInversion", "ForwardPassInversion", "GeneralizedInversion", "LayerInversion", "LearnedInversion", "Goal", "InversionError", "InversionMethod", "SampleDiagnosis",
           "ModelAdapter", "SolverSettings"]
