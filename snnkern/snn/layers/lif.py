"""Leaky integrate-and-fire neurons (docs/semantics.md "Neurons"): SimpleLIF, LIF, LIFSoftReset, AdaptiveLIF."""
from __future__ import annotations

from typing import Callable, ClassVar, Optional, Tuple, Union

import jax

from ...functional.surrogate import SpikeFn, superspike_surrogate  # noqa: F401 (snnax's names here)
from .stateful import DEFAULT_SPIKE_FN, SpikingNeuron, StateShape, _decay_array, clamp_decay, default_init_fn
from .stateful import StatefulLayer, StatefulOutput  # noqa: F401 (snnax's names here)

__all__ = ["SimpleLIF", "LIF", "LIFSoftReset", "AdaptiveLIF"]

Scalar = Union[float, jax.Array]


class _Leaky(SpikingNeuron):
    """The constructor SimpleLIF and LIF share (snnax's signature); ``decays`` says how many decay
    constants the neuron needs and what they are."""

    decay_constants: jax.Array

    decays: ClassVar[Tuple[int, str]]
    returns_list = True

    def __init__(self, decay_constants, spike_fn: SpikeFn = DEFAULT_SPIKE_FN, threshold: Scalar = 1.0,
                 stop_reset_grad: bool = True, reset_val: Optional[Scalar] = None,
                 init_fn: Optional[Callable] = default_init_fn, shape: Optional[StateShape] = None,
                 key: Optional[jax.Array] = None):
        super().__init__(init_fn, shape)
        count, meaning = self.decays
        self.decay_constants = _decay_array(type(self).__name__, "decay_constants", decay_constants, count, meaning)
        self._init_spiking(spike_fn, threshold, stop_reset_grad, reset_val)


class SimpleLIF(_Leaky):
    """LIF without synaptic current. State ``[mem, spk]``; returns ``[[mem, spk], spk]``.

    ``a = clamp(.5, dc[0], 1)``; ``mem = a*mem + (1-a)*I``; ``spk = H(mem - threshold)``; reset by
    subtracting ``mem*spk`` (or ``softplus(reset_val)*spk``), stop-gradient'ed by default.
    """

    state_names = ("mem", "spk")
    decays = (1, "[alpha]")

    def params(self) -> dict:
        return {"alpha": self.decay_constants[0], "threshold": self.threshold, "reset_val": self.reset_val}

    def step(self, p, state, x):
        mem, _ = state
        a = clamp_decay(p["alpha"])
        mem = a * mem + (1.0 - a) * x
        spk = self.spike_fn(mem - p["threshold"])
        r = mem * spk if p["reset_val"] is None else jax.nn.softplus(p["reset_val"]) * spk
        mem = mem - self._reset(r)
        return [mem, spk], spk


class LIF(_Leaky):
    """LIF with a synaptic current and a deferred reset. State ``[mem, syn, spk]``.

    The reset uses the previous step's spike and the membrane integrates the *old* synaptic current;
    the stored ``mem`` is pre-reset (docs/semantics.md "Neurons"). Returns ``[[mem, syn, spk], spk]``.
    """

    state_names = ("mem", "syn", "spk")
    decays = (2, "[alpha (membrane), beta (synapse)]")

    def params(self) -> dict:
        return {"alpha": self.decay_constants[0], "beta": self.decay_constants[1], "threshold": self.threshold,
                "reset_val": self.reset_val}

    def reset_term(self, p, mem, spk_prev):
        return mem * spk_prev if p["reset_val"] is None else (mem - p["reset_val"]) * spk_prev

    def step(self, p, state, x):
        mem, syn, spk = state
        mem = mem - self._reset(self.reset_term(p, mem, spk))
        a = clamp_decay(p["alpha"])
        b = clamp_decay(p["beta"])
        mem = a * mem + (1.0 - a) * syn
        syn = b * syn + (1.0 - b) * x
        spk = self.spike_fn(mem - p["threshold"])
        return [mem, syn, spk], spk


class LIFSoftReset(LIF):
    """As :class:`LIF`, but the reset subtracts ``spk_prev`` (or ``reset_val*spk_prev``)."""

    def reset_term(self, p, mem, spk_prev):
        return spk_prev if p["reset_val"] is None else p["reset_val"] * spk_prev


class AdaptiveLIF(SpikingNeuron):
    """Adaptive LIF. State ``[mem, ada, spk]``; returns ``[[mem, ada_new, spk], spk]``."""

    decay_constants: jax.Array
    ada_decay_constant: jax.Array
    ada_step_val: jax.Array
    ada_coupling_var: jax.Array

    state_names = ("mem", "ada", "spk")
    returns_list = True

    def __init__(self, decay_constants, ada_decay_constant=(0.8,), ada_step_val=(1.0,),
                 ada_coupling_var=(0.5,), spike_fn: SpikeFn = DEFAULT_SPIKE_FN, threshold: Scalar = 1.0,
                 stop_reset_grad: bool = True, reset_val: Optional[Scalar] = None,
                 init_fn: Optional[Callable] = None, shape: Optional[StateShape] = None,
                 key: Optional[jax.Array] = None):
        super().__init__(init_fn, shape)
        n = "AdaptiveLIF"
        self.decay_constants = _decay_array(n, "decay_constants", decay_constants, 1, "[alpha]")
        self.ada_decay_constant = _decay_array(n, "ada_decay_constant", ada_decay_constant, 1, "[beta]")
        self.ada_step_val = _decay_array(n, "ada_step_val", ada_step_val, 1, "[b]")
        self.ada_coupling_var = _decay_array(n, "ada_coupling_var", ada_coupling_var, 1, "[a]")
        self._init_spiking(spike_fn, threshold, stop_reset_grad, reset_val)

    def params(self) -> dict:
        return {"alpha": self.decay_constants[0], "ada_beta": self.ada_decay_constant[0],
                "ada_b": self.ada_step_val[0], "ada_a": self.ada_coupling_var[0],
                "threshold": self.threshold, "reset_val": self.reset_val}

    def step(self, p, state, x):
        mem, ada, _ = state
        a_ = clamp_decay(p["alpha"])
        beta = clamp_decay(p["ada_beta"])
        a = clamp_decay(p["ada_a"], -1.0, 1.0)
        b = clamp_decay(p["ada_b"], 0.0, 2.0)
        mem = a_ * mem + (1.0 - a_) * (x + ada)
        spk = self.spike_fn(mem - p["threshold"])
        ada_new = (1.0 - beta) * a * mem + beta * ada - b * jax.lax.stop_gradient(spk)
        r = mem * spk if p["reset_val"] is None else p["reset_val"] * spk
        mem = mem - self._reset(r)
        return [mem, ada_new, spk], spk
