"""What the planner hands a time loop: its implementation and a frozen spec (decided once).

A spec holds everything static about one loop - which implementation runs it, its tiling, which
state entries are spikes, which outputs are wanted, the residual policy - so the runner passes it
on unchanged and the loop has nothing left to choose.
"""
from __future__ import annotations

import dataclasses
import enum
from typing import Optional, Tuple

from .tiling import NeuronTiling, RecTiling

__all__ = ["Impl", "NeuronLoopSpec", "RecurrentLoopSpec", "DelayLoopSpec"]


class Impl(str, enum.Enum):
    """The implementation of a time loop."""

    XLA = "xla"                              # lax.scan loops with a hand-written VJP
    PALLAS = "pallas"                        # compiled Pallas kernels (Triton on GPU, Mosaic on TPU)
    PALLAS_INTERPRET = "pallas-interpret"    # the same kernels in the Pallas interpreter (tests)

    @property
    def is_pallas(self) -> bool:
        return self is not Impl.XLA

    def __str__(self) -> str:
        return self.value


def _describe(spec, extra: str) -> str:
    """``impl`` alone for XLA; ``impl, <target> tiling<extra>`` for the kernels."""
    return f"{spec.impl}" if spec.tiling is None else f"{spec.impl}, {spec.tiling.target} tiling{extra}"


@dataclasses.dataclass(frozen=True)
class NeuronLoopSpec:
    """One neuron's time loop. ``spike_idx``: state entries that are exactly 0/1 (stored compactly);
    ``want_out`` / ``want_read``: emit the step outputs / the one-step-shifted read sequence;
    ``out_is_last_state``: the step's output is its new state's last entry; ``tiling`` (Pallas
    only); ``residual_dtype``: None = exact residuals (the default)."""

    impl: Impl
    spike_idx: Tuple[int, ...] = ()
    want_out: bool = True
    want_read: bool = False
    out_is_last_state: bool = False
    tiling: Optional[NeuronTiling] = None
    residual_dtype: Optional[str] = None

    def describe(self) -> str:
        blocks = f", block_n={self.tiling.block_n}" if self.tiling is not None and self.tiling.block_n else ""
        return _describe(self, blocks)


@dataclasses.dataclass(frozen=True)
class RecurrentLoopSpec:
    """A recurrent compound's loop (``I_t = ff_t + W_rec r_{t-1} + b``). ``want_cur``: emit the (T, n)
    currents (the Parallel's output) rather than only the last one; ``resident_w``: W_rec is kept on
    chip for the whole loop (Pallas; decided by its size); ``w_note``: that choice and its reason, as
    the plan shows it."""

    impl: Impl
    spike_idx: Tuple[int, ...] = ()
    want_out: bool = True
    want_cur: bool = True
    tiling: Optional[RecTiling] = None
    resident_w: Optional[bool] = None
    w_note: Optional[str] = None

    def describe(self) -> str:
        if self.w_note:
            return _describe(self, ", " + self.w_note)
        return _describe(self, ", W_rec on chip" if self.resident_w else ", W_rec read per step")


@dataclasses.dataclass(frozen=True)
class DelayLoopSpec:
    """A neuron fed back its own output ``delay`` steps late through a cycle of affine stateless
    layers (``I_t = c_t + W s_{t-delay}``, ``kernels/delay_loop.py``). XLA only: the Pallas
    recurrent kernel is not extended to delays (``tiling`` is always None)."""

    impl: Impl
    delay: int = 1
    spike_idx: Tuple[int, ...] = ()
    want_out: bool = True
    tiling: None = None

    def describe(self) -> str:
        return f"{self.impl}, delay {self.delay}"
