"""Time checkpointing policy: how many steps a chunk has, from the user's setting and the platform
(docs/plans.md "Time checkpointing"; the runner does the chunking)."""
from __future__ import annotations

import math
from typing import Optional, Tuple

from snnkern import settings

__all__ = ["CPU_DEFAULT_MIN_T", "checkpoint_every", "checkpoint_asked", "auto_checkpoint_every"]

# On CPU the planned path checkpoints sequences this long by default: measured (docs/performance.md,
# cpu, cpu-rec, cpu-long, cpu-mem tiers) faster training steps at T >= 500 (0.9-1.9x the time) and 5-8x less
# memory: a chunk recomputed from cache costs less than its residuals written to and read back from DRAM.
CPU_DEFAULT_MIN_T = 500


def checkpoint_asked() -> bool:
    """Whether time checkpointing was asked for (a :func:`~snnkern.settings.time_checkpoint` block
    other than None, or ``SNNKERN_TIME_CHECKPOINT``), as opposed to the platform default."""
    return settings.checkpoint_setting() not in (settings.CKPT_UNSET, settings.CKPT_OFF)


def auto_checkpoint_every(T: int) -> int:
    """The K that minimises T/K + K (stored chunk states + one chunk's residuals): ceil(sqrt(T))."""
    return math.isqrt(max(T, 1) - 1) + 1


def checkpoint_every(T: int, platform: str = "cpu") -> Tuple[Optional[int], Optional[str]]:
    """``(K, note)`` for a sequence of ``T`` steps under the current setting: K None when the loop
    is not checkpointed (off, or K >= T), with the note saying why / how. Unset: ``auto`` on CPU for
    ``T >= CPU_DEFAULT_MIN_T``, off otherwise."""
    code, how = settings.checkpoint_setting(), "asked for"
    if code == settings.CKPT_UNSET:
        if platform.lower() != "cpu" or T < CPU_DEFAULT_MIN_T:
            return None, None
        code, how = settings.CKPT_AUTO, (f"the default on CPU for T >= {CPU_DEFAULT_MIN_T}: faster there; "
                                         "snnkern.time_checkpoint(None) turns it off")
    elif code == settings.CKPT_AUTO:
        how = "auto"
    if code == settings.CKPT_OFF:
        return None, None
    if code == settings.CKPT_AUTO:
        K, how = auto_checkpoint_every(T), "K = ceil(sqrt(T)), " + how
    else:
        K = int(code)
    if K >= T:
        return None, f"time checkpointing: K={K} ({how}) >= T={T}, not needed"
    n, r = divmod(T, K)
    rest = f" + one of {r}" if r else ""
    return K, (f"time checkpointing every {K} steps ({how}): {n} chunks{rest}; the forward keeps the states at "
               f"chunk boundaries, the backward recomputes each chunk")
