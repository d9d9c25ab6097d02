"""Inversion methods, each a captum.attr.Attribution."""
from .backward_pass import BackwardPassInversion
from .base import Goal, InversionError, InversionMethod

__all__ = ["BackwardPassInversion", "Goal", "InversionError", "InversionMethod"]
