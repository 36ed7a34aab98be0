"""Plain-JAX helpers shared by the XLA loops and the Pallas wrappers (outside any kernel)."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

__all__ = ["FLOATS", "params_broadcast", "reduce_to", "current", "keep_entry", "restore_entry", "compress",
           "restore", "vmap_is_innermost"]

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


def keep_entry(s):
    """A state entry that is exactly 0/1, as ``bool`` for storage."""
    return s.astype(jnp.bool_)


def restore_entry(kept, s0, t):
    """A stored ``bool`` entry back in its dtype; at t = 0 the exact initial value ``s0``."""
    return jnp.where(t == 0, s0, kept.astype(s0.dtype))


def compress(state: list, spike_idx: Sequence[int]) -> list:
    """Spike entries (exactly 0/1) as ``bool`` for storage."""
    return [keep_entry(s) if k in spike_idx else s for k, s in enumerate(state)]


def restore(state: list, state0: list, t, spike_idx: Sequence[int]) -> list:
    """Decompress a stored entering state; at t = 0 use the exact initial state."""
    return [restore_entry(s, s0, t) if k in spike_idx else s for k, (s, s0) in enumerate(zip(state, state0))]


def vmap_is_innermost() -> bool:
    """Whether the innermost transformation being traced is ``vmap`` (so a custom batching rule
    runs before any autodiff of it: ``grad(vmap(f))``, ``jit(vmap(f))``), not ``grad`` / ``jvp``
    (``vmap(grad(f))``, or no vmap at all). Private JAX API, guarded: False when unknown."""
    try:
        from jax._src import core
        from jax._src.interpreters import batching
        return isinstance(core.trace_ctx.trace, batching.BatchTrace)
    except Exception:  # noqa: BLE001 - moved internals: the always-correct per-sample path
        return False


