"""Plain-JAX helpers shared by the XLA loops and the Pallas wrappers (outside any kernel)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["FLOATS", "params_broadcast", "reduce_to", "current"]

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


def current(w, b, r, fft, cast: bool = False):
    """``I = ff + (r @ W^T + b)`` for a batch of rows ``r`` (the recurrent compound's Parallel sum:
    its external branches first, the recurrent branch last). ``w`` None: the identity; ``b`` None: no
    bias; ``cast``: the recurrent term in ``ff``'s dtype (else the sum has the promoted dtype)."""
    rec = r if w is None else r @ w.T
    rec = rec + b if b is not None else rec
    return fft + (rec.astype(fft.dtype) if cast else rec)
