"""Entry point of the benchmark harness: ``python -m bench.run --tiers cpu-small`` (BENCH.md).

For each tier and shape: build the model, calibrate the weight scales (reference path, small T) so
each LIF layer fires 2-20 %, then for every path (reference, plan-xla, pallas, pallas-interpret,
optional peers) compile the forward and forward+backward functions separately (compile time, memory
analysis), probe the firing rates, and time the paths alternating in this one process. Rows go to
``<out>/<date>-<device>.csv`` (merged with earlier rows of the same day and device), a Markdown table
and PNG plots beside it, and the summary into docs/performance.md (unless ``--no-docs``).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import jax

from . import models, report, sanity
from .measure import PATH_BACKENDS, SPEED_PATHS, run_config
from .tiers import TIERS, Tier, parse_tiers

__all__ = ["PATH_BACKENDS", "SPEED_PATHS", "main", "environment", "git_commit"]

PEERS = ("spyx",)
DEFAULT_PATHS = "reference,plan-xla,pallas,pallas-interpret,spyx"

REPO = Path(__file__).resolve().parent.parent


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=10)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def code_digest() -> str:
    """sha1 (10 hex) of snnkern's sources (snnkern/ and kernels/): pins the code when the tree is dirty."""
    import hashlib
    h = hashlib.sha1()
    for sub in ("snnkern", "kernels"):
        for f in sorted((REPO / sub).rglob("*.py")):
            h.update(str(f.relative_to(REPO)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:10]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform as _pf
    return _pf.processor() or _pf.machine() or "unknown CPU"


def environment(platform: str) -> dict:
    import jaxlib
    dev = jax.devices(platform)[0]
    return {"date": _dt.date.today().isoformat(), "jax_version": jax.__version__,
            "jaxlib_version": getattr(jaxlib, "__version__", "?"), "platform": platform,
            "device_kind": dev.device_kind, "cores": sanity.cpu_cores(), "git_commit": git_commit(),
            "code_digest": code_digest(),
            "machine": f"{_cpu_model()}, {sanity.cpu_cores()} cores" if platform == "cpu"
            else f"{dev.device_kind}; host {_cpu_model()}, {sanity.cpu_cores()} cores"}


def _progress(total: int, disable: bool):
    try:
        from tqdm import tqdm
        return tqdm(total=total, desc="bench", unit="meas", disable=disable, dynamic_ncols=True)
    except ImportError:  # pragma: no cover
        class _Bar:
            n = 0

            def update(self, k=1):
                self.n += k

            def set_postfix_str(self, s):
                print(f"[bench] {s}", flush=True)

            def write(self, s):
                print(s, flush=True)

            def close(self):
                pass
        return _Bar()


def _has_platform(name: str) -> bool:
    try:
        return len(jax.devices(name)) > 0
    except RuntimeError:
        return False


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    ap.add_argument("--tiers", default="cpu-small",
                    help=f"comma-separated tiers: {', '.join(TIERS)} (default cpu-small)")
    ap.add_argument("--repeats", type=int, default=10, help="minimum timed samples per path (default 10)")
    ap.add_argument("--min-time", type=float, default=1.0, help="minimum seconds of samples per path (default 1)")
    ap.add_argument("--warmups", type=int, default=3, help="untimed runs per path before timing (default 3)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"), help="results folder (default bench/results)")
    ap.add_argument("--no-docs", action="store_true", help="do not update docs/performance.md")
    ap.add_argument("--docs", default=str(REPO / "docs" / "performance.md"), help=argparse.SUPPRESS)
    ap.add_argument("--paths", default=DEFAULT_PATHS,
                    help=f"comma-separated paths (default {DEFAULT_PATHS}); the reference always runs")
    ap.add_argument("--no-plots", action="store_true", help="no PNG plots")
    ap.add_argument("--micro", action="store_true",
                    help="GEMM / copy / neuron-loop roofline figures also on CPU (always on GPU)")
    ap.add_argument("--peak-mem", action="store_true",
                    help="GPU: peak_bytes_in_use of fwd+bwd per path, each in a fresh process")
    ap.add_argument("--time-checkpoint", default="auto", metavar="auto|K",
                    help="what the plan-xla-ckpt path (cpu-mem) passes to snnkern.time_checkpoint: auto "
                         "(default) or K, store the state every K steps")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    a = ap.parse_args(argv)
    if a.peak_mem:      # the children need the memory this process would otherwise preallocate
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    a.paths = [p.strip() for p in a.paths.split(",") if p.strip()]
    bad = [p for p in a.paths if p not in PATH_BACKENDS and p not in PEERS]
    if bad:
        ap.error(f"unknown path(s) {', '.join(bad)}; known: {', '.join(list(PATH_BACKENDS) + list(PEERS))}")
    if "reference" not in a.paths:
        a.paths.insert(0, "reference")
    tc = a.time_checkpoint.strip()
    if tc != "auto" and not (tc.isdigit() and int(tc) >= 1):
        ap.error(f"--time-checkpoint must be auto or a positive int, got {a.time_checkpoint!r}")
    a.time_checkpoint = tc if tc == "auto" else int(tc)
    if a.repeats < 1 or a.warmups < 0:
        ap.error("--repeats must be >= 1 and --warmups >= 0")
    return a


