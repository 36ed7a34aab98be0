"""Backend choice for the planned paths.

Backends: ``auto`` | ``reference`` | ``xla`` | ``pallas`` | ``pallas-interpret``.
Read each time a model is traced (never frozen at import): the innermost ``with backend(...)``
wins, else the environment variable ``SNNKERN_BACKEND``, else ``auto``. ``auto`` picks by the
default JAX backend: the Pallas kernels on GPU/TPU, the XLA loops on CPU. Every fallback carries a reason; strict mode (``SNNKERN_STRICT=1`` or
``with strict():``) turns a fallback into a :class:`FallbackError`.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass
from typing import Iterator, Optional

import jax

__all__ = ["BACKENDS", "backend", "strict", "current_backend", "is_strict", "FallbackError", "Choice",
           "choose_neuron_backend", "choose_recurrent_backend", "neuron_loop_fn", "recurrent_impl", "tracing_platform", "log"]

BACKENDS = ("auto", "reference", "xla", "pallas", "pallas-interpret")
log = logging.getLogger("snnkern")

class FallbackError(RuntimeError):
    """Raised in strict mode where a fallback would otherwise happen."""


def _check(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown snnkern backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


class _ThreadLocalState:
    """Fallback for JAX versions without config states: a thread-local value (not part of the
    jit cache key, so a function traced once keeps the path it was traced with)."""

    def __init__(self):
        self._local = threading.local()

    @property
    def value(self):
        return getattr(self._local, "value", None)

    @contextlib.contextmanager
    def __call__(self, value):
        old = self.value
        self._local.value = value
        try:
            yield
        finally:
            self._local.value = old


def _jit_key_state(name: str, values):
    """A JAX config state that is part of the jit cache key: a function traced under
    ``with backend("reference")`` and again under ``with backend("xla")`` is traced twice."""
    try:
        from jax._src import config as jax_config

        return jax_config.optional_enum_state(name, list(values), None, f"snnkern: {name}",
                                              include_in_jit_key=True, include_in_trace_context=True)
    except Exception:  # private API moved: keep working, without the cache-key guarantee
        return _ThreadLocalState()


_backend_state = _jit_key_state("snnkern_backend", BACKENDS)
_strict_state = _jit_key_state("snnkern_strict", ("on", "off"))


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """Use backend ``name`` for models traced inside the block (overrides ``SNNKERN_BACKEND``).

    The choice is part of JAX's jit cache key, so the same jitted function traced inside two
    different blocks gets two traces (and each runs the path it asked for)."""
    with _backend_state(_check(name)):
        yield


@contextlib.contextmanager
def strict(on: bool = True) -> Iterator[None]:
    """Turn fallbacks into :class:`FallbackError` inside the block (like ``SNNKERN_STRICT=1``)."""
    with _strict_state("on" if on else "off"):
        yield


def current_backend() -> str:
    """The requested backend name (before ``auto`` is resolved): the innermost ``backend(...)``
    block, else ``SNNKERN_BACKEND`` (read now; set it before the first trace), else ``auto``."""
    if _backend_state.value is not None:
        return _backend_state.value
    return _check(os.environ.get("SNNKERN_BACKEND", "auto").strip().lower() or "auto")


def is_strict() -> bool:
    if _strict_state.value is not None:
        return _strict_state.value == "on"
    return os.environ.get("SNNKERN_STRICT", "0").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Choice:
    """A path decision: ``path`` that runs, and ``reason`` when it is not the one asked for."""

    path: str
    reason: Optional[str] = None

    @property
    def fell_back(self) -> bool:
        return self.reason is not None


def fallback(where: str, path: str, reason: str) -> Choice:
    """Record (log) a fallback to ``path``; in strict mode raise instead."""
    msg = f"{where}: {reason} -> {path}"
    if is_strict():
        raise FallbackError(f"strict mode (SNNKERN_STRICT): {msg}")
    log.info("snnkern fallback: %s", msg)
    return Choice(path, reason)


def pallas_available() -> Optional[str]:
    """None if the Pallas kernels can be used, else why not."""
    try:
        from . import pallas_neuron, pallas_recurrent  # noqa: F401
    except ImportError as e:
        return f"the Pallas kernels cannot be imported here ({e})"
    return None


def _compiled_pallas_unavailable() -> Optional[str]:
    """Why compiled (not interpreted) kernels cannot be emitted here, or None: they need a GPU/TPU
    default backend, or an abstract GPU/TPU device (``jax.sharding.use_abstract_mesh``) to lower for."""
    from .pallas_neuron import target_platform
    if target_platform() == "any":
        return (f"compiled Pallas kernels need a GPU or TPU (platform: {jax.default_backend()}); "
                "use 'pallas-interpret', or lower under jax.sharding.use_abstract_mesh with an accelerator device")
    return None


def tracing_platform() -> str:
    """The platform being traced for: see :func:`snnkern.kernels.platform.tracing_platform`."""
    from .platform import tracing_platform as _tracing_platform
    return _tracing_platform()


def choose_neuron_backend(where: str, platform: Optional[str] = None) -> Choice:
    """Backend for a recognised neuron loop / recurrent chain: ``xla`` or a Pallas variant.

    ``auto``: the compiled Pallas kernels on GPU/TPU, the XLA loop on CPU (Pallas on CPU only
    runs interpreted: slow, for tests). Shapes are checked when the loop is traced (the kernels
    pad N, B and T to their tiles; what they cannot take runs the XLA loop with a logged reason).
    ``SNNKERN_AUTO_PALLAS=0`` keeps ``auto`` on XLA everywhere (a logged choice, not a fallback).
    ``platform``: decide as if on that platform (tests); default: the abstract device of an active
    ``jax.sharding.use_abstract_mesh`` (lowering for an accelerator from a CPU host), else
    ``jax.default_backend()``."""
    requested = current_backend()
    if requested == "xla":
        return Choice("xla")
    if requested == "auto":
        platform = (platform or tracing_platform()).lower()
        if platform == "cpu":
            return Choice("xla")
        if os.environ.get("SNNKERN_AUTO_PALLAS", "1").strip().lower() in ("0", "false", "no", "off"):
            log.info("snnkern: %s: auto on %s -> xla (SNNKERN_AUTO_PALLAS=0)", where, platform)
            return Choice("xla")
        why = pallas_available()
        if why is None and platform not in ("gpu", "cuda", "rocm", "tpu"):
            why = f"no Pallas lowering for platform {platform!r}"
        if why is None:
            return Choice("pallas")
        return fallback(where, "xla", f"auto on {platform}: {why}")
    # pallas / pallas-interpret explicitly asked for
    why = pallas_available()
    if why is None and requested == "pallas":
        why = _compiled_pallas_unavailable()
    if why is None:
        return Choice(requested)
    return fallback(where, "xla", f"backend {requested!r} requested but {why}")


def choose_recurrent_backend(where: str, platform: Optional[str] = None, n: Optional[int] = None) -> Choice:
    """Backend for a recognised recurrent compound of ``n`` neurons: the rules of a neuron loop,
    plus the recurrent kernel's size limit (W_rec on chip) when ``n`` is given. The rest of its
    limits (dtype, T = 0) are checked when it is traced."""
    choice = choose_neuron_backend(where, platform)
    if n is not None and choice.path in ("pallas", "pallas-interpret"):
        from . import pallas_recurrent
        plat = "cpu" if choice.path == "pallas-interpret" else (platform or tracing_platform())
        why = pallas_recurrent.size_reason(int(n), plat)
        if why is not None:
            return fallback(where, "xla", why)
    return choice


def neuron_loop_fn(path: str):
    """The neuron time loop of a chosen path (``xla`` | ``pallas`` | ``pallas-interpret``), with the
    call contract of :func:`snnkern.kernels.neuron_loop.neuron_loop`."""
    if path in ("pallas", "pallas-interpret"):
        import functools

        from . import pallas_neuron
        return functools.partial(pallas_neuron.neuron_loop, interpret=path == "pallas-interpret")
    from . import neuron_loop
    return neuron_loop.neuron_loop


def recurrent_impl(path: str):
    """The batched recurrent loop of a chosen path, for ``neuron_loop.recurrent_loop(impl=...)``."""
    if path in ("pallas", "pallas-interpret"):
        import functools

        from . import pallas_recurrent
        return functools.partial(pallas_recurrent.recurrent_batched, interpret=path == "pallas-interpret")
    from . import neuron_loop
    return neuron_loop.recurrent_batched
