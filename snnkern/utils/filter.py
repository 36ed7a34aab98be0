"""``filter_grad`` / ``filter_value_and_grad``: Equinox's, plus a ``filter_spec`` that chooses which
leaves of the first argument are differentiated (default: every inexact array)."""
from __future__ import annotations

import functools as ft
from typing import Callable

import equinox as eqx
import jax

__all__ = ["filter_value_and_grad", "filter_grad"]


def filter_value_and_grad(fun: Callable = None, *, has_aux: bool = False,
                          filter_spec: Callable = eqx.is_inexact_array, **gradkwargs):
    """Value and gradient of ``fun`` w.r.t. the leaves of its first argument selected by
    ``filter_spec`` (a predicate or a pytree of bools); other leaves get ``None``."""
    if fun is None:
        return ft.partial(filter_value_and_grad, has_aux=has_aux, filter_spec=filter_spec, **gradkwargs)
    if "argnums" in gradkwargs:
        raise ValueError("argnums is not supported: put everything to differentiate in the first argument")

    @ft.wraps(fun)
    def wrapper(x, *args, **kwargs):
        diff, static = eqx.partition(x, filter_spec)

        def inner(d):
            return fun(eqx.combine(d, static), *args, **kwargs)

        return jax.value_and_grad(inner, has_aux=has_aux, **gradkwargs)(diff)

    return wrapper


def filter_grad(fun: Callable = None, *, has_aux: bool = False, filter_spec: Callable = eqx.is_inexact_array,
                **gradkwargs):
    """Gradient of ``fun`` w.r.t. the leaves of its first argument selected by ``filter_spec``.
    With ``has_aux`` returns ``(grad, aux)``."""
    if fun is None:
        return ft.partial(filter_grad, has_aux=has_aux, filter_spec=filter_spec, **gradkwargs)
    vg = filter_value_and_grad(fun, has_aux=has_aux, filter_spec=filter_spec, **gradkwargs)

    @ft.wraps(fun)
    def wrapper(*args, **kwargs):
        value, grad = vg(*args, **kwargs)
        return (grad, value[1]) if has_aux else grad

    return wrapper
