"""Backend choice for the planned paths.

Backends: ``auto`` | ``reference`` | ``xla`` | ``pallas`` | ``pallas-interpret``.
Read each time a model is traced (never frozen at import): the innermost ``with backend(...)``
wins, else the environment variable ``SNNKERN_BACKEND``, else ``auto``. ``auto`` picks by the
default JAX backend. Every fallback carries a reason; strict mode (``SNNKERN_STRICT=1`` or
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
           "choose_neuron_backend", "log"]

BACKENDS = ("auto", "reference", "xla", "pallas", "pallas-interpret")
log = logging.getLogger("snnkern")

_local = threading.local()


class FallbackError(RuntimeError):
    """Raised in strict mode where a fallback would otherwise happen."""


def _stack(name: str) -> list:
    if not hasattr(_local, name):
        setattr(_local, name, [])
    return getattr(_local, name)


def _check(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown snnkern backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """Use backend ``name`` for models traced inside the block (overrides ``SNNKERN_BACKEND``)."""
    _stack("backends").append(_check(name))
    try:
        yield
    finally:
        _stack("backends").pop()


@contextlib.contextmanager
def strict(on: bool = True) -> Iterator[None]:
    """Turn fallbacks into :class:`FallbackError` inside the block (like ``SNNKERN_STRICT=1``)."""
    _stack("strict").append(bool(on))
    try:
        yield
    finally:
        _stack("strict").pop()


def current_backend() -> str:
    """The requested backend name (before ``auto`` is resolved)."""
    st = _stack("backends")
    if st:
        return st[-1]
    return _check(os.environ.get("SNNKERN_BACKEND", "auto").strip().lower() or "auto")


def is_strict() -> bool:
    st = _stack("strict")
    if st:
        return st[-1]
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
        from . import pallas_neuron  # noqa: F401  (the kernel module of the kernels issue)
    except ImportError:
        return "the Pallas neuron-loop kernels are not part of this build yet"
    return None


def choose_neuron_backend(where: str) -> Choice:
    """Backend for a recognised neuron loop / recurrent chain: ``xla`` or a Pallas variant."""
    requested = current_backend()
    if requested == "xla":
        return Choice("xla")
    if requested == "auto":
        platform = jax.default_backend()
        if platform == "cpu":
            return Choice("xla")  # Pallas on CPU only runs interpreted: slow, for tests only
        why = pallas_available()
        if why is None:
            return Choice("pallas")
        return fallback(where, "xla", f"auto on {platform}: {why}")
    # pallas / pallas-interpret explicitly asked for
    why = pallas_available()
    if why is None:
        return Choice(requested)
    return fallback(where, "xla", f"backend {requested!r} requested but {why}")
