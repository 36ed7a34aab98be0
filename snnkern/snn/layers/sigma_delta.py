"""Sigma-delta neuron (docs/semantics.md "Neurons")."""
from __future__ import annotations

from typing import Callable, Optional, Union

import equinox as eqx
import jax
import jax.numpy as jnp

from ...functional.surrogate import SpikeFn, superspike_surrogate  # noqa: F401 (snnax's names here)
from .stateful import DEFAULT_SPIKE_FN, Neuron, StateShape, _decay_array, as_shape
from .stateful import StatefulLayer, StatefulOutput  # noqa: F401 (snnax's names here)

__all__ = ["SigmaDelta"]


class SigmaDelta(Neuron):
    """Sigma decoder + delta encoder; ``decay_constants = [d_in, d_mem, d_fb]`` (not clamped).

    State ``[i, e, i_mem, s, spike]`` (float32 zeros); returns ``([i, e, i_mem, s, spike], spike)``.
    """

    decay_constants: jax.Array
    threshold: Union[float, jax.Array]
    spike_fn: SpikeFn = eqx.field(static=True)

    state_names = ("i", "e", "i_mem", "s", "spike")
    spike_states = ("spike",)

    def __init__(self, decay_constants, threshold=1.0, spike_fn: SpikeFn = DEFAULT_SPIKE_FN,
                 init_fn: Optional[Callable] = None, shape: Optional[StateShape] = None):
        super().__init__(init_fn, shape)
        self.decay_constants = _decay_array("SigmaDelta", "decay_constants", decay_constants, 3,
                                            "[input decay, membrane decay, feedback decay]")
        self.threshold, self.spike_fn = threshold, spike_fn

    def init_state(self, shape: StateShape, key=None, *args, **kwargs) -> list:
        return [jnp.zeros(as_shape(shape), dtype=jnp.float32) for _ in self.state_names]

    def params(self) -> dict:
        dc = self.decay_constants
        return {"d_in": dc[0], "d_mem": dc[1], "d_fb": dc[2], "threshold": self.threshold}

    def step(self, p, state, x):
        i, e, i_mem, s, spike = state
        i = i * p["d_in"] + x
        e = i - s
        i_mem = i_mem * p["d_mem"] + e
        spike = self.spike_fn(i_mem - p["threshold"])
        s = s * p["d_fb"] + spike
        return [i, e, i_mem, s, spike], spike
