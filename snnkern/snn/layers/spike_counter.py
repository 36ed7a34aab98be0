"""SpikeCounter: passes its input through and counts it (exposes firing rates)."""
from __future__ import annotations

from typing import Optional

from .stateful import Neuron, StateShape
from .stateful import StatefulLayer, StatefulOutput, default_init_fn  # noqa: F401 (snnax's names here)

__all__ = ["SpikeCounter"]


class SpikeCounter(Neuron):
    """State ``[count, spk]``: ``spk = I``, ``count = count + I``; returns ``([count, spk], spk)``."""

    state_names = ("count", "spk")
    spike_states = ()      # counts its input, which need not be binary

    def __init__(self, shape: Optional[StateShape] = None):
        super().__init__(None, shape)

    def params(self) -> dict:
        return {}

    def step(self, p, state, x):
        count, _ = state
        return [count + x, x], x
