"""Leaky integrator without spikes (docs/semantics.md "Neurons"): SimpleLI, a membrane read-out layer."""
from __future__ import annotations

from typing import Callable, Optional

import jax

from .stateful import clamp_decay, Neuron, StateShape, _decay_array, default_init_fn
from .stateful import StatefulLayer, StatefulOutput  # noqa: F401 (snnax's names here)

__all__ = ["SimpleLI"]


class SimpleLI(Neuron):
    """``mem = a*mem + (1-a)*I`` with ``a = clamp(.5, dc[0], 1)``. State ``[mem]``; output is ``mem``."""

    decay_constants: jax.Array

    state_names = ("mem",)
    spike_states = ()

    def __init__(self, decay_constants, init_fn: Optional[Callable] = default_init_fn,
                 shape: Optional[StateShape] = None, key: Optional[jax.Array] = None):
        super().__init__(init_fn, shape)
        self.decay_constants = _decay_array("SimpleLI", "decay_constants", decay_constants, 1, "[alpha]")

    def params(self) -> dict:
        return {"alpha": self.decay_constants[0]}

    def step(self, p, state, x):
        (mem,) = state
        a = clamp_decay(p["alpha"])
        mem = a * mem + (1.0 - a) * x
        return [mem], mem
