"""How the engine talks to a layer, by duck typing (``plan`` never imports ``snn`` classes).

- stateful: ``layer.has_state`` if present, else ``isinstance(layer, StatefulLayer)``-like marker
  ``layer.is_stateful_layer``; stateful layers are called ``layer(state, x, key=k) -> (state, out)``.
- neuron: a stateful layer with a pure ``step(params, state, x)`` and ``params()``.
- compound: ``layer.is_compound`` (sub-layers chained within a step, in ``layer.layers``).
- parallel: ``layer.takes_input_list`` (receives the list of its inputs).
- the value other layers read is ``layer.output_of(state)`` if defined, else ``state[-1]``.
"""
from __future__ import annotations

import functools as ft
from typing import Any, Tuple

__all__ = ["is_stateful", "is_neuron", "is_compound", "takes_input_list", "layer_output", "read_from_out",
           "call_layer", "merge_inputs"]


def is_stateful(layer) -> bool:
    """A layer with a state of its own (neurons, compounds, a Parallel with a stateful branch)."""
    return bool(getattr(layer, "has_state", getattr(layer, "is_stateful_layer", False)))


def is_neuron(layer) -> bool:
    return is_stateful(layer) and callable(getattr(layer, "step", None)) and callable(getattr(layer, "params", None))


def is_compound(layer) -> bool:
    return bool(getattr(layer, "is_compound", False))


def takes_input_list(layer) -> bool:
    """Whether ``layer`` receives its several inputs as a list (Parallel, or a compound starting so)."""
    return bool(getattr(layer, "takes_input_list", False))


def layer_output(layer, state):
    """The value other layers read from ``layer``: the last element of its state (SPEC §3)."""
    reader = getattr(layer, "output_of", None)
    return reader(state) if reader is not None else state[-1]


def read_from_out(layer, out):
    """The read value, from what a call returned (a compound returns all its sub-outputs)."""
    while is_compound(layer):
        layer, out = layer.layers[-1], out[-1]
    return out


def call_layer(layer, state, x, key) -> Tuple[Any, Any]:
    """One time step of one layer: ``(new_state, output)``."""
    if is_stateful(layer):
        new_state, out = layer(state, x, key=key)
        return new_state, out
    out = layer(x, key=key)
    return [out], out


def merge_inputs(layer, inputs: list):
    """External inputs first, then sources (SPEC §8.2): a list for Parallel, else their sum."""
    if takes_input_list(layer):
        return list(inputs)
    if len(inputs) == 1:
        return inputs[0]
    return ft.reduce(lambda a, b: a + b, inputs)
