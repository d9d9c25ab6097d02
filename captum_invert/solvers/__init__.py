"""Numerical solvers shared by the inversion methods."""
from .lm import LMResult, batched_jacobian, levenberg_marquardt, levenberg_marquardt_cg

__all__ = ["LMResult", "batched_jacobian", "levenberg_marquardt", "levenberg_marquardt_cg"]
