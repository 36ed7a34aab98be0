"""The layer protocol: the abstract types the engine plans with, and the one place of its rules.

``snnkern.snn``'s classes subclass these types (``snn -> plan``); the planner and the runner
only ever ask the functions below, so the rules are written once:

- a **stateful** layer (:class:`AbstractStatefulLayer`) is called ``layer(state, x, key=k) ->
  (new_state, out)`` and made by ``layer.init_state(shape, key)``; a :class:`AbstractParallel` with
  a stateful branch is stateful too. Any other Equinox module is stateless: ``layer(x, key=k)``.
- a **neuron** (:class:`AbstractNeuron`) has a pure ``step(params, state, x)`` over ``params()``.
- a **compound** (:class:`AbstractCompound`) chains ``layers`` within a step.
- a **parallel** (:class:`AbstractParallel`) receives the list of its inputs, as does a compound
  whose first sub-layer takes a list.
- the value other layers read is the last entry of a layer's state (a compound: its last
  sub-layer's), docs/semantics.md "Time".
"""
# (no ``from __future__ import annotations``: Equinox must see AbstractClassVar as an object, else it
# turns the overriding class attributes into dataclass fields)
import abc
import functools as ft
from typing import Any, Sequence, Tuple

import equinox as eqx
import jax

__all__ = ["AbstractStatefulLayer", "AbstractNeuron", "AbstractCompound", "AbstractParallel", "is_stateful",
           "is_neuron", "is_compound", "takes_input_list", "entry_module", "layer_output", "read_from_out",
           "call_layer", "merge_inputs", "keep_dtypes"]


class AbstractStatefulLayer(eqx.Module):
    """A layer with a state carried through time."""

    @abc.abstractmethod
    def init_state(self, shape, key=None, *args, **kwargs) -> list:
        """The initial state (a list) for an input of ``shape``."""

    @abc.abstractmethod
    def __call__(self, state, synaptic_input, *, key=None):
        """One time step: ``(new_state, output)``."""


class AbstractNeuron(AbstractStatefulLayer):
    """A stateful layer whose dynamics are one pure function, so every time-loop path can run it.

    ``state_names``: the state layout; ``spike_states``: entries that hold spikes;
    ``output_is_last_state``: ``step``'s output equals its new state's last entry."""

    state_names: eqx.AbstractClassVar[Tuple[str, ...]]
    spike_states: eqx.AbstractClassVar[Tuple[str, ...]]
    output_is_last_state: eqx.AbstractClassVar[bool]

    @abc.abstractmethod
    def params(self) -> dict:
        """The parameters ``step`` reads, each a scalar or broadcasting against the state."""

    @abc.abstractmethod
    def step(self, params: dict, state: Sequence[jax.Array], x: jax.Array):
        """``(new_state, output)``, reading parameters only from ``params``."""

    @abc.abstractmethod
    def binary_state_entries(self) -> Tuple[int, ...]:
        """Indices of state entries that are exactly 0/1 (the loops store them compactly)."""


class AbstractCompound(AbstractStatefulLayer):
    """Sub-layers chained within one time step."""

    layers: eqx.AbstractVar[list]


class AbstractParallel(eqx.Module):
    """Branches side by side: input k goes to branch k; the outputs are summed."""

    layers: eqx.AbstractVar[list]


def is_stateful(layer) -> bool:
    """A layer with a state of its own (neurons, compounds, a Parallel with a stateful branch)."""
    if isinstance(layer, AbstractStatefulLayer):
        return True
    return isinstance(layer, AbstractParallel) and any(is_stateful(b) for b in layer.layers)


def is_neuron(layer) -> bool:
    return isinstance(layer, AbstractNeuron)


def is_compound(layer) -> bool:
    return isinstance(layer, AbstractCompound)


def takes_input_list(layer) -> bool:
    """Whether ``layer`` receives its several inputs as a list (Parallel, or a compound starting so)."""
    if isinstance(layer, AbstractParallel):
        return True
    return isinstance(layer, AbstractCompound) and bool(layer.layers) and takes_input_list(layer.layers[0])


def entry_module(layer):
    """The module that first touches the input of ``layer`` (descending into compounds)."""
    while isinstance(layer, AbstractCompound) and layer.layers:
        layer = layer.layers[0]
    return layer


def layer_output(layer, state):
    """The value other layers read from ``layer``: the last element of its state."""
    while isinstance(layer, AbstractCompound):
        layer, state = layer.layers[-1], state[-1]
    return state[-1]


def read_from_out(layer, out):
    """The read value, from what a call returned (a compound returns all its sub-outputs)."""
    while isinstance(layer, AbstractCompound):
        layer, out = layer.layers[-1], out[-1]
    return out


def call_layer(layer, state, x, key) -> Tuple[Any, Any]:
    """One time step of one layer: ``(new_state, output)``."""
    if is_stateful(layer):
        new_state, out = layer(state, x, key=key)
        return new_state, out
    out = layer(x, key=key)
    return [out], out


def keep_dtypes(new, old):
    """``new`` in the dtypes of ``old`` (a state carried through time keeps its initial dtypes, e.g.
    integer spikes fed to a float32 state)."""
    return jax.tree.map(lambda n, o: n.astype(o.dtype) if hasattr(o, "dtype") else n, new, old)


def merge_inputs(layer, inputs: list):
    """External inputs first, then sources (docs/semantics.md "Several inputs"): a list for a
    Parallel, else their sum."""
    if takes_input_list(layer):
        return list(inputs)
    if len(inputs) == 1:
        return inputs[0]
    return ft.reduce(lambda a, b: a + b, inputs)

