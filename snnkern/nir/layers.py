"""Layers that NIR graphs need and snnkern's snnax API lacks: Scale, Threshold, Recurrent.

They are ordinary Equinox / snnkern layers (no dependency on the ``nir`` package), so a model
imported from NIR runs, trains and pickles without ``nir`` installed.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jrand

from ..snn import SimpleLIF, StatefulLayer

__all__ = ["Scale", "Threshold", "Recurrent"]

# the neurons' default surrogate (superspike 10), taken from a neuron so that it is the same object
_DEFAULT_SPIKE_FN = SimpleLIF([0.9]).spike_fn


class Scale(eqx.Module):
    """Elementwise ``x * scale`` (NIR ``Scale``). ``scale`` is trainable and broadcasts against ``x``."""

    scale: jax.Array

    def __init__(self, scale):
        self.scale = scale if isinstance(scale, jax.Array) else jnp.asarray(scale, dtype=jnp.float32)

    def __call__(self, x: jax.Array, *, key=None) -> jax.Array:
        return x * self.scale


class Threshold(eqx.Module):
    """A stateless spike: ``spike_fn(x - threshold)``, 1 where ``x >= threshold`` (NIR ``Threshold``).

    A Python-float threshold is a constant, an array one is trainable (as for the neurons).
    """

    threshold: Union[float, jax.Array]
    spike_fn: Callable = eqx.field(static=True)

    def __init__(self, threshold: Union[float, jax.Array] = 1.0, spike_fn: Optional[Callable] = None):
        self.threshold = threshold
        self.spike_fn = _DEFAULT_SPIKE_FN if spike_fn is None else spike_fn

    def __call__(self, x: jax.Array, *, key=None) -> jax.Array:
        return self.spike_fn(x - self.threshold)


def _is_stateful(layer) -> bool:
    return isinstance(layer, StatefulLayer)


class Recurrent(StatefulLayer):
    """A chain of sub-layers with a feedback path, inside one time step of one layer.

    At every step: ``h = x + feedback(out_prev)``, then ``h`` runs through ``layers`` (chained within
    the step, as in a ``CompoundLayer``), and ``out`` is the last sub-layer's output; ``out_prev``
    is the previous step's ``out`` (zeros at t = 0). ``feedback`` is a chain of stateless layers
    (e.g. one ``Linear`` for the recurrent weights).

    This is a NIR cycle without a ``Delay`` node (a recurrent layer as snnTorch and spyx write it):
    unlike a model-level self-edge, it adds no delay between this layer and the next sub-layer of
    a ``CompoundLayer``, so ``CompoundLayer(Linear_ff, Recurrent([LIF], [Linear_rec]), Linear_out,
    SimpleLI)`` reads out the recurrent spikes within the same step.

    State: ``[sub-layer states, out]`` (a stateless sub-layer keeps ``[its output]``); the value
    other layers read is ``out``.
    """

    layers: list
    feedback: list

    def __init__(self, layers: Sequence[eqx.Module], feedback: Sequence[eqx.Module]):
        super().__init__()
        layers, feedback = list(layers), list(feedback)
        if not layers:
            raise ValueError("Recurrent needs at least one layer")
        for kind, seq in (("layer", layers), ("feedback layer", feedback)):
            for m, sub in enumerate(seq):
                if not isinstance(sub, eqx.Module):
                    raise TypeError(f"Recurrent: {kind} {m} is a {type(sub).__name__}, not an equinox Module")
        for m, sub in enumerate(feedback):
            if _is_stateful(sub):
                raise TypeError(f"Recurrent: feedback layer {m} ({type(sub).__name__}) is stateful; the feedback "
                                f"path must be stateless (e.g. a Linear)")
        self.layers, self.feedback = layers, feedback

    def init_state(self, shape, key=None, *args, **kwargs) -> list:
        keys = jrand.split(jrand.PRNGKey(0) if key is None else key, len(self.layers))
        x = jnp.zeros(tuple(shape))
        states = []
        for sub, k in zip(self.layers, keys):
            if _is_stateful(sub):
                states.append(sub.init_state(x.shape, k))
            else:
                x = sub(x, key=k)
                states.append([x])
                x = jnp.zeros_like(x)
        return [states, x]

    def __call__(self, state, synaptic_input, *, key=None):
        sub_states, out_prev = state
        n = len(self.layers) + len(self.feedback)
        keys = [None] * n if key is None else list(jrand.split(key, n))
        fb = out_prev
        for sub, k in zip(self.feedback, keys[len(self.layers):]):
            fb = sub(fb, key=k)
        h = synaptic_input + fb
        new_states = []
        for sub, st, k in zip(self.layers, sub_states, keys):
            if _is_stateful(sub):
                ns, h = sub(st, h, key=k)
            else:
                h = sub(h, key=k)
                ns = [h]
            new_states.append(ns)
        return [new_states, h], h
