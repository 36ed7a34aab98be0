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

StateShape = Union[Sequence[int], int]
StatefulOutput = Tuple[Sequence[jax.Array], jax.Array]

__all__ = ["StatefulLayer", "RequiresStateLayer", "Neuron", "default_init_fn", "StateShape",
           "StatefulOutput", "as_shape"]


def default_init_fn(shape, key=None, *args, **kwargs):
    """Membrane initialiser used when none is given: zeros."""
    return jnp.zeros(shape)


def as_shape(shape: StateShape) -> tuple:
    """Normalise an int or sequence of ints to a tuple."""
    if isinstance(shape, (int,)) and not isinstance(shape, bool):
        return (shape,)
    return tuple(int(s) for s in shape)


class StatefulLayer(eqx.Module):
    """Base class of layers that carry a state through time.

    ``__call__(state, synaptic_input, *, key=None) -> (new_state, output)``. ``init_state(shape, key)``
    returns the initial state as a list; the value other layers read is ``state[-1]``.
    """

    init_fn: Callable = eqx.field(static=True, default=default_init_fn)
    shape: Optional[tuple] = eqx.field(static=True, default=None)

    is_stateful_layer: ClassVar[bool] = True

    def __init__(self, init_fn: Optional[Callable] = None, shape: Optional[StateShape] = None):
        if init_fn is not None and not callable(init_fn):
            raise TypeError(f"{type(self).__name__}: init_fn must be callable, got {type(init_fn).__name__}")
        self.init_fn = default_init_fn if init_fn is None else init_fn
        self.shape = None if shape is None else as_shape(shape)

    def init_state(self, shape: StateShape, key: Optional[jax.Array] = None, *args, **kwargs) -> list:
        return [self.init_fn(as_shape(shape), key, *args, **kwargs), jnp.zeros(as_shape(shape))]

    def init_out(self, shape: StateShape, *, key: Optional[jax.Array] = None) -> jax.Array:
        return jnp.zeros(as_shape(shape))

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


class Neuron(StatefulLayer):
    """A stateful layer whose dynamics are one pure ``step`` function.

    Subclasses set ``state_names`` (the state layout), implement ``params()`` and ``step()``, and
    say whether ``__call__`` returns a list (snnax's LIF family) or a tuple (snnax's IAF family).
    """

    state_names: ClassVar[Tuple[str, ...]] = ()
    spike_states: ClassVar[Tuple[str, ...]] = ()   # entries that hold 0/1 spikes (stored compactly)
    returns_list: ClassVar[bool] = False
    output_is_last_state: ClassVar[bool] = True    # step's output == new_state[-1]

    def params(self) -> dict:
        """The parameters ``step`` uses, one entry per use (e.g. ``alpha = decay_constants[0]``), so
        that each is a scalar or broadcasts elementwise against the state: the fused backward passes
        then accumulate per-neuron parameter gradients and reduce them once, after the time loop."""
        raise NotImplementedError

    def _reset(self, r: jax.Array) -> jax.Array:
        """The refractory term, with the optional stop-gradient of ``stop_reset_grad``."""
        return jax.lax.stop_gradient(r) if getattr(self, "stop_reset_grad", True) else r

    def step(self, params: dict, state: Sequence[jax.Array], x: jax.Array) -> Tuple[list, jax.Array]:
        raise NotImplementedError

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


DEFAULT_SPIKE_FN = superspike_surrogate(10.0)
