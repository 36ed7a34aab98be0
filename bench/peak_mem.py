"""GPU peak memory of one timed function, measured in a fresh process (BENCH.md "What to time" 4).

``memory_stats()['peak_bytes_in_use']`` only ever grows within a process, so every (config, path,
mode) gets its own interpreter (with ``XLA_PYTHON_CLIENT_PREALLOCATE=false``):
``python -m bench.peak_mem --model ff --N 1024 --T 1000 --B 64 --scales 40,60 --path plan-xla --mode fwdbwd``
prints one JSON line ``{"peak_bytes": ...}``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Optional, Sequence

__all__ = ["peak_in_fresh_process", "main"]


def peak_in_fresh_process(kind: str, N: int, T: int, B: int, scales: Sequence[float], path: str,
                          mode: str = "fwdbwd", timeout: float = 180.0) -> tuple[Optional[int], str]:
    """(peak bytes, note); peak is None where the child failed or the backend has no memory_stats."""
    cmd = [sys.executable, "-m", "bench.peak_mem", "--model", kind, "--N", str(N), "--T", str(T),
           "--B", str(B), "--scales", ",".join(f"{s:.9g}" for s in scales), "--path", path, "--mode", mode]
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")   # the peak, not the pool
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return None, f"peak-mem child timed out after {timeout:.0f} s"
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("{"):
            out = json.loads(line)
            return out.get("peak_bytes"), out.get("note", "")
    return None, f"peak-mem child failed (rc {p.returncode}): {p.stderr.strip().splitlines()[-1:]}"


def fill_csv(csv_path, budget_s: float = 1e9, timeout: float = 180.0) -> int:
    """Fill ``peak_bytes_fwdbwd`` of the timed non-CPU rows of a results CSV (one child per row,
    in row order) until ``budget_s`` seconds have passed; re-writes the CSV and its .md after each.
    This process never touches the accelerator itself."""
    import time

    from . import report

    t0 = time.monotonic()
    rows = report.read_csv(csv_path)
    n = 0
    for r in rows:
        if r.get("platform") == "cpu" or r.get("speed_figure") != "yes" or r.get("peak_bytes_fwdbwd"):
            continue
        if time.monotonic() - t0 > budget_s:
            print(f"[peak-mem] budget of {budget_s:.0f} s spent; stopping", flush=True)
            break
        scales = [float(s) for s in r["scales"].split("/")]
        pk, note = peak_in_fresh_process(r["model"], int(r["N"]), int(r["T"]), int(r["B"]), scales,
                                         r["path"], timeout=min(timeout, max(10.0, budget_s - (time.monotonic() - t0))))
        r["peak_bytes_fwdbwd"] = "" if pk is None else str(pk)
        if note:
            r["note"] = "; ".join(x for x in (r.get("note", ""), note) if x)
        print(f"[peak-mem] {r['tier']} N={r['N']} T={r['T']} B={r['B']} {r['path']}: "
              f"{'-' if pk is None else f'{pk / 2**20:.1f} MiB'} {note}", flush=True)
        report.write_all(csv_path, rows, make_plots=False)
        n += 1
    return n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", help="fill the peak memory of every timed GPU row of this results CSV")
    ap.add_argument("--budget", type=float, default=1e9, help="with --csv: stop starting children after this many s")
    ap.add_argument("--model")
    ap.add_argument("--N", type=int)
    ap.add_argument("--T", type=int)
    ap.add_argument("--B", type=int)
    ap.add_argument("--scales")
    ap.add_argument("--path")
    ap.add_argument("--mode", default="fwdbwd", choices=("fwd", "fwdbwd"))
    a = ap.parse_args(argv)
    if a.csv:
        fill_csv(a.csv, a.budget)
        return 0
    if None in (a.model, a.N, a.T, a.B, a.scales, a.path):
        ap.error("give --csv, or all of --model --N --T --B --scales --path")

    import jax

    from . import models
    from .measure import PATH_BACKENDS
    from .timing import compile_under

    spec = models.build(a.model, a.N)
    model = models.scale_model(spec, spec.model, [float(s) for s in a.scales.split(",")])
    params, fwd, fwdbwd = models.make_fns(spec, model)
    x = jax.device_put(models.make_input(a.B, a.T, spec.N_in, spec.in_shape))
    c = compile_under(PATH_BACKENDS[a.path], fwd if a.mode == "fwd" else fwdbwd, params, x)
    jax.block_until_ready(c.fn(params, x))
    jax.block_until_ready(c.fn(params, x))
    dev = jax.devices()[0]
    try:
        ms = dev.memory_stats() or {}
    except Exception:  # noqa: BLE001
        ms = {}
    peak = ms.get("peak_bytes_in_use")
    print(json.dumps({"peak_bytes": peak, "note": "" if peak is not None else
                      f"{dev.platform} gives no memory_stats()['peak_bytes_in_use']"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
