"""The algebra of inverting one layer: activation registry, Linear inverses, leaf tracing."""
from .activations import (
    ElementwiseInverse, get_inverse, interior, is_invertible, register_activation,
    registered_types,
)
from .linear import LinearInverse, capped_svd, linear_inverse
from .plan import LeafCall, LeafTrace, model_mode_guard, trace_leaf_modules

__all__ = [
    "ElementwiseInverse", "get_inverse", "interior", "is_invertible", "register_activation",
    "registered_types", "LinearInverse", "capped_svd", "linear_inverse", "LeafCall", "LeafTrace",
    "model_mode_guard", "trace_leaf_modules",
]
