"""Spiking max pooling: ``spike_fn(maxpool(x) - threshold)``."""
from __future__ import annotations

from typing import Union

import equinox as eqx
import jax

from ...functional.surrogate import SpikeFn, superspike_surrogate  # noqa: F401 (snnax's names here)
from .stateful import DEFAULT_SPIKE_FN

__all__ = ["SpikingMaxPool1d", "SpikingMaxPool2d"]


class _SpikingMaxPool(eqx.Module):
    pool: eqx.Module
    threshold: Union[float, jax.Array] = eqx.field(static=True)
    spike_fn: SpikeFn = eqx.field(static=True)

    def __call__(self, x: jax.Array, *, key=None) -> jax.Array:
        return self.spike_fn(self.pool(x) - self.threshold)


class SpikingMaxPool1d(_SpikingMaxPool):
    """``eqx.nn.MaxPool1d(*pool_args, **pool_kwargs)`` followed by a spike at ``threshold``."""

    def __init__(self, *pool_args, threshold: float = 1.0, spike_fn: SpikeFn = DEFAULT_SPIKE_FN, **pool_kwargs):
        self.pool = eqx.nn.MaxPool1d(*pool_args, **pool_kwargs)
        self.threshold, self.spike_fn = threshold, spike_fn


class SpikingMaxPool2d(_SpikingMaxPool):
    """``eqx.nn.MaxPool2d(*pool_args, **pool_kwargs)`` followed by a spike at ``threshold``."""

    def __init__(self, *pool_args, threshold: float = 1.0, spike_fn: SpikeFn = DEFAULT_SPIKE_FN, **pool_kwargs):
        self.pool = eqx.nn.MaxPool2d(*pool_args, **pool_kwargs)
        self.threshold, self.spike_fn = threshold, spike_fn
