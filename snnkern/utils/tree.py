"""Pytree helpers to find and change neuron parameters by field name (snnax's ``utils.tree``)."""
from __future__ import annotations

from typing import Any, Callable, Type

import equinox as eqx
import jax

__all__ = ["NEURON_PARAMS", "apply_to_tree_leaf", "apply_to_tree_leaf_bytype", "is_threshold",
           "is_decay_constants", "is_decay_constant", "is_reset_val", "is_neuron_param", "has_identifier",
           "is_identifier"]

NEURON_PARAMS = ("threshold", "leak", "decay_constant", "decay_constants", "reset_val")


def is_identifier(name: str, node: Any) -> bool:
    """``node`` has an attribute ``name`` (possibly None)."""
    return hasattr(node, name)


def has_identifier(name: str, node: Any) -> bool:
    """``node`` has a field ``name`` that is not None."""
    return getattr(node, name, None) is not None


def _field_is_array(name: str, node: Any) -> bool:
    return has_identifier(name, node) and eqx.is_inexact_array(getattr(node, name))


def is_threshold(node: Any) -> bool:
    """A module whose ``threshold`` is a trainable (inexact) array."""
    return _field_is_array("threshold", node)


def is_decay_constant(node: Any) -> bool:
    return _field_is_array("decay_constant", node)


def is_decay_constants(node: Any) -> bool:
    return _field_is_array("decay_constants", node)


def is_reset_val(node: Any) -> bool:
    return _field_is_array("reset_val", node)


def is_neuron_param(node: Any) -> bool:
    """A module with at least one trainable neuron parameter (see ``NEURON_PARAMS``)."""
    return any(_field_is_array(n, node) for n in NEURON_PARAMS)


def _apply(pytree, select: Callable[[Any], bool], identifier: str, replace_fn: Callable):
    def where(tree):
        nodes = jax.tree.leaves(tree, is_leaf=select)
        return tuple(getattr(n, identifier) for n in nodes if select(n))

    if not where(pytree):
        return pytree
    return eqx.tree_at(where, pytree, replace_fn=replace_fn)


def apply_to_tree_leaf(pytree, identifier: str, replace_fn: Callable):
    """Apply ``replace_fn`` to the field ``identifier`` of every module in ``pytree`` that has it
    (not None). To set a value: ``replace_fn=lambda _: value``."""
    return _apply(pytree, lambda n: has_identifier(identifier, n), identifier, replace_fn)


def apply_to_tree_leaf_bytype(pytree, typ: Type, identifier: str, replace_fn: Callable):
    """As :func:`apply_to_tree_leaf`, restricted to modules of exactly type ``typ``."""
    return _apply(pytree, lambda n: type(n) is typ and has_identifier(identifier, n), identifier, replace_fn)
