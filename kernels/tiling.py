"""How the Pallas kernels cut their problems into tiles (one module for every kernel).

A *tiling* is what the planner decides (a frozen value in the loop's spec): the layout family
``target`` and the block sizes. Its :meth:`layout` is the concrete cut of a problem of given
shape (padding included); that is arithmetic, not a choice, so a kernel that receives a tiling
computes it and cannot end up on another path.

Layout families (``target``):

- ``gpu`` (Triton): power-of-2 blocks; all T steps in one program (Triton programs cannot carry a
  state across grid steps).
- ``tpu`` (Mosaic): the (8, 128) vreg tile; time in chunks of ``block_t`` on a sequential grid axis.
- ``any``: a layout valid for both, with no compiler parameters: what a CPU host emits when asked
  for compiled kernels, so that one trace lowers for cuda and for tpu.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar, Dict, Optional

from .platform import tracing_platform

__all__ = ["TARGETS", "GPU_PLATFORMS", "next_pow2", "round_up", "layout_target", "Tiling", "NeuronTiling",
           "RecTiling", "NeuronLayout", "RecLayout", "compiler_params"]

TARGETS = ("gpu", "tpu", "any")
GPU_PLATFORMS = ("gpu", "cuda", "rocm")
# the streamed recurrent kernels: 64-neuron column blocks (a 64 x 64 float32 W tile, 16 KiB of shared memory)
# and 8 warps: 104-187 registers per thread at any n (every neuron type), no spills. 128-neuron blocks with
# 4 warps took 255 and spilled: the W tile passes through registers, 128 per thread (docs/kernels.md,
# "Large n on GPU")
DEFAULT_BLOCK_K = 64
STREAMED_NUM_WARPS = 8
_DEFAULT_BLOCK_T_TPU = 64          # 64 steps x 1024 neurons x 4 B = 256 KiB per array per chunk


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def round_up(a: int, m: int) -> int:
    return -(-int(a) // m) * m


def layout_target(platform: Optional[str] = None) -> str:
    """``gpu`` | ``tpu`` | ``any``: the layout family for ``platform`` (default: the platform
    being traced for, :func:`~snnkern.kernels.platform.tracing_platform`; ``cpu`` -> ``any``)."""
    platform = (platform or tracing_platform()).lower()
    if platform in GPU_PLATFORMS:
        return "gpu"
    return "tpu" if platform == "tpu" else "any"


@dataclasses.dataclass(frozen=True)
class Tiling:
    """Base of the kernels' tilings: the layout family and the time chunk.

    ``block_t``: steps per time chunk (TPU layouts only; GPU/any programs run all T). Checked at
    construction, like every block size of a subclass."""

    target: str
    block_t: Optional[int] = None

    DEFAULT_BLOCK: ClassVar[Dict[str, int]] = {}

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"unknown tiling target {self.target!r}; one of {', '.join(TARGETS)}")
        if self.block_t is not None and int(self.block_t) <= 0:
            raise ValueError(f"block_t must be positive, got {self.block_t}")

    @classmethod
    def get_default(cls, target: str, **blocks) -> "Tiling":
        """The default tiling of ``target`` (block sizes given as keywords override it)."""
        return cls(target, **blocks)

    def rules_platform(self, interpret: bool) -> str:
        """The platform whose rules a kernel of this tiling follows: ``cpu`` when interpreted (or for
        the portable ``any`` layout), else ``gpu`` / ``tpu``."""
        return "cpu" if interpret else {"gpu": "gpu", "tpu": "tpu"}.get(self.target, "cpu")

    def time_chunk(self, T: int) -> int:
        """Steps per chunk for a sequence of ``T`` steps."""
        if self.target != "tpu":
            if self.block_t not in (None, T):
                raise ValueError(f"block_t is only supported for TPU/interpret tilings (target {self.target!r})")
            return T
        return min(T, _DEFAULT_BLOCK_T_TPU if self.block_t is None else int(self.block_t))


class _Layout:
    """Tiles x time chunks of a layout (subclasses say how many rows a tile and the padding hold)."""

    @property
    def n_tiles(self) -> int:
        return self.rows_padded // self.rows_per_tile

    @property
    def n_chunks(self) -> int:
        return self.T_pad // self.tc


@dataclasses.dataclass(frozen=True)
class NeuronLayout(_Layout):
    """A (T, N) neuron-loop problem cut into tiles: ``L`` lanes, ``rb`` rows per tile, ``R`` rows
    (padded), ``tc`` steps per time chunk, ``T_pad`` steps (padded, masked)."""

    target: str
    N: int
    T: int
    L: int
    rb: int
    R: int
    tc: int
    T_pad: int

    rows_padded = property(lambda self: self.R)
    rows_per_tile = property(lambda self: self.rb)

    @property
    def block_n(self) -> int:
        return self.rb * self.L

    @property
    def num_warps(self) -> int:
        # a tile of 512 neurons = 4 warps x 32 threads x 4 neurons per thread
        return max(1, min(8, self.block_n // 128))


@dataclasses.dataclass(frozen=True)
class NeuronTiling(Tiling):
    """Tiling of the neuron-loop kernels: ``block_n`` neurons per tile (a power of 2; on TPU and
    the portable layout a multiple of 1024 unless one tile holds all rows)."""

    block_n: Optional[int] = None

    DEFAULT_BLOCK: ClassVar[Dict[str, int]] = {"gpu": 512, "tpu": 1024, "any": 1024}

    def __post_init__(self):
        super().__post_init__()
        bn = self.block_n
        if bn is not None and (int(bn) <= 0 or int(bn) & (int(bn) - 1)):
            raise ValueError(f"block_n must be a power of 2, got {bn}")

    def layout(self, T: int, N: int) -> NeuronLayout:
        bn = self.DEFAULT_BLOCK[self.target] if self.block_n is None else int(self.block_n)
        L = min(128, next_pow2(N), bn) if self.target == "gpu" else 128
        if bn < L:
            raise ValueError(f"block_n={bn} is smaller than one row of {L} lanes")
        rows = -(-N // L)
        rb_max = bn // L
        if rows <= rb_max:
            rb = rows if self.target == "tpu" else next_pow2(rows)   # TPU: a block may span all rows
            R = rb
        else:
            if self.target in ("tpu", "any") and rb_max % 8:
                raise ValueError(f"block_n={bn} on TPU (or the portable layout) must be a multiple of "
                                 f"8*128 = 1024 neurons when one tile does not hold all {rows} rows")
            rb, R = rb_max, -(-rows // rb_max) * rb_max
        tc = self.time_chunk(T)
        return NeuronLayout(self.target, N, T, L, rb, R, tc, round_up(T, tc))


@dataclasses.dataclass(frozen=True)
class RecLayout(_Layout):
    """A (T, B, n) recurrent problem cut into tiles: ``bB`` samples per tile of ``B_pad``;
    ``n_pad`` neurons (one tile spans them all); ``tc`` steps per chunk of ``T_pad``. ``streamed``:
    the GPU kernels that keep neither W_rec nor the state on chip and work in ``bk``-neuron column
    blocks (``bk`` x ``bk`` tiles of W_rec read per step)."""

    target: str
    T: int
    B: int
    n: int
    bB: int
    B_pad: int
    n_pad: int
    tc: int
    T_pad: int
    streamed: bool = False
    bk: int = 0

    rows_padded = property(lambda self: self.B_pad)
    rows_per_tile = property(lambda self: self.bB)

    @property
    def num_warps(self) -> int:
        if self.streamed:
            # a (bB, bk) block per step of the kernels' inner loops, a (bk, bk) W tile per dot
            return STREAMED_NUM_WARPS
        # n_pad // 8 warps (4..16): the resident W^T takes n_pad^2 / (32 * num_warps) <= 32 registers per
        # thread; with 4 warps at n_pad = 128 it took 128 and the backward kernel spilled (docs/kernels.md,
        # "GPU resources")
        return min(16, max(4, self.n_pad // 8))


@dataclasses.dataclass(frozen=True)
class RecTiling(Tiling):
    """Tiling of the recurrent kernels: ``block_b`` samples per tile (GPU: a power of 2 >= 16, a
    ``tl.dot`` operand; TPU: a multiple of 8); ``block_k``: neurons per column block of the streamed
    GPU kernels (a power of 2 >= 16, default ``DEFAULT_BLOCK_K`` = 64, at most ``n_pad``)."""

    block_b: Optional[int] = None
    block_k: Optional[int] = None

    DEFAULT_BLOCK: ClassVar[Dict[str, int]] = {"gpu": 16, "tpu": 128, "any": 16}

    def __post_init__(self):
        super().__post_init__()
        self._check_block_k()
        bb = self.block_b
        if bb is None:
            return
        if self.target == "tpu" and (int(bb) <= 0 or int(bb) % 8):
            raise ValueError(f"block_b on TPU must be a positive multiple of 8, got {bb}")
        if self.target != "tpu" and (int(bb) < 16 or int(bb) & (int(bb) - 1)):
            raise ValueError(f"block_b must be a power of 2 >= 16 (a Triton dot operand), got {bb}")

    def _check_block_k(self):
        bk = self.block_k
        if bk is not None and (int(bk) < 16 or int(bk) & (int(bk) - 1)):
            raise ValueError(f"block_k must be a power of 2 >= 16 (a Triton dot operand), got {bk}")

    def n_pad(self, n: int) -> int:
        if self.target == "tpu":
            return round_up(n, 128)
        return max(16, next_pow2(n)) if self.target == "gpu" else max(128, next_pow2(n))

    def layout(self, T: int, B: int, n: int, streamed: bool = False) -> RecLayout:
        """The cut of a (T, B, n) problem; ``streamed``: for the streamed GPU kernels (a ``gpu``
        target only: the others keep W_rec whole)."""
        if streamed and self.target != "gpu":
            raise ValueError(f"the streamed recurrent kernels need the gpu tiling, not {self.target!r}")
        bB = self.DEFAULT_BLOCK[self.target] if self.block_b is None else int(self.block_b)
        if self.target == "tpu":
            bB = min(bB, round_up(B, 8))
        elif self.target == "gpu":
            bB = min(bB, max(16, next_pow2(B)))
        tc = self.time_chunk(T)
        n_pad = self.n_pad(n)
        bk = min(n_pad, DEFAULT_BLOCK_K if self.block_k is None else int(self.block_k)) if streamed else 0
        return RecLayout(self.target, T, B, n, bB, round_up(B, bB), n_pad, tc, round_up(T, tc), streamed, bk)


def compiler_params(layout, interpret: bool):
    """Compiler parameters of a ``pallas_call`` over ``layout`` (None interpreted / portable)."""
    if interpret:
        return None
    if layout.target == "gpu":
        from jax.experimental.pallas import triton as plgpu
        return plgpu.CompilerParams(num_warps=layout.num_warps, num_stages=1)
    if layout.target == "tpu":
        from jax.experimental.pallas import tpu as pltpu
        return pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary"))
    return None
