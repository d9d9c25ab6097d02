"""The seeds' other inversion methods, behind the same Captum-style interface."""
from .activation_maximization import ActivationMaximization, total_variation
from .dataset_search import DatasetSearch
from .exact import ExactInversion, seed001_loss, stability_report
from .pixel_importance import PixelImportance
from .pseudo_inverse import MiddleFilter, PseudoInverseInversion, TopBottomFilter

__all__ = ["ActivationMaximization", "DatasetSearch", "ExactInversion", "PixelImportance",
           "PseudoInverseInversion", "TopBottomFilter", "MiddleFilter", "seed001_loss",
           "stability_report", "total_variation"]
