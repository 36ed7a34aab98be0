"""Flatten: ``x.flatten()`` (per sample; batch with vmap)."""
from __future__ import annotations

import equinox as eqx
import jax

__all__ = ["Flatten"]


class Flatten(eqx.Module):
    """Flattens one sample to a vector."""

    def __call__(self, x: jax.Array, *, key=None) -> jax.Array:
        return x.flatten()
