"""Compile, memory and wall-clock measurement (BENCH.md "What to time")."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import jax
import numpy as np

import snnkern

__all__ = ["Compiled", "compile_under", "Stats", "stats", "measure_interleaved"]


@dataclass
class Compiled:
    fn: Callable               # the jax Compiled object: call with the same (params, x)
    compile_s: float           # jax.jit(f).lower(...).compile() wall time (tracing included)
    temp_bytes: Optional[int]
    out_bytes: Optional[int]
    arg_bytes: Optional[int]

    @property
    def mem_bytes(self) -> Optional[int]:
        """temp + output bytes from ``memory_analysis()`` (None where the backend gives none)."""
        if self.temp_bytes is None or self.out_bytes is None:
            return None
        return self.temp_bytes + self.out_bytes


def _memory(compiled):
    try:
        ma = compiled.memory_analysis()
    except Exception:  # noqa: BLE001  (not every backend implements it)
        return None, None, None
    if isinstance(ma, (list, tuple)):
        ma = ma[0] if ma else None
    if ma is None:
        return None, None, None
    get = lambda name: int(getattr(ma, name)) if hasattr(ma, name) else None  # noqa: E731
    return get("temp_size_in_bytes"), get("output_size_in_bytes"), get("argument_size_in_bytes")


def compile_under(backend: str, fn: Callable, *args, context: Callable = contextlib.nullcontext) -> Compiled:
    """Lower and compile ``fn(*args)`` with snnkern's backend ``backend`` (read at trace time),
    inside ``context()`` as well (e.g. ``lambda: snnkern.time_checkpoint("auto")``).

    ``jax.jit`` caches traces per Python function, so ``fn`` is wrapped in a fresh function each
    time: otherwise a second backend would silently reuse the first backend's trace.
    """
    def fresh(*a):
        return fn(*a)

    with snnkern.backend(backend), context():
        t0 = time.perf_counter()
        compiled = jax.jit(fresh).lower(*args).compile()
        dt = time.perf_counter() - t0
    return Compiled(compiled, dt, *_memory(compiled))


@dataclass
class Stats:
    median: float
    p10: float
    p90: float
    n: int
    total: float
    samples: List[float] = field(default_factory=list, repr=False)


def stats(samples: Sequence[float]) -> Stats:
    a = np.asarray(samples, dtype=np.float64)
    return Stats(float(np.median(a)), float(np.percentile(a, 10)), float(np.percentile(a, 90)), len(a),
                 float(a.sum()), list(map(float, a)))


def measure_interleaved(calls: Dict[str, Callable[[], object]], warmups: int = 3, min_samples: int = 10,
                        min_time: float = 1.0,
                        on_done: Optional[Callable[[str], None]] = None) -> Dict[str, Stats]:
    """Time each zero-argument call (``jax.block_until_ready`` of its result), alternating the
    calls round by round (ref, plan, ref, plan, ...) so that machine noise hits all alike.

    Each call gets ``warmups`` untimed runs, then at least ``min_samples`` samples and ``min_time``
    seconds of samples; a call that has enough drops out of later rounds (so a fast path is not
    held to the slow path's sample count). ``on_done(name)`` is called when a call has all its samples.
    """
    for _ in range(warmups):
        for fn in calls.values():
            jax.block_until_ready(fn())
    samples: Dict[str, List[float]] = {k: [] for k in calls}
    done = set()
    while len(done) < len(calls):
        for name, fn in calls.items():
            if name in done:
                continue
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            samples[name].append(time.perf_counter() - t0)
            s = samples[name]
            if len(s) >= min_samples and sum(s) >= min_time:
                done.add(name)
                if on_done is not None:
                    on_done(name)
    return {k: stats(v) for k, v in samples.items()}
