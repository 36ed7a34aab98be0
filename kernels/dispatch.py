"""Backend choice for the planned paths: the eligibility rules the planner calls, and the loops
it hands a spec to.

Backends: ``auto`` | ``reference`` | ``xla`` | ``pallas`` | ``pallas-interpret``.
Read each time a model is traced (never frozen at import): the innermost ``with backend(...)``
wins, else the environment variable ``SNNKERN_BACKEND``, else ``auto``. ``auto`` picks by the
platform being traced for: the Pallas kernels on GPU/TPU, the XLA loops on CPU. The planner asks
:func:`plan_neuron_loop` / :func:`plan_recurrent_loop` with the loop's abstract inputs, so every
shape and dtype rule is checked before anything is traced; every fallback carries a reason, and
strict mode (``SNNKERN_STRICT=1`` or ``with strict():``) turns it into a :class:`FallbackError`.
The loops never choose: :func:`run_neuron_loop` / :func:`run_recurrent_loop` run what the spec says.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import threading
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Tuple

import jax

from .platform import tracing_platform
from .spec import Impl, NeuronLoopSpec, RecurrentLoopSpec
from .tiling import NeuronTiling, RecTiling, layout_target

__all__ = ["BACKENDS", "backend", "strict", "time_checkpoint", "checkpoint_every", "checkpoint_asked",
           "auto_checkpoint_every",
           "current_backend", "is_strict", "FallbackError", "Choice", "fallback",
           "choose_impl", "plan_neuron_loop", "plan_recurrent_loop", "run_neuron_loop", "run_recurrent_loop",
           "tracing_platform", "log"]

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

# time checkpointing: -1 unset (read SNNKERN_TIME_CHECKPOINT), 0 off, -2 auto, K > 0 every K steps
_CKPT_UNSET, _CKPT_OFF, _CKPT_AUTO = -1, 0, -2


def _int_jit_key_state(name: str):
    try:
        from jax._src import config as jax_config

        return jax_config.int_state(name, _CKPT_UNSET, f"snnkern: {name}", include_in_jit_key=True,
                                    include_in_trace_context=True)
    except Exception:  # private API moved: keep working, without the cache-key guarantee
        return _ThreadLocalState()


_ckpt_state = _int_jit_key_state("snnkern_time_checkpoint")


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


def _ckpt_code(every) -> int:
    if every is None or every is False or (isinstance(every, str) and every.strip().lower() in ("off", "0", "none")):
        return _CKPT_OFF
    if isinstance(every, str) and every.strip().lower() == "auto":
        return _CKPT_AUTO
    if isinstance(every, str) and every.strip().isdigit():
        every = int(every.strip())
    if isinstance(every, bool) or not isinstance(every, int) or every <= 0:
        raise ValueError(f"time_checkpoint: every must be a positive int, 'auto' or None (off), got {every!r}")
    return every


@contextlib.contextmanager
def time_checkpoint(every="auto") -> Iterator[None]:
    """Time checkpointing for models traced inside the block (overrides ``SNNKERN_TIME_CHECKPOINT``).

    The planned path runs the sequence in chunks of ``every`` steps: the forward keeps only the
    states at chunk boundaries, and the backward recomputes each chunk's forward before its
    backward, so the training step's memory is O(T/K + K) instead of O(T) for one extra forward
    pass. ``"auto"``: K = ceil(sqrt(T)) (the minimum of T/K + K); ``None``: off. Without a block (and
    without the variable) it is ``"auto"`` on CPU for T >= 500 and off elsewhere. Results and
    gradients are unchanged (same operations, same order). Part of JAX's jit cache key, like
    :func:`backend`; ``snnkern.explain`` shows the chunking."""
    with _ckpt_state(_ckpt_code(every)):
        yield


# On CPU the planned path checkpoints sequences this long by default: measured (docs/performance.md,
# cpu, cpu-rec, cpu-long, cpu-mem tiers) faster training steps at T >= 500 (0.9-1.9x the time) and 5-8x less memory: a chunk
# recomputed from cache costs less than its residuals written to and read back from DRAM.
CPU_DEFAULT_MIN_T = 500


def _ckpt_setting() -> int:
    """The checkpoint code asked for: the innermost :func:`time_checkpoint` block, else
    ``SNNKERN_TIME_CHECKPOINT`` (read now), else unset (the platform default applies)."""
    code = _ckpt_state.value
    if code is not None and code != _CKPT_UNSET:
        return code
    env = os.environ.get("SNNKERN_TIME_CHECKPOINT", "").strip()
    return _ckpt_code(env) if env else _CKPT_UNSET


def checkpoint_asked() -> bool:
    """Whether time checkpointing was asked for (a :func:`time_checkpoint` block other than None,
    or ``SNNKERN_TIME_CHECKPOINT``), as opposed to the platform default."""
    return _ckpt_setting() not in (_CKPT_UNSET, _CKPT_OFF)


def checkpoint_every(T: int, platform: str = "cpu") -> Tuple[Optional[int], Optional[str]]:
    """``(K, note)`` for a sequence of ``T`` steps under the current setting: K None when the loop
    is not checkpointed (off, or K >= T), with the note saying why / how. Unset (no
    :func:`time_checkpoint` block, no ``SNNKERN_TIME_CHECKPOINT``): ``auto`` on CPU for
    ``T >= CPU_DEFAULT_MIN_T``, off otherwise."""
    code, how = _ckpt_setting(), "asked for"
    if code == _CKPT_UNSET:
        if platform.lower() != "cpu" or T < CPU_DEFAULT_MIN_T:
            return None, None
        code, how = _CKPT_AUTO, (f"the default on CPU for T >= {CPU_DEFAULT_MIN_T}: faster there; "
                                 "snnkern.time_checkpoint(None) turns it off")
    elif code == _CKPT_AUTO:
        how = "auto"
    if code == _CKPT_OFF:
        return None, None
    if code == _CKPT_AUTO:
        K, how = auto_checkpoint_every(T), "K = ceil(sqrt(T)), " + how
    else:
        K = int(code)
    if K >= T:
        return None, f"time checkpointing: K={K} ({how}) >= T={T}, not needed"
    n, r = divmod(T, K)
    rest = f" + one of {r}" if r else ""
    return K, (f"time checkpointing every {K} steps ({how}): {n} chunks{rest}; the forward keeps the states at "
               f"chunk boundaries, the backward recomputes each chunk")


def auto_checkpoint_every(T: int) -> int:
    """The K that minimises T/K + K (stored chunk states + one chunk's residuals): ceil(sqrt(T))."""
    return math.isqrt(max(T, 1) - 1) + 1


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
    """A path decision: ``impl`` that runs, and ``reason`` when it is not the one asked for."""

    impl: Impl
    reason: Optional[str] = None


def fallback(where: str, path: str, reason: str) -> str:
    """Record (log) a fallback to ``path``, returning ``reason``; in strict mode raise instead."""
    msg = f"{where}: {reason} -> {path}"
    if is_strict():
        raise FallbackError(f"strict mode (SNNKERN_STRICT): {msg}")
    log.info("snnkern fallback: %s", msg)
    return reason


def pallas_available() -> Optional[str]:
    """None if the Pallas kernels can be used, else why not."""
    try:
        from . import pallas_neuron, pallas_recurrent  # noqa: F401
    except ImportError as e:
        return f"the Pallas kernels cannot be imported here ({e})"
    return None


def _auto_pallas_off() -> bool:
    return os.environ.get("SNNKERN_AUTO_PALLAS", "1").strip().lower() in ("0", "false", "no", "off")


def choose_impl(where: str, platform: Optional[str] = None) -> Choice:
    """The implementation of a recognised time loop before its shapes are looked at.

    ``auto``: the compiled Pallas kernels on GPU/TPU, the XLA loop on CPU (Pallas on CPU only
    runs interpreted: slow, for tests). ``SNNKERN_AUTO_PALLAS=0`` keeps ``auto`` on XLA everywhere
    (a logged choice, not a fallback). ``platform``: the platform planned for (default: the one
    being traced for, :func:`~snnkern.kernels.platform.tracing_platform`)."""
    requested = current_backend()
    platform = (platform or tracing_platform()).lower()
    if requested == "xla":
        return Choice(Impl.XLA)
    if requested == "auto":
        if platform == "cpu":
            return Choice(Impl.XLA)
        if _auto_pallas_off():
            log.info("snnkern: %s: auto on %s -> xla (SNNKERN_AUTO_PALLAS=0)", where, platform)
            return Choice(Impl.XLA)
        why = pallas_available()
        if why is None and platform not in ("gpu", "cuda", "rocm", "tpu"):
            why = f"no Pallas lowering for platform {platform!r}"
        if why is None:
            return Choice(Impl.PALLAS)
        return Choice(Impl.XLA, fallback(where, "xla", f"auto on {platform}: {why}"))
    # pallas / pallas-interpret explicitly asked for
    why = pallas_available()
    if why is None and requested == "pallas" and layout_target(platform) == "any":
        why = (f"compiled Pallas kernels need a GPU or TPU (platform: {platform}); use 'pallas-interpret', "
               "or lower under jax.sharding.use_abstract_mesh with an accelerator device")
    if why is None:
        return Choice(Impl(requested))
    return Choice(Impl.XLA, fallback(where, "xla", f"backend {requested!r} requested but {why}"))


def _kernel_target(impl: Impl, platform: str) -> Tuple[str, str]:
    """``(layout target, platform whose rules apply)`` of a Pallas implementation."""
    if impl is Impl.PALLAS_INTERPRET:
        return "gpu", "cpu"          # interpreted: the GPU layout (small power-of-2 tiles)
    target = layout_target(platform)
    return target, {"gpu": "gpu", "tpu": "tpu"}.get(target, "cpu")


def plan_neuron_loop(where: str, step, params, state0, xs, *, spike_idx: Sequence[int] = (), want_out: bool = True,
                     want_read: bool = False, out_is_last_state: bool = False,
                     platform: Optional[str] = None) -> Tuple[NeuronLoopSpec, Optional[str]]:
    """The spec of one neuron's loop and the fallback reason (None if none). ``state0`` / ``xs``
    (one sample, ``(T, *shape)``) may be ``jax.ShapeDtypeStruct`` s: nothing is traced."""
    platform = (platform or tracing_platform()).lower()
    choice = choose_impl(where, platform)
    impl, reason, tiling = choice.impl, choice.reason, None
    if impl.is_pallas:
        from . import pallas_neuron
        target, rules = _kernel_target(impl, platform)
        why = pallas_neuron.unsupported(step, params, list(state0), xs, rules)
        if why is None:
            tiling = NeuronTiling.get_default(target)
        else:
            impl, reason = Impl.XLA, fallback(where, "xla", why)
    spec = NeuronLoopSpec(impl, tuple(sorted(set(spike_idx))), want_out, want_read, out_is_last_state, tiling)
    return spec, reason


def plan_recurrent_loop(where: str, step, params, state0, ff, w, b, *, spike_idx: Sequence[int] = (),
                        want_out: bool = True, want_cur: bool = True, platform: Optional[str] = None,
                        per_step: Tuple[str, ...] = ()) -> Tuple[RecurrentLoopSpec, Optional[str]]:
    """The spec of a recurrent compound's loop and the fallback reason. ``state0`` entries (n,) and
    ``ff`` (T, n) of one sample, ``w`` (n, n), ``b`` (n,) or None; arrays or ShapeDtypeStructs.
    ``per_step``: the names of the per-step layers ``step`` applies to the current before the neuron
    (the kernels take them only without parameters and when no neuron is padded: a LayerNorm then
    normalises exactly the n real neurons of a row)."""
    platform = (platform or tracing_platform()).lower()
    choice = choose_impl(where, platform)
    impl, reason, tiling, resident, w_note = choice.impl, choice.reason, None, None, None
    if impl.is_pallas:
        from . import pallas_recurrent as pr
        target, rules = _kernel_target(impl, platform)
        batched = [jax.ShapeDtypeStruct((1,) + tuple(s.shape), s.dtype) for s in state0]
        ff1 = jax.ShapeDtypeStruct((1,) + tuple(ff.shape), ff.dtype)
        why = pr.unsupported(step, params, batched, ff1, w, b, rules)
        n, candidate = int(ff.shape[-1]), RecTiling.get_default(target)
        if why is None and per_step and candidate.n_pad(n) != n:
            why = (f"the per-step layers {', '.join(per_step)} inside the recurrence need every lane of a kernel "
                   f"row to be a real neuron; {n} neurons are padded to {candidate.n_pad(n)}")
        if why is None and per_step and isinstance(params, dict) and jax.tree.leaves(params.get("per_step")):
            why = f"the per-step layers {', '.join(per_step)} have parameters (the kernels tile only the neuron's)"
        if why is None:   # W_rec on chip, or (GPU, large n) streamed per step: the choice and its reason
            resident, w_note, why = pr.plan_w(n, pr.dot_dtype_of(state0[-1].dtype, w.dtype), target, per_step)
        if why is None:
            tiling = candidate
        else:
            impl, reason, resident, w_note = Impl.XLA, fallback(where, "xla", why), None, None
    spec = RecurrentLoopSpec(impl, tuple(sorted(set(spike_idx))), want_out, want_cur, tiling, resident, w_note)
    return spec, reason


def run_neuron_loop(spec: NeuronLoopSpec, step, params, state0: list, xs):
    """Run one neuron's loop as ``spec`` says: ``(final_state, outs or None, reads or None)``."""
    kw = dict(want_out=spec.want_out, want_read=spec.want_read, out_is_last_state=spec.out_is_last_state)
    if spec.impl.is_pallas:
        from .pallas_neuron import neuron_loop
        return neuron_loop(step, params, state0, xs, spec.spike_idx, interpret=spec.impl is Impl.PALLAS_INTERPRET,
                           tiling=spec.tiling, residual_dtype=spec.residual_dtype, **kw)
    from .neuron_loop import neuron_loop
    return neuron_loop(step, params, state0, xs, spec.spike_idx, **kw)


def run_recurrent_loop(spec: RecurrentLoopSpec, step, params, state0: list, ff, w, b):
    """Run a recurrent compound's loop (one sample; batched under vmap) as ``spec`` says:
    ``(final_state, outs or None, I, reads)``."""
    from .recurrent import recurrent_loop
    impl = None
    if spec.impl.is_pallas:
        from . import pallas_recurrent
        impl = functools.partial(pallas_recurrent.recurrent_batched, interpret=spec.impl is Impl.PALLAS_INTERPRET,
                                 tiling=spec.tiling, resident=spec.resident_w)
    return recurrent_loop(step, params, state0, ff, w, b, spec.spike_idx, want_out=spec.want_out, impl=impl,
                          want_cur=spec.want_cur)
