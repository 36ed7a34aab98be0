"""The residual policy of every time loop (the XLA loops and the Pallas kernels): what the forward pass
stores of the state entering each step, in which dtype, and how the backward pass gets that state back.

- Stored: the state entering each step, without the entries the backward pass gets elsewhere (the last
  entry when it is a primal output, ``reads`` or ``outs``; a component loop's derived entries, which it
  recomputes). The loop's input or current is a residual of its own (the coupling says which).
- Spike entries (exactly 0/1) in a 1-byte dtype: ``bool`` in the XLA loops, ``int8`` inside the kernels;
  floating entries optionally narrower (``residual_dtype``, the Pallas neuron kernel's option); the
  others in their own dtype. :func:`stored_dtype` is the one place that decides.
- At t = 0 the exact initial state: an entry stored in a dtype other than its own is restored from
  ``state0`` there (the user's initial state need not be 0/1, nor representable narrower).
  :func:`restore` is the one place that restores.
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from .common import FLOATS

__all__ = ["stored_dtype", "residual_dtypes", "check_residual_dtype", "store", "restore", "Residuals"]


def check_residual_dtype(residual_dtype):
    """``residual_dtype`` as a numpy dtype (None stays None); TypeError / ValueError if it is not
    one of the floating dtypes the kernels store."""
    if residual_dtype is None:
        return None
    try:
        dt = jnp.dtype(residual_dtype)
    except TypeError as e:
        raise TypeError(f"residual_dtype must be None or a floating dtype (jnp.float32, jnp.bfloat16, "
                        f"jnp.float16), got {residual_dtype!r}") from e
    if not jnp.issubdtype(dt, jnp.floating):
        raise TypeError(f"residual_dtype must be a floating dtype (jnp.float32, jnp.bfloat16, jnp.float16), "
                        f"got {dt}: spike entries are already stored as int8, the other state entries "
                        f"need a float")
    if not any(dt == jnp.dtype(f) for f in FLOATS):
        raise ValueError(f"residual_dtype {dt} is not supported by the kernels; use jnp.float32, "
                         f"jnp.bfloat16 or jnp.float16")
    return dt


def stored_dtype(dtype, binary: bool, spike_dtype=jnp.int8, narrow=None):
    """The dtype a state entry (leaf) of ``dtype`` is stored in: ``spike_dtype`` if it is ``binary``
    (exactly 0/1), ``narrow`` for a floating entry wider than it, else its own dtype."""
    dt = jnp.dtype(dtype)
    if binary:
        return jnp.dtype(spike_dtype)
    if narrow is not None and jnp.issubdtype(dt, jnp.floating) and dt.itemsize > jnp.dtype(narrow).itemsize:
        return jnp.dtype(narrow)
    return dt


def residual_dtypes(state_dtypes: Sequence, spike_idx: Sequence[int] = (), residual_dtype=None,
                    spike_dtype=jnp.int8) -> list:
    """The dtype each state entry is stored in as a per-step residual (:func:`stored_dtype`): ``int8``
    (the kernels; the XLA loops pass ``spike_dtype=bool``) for spike entries, ``residual_dtype`` for
    floating entries whose dtype is wider than it, else the entry's own dtype. (Per neuron and step the
    residuals take ``sum(itemsize)`` bytes, plus the input.)"""
    narrow = check_residual_dtype(residual_dtype)
    return [stored_dtype(dt, k in spike_idx, spike_dtype, narrow) for k, dt in enumerate(state_dtypes)]


def store(state, dtypes):
    """The stored form of ``state`` (a pytree), each leaf cast to its leaf of ``dtypes``."""
    return jax.tree.map(lambda s, dt: s.astype(dt), state, dtypes)


def _restore_leaf(kept, s0, t):
    if kept.dtype == s0.dtype:
        return kept
    return jnp.where(t == 0, s0, kept.astype(s0.dtype))


def restore(kept, state0, t):
    """The state entering step ``t`` from its stored form ``kept`` (a pytree; ``state0`` the same
    structure, values of the state's dtypes): a leaf stored in its own dtype as it is, the others cast
    back, and at t = 0 the exact ``state0``."""
    return jax.tree.map(lambda k, s0: _restore_leaf(k, s0, t), kept, state0)


class Residuals:
    """What a loop stores of a state (a list of entries, each a pytree of arrays) entering each step.

    ``binary``: per entry, a bool or a pytree of bools (True: exactly 0/1); ``skip``: the entries that
    are not stored (the backward pass gets them from a primal output or recomputes them).
    ``dtypes[k]`` is entry k's pytree of stored dtypes, None where skipped."""

    def __init__(self, state0: Sequence, binary: Sequence, skip: Sequence[int] = (), spike_dtype=jnp.bool_,
                 narrow: Optional[jnp.dtype] = None):
        def dtypes(entry, bits):
            return jax.tree.map(lambda s, b: stored_dtype(jnp.result_type(s), b, spike_dtype, narrow), entry, bits)

        self.dtypes = [None if k in skip else dtypes(e, b) for k, (e, b) in enumerate(zip(state0, binary))]

    @classmethod
    def of_spikes(cls, state0: Sequence, spike_idx: Sequence[int], skip: Sequence[int] = ()):
        """For a neuron's state: entries ``spike_idx`` binary (stored as bool)."""
        return cls(state0, [k in spike_idx for k in range(len(state0))], skip)

    def store(self, state) -> list:
        """The stored entries of ``state`` (None where skipped)."""
        return [None if dt is None else store(e, dt) for e, dt in zip(state, self.dtypes)]

    def restore(self, kept: Sequence, state0: Sequence, t, given=None) -> list:
        """The state entering step ``t``: stored entries restored (:func:`restore`), skipped entry k
        from ``given[k]`` (``given`` a dict; an entry missing from it: ``state0[k]``, a placeholder
        the caller replaces)."""
        given = {} if given is None else given
        return [given.get(k, s0) if dt is None else restore(e, s0, t)
                for k, (e, s0, dt) in enumerate(zip(kept, state0, self.dtypes))]
