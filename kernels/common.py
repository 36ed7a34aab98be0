"""Plain-JAX helpers shared by the XLA loops and the Pallas wrappers (outside any kernel)."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

__all__ = ["FLOATS", "params_broadcast", "reduce_to", "current", "compress", "restore"]

FLOATS = (jnp.float32, jnp.bfloat16, jnp.float16)


def params_broadcast(dyn, shape) -> bool:
    """Whether every parameter array broadcasts to ``shape`` (the per-neuron gradient trick applies)."""
    try:
        return all(jnp.broadcast_shapes(a.shape, tuple(shape)) == tuple(shape) for a in jax.tree.leaves(dyn))
    except ValueError:
        return False


def reduce_to(g, shape):
    """Sum a per-neuron gradient back to the parameter's shape."""
    lead = g.ndim - len(shape)
    g = jnp.sum(g, axis=tuple(range(lead))) if lead else g
    axes = tuple(k for k, n in enumerate(shape) if n == 1 and g.shape[k] != 1)
    return jnp.sum(g, axis=axes, keepdims=True) if axes else g


def current(w, b, r, fft):
    """``I = ff + (r @ W^T + b)`` for a batch of rows ``r`` (the recurrent compound's Parallel sum:
    its external branches first, the recurrent branch last)."""
    rec = r @ w.T
    return fft + (rec + b if b is not None else rec)


def compress(state: list, spike_idx: Sequence[int]) -> list:
    """Spike entries (exactly 0/1) as ``bool`` for storage."""
    return [s.astype(jnp.bool_) if k in spike_idx else s for k, s in enumerate(state)]


def restore(state: list, state0: list, t, spike_idx: Sequence[int]) -> list:
    """Decompress a stored entering state; at t = 0 use the exact initial state."""
    return [jnp.where(t == 0, s0, s.astype(s0.dtype)) if k in spike_idx else s
            for k, (s, s0) in enumerate(zip(state, state0))]
