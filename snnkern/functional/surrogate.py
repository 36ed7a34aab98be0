"""Surrogate spike functions.

Each factory returns a ``jax.custom_jvp`` function whose forward pass is the Heaviside step
``jnp.heaviside(x, 1.)`` (a spike fires at ``x >= 0``) and whose tangent is a smooth stand-in.
The returned function carries ``.surrogate = (name, beta)`` so that planners and kernels can
recognise it statically (a kernel never has to trace an opaque Python closure to know the
surrogate).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

SpikeFn = Callable[[jax.Array], jax.Array]

__all__ = ["SpikeFn", "superspike_surrogate", "sigmoid_surrogate", "piecewise_surrogate", "surrogate_grad"]


def surrogate_grad(name: str, beta: float, x: jax.Array) -> jax.Array:
    """d spike / d x of the named surrogate at ``x`` (the factor the tangent is multiplied by)."""
    if name == "superspike":
        return 1.0 / (1.0 + beta * jnp.abs(x))
    if name == "piecewise":
        return jnp.where((x > -beta) & (x < beta), 1.0, 0.0).astype(jnp.result_type(x))
    if name == "sigmoid":
        s = jax.nn.sigmoid(beta * x)
        return beta * s * (1.0 - s)
    raise ValueError(f"unknown surrogate {name!r}; expected superspike, piecewise or sigmoid")


def _make(name: str, beta: float) -> SpikeFn:
    beta = float(beta)

    @jax.custom_jvp
    def spike(x):
        return jnp.heaviside(x, 1.0)

    @spike.defjvp
    def _jvp(primals, tangents):
        (x,), (x_dot,) = primals, tangents
        if name == "superspike":
            # written as a division, as the contract states, for identical float32 rounding
            t = x_dot / (1.0 + beta * jnp.abs(x))
        elif name == "piecewise":
            t = jnp.where((x > -beta) & (x < beta), x_dot, jnp.zeros_like(x_dot))
        else:
            t = surrogate_grad(name, beta, x) * x_dot
        return spike(x), t

    spike.surrogate = (name, beta)
    spike.__name__ = f"heaviside_{name}_{beta:g}"
    return spike


def superspike_surrogate(beta: float = 10.0) -> SpikeFn:
    """Heaviside with the SuperSpike surrogate: tangent ``x_dot / (1 + beta*|x|)`` (not squared)."""
    return _make("superspike", beta)


def piecewise_surrogate(beta: float = 0.5) -> SpikeFn:
    """Heaviside with a boxcar surrogate: tangent ``x_dot`` where ``-beta < x < beta``, else 0."""
    return _make("piecewise", beta)


def sigmoid_surrogate(beta: float = 1.0) -> SpikeFn:
    """Heaviside with a sigmoid-derivative surrogate: ``beta*sig(beta x)*(1-sig(beta x))*x_dot``.

    snnax's version raises when differentiated; this one works.
    """
    return _make("sigmoid", beta)
