"""The user's settings: which backend runs a model, strict mode, time checkpointing.

Each is read when a model is traced (never frozen at import): the innermost ``with`` block wins, else
an environment variable (read at trace time), else the default.

- :func:`backend` / ``SNNKERN_BACKEND``: ``auto`` | ``reference`` | ``xla`` | ``pallas`` | ``pallas-interpret``
  (docs/kernels.md). ``auto``: the Pallas kernels on GPU/TPU, the XLA loops on CPU.
- :func:`strict` / ``SNNKERN_STRICT=1``: every fallback raises :class:`FallbackError` instead of being logged.
- :func:`time_checkpoint` / ``SNNKERN_TIME_CHECKPOINT``: chunks of K steps whose forward the backward
  recomputes (docs/plans.md "Time checkpointing").

The three blocks are part of JAX's jit cache key: a function traced inside ``with backend("reference")``
and again inside ``with backend("xla")`` is traced twice, and each trace runs the path it asked for.
That needs JAX's config states (``jax._src.config``, private: JAX has no public way to add a key to
the jit cache). :data:`JIT_KEYED` says whether they were made; ``tests/test_settings.py`` fails if
they were not, so a JAX release that moves them is caught before users silently lose the guarantee
(the blocks then still work, as thread-local values, for functions traced inside them).
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Iterator, Optional, Union

__all__ = ["BACKENDS", "FallbackError", "backend", "strict", "time_checkpoint", "current_backend", "is_strict",
           "checkpoint_setting", "JIT_KEYED", "CKPT_UNSET", "CKPT_OFF", "CKPT_AUTO"]

BACKENDS = ("auto", "reference", "xla", "pallas", "pallas-interpret")
log = logging.getLogger("snnkern")


class FallbackError(RuntimeError):
    """Raised in strict mode where a fallback would otherwise happen."""


class _ThreadLocalState:
    """Stands in for a JAX config state where JAX has moved them: a thread-local value, not part of
    the jit cache key."""

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


def _config_state(make):
    """A JAX config state in the jit cache key (``make(jax_config)``), or the thread-local stand-in."""
    try:
        from jax._src import config as jax_config

        return make(jax_config), True
    except Exception as e:  # noqa: BLE001 - private API moved: keep working, say so once
        log.warning("snnkern: JAX's config states are unavailable (%s): backend/strict/time_checkpoint blocks "
                    "are not part of the jit cache key", e)
        return _ThreadLocalState(), False


# time checkpointing: -1 unset (read SNNKERN_TIME_CHECKPOINT), 0 off, -2 auto, K > 0 every K steps
CKPT_UNSET, CKPT_OFF, CKPT_AUTO = -1, 0, -2

_backend_state, _ok1 = _config_state(lambda c: c.optional_enum_state(
    "snnkern_backend", list(BACKENDS), None, "snnkern: backend", include_in_jit_key=True,
    include_in_trace_context=True))
_strict_state, _ok2 = _config_state(lambda c: c.optional_enum_state(
    "snnkern_strict", ["on", "off"], None, "snnkern: strict", include_in_jit_key=True,
    include_in_trace_context=True))
_ckpt_state, _ok3 = _config_state(lambda c: c.int_state(
    "snnkern_time_checkpoint", CKPT_UNSET, "snnkern: time_checkpoint", include_in_jit_key=True,
    include_in_trace_context=True))
JIT_KEYED = _ok1 and _ok2 and _ok3


def _check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown snnkern backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """Use backend ``name`` for models traced inside the block (overrides ``SNNKERN_BACKEND``)."""
    with _backend_state(_check_backend(name)):
        yield


@contextlib.contextmanager
def strict(on: bool = True) -> Iterator[None]:
    """Turn fallbacks into :class:`FallbackError` inside the block (like ``SNNKERN_STRICT=1``)."""
    with _strict_state("on" if on else "off"):
        yield


def _ckpt_code(every: Union[int, str, None]) -> int:
    if every is None or every is False or (isinstance(every, str) and every.strip().lower() in ("off", "0", "none")):
        return CKPT_OFF
    if isinstance(every, str) and every.strip().lower() == "auto":
        return CKPT_AUTO
    if isinstance(every, str) and every.strip().isdigit():
        every = int(every.strip())
    if isinstance(every, bool) or not isinstance(every, int) or every <= 0:
        raise ValueError(f"time_checkpoint: every must be a positive int, 'auto' or None (off), got {every!r}")
    return every


@contextlib.contextmanager
def time_checkpoint(every: Union[int, str, None] = "auto") -> Iterator[None]:
    """Time checkpointing for models traced inside the block (overrides ``SNNKERN_TIME_CHECKPOINT``).

    The planned path runs the sequence in chunks of ``every`` steps: the forward keeps only the
    states at chunk boundaries, and the backward recomputes each chunk's forward before its
    backward, so the training step's memory is O(T/K + K) instead of O(T) for one extra forward
    pass. ``"auto"``: K = ceil(sqrt(T)) (the minimum of T/K + K); ``None``: off. Without a block (and
    without the variable) it is ``"auto"`` on CPU for T >= 500 and off elsewhere. Results and
    gradients are unchanged (same operations, same order). ``snnkern.explain`` shows the chunking."""
    with _ckpt_state(_ckpt_code(every)):
        yield


def current_backend() -> str:
    """The requested backend name (before ``auto`` is resolved): the innermost ``backend(...)``
    block, else ``SNNKERN_BACKEND`` (read now; set it before the first trace), else ``auto``."""
    if _backend_state.value is not None:
        return _backend_state.value
    return _check_backend(os.environ.get("SNNKERN_BACKEND", "auto").strip().lower() or "auto")


def is_strict() -> bool:
    """Whether fallbacks raise: the innermost ``strict(...)`` block, else ``SNNKERN_STRICT``."""
    if _strict_state.value is not None:
        return _strict_state.value == "on"
    return os.environ.get("SNNKERN_STRICT", "0").strip().lower() in ("1", "true", "yes", "on")


def checkpoint_setting() -> int:
    """The time-checkpointing code asked for: the innermost :func:`time_checkpoint` block, else
    ``SNNKERN_TIME_CHECKPOINT`` (read now), else :data:`CKPT_UNSET` (the platform default applies).
    :data:`CKPT_OFF`, :data:`CKPT_AUTO`, or K > 0."""
    code: Optional[int] = _ckpt_state.value
    if code is not None and code != CKPT_UNSET:
        return code
    env = os.environ.get("SNNKERN_TIME_CHECKPOINT", "").strip()
    return _ckpt_code(env) if env else CKPT_UNSET
