"""Utilities: filtered gradients and pytree helpers (snnax's ``snnax.utils``)."""
from . import filter, tree
from .filter import filter_grad, filter_value_and_grad
from .tree import apply_to_tree_leaf, apply_to_tree_leaf_bytype

__all__ = ["filter", "tree", "filter_grad", "filter_value_and_grad", "apply_to_tree_leaf",
           "apply_to_tree_leaf_bytype"]
