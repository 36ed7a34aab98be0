"""Spike encoders: values or signals to time-major spike trains ``(T, ...)`` (docs/toolkit.md).

- :func:`rate`: Bernoulli spikes, a value ``x`` in [0, 1] fires with probability ``x`` at every step;
- :func:`latency`: one spike per value, the larger the earlier (time-to-first-spike);
- :func:`delta`: spikes where a signal ``(T, ...)`` changes by more than a threshold.

Pure JAX: every encoder works under ``jit`` (``T`` and the options are static) and ``vmap`` (a batch
``(B, ...)`` encodes sample by sample with ``jax.vmap``, giving ``(B, T, ...)``; the encoders also take
any leading shape directly, giving ``(T, B, ...)``). Outputs whose values are 0/1 are ``bool``; feed
them to a model as they are (a ``bool`` input is known to be binary) or cast them.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from . import _checks

__all__ = ["rate", "latency", "delta"]


def rate(x, T: int, key, *, gain: float = 1.0) -> jax.Array:
    """Rate (Bernoulli) coding: at each of ``T`` steps, entry ``x[i]`` fires with probability
    ``clip(gain * x[i], 0, 1)``, independently. ``x``: any shape, values in [0, 1] (values outside
    are clipped); returns ``bool`` of shape ``(T, *x.shape)``. The expected spike count of an entry is
    ``T * x``; draws are fixed by ``key``."""
    fn = "encode.rate"
    x = _checks.array(fn, "x", x)
    T = _checks.positive_int(fn, "T", T)
    key = _checks.prng_key(fn, key)
    p = jnp.clip(x.astype(jnp.float32) * gain, 0.0, 1.0)
    return jax.random.bernoulli(key, p, (T,) + tuple(x.shape))


def latency(x, T: int, *, window: Optional[int] = None, threshold: float = 0.0) -> jax.Array:
    """Latency (time-to-first-spike) coding: one spike per entry, at step
    ``t = round((1 - clip(x, 0, 1)) * (window - 1))``, so ``x = 1`` fires at step 0 and values near
    ``threshold`` fire last, at step ``window - 1``; entries ``<= threshold`` never fire.

    ``window`` (default ``T``, at most ``T``) leaves the last ``T - window`` steps free, e.g. for the
    spikes to travel through a model whose every edge is delayed one step. The spike time is
    non-increasing in ``x``. Returns ``bool`` of shape ``(T, *x.shape)``."""
    fn = "encode.latency"
    x = _checks.array(fn, "x", x)
    T = _checks.positive_int(fn, "T", T)
    window = T if window is None else _checks.positive_int(fn, "window", window)
    if window > T:
        raise ValueError(f"{fn}: window must be <= T={T}, got {window}")
    x = jnp.clip(x.astype(jnp.float32), 0.0, 1.0)
    t = jnp.round((1.0 - x) * (window - 1)).astype(jnp.int32)
    steps = jnp.arange(T, dtype=jnp.int32).reshape((T,) + (1,) * x.ndim)
    return (steps == t[None]) & (x > threshold)[None]


def delta(x, threshold: float = 0.0, *, signed: bool = True, initial=0.0) -> jax.Array:
    """Delta coding of a signal ``x`` of shape ``(T, ...)``: a spike where it changes by more than
    ``threshold`` from one step to the next, ``d[t] = x[t] - x[t-1]`` (``x[-1] = initial``, default 0:
    the first step compares with 0; pass ``initial=x[0]`` to start without spikes).

    ``signed=True``: ``int8`` of shape ``(T, ...)``, +1 where ``d > threshold``, -1 where
    ``d < -threshold``, else 0. ``signed=False``: two channels, ``bool`` of shape ``(T, 2, ...)``:
    channel 0 the decreases ("off"), channel 1 the increases ("on"), Tonic's polarity order.
    ``threshold`` (>= 0) may be an array broadcasting against one step ``x[t]``."""
    fn = "encode.delta"
    x = _checks.array(fn, "x", x, min_ndim=1)
    threshold = _checks.array(fn, "threshold", threshold, kinds="iuf")
    if _checks.is_concrete(threshold) and bool(jnp.any(threshold < 0)):
        raise ValueError(f"{fn}: threshold must be >= 0, got {threshold}")
    initial = _checks.array(fn, "initial", initial, kinds="biuf")
    try:
        prev0 = jnp.broadcast_to(initial, x.shape[1:]).astype(jnp.float32)
    except ValueError:
        raise ValueError(f"{fn}: initial of shape {tuple(initial.shape)} does not broadcast to one step "
                         f"of x, shape {tuple(x.shape[1:])} (x has shape {tuple(x.shape)}, time first)") from None
    x = x.astype(jnp.float32)
    d = x - jnp.concatenate([prev0[None], x[:-1]])
    on, off = d > threshold, d < -threshold
    if signed:
        return (on.astype(jnp.int8) - off.astype(jnp.int8)).astype(jnp.int8)
    return jnp.stack([off, on], axis=1)

