"""Argument checks shared by the toolkit modules (encode, losses, activity, events).

Each raises a ``TypeError`` (wrong kind of value, wrong dtype) or a ``ValueError`` (wrong rank,
shape or range) whose message names the function, the argument and the shape it got. Checks read
only shapes and dtypes, which are known under ``jit`` and ``vmap``; value checks (a label out of
range) run only on concrete values.
"""
from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x) -> bool:
    """Whether ``x`` holds values now (not a tracer inside jit/vmap/grad)."""
    return not isinstance(x, jax.core.Tracer)


def positive_int(fn: str, name: str, value) -> int:
    """``value`` as a Python int >= 1 (a time-step count, a window, a batch size)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{fn}: {name} must be a positive int (static under jit), got {value!r} "
                        f"of type {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{fn}: {name} must be >= 1, got {value}")
    return int(value)


def array(fn: str, name: str, x, min_ndim: int = 0, kinds: str = "biuf"):
    """``x`` as a JAX array whose dtype kind is in ``kinds`` (b bool, i/u integer, f float) and rank
    is at least ``min_ndim``."""
    if isinstance(x, (list, tuple)):
        raise TypeError(f"{fn}: {name} must be an array, got a {type(x).__name__} (stack it first)")
    dtype = getattr(x, "dtype", None)
    if dtype is None or np.dtype(dtype).kind in kinds:
        try:
            x = jnp.asarray(x)
        except TypeError:
            raise TypeError(f"{fn}: {name} must be an array, got {type(x).__name__}") from None
    if np.dtype(x.dtype).kind not in kinds:
        names = {"b": "bool", "i": "integer", "u": "unsigned integer", "f": "float"}
        want = " or ".join(names[k] for k in kinds if k in names)
        raise TypeError(f"{fn}: {name} must have a {want} dtype, got {x.dtype} (shape {tuple(x.shape)})")
    if x.ndim < min_ndim:
        raise ValueError(f"{fn}: {name} must have at least {min_ndim} dimension(s), got shape {tuple(x.shape)}")
    return x


def prng_key(fn: str, key):
    """A PRNG key: a typed key array or a raw ``uint32[2]`` key (``jax.random.PRNGKey``)."""
    if isinstance(key, (int, np.integer)):
        raise TypeError(f"{fn}: key must be a PRNG key (jax.random.PRNGKey(seed) or jax.random.key(seed)), "
                        f"got the int {key}")
    key = jnp.asarray(key) if not hasattr(key, "dtype") else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.ndim != 0:
            raise ValueError(f"{fn}: key must be one key, got a key array of shape {tuple(key.shape)} "
                             f"(vmap over keys instead)")
        return key
    if key.shape != (2,) or key.dtype != jnp.uint32:
        raise TypeError(f"{fn}: key must be a PRNG key (jax.random.PRNGKey(seed) or jax.random.key(seed)), "
                        f"got an array of shape {tuple(key.shape)} and dtype {key.dtype}")
    return key
