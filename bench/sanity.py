"""Sanity check of timings: an implied GEMM rate above the device's peak means the timing is wrong
(an asynchronous call not waited for, a cached result, a wrong FLOP count...).

Peaks are deliberately generous (an upper bound, not a target):
- CPU: cores x 32 FLOP/cycle (two AVX-512 FMA units, fp32) x 4 GHz.
- GPU: fp32 peak of the card, or its dense TF32 peak when JAX's default matmul precision lets XLA
  use TF32 for float32 GEMMs (JAX's default on Ampere and later).
- HBM bandwidth for the neuron-loop GB/s figure.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

__all__ = ["Peak", "device_peak", "cpu_cores", "SanityResult", "check_rate", "CPU_FLOP_PER_CYCLE",
           "CPU_HZ"]

CPU_FLOP_PER_CYCLE = 32
CPU_HZ = 4e9

# device kind substring -> (fp32 FLOP/s, dense tf32 FLOP/s, HBM bytes/s)
_GPU_PEAKS = {
    "H200": (67e12, 495e12, 4.8e12),
    "H100": (67e12, 495e12, 3.35e12),
    "A100": (19.5e12, 156e12, 2.04e12),
    "L40S": (91.6e12, 183e12, 0.864e12),
    "A10": (31.2e12, 62.5e12, 0.6e12),
    "T4": (8.1e12, 8.1e12, 0.32e12),
}
_UNKNOWN_GPU = (1e15, 1e15, 10e12)   # no false alarm on a card we do not know


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover  (not Linux)
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Peak:
    flops: float          # FLOP/s bound for the GEMMs
    bytes_per_s: Optional[float]
    what: str             # how the bound was made (goes into the report)


def device_peak(platform: str, device_kind: str = "", cores: Optional[int] = None,
                matmul_precision: Optional[str] = None) -> Peak:
    """The generous peak used by the check, for ``platform`` (cpu | gpu | tpu)."""
    if platform == "cpu":
        cores = cpu_cores() if cores is None else cores
        return Peak(cores * CPU_FLOP_PER_CYCLE * CPU_HZ, None,
                    f"CPU {cores} cores x {CPU_FLOP_PER_CYCLE} FLOP/cycle x {CPU_HZ / 1e9:g} GHz")
    if platform == "gpu":
        fp32, tf32, bw = next((v for k, v in _GPU_PEAKS.items() if k.lower() in device_kind.lower()),
                              _UNKNOWN_GPU)
        full = str(matmul_precision or "").lower() in ("highest", "float32", "precision.highest")
        flops = fp32 if full else tf32
        return Peak(flops, bw, f"{device_kind or 'GPU'} {'fp32' if full else 'tf32 (JAX default precision)'} "
                               f"{flops / 1e12:g} TFLOP/s, HBM {bw / 1e12:g} TB/s")
    return Peak(*_UNKNOWN_GPU[:2], f"{platform}: no known peak (check effectively off)")


@dataclass(frozen=True)
class SanityResult:
    ok: bool
    rate: float           # implied FLOP/s (or bytes/s)
    peak: float
    message: str          # "" when ok


def check_rate(work: float, seconds: float, peak: float, what: str = "GEMM", unit: str = "FLOP/s") -> SanityResult:
    """Flag a timing whose implied rate ``work / seconds`` exceeds ``peak`` (or is not positive)."""
    if not seconds or seconds <= 0:
        return SanityResult(False, float("inf"), peak, f"{what}: non-positive time {seconds!r} s")
    rate = work / seconds
    if rate > peak:
        return SanityResult(False, rate, peak, f"{what}: implied {rate:.3g} {unit} > peak {peak:.3g} {unit} "
                                               f"({seconds:.3g} s for {work:.3g}): timing rejected")
    return SanityResult(True, rate, peak, "")
