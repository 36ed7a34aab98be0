"""Spike response model neuron (Gerstner 1993), docs/semantics.md "SRM"."""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import equinox as eqx
import jax
import jax.numpy as jnp

from ...functional.surrogate import SpikeFn, superspike_surrogate  # noqa: F401 (snnax's names here)
from .stateful import DEFAULT_SPIKE_FN, Neuron, StateShape, StatefulLayer, _decay_array, as_shape, clamp_decay  # noqa: F401

__all__ = ["SRM"]

Scalar = Union[float, jax.Array]


class SRM(Neuron):
    """Spike response model (Gerstner et al. 1993, https://link.springer.com/article/10.1007/BF00199450)
    in discrete time, with exponential kernels.

    The membrane potential is a sum of kernels: each input contributes a post-synaptic potential
    (PSP) ``eps * x`` and each of the neuron's own spikes a refractory potential ``eta * s``::

        u_t = layer(sum_k eps_k x_{t-k}) + sum_{k>=1} eta_k s_{t-k},   s_t = H(u_t - threshold)
        eps_k = (1-a)(1-b) sum_{i+j=k} a^i b^j       (two cascaded exponential traces, starts at k = 0)
        eta_k = -rho * g^(k-1)                       (one exponential trace of the spikes, from k = 1)

    computed by the step (state ``[p, q, r, s]``, returned as ``([p, q, r, s], s)``)::

        a = clamp(.5, decay_constants[0], 1);  b = clamp(.5, decay_constants[1], 1)
        g = clamp(.5, r_decay_constants[0], 1);  rho = clamp(0, reset_val, 2)   (reset_val=None: 1)
        p = a*p + (1-a)*x            synaptic trace
        q = b*q + (1-b)*p            PSP
        r = g*r + sg(s)              refractory trace of the previous spikes (sg: stop_reset_grad)
        s = H(layer(q) - rho*r - threshold)

    ``layer`` (optional, snnax's first argument) maps the PSPs to the membrane (the synaptic weights
    of Gerstner's model); then ``p, q`` have the input's shape and ``r, s`` the layer's output
    shape; ``layer`` is called without a key (as in snnax). The step then mixes neurons, so it runs on
    the XLA neuron loop (full-size parameter gradients), never on the elementwise Pallas kernels.
    Without a layer (the default) the SRM is an elementwise neuron, like LIF, and gets every path;
    for the same model put the weights before it, ``CompoundLayer(Linear(n_in, n, use_bias=False),
    SRM([a, b]))``: the PSP kernel commutes with a bias-free linear map.

    ``decay_constants = [a, b]`` (trainable); ``r_decay_constants = [g]`` (trainable); a Python-float
    ``threshold``/``reset_val`` is a constant, an array one is trainable. ``init_fn`` sets ``p``.
    ``input_shape``/``shape``/``key`` are accepted for snnax compatibility (shapes are inferred).
    """

    decay_constants: jax.Array
    r_decay_constants: jax.Array
    threshold: Scalar
    reset_val: Optional[Scalar]
    layer: Optional[eqx.Module]
    spike_fn: SpikeFn = eqx.field(static=True)
    stop_reset_grad: bool = eqx.field(static=True)

    state_names = ("p", "q", "r", "s")
    spike_states = ("s",)
    returns_list = False
    output_is_last_state = True

    def __init__(self, layer: Optional[eqx.Module] = None, *, decay_constants=None,
                 r_decay_constants: Union[Sequence[float], jax.Array] = (0.9,),
                 spike_fn: SpikeFn = DEFAULT_SPIKE_FN, threshold: Scalar = 1.0,
                 reset_val: Optional[Scalar] = None, stop_reset_grad: bool = True,
                 init_fn: Optional[Callable] = None, input_shape: Optional[StateShape] = None,
                 shape: Optional[StateShape] = None, key: Optional[jax.Array] = None):
        super().__init__(init_fn, shape)
        if layer is not None and not isinstance(layer, eqx.Module):
            if decay_constants is not None or not isinstance(layer, (list, tuple, float, int, jax.Array)):
                raise TypeError(f"SRM: layer must be an equinox Module (the synaptic map from the PSPs to the "
                                f"membrane) or None, got {type(layer).__name__}")
            layer, decay_constants = None, layer        # SRM([a, b]), like LIF([a, b])
        if decay_constants is None:
            raise TypeError("SRM needs decay_constants=[a (synaptic trace), b (PSP)]")
        self.decay_constants = _decay_array("SRM", "decay_constants", decay_constants, 2,
                                            "[a (synaptic trace), b (PSP)]")
        self.r_decay_constants = _decay_array("SRM", "r_decay_constants", r_decay_constants, 1,
                                              "[g (refractory trace)]")
        if isinstance(reset_val, (list, tuple)):
            reset_val = jnp.asarray(reset_val, dtype=jnp.float32)
        self.layer, self.spike_fn, self.threshold = layer, spike_fn, threshold
        self.reset_val, self.stop_reset_grad = reset_val, bool(stop_reset_grad)

    def params(self) -> dict:
        p = {"alpha": self.decay_constants[0], "beta": self.decay_constants[1], "gamma": self.r_decay_constants[0],
             "threshold": self.threshold, "reset_val": 1.0 if self.reset_val is None else self.reset_val,
             "layer": self.layer}
        if self.layer is not None:
            # the step then mixes neurons: a zero-size entry broadcasts against no neuron shape, so
            # the loops take the non-elementwise route (full-size parameter gradients, no kernels)
            p["mixes_neurons"] = jnp.zeros((0,))
        return p

    def step(self, p, state, x):
        prev_p, prev_q, r, s = state
        a, b, g = clamp_decay(p["alpha"]), clamp_decay(p["beta"]), clamp_decay(p["gamma"])
        rho = clamp_decay(p["reset_val"], 0.0, 2.0)
        psp_p = a * prev_p + (1.0 - a) * x
        psp_q = b * prev_q + (1.0 - b) * psp_p
        r = g * r + self._reset(s)
        h = psp_q if p["layer"] is None else p["layer"](psp_q)
        s = self.spike_fn(h - rho * r - p["threshold"])
        return [psp_p, psp_q, r, s], s

    def init_state(self, shape: StateShape, key: Optional[jax.Array] = None, *args, **kwargs) -> list:
        shape = as_shape(shape)
        out = shape
        if self.layer is not None:
            out = tuple(jax.eval_shape(self.layer, jnp.zeros(shape)).shape)
        return [self.init_fn(shape, key, *args, **kwargs), jnp.zeros(shape), jnp.zeros(out), jnp.zeros(out)]
