"""snnkern: kernel-accelerated spiking neural networks for JAX, with the snnax API.

``from snnkern import snn`` replaces ``from snnax import snn``; ``import snnkern as snnax`` also works.
``snnkern.explain(model, in_shape)`` shows how a model runs; ``with snnkern.backend("reference"):``
chooses the path (also ``SNNKERN_BACKEND``); ``SNNKERN_STRICT=1`` turns fallbacks into errors;
``with snnkern.time_checkpoint("auto"):`` trades one extra forward pass for O(T/K + K) training memory.
"""
from . import functional, settings, snn, utils
from . import activity, encode, events, losses, plot
from .settings import BACKENDS, FallbackError, backend, strict, time_checkpoint
from .plan import Plan


def explain(model, in_shape=None, T=None, dtype=None) -> Plan:
    """The execution plan a call of ``model`` runs: components, the path of each (with its loop's
    spec) and every fallback reason - the very plan the traced call makes.

    ``in_shape``: the feature shape of one sample (a tuple, or a list of them for several external
    inputs), or an input array ``(T, *in_shape)``; default: the shape a first ``Linear`` states.
    ``T`` (default 1) and ``dtype`` (default float32) complete the abstract input; the decisions
    do not depend on T beyond T > 0. Printing the result shows a table; ``plan.fallbacks`` lists
    the reasons. The same errors as ``init_state`` for an ``in_shape`` that does not fit."""
    import jax.numpy as jnp

    return model.explain(in_shape, T=T, dtype=jnp.float32 if dtype is None else dtype)


__version__ = "0.1.0"

__all__ = ["snn", "functional", "utils", "settings", "explain", "backend", "strict", "time_checkpoint", "BACKENDS",
           "FallbackError", "__version__"]
# the training toolkit (docs/toolkit.md)
__all__ += ["encode", "losses", "activity", "plot", "events"]
