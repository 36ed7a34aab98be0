"""Benchmark tiers (BENCH.md "Shapes"). ``N_in = N`` unless a tier says otherwise; the recurrent head is
``Linear(N, N)`` (snnax's recurrent MLP: ``Linear(N, 10)``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

__all__ = ["Tier", "TIERS", "MAKE_BENCH", "parse_tiers"]

# the tiers `make bench` runs (the Makefile says the same; tests/test_bench.py checks)
MAKE_BENCH = "cpu-small,cpu,cpu-long,cpu-rec,cpu-recmlp,cpu-conv,cpu-mem"


@dataclass(frozen=True)
class Tier:
    name: str
    platform: str            # "cpu" | "gpu": where the tier runs; gpu tiers are skipped without a GPU
    model: str               # "ff" | "rec" | "recmlp" | "conv" (bench/models.py)
    Ts: Tuple[int, ...]
    B: int
    Ns: Tuple[int, ...]
    purpose: str = ""
    calib_T: int = 100       # the firing-rate calibration runs the reference forward at min(T, calib_T)
    n_in: int = 0            # input features (0: N)
    extra_paths: Tuple[str, ...] = ()   # paths this tier adds to --paths (cpu-mem: plan-xla-ckpt)
    floor: bool = True       # time the parts alone (bench/floor.py) for the floor columns
    quick: bool = False      # memory-first: 1 warm-up, at most 3 samples per path, no minimum time

    def configs(self):
        """(N, T) pairs in run order."""
        return [(n, t) for n in self.Ns for t in self.Ts]


TIERS: Dict[str, Tier] = {t.name: t for t in [
    Tier("cpu-small", "cpu", "ff", (100,), 8, (128,), "smoke, in `make bench-quick`"),
    # plan-xla-ckpt where T >= 500: that is the default plan on CPU there (time checkpointing "auto")
    Tier("cpu", "cpu", "ff", (500,), 16, (256,), "headline CPU ratios", extra_paths=("plan-xla-ckpt",)),
    Tier("cpu-long", "cpu", "ff", (50, 200, 1000), 16, (128,), "cost growth with T", extra_paths=("plan-xla-ckpt",)),
    Tier("cpu-rec", "cpu", "rec", (500,), 16, (128,), "recurrent", extra_paths=("plan-xla-ckpt",)),
    Tier("cpu-recmlp", "cpu", "recmlp", (100,), 16, (256,), "snnax's recurrent MLP (LayerNorm inside the recurrence)",
         n_in=512),
    Tier("cpu-conv", "cpu", "conv", (80,), 4, (64,), "snnax's tutorial conv net: a training step", calib_T=80,
         ),
    Tier("cpu-mem", "cpu", "ff", (500, 2000, 8000), 16, (128,), "fwd+bwd temp memory vs T, with and without "
         "time checkpointing", extra_paths=("plan-xla-ckpt",), quick=True),
    Tier("gpu-on", "gpu", "ff", (500,), 16, (4096, 8192), "Open Neuromorphic benchmark setup"),
    Tier("gpu-small", "gpu", "ff", (1000,), 64, (1024,), "launch/latency-bound regime"),
    Tier("gpu-rec", "gpu", "rec", (1000,), 64, (256, 1024), "recurrent kernels"),
    # Test-sized tiers (tests/test_bench.py); not part of `make bench`.
    Tier("tiny", "cpu", "ff", (20,), 2, (16,), "harness self-test", calib_T=20),
    Tier("tiny-rec", "cpu", "rec", (20,), 2, (16,), "harness self-test", calib_T=20),
    Tier("tiny-conv", "cpu", "conv", (40,), 1, (64,), "harness self-test", calib_T=40),
    Tier("tiny-mem", "cpu", "ff", (20, 40), 2, (16,), "harness self-test", calib_T=20,
         extra_paths=("plan-xla-ckpt",), floor=False, quick=True),
]}


def parse_tiers(spec: str):
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in TIERS]
    if unknown:
        raise SystemExit(f"unknown tier(s) {', '.join(unknown)}; known: {', '.join(TIERS)}")
    return [TIERS[n] for n in names]