def _calibrate(tier: Tier, N: int, bar) -> List[float]:
    """Weight scales that make each LIF layer of the tier's model of width ``N`` fire 2-20 %
    (reference path, ``tier.calib_T`` steps); a warning line where that window is missed."""
    bar.set_postfix_str(f"{tier.name} N={N} calibrate")
    spec = models.build(tier.model, N, N_in=tier.n_in or None)
    xc = jax.device_put(models.make_input(tier.B, tier.calib_T, spec.N_in, spec.in_shape))
    scales, rates = models.calibrate(spec, xc)
    ok = all(models.RATE_WINDOW[0] <= r <= models.RATE_WINDOW[1] for r in rates)
    bar.write(f"[bench] {tier.name} N={N}: weight scales {[round(s, 3) for s in scales]} -> "
              f"LIF rates {[round(r, 4) for r in rates]} at T={tier.calib_T} (reference)"
              + ("" if ok else "  WARNING: outside the 2-20 % window"))
    return scales


def main(argv=None) -> int:
    args = parse_args(argv)
    command = "python -m bench.run " + " ".join(shlex.quote(s) for s in (sys.argv[1:] if argv is None else argv))
    tiers = parse_tiers(args.tiers)
    runnable = []
    for t in tiers:
        if not _has_platform(t.platform):
            print(f"[bench] skip tier {t.name}: no {t.platform} device here "
                  f"(jax default backend: {jax.default_backend()})", flush=True)
            continue
        runnable.append(t)
    if not runnable:
        print("[bench] nothing to run", flush=True)
        return 0
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    def n_speed(t: Tier) -> int:
        return len({p for p in list(args.paths) + list(t.extra_paths) if p in SPEED_PATHS})
    bar = _progress(sum(len(t.configs()) * 2 * n_speed(t) for t in runnable), args.quiet)
    written: Dict[Path, List[dict]] = {}
    try:
        for tier in runnable:
            device = jax.devices(tier.platform)[0]
            env = environment(tier.platform)
            csv_path = out_dir / f"{env['date']}-{report.slug(env['device_kind'])}.csv"
            if csv_path not in written:
                written[csv_path] = report.read_csv(csv_path) if csv_path.exists() else []
            with jax.default_device(device):
                scale_cache: Dict[int, List[float]] = {}
                for N, T in tier.configs():
                    if N not in scale_cache:      # calibrated once per tier (and width)
                        scale_cache[N] = _calibrate(tier, N, bar)
                    rows = run_config(tier, N, T, args, scale_cache[N], env, bar, command)
                    written[csv_path] = report.merge_rows(written[csv_path], rows)
                    report.write_all(csv_path, written[csv_path], make_plots=False)
    finally:
        bar.close()
    for csv_path, rows in written.items():
        files = report.write_all(csv_path, rows, make_plots=not args.no_plots)
        print("[bench] wrote " + ", ".join(files), flush=True)
        if not args.no_docs:
            report.update_docs(args.docs, rows, csv_path, command)
            print(f"[bench] updated {args.docs}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
