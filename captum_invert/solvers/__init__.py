"""Numerical solvers shared by the inversion methods."""
from .first_order import projected_adam, surrogate_gradients
from .lm import LMResult, batched_jacobian, levenberg_marquardt, levenberg_marquardt_cg

__all__ = ["LMResult", "batched_jacobian", "levenberg_marquardt", "levenberg_marquardt_cg", "projected_adam",
           "surrogate_gradients"]
