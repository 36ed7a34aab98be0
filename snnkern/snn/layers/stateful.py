"""Base classes for stateful layers (neurons) and the shared neuron machinery.

A neuron's dynamics are written once, as ``step(params, state, x) -> (new_state, output)``.
``params`` is the dict returned by :meth:`Neuron.params` (arrays or Python floats); ``step`` reads
only static configuration (spike function, flags) from ``self``. The reference ``__call__``, the
planner's XLA time loop and the Pallas kernels all call this same function.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Optional, Sequence, Tuple, Union

import equinox as eqx
import jax
import jax.numpy as jnp

from ...functional.surrogate import SpikeFn, superspike_surrogate
from ...plan.protocol import AbstractNeuron, AbstractStatefulLayer

StateShape = Union[Sequence[int], int]
StatefulOutput = Tuple[Sequence[jax.Array], jax.Array]

__all__ = ["StatefulLayer", "RequiresStateLayer", "Neuron", "SpikingNeuron", "default_init_fn", "StateShape",
           "StatefulOutput", "as_shape"]


def default_init_fn(shape, key=None, *args, **kwargs):
    """Membrane initialiser used when none is given: zeros."""
    return jnp.zeros(shape)


def as_shape(shape: StateShape) -> tuple:
    """Normalise an int or sequence of ints to a tuple."""
    if isinstance(shape, (int,)) and not isinstance(shape, bool):
        return (shape,)
    return tuple(int(s) for s in shape)


class StatefulLayer(AbstractStatefulLayer):
    """Base class of layers that carry a state through time.

    ``__call__(state, synaptic_input, *, key=None) -> (new_state, output)``. ``init_state(shape, key)``
    returns the initial state as a list; the value other layers read is ``state[-1]``.
    """

    init_fn: Callable = eqx.field(static=True, default=default_init_fn)
    shape: Optional[tuple] = eqx.field(static=True, default=None)

    def __init__(self, init_fn: Optional[Callable] = None, shape: Optional[StateShape] = None):
        if init_fn is not None and not callable(init_fn):
            raise TypeError(f"{type(self).__name__}: init_fn must be callable, got {type(init_fn).__name__}")
        self.init_fn = default_init_fn if init_fn is None else init_fn
        self.shape = None if shape is None else as_shape(shape)

    def init_state(self, shape: StateShape, key: Optional[jax.Array] = None, *args, **kwargs) -> list:
        return [self.init_fn(as_shape(shape), key, *args, **kwargs), jnp.zeros(as_shape(shape))]

    def init_out(self, shape: StateShape, *, key: Optional[jax.Array] = None) -> jax.Array:
        """snnax's initial output of a layer: zeros."""
        return jnp.zeros(as_shape(shape))

    @staticmethod
    def init_parameters(parameters, shape: Optional[StateShape] = None) -> jax.Array:
        """snnax's helper for custom layers: ``parameters`` as a (trainable) array; ``shape`` unused."""
        return parameters if isinstance(parameters, jax.Array) else jnp.asarray(parameters)

    def __call__(self, state, synaptic_input, *, key=None):
        raise NotImplementedError(f"{type(self).__name__} does not implement __call__")


class RequiresStateLayer(eqx.Module):
    """Marker base for stateless layers that snnax treated specially (kept for compatibility).

    snnkern calls them like any other stateless layer: ``layer(x, key=k)``.
    """

    def __call__(self, x, *, key=None):
        raise NotImplementedError


def clamp_decay(x: jax.Array, lo: float = 0.5, hi: float = 1.0) -> jax.Array:
    """``lax.clamp(lo, x, hi)`` (snnax's decay clamp, same gradient at the bounds) with the bounds in
    ``x``'s dtype, so it also works for float64 decays (``jax_enable_x64``) and bf16 ones."""
    x = jnp.asarray(x)
    return jax.lax.clamp(jnp.asarray(lo, x.dtype), x, jnp.asarray(hi, x.dtype))


def _decay_array(owner: str, name: str, value: Any, count: int, meaning: str) -> jax.Array:
    """Decay constants as a float array with at least ``count`` entries, or a clear ValueError."""
    if isinstance(value, (list, tuple)) and not all(isinstance(v, (int, float)) or hasattr(v, "shape") for v in value):
        raise TypeError(f"{owner}: {name} must be numbers, got {value!r}")
    arr = value if isinstance(value, jax.Array) else jnp.asarray(value, dtype=jnp.float32)
    if arr.ndim == 0 and count == 1:
        arr = arr.reshape(1)
    if arr.ndim == 0 or arr.shape[0] < count:
        got = f"{value!r}" if arr.ndim == 0 else f"{arr.shape[0]} value(s)"
        raise ValueError(f"{owner}: {name} needs {count} value(s) {meaning}, got {got}")
    return arr


class Neuron(StatefulLayer, AbstractNeuron):
    """A stateful layer whose dynamics are one pure ``step`` function.

    Subclasses set ``state_names`` (the state layout) and ``spike_states`` (the entries that hold
    spikes), implement ``params()`` and ``step()``, and say whether ``__call__`` returns a list
    (snnax's LIF family) or a tuple (snnax's IAF family). A subclass missing one of them cannot
    be instantiated (``TypeError``)."""

    returns_list: ClassVar[bool] = False
    output_is_last_state: ClassVar[bool] = True    # step's output == new_state[-1]

    def _reset(self, r: jax.Array) -> jax.Array:
        """The refractory term, with the optional stop-gradient of ``stop_reset_grad``."""
        return jax.lax.stop_gradient(r) if getattr(self, "stop_reset_grad", True) else r

    def binary_state_entries(self) -> Tuple[int, ...]:
        """The spike entries, when the spike function is one of the Heaviside surrogates (exactly
        0/1); none for a custom ``spike_fn``, which may not be binary."""
        if not hasattr(getattr(self, "spike_fn", None), "surrogate"):
            return ()
        return tuple(k for k, n in enumerate(self.state_names) if n in self.spike_states)

    def init_state(self, shape: StateShape, key: Optional[jax.Array] = None, *args, **kwargs) -> list:
        shape = as_shape(shape)
        mem = self.init_fn(shape, key, *args, **kwargs)
        return [mem] + [jnp.zeros(shape) for _ in self.state_names[1:]]

    def __call__(self, state, synaptic_input, *, key=None):
        if len(state) != len(self.state_names):
            raise ValueError(
                f"{type(self).__name__}: state must have {len(self.state_names)} entries "
                f"{list(self.state_names)}, got {len(state)}")
        new_state, out = self.step(self.params(), state, synaptic_input)
        return [new_state, out] if self.returns_list else (new_state, out)


class SpikingNeuron(Neuron):
    """A neuron with a threshold, a spike function and a reset: the fields every spiking neuron of
    the LIF and IAF families shares, set in one place by :meth:`_init_spiking`."""

    threshold: Any
    reset_val: Any
    spike_fn: SpikeFn = eqx.field(static=True)
    stop_reset_grad: bool = eqx.field(static=True)

    spike_states: ClassVar[Tuple[str, ...]] = ("spk",)

    def _init_spiking(self, spike_fn: SpikeFn, threshold, stop_reset_grad: bool, reset_val) -> None:
        if not callable(spike_fn):
            raise TypeError(f"{type(self).__name__}: spike_fn must be callable, got {type(spike_fn).__name__}")
        self.spike_fn, self.threshold = spike_fn, threshold
        self.stop_reset_grad, self.reset_val = bool(stop_reset_grad), reset_val


DEFAULT_SPIKE_FN = superspike_surrogate(10.0)
