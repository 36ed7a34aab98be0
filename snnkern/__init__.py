"""snnkern: kernel-accelerated spiking neural networks for JAX, with the snnax API.

``from snnkern import snn`` replaces ``from snnax import snn``; ``import snnkern as snnax`` also works.
``snnkern.explain(model, in_shape)`` shows how a model runs; ``with snnkern.backend("reference"):``
chooses the path (also ``SNNKERN_BACKEND``); ``SNNKERN_STRICT=1`` turns fallbacks into errors.
"""
from . import functional, snn, utils
from .kernels.dispatch import BACKENDS, FallbackError, backend, strict
from .plan import explain

__version__ = "0.1.0"

__all__ = ["snn", "functional", "utils", "explain", "backend", "strict", "BACKENDS", "FallbackError",
           "__version__"]
