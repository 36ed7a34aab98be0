"""Integrate-and-fire neurons (docs/semantics.md "Neurons"): SimpleIAF, IAF. Both return tuples, as snnax does."""
from __future__ import annotations

from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp

from ...functional.surrogate import SpikeFn, superspike_surrogate  # noqa: F401 (snnax's names here)
from .stateful import DEFAULT_SPIKE_FN, SpikingNeuron, StateShape, _decay_array, clamp_decay, default_init_fn
from .stateful import StatefulLayer, StatefulOutput  # noqa: F401 (snnax's names here)

__all__ = ["SimpleIAF", "IAF"]

Scalar = Union[float, jax.Array]


def _leak_array(leak) -> jax.Array:
    # snnax always stores the leak as an array, so it is trainable even when given as a float
    return leak if isinstance(leak, jax.Array) else jnp.asarray(leak, dtype=jnp.float32)


class SimpleIAF(SpikingNeuron):
    """IAF without synaptic current. State ``[mem, spk]``; returns ``([mem, spk], spk)``."""

    leak: jax.Array

    state_names = ("mem", "spk")

    def __init__(self, leak: Scalar = 0.0, threshold: Scalar = 1.0, spike_fn: SpikeFn = DEFAULT_SPIKE_FN,
                 stop_reset_grad: bool = True, reset_val: Optional[Scalar] = None,
                 shape: Optional[StateShape] = None, init_fn: Optional[Callable] = default_init_fn):
        super().__init__(init_fn, shape)
        self.leak = _leak_array(leak)
        self._init_spiking(spike_fn, threshold, stop_reset_grad, reset_val)

    def params(self) -> dict:
        return {"leak": self.leak, "threshold": self.threshold, "reset_val": self.reset_val}

    def step(self, p, state, x):
        mem, _ = state
        mem = (mem - p["leak"]) + x
        spk = self.spike_fn(mem - p["threshold"])
        r = mem * spk if p["reset_val"] is None else p["reset_val"] * spk
        mem = mem - self._reset(r)
        return [mem, spk], spk


class IAF(SpikingNeuron):
    """IAF with a synaptic current (``dc[0]`` is the synaptic factor). State ``[mem, syn, spk]``."""

    decay_constants: jax.Array
    leak: jax.Array

    state_names = ("mem", "syn", "spk")

    def __init__(self, decay_constants, leak: Scalar = 0.0, threshold: Scalar = 1.0,
                 spike_fn: SpikeFn = DEFAULT_SPIKE_FN, stop_reset_grad: bool = True,
                 reset_val: Optional[Scalar] = None, init_fn: Optional[Callable] = default_init_fn,
                 shape: Optional[StateShape] = None):
        super().__init__(init_fn, shape)
        self.decay_constants = _decay_array("IAF", "decay_constants", decay_constants, 1, "[beta (synapse)]")
        self.leak = _leak_array(leak)
        self._init_spiking(spike_fn, threshold, stop_reset_grad, reset_val)

    def params(self) -> dict:
        return {"beta": self.decay_constants[0], "leak": self.leak, "threshold": self.threshold,
                "reset_val": self.reset_val}

    def step(self, p, state, x):
        mem, syn, _ = state
        b = clamp_decay(p["beta"])
        mem = (mem - p["leak"]) + syn
        syn = b * syn + (1.0 - b) * x
        spk = self.spike_fn(mem - p["threshold"])
        r = mem * spk if p["reset_val"] is None else p["reset_val"] * spk
        mem = mem - self._reset(r)
        return [mem, syn, spk], spk
