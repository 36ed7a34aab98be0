"""Whole-sequence helpers the strategies share: a layer over every step at once, the one-step shift
of an edge, a neuron's step function with its arrays stripped."""
from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .protocol import keep_dtypes

__all__ = ["aval", "shift", "gemm_seq", "stateless_seq", "is_vector_linear", "float_input", "float_aval", "neuron_step"]


def aval(x):
    """The abstract value (shape, dtype) of an array or aval."""
    return jax.ShapeDtypeStruct(tuple(jnp.shape(x)), jnp.result_type(x))


def shift(seq, first):
    """``[first, seq[0], ..., seq[T-2]]``: what a consumer reads one step later (docs/semantics.md "Time")."""
    # the reference carries each state in its initial dtype (an int input read through a float state)
    return jnp.concatenate([first[None], seq[:-1].astype(first.dtype)], axis=0)


def is_vector_linear(layer) -> bool:
    """A plain ``eqx.nn.Linear`` on vectors: one GEMM over all rows of a sequence."""
    return (type(layer) is eqx.nn.Linear and layer.in_features != "scalar"
            and layer.out_features != "scalar")


def gemm_seq(inp, weight):
    """``inp @ weight^T`` over the last axis: one GEMM over all rows, in the sequence's layout."""
    return jnp.einsum("...i,oi->...o", inp, weight)


def stateless_seq(layer, inp, key):
    """A stateless layer applied at every step at once (one batched call; the same key each step).

    A vector ``eqx.nn.Linear`` is one matmul over the last axis, which keeps whatever layout the
    sequence has (time-major under ``vmap``): no transposes between GEMMs and time loops."""
    if is_vector_linear(layer) and not isinstance(inp, (list, tuple)):
        out = gemm_seq(inp, layer.weight)
        return out + layer.bias if layer.bias is not None else out
    return jax.vmap(lambda x: layer(x, key=key))(inp)


def float_input(x):
    """A neuron loop's input in a floating dtype (integer spikes are read as float32)."""
    return x if jnp.issubdtype(x.dtype, jnp.inexact) else x.astype(jnp.float32)


def float_aval(x):
    """:func:`float_input` of an abstract value."""
    return jax.ShapeDtypeStruct(tuple(x.shape), x.dtype if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.float32)


def neuron_step(layer):
    """The neuron's step with its arrays stripped (it must read parameters only from ``params``),
    keeping the carry dtypes stable."""
    stripped = eqx.filter(layer, eqx.is_array, inverse=True)

    def step(p, s, x):
        ns, out = stripped.step(p, s, x)
        return keep_dtypes(ns, s), out

    return step
