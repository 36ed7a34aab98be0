"""Functional helpers (surrogate spike functions)."""
from . import surrogate
from .surrogate import piecewise_surrogate, sigmoid_surrogate, superspike_surrogate, SpikeFn

__all__ = ["surrogate", "superspike_surrogate", "sigmoid_surrogate", "piecewise_surrogate", "SpikeFn"]
