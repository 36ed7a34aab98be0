"""Residual block (snnax's ``snn.layers.residual``)."""
from __future__ import annotations

from typing import Callable, Optional

import jax.numpy as jnp

from ...plan.protocol import layer_output, read_from_out
from ..architecture import default_forward_fn  # noqa: F401 (snnax's name here)
from ..composed import CompoundLayer, _layer_list
from .stateful import StatefulLayer

__all__ = ["ResNetBlock"]


class ResNetBlock(StatefulLayer):
    """Sub-layers chained within a time step, plus a skip connection: ``y_t = f(x_t) + x_t``.

    ``ResNetBlock(*layers)`` or ``ResNetBlock(layers_list)``; ``f`` is the chain of the sub-layers
    (as in a :class:`CompoundLayer`), whose output must have the input's shape. State: the
    sub-layers' states followed by ``y``, which is what other layers read (zeros before the first
    step); ``__call__`` returns ``(new_state, y)``. On the planned path the block runs as one
    per-step loop (it is not a plain chain: its sum needs the step's input).
    """

    layers: list

    def __init__(self, *layers, init_fn: Optional[Callable] = None):
        super().__init__(init_fn=init_fn)
        self.layers = _layer_list("ResNetBlock", layers)

    def _chain(self) -> CompoundLayer:
        return CompoundLayer(self.layers)

    def init_state(self, shape, key=None, *args, **kwargs) -> list:
        if isinstance(shape, (list, tuple)) and shape and all(isinstance(s, (list, tuple)) for s in shape):
            raise ValueError(f"ResNetBlock receives {len(shape)} inputs {list(shape)}; it adds one input "
                             f"to its output, so give it exactly one")
        chain = self._chain()
        states = chain.init_state(shape, key, *args, **kwargs)
        out = layer_output(chain, states)
        if tuple(jnp.shape(out)) != tuple(shape):
            raise ValueError(f"ResNetBlock: its sub-layers map the input shape {tuple(shape)} to "
                             f"{tuple(jnp.shape(out))} (last sub-layer {len(self.layers) - 1}, "
                             f"{type(self.layers[-1]).__name__}); the skip connection needs the same shape")
        return states + [jnp.zeros(tuple(shape))]

    def __call__(self, state, synaptic_input, *, key=None):
        new_states, outs = self._chain()(state[:-1], synaptic_input, key=key)
        y = read_from_out(self.layers[-1], outs[-1]) + synaptic_input
        return new_states + [y], y
