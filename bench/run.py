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
import warnings
from pathlib import Path
from typing import Dict, List

import jax
import numpy as np

import snnkern

from . import models, peak_mem, report, sanity, timing
from .tiers import TIERS, Tier, parse_tiers

__all__ = ["PATH_BACKENDS", "SPEED_PATHS", "main", "environment", "git_commit"]

# path name in the results -> snnkern backend
PATH_BACKENDS = {"reference": "reference", "plan-xla": "xla", "pallas": "pallas",
                 "pallas-interpret": "pallas-interpret"}
SPEED_PATHS = ("reference", "plan-xla", "pallas")      # timed alternating; ratios are speed figures
PEERS = ("spyx",)
DEFAULT_PATHS = "reference,plan-xla,pallas,pallas-interpret,spyx"
# Interpret mode is for correctness only: timed once, and only on small problems.
INTERPRET_MAX_WORK = 200_000            # B*T*N: cpu-small and the test tiers

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


def _plan_info(spec, backend: str):
    """(plan, fused-components text, fallback reasons, whether a Pallas step is in the plan)."""
    with snnkern.backend(backend):
        plan = snnkern.explain(spec.model, spec.in_shape)
    if plan.path == "reference":
        return plan, "none (time-major lax.scan)", [], False
    fused, has_pallas = [], False
    for n, c in enumerate(plan.components):
        for s in c.steps:
            if "loop" in s.path and "scan" not in s.path:
                fused.append(f"c{n} {s.where}: {s.path}")
            has_pallas = has_pallas or s.path.startswith("pallas")
    return plan, "; ".join(fused) or "none", plan.fallbacks, has_pallas


def _eligible(path: str, spec, platform: str, B: int, T: int, N: int):
    """None if ``path`` can run here, else the reason it is skipped."""
    if path in ("pallas", "pallas-interpret"):
        if path == "pallas" and platform == "cpu":
            return "compiled Pallas kernels need a GPU/TPU (on CPU only pallas-interpret runs)"
        try:
            plan, _, fallbacks, has_pallas = _plan_info(spec, PATH_BACKENDS[path])
        except Exception as e:  # noqa: BLE001  (strict mode turns the fallback into an error)
            return f"no plan for {path}: {type(e).__name__}: {e}"
        if not has_pallas:
            return "the plan shows no Pallas step" + (f" ({fallbacks[0]})" if fallbacks else "")
        if path == "pallas-interpret" and B * T * N > INTERPRET_MAX_WORK:
            return f"interpret mode only on small problems (B*T*N <= {INTERPRET_MAX_WORK})"
    return None


def _same_program(a: "timing.Compiled", b: "timing.Compiled") -> bool:
    try:
        return a.fn.as_text() == b.fn.as_text()
    except Exception:  # noqa: BLE001  (no text form: cannot tell, assume different)
        return False


def _fmt_rates(r) -> str:
    return "/".join(f"{float(v):.6f}" for v in r)


def run_config(tier: Tier, N: int, T: int, args, scales, env: dict, bar, command: str) -> List[dict]:
    B = tier.B
    spec = models.build(tier.model, N)
    model = models.scale_model(spec, spec.model, scales)
    spec.model = model                        # explain() and the probes see the scaled model
    x_host = models.make_input(B, T, spec.N_in)
    x = jax.device_put(x_host)
    params, fwd, fwdbwd = models.make_fns(spec, model)
    platform = env["platform"]
    dev_kind = env["device_kind"]
    peak = sanity.device_peak(platform, dev_kind, env["cores"], jax.config.jax_default_matmul_precision)
    timing_kw = dict(warmups=args.warmups, min_samples=args.repeats, min_time=args.min_time)
    base = dict(env, tier=tier.name, model=tier.model, N_in=spec.N_in, N=N, N_out=spec.N_out, T=T, B=B,
                scales="/".join(f"{s:.6g}" for s in scales), command=command,
                peak_gflops=peak.flops / 1e9)
    rows: Dict[str, dict] = {}
    compiled: Dict[str, Dict[str, timing.Compiled]] = {}
    label = f"{tier.name} {tier.model} N={N} T={T} B={B}"

    requested = [p for p in args.paths if p in PATH_BACKENDS]
    for path in requested:
        why = _eligible(path, spec, platform, B, T, N)
        if why is not None:
            bar.write(f"[bench] {label}: skip {path}: {why}")
            rows[path] = dict(base, path=path, snnkern_backend=PATH_BACKENDS[path], speed_figure="skipped",
                              note=why)
            if path in SPEED_PATHS:
                bar.update(2)
            continue
        backend = PATH_BACKENDS[path]
        bar.set_postfix_str(f"{label} compile {path}")
        try:
            plan, fused, fallbacks, _ = _plan_info(spec, backend)
            cf = timing.compile_under(backend, fwd, params, x)
            cb = timing.compile_under(backend, fwdbwd, params, x)
            if path != "reference" and "reference" in compiled and _same_program(compiled["reference"]["fwdbwd"], cb):
                raise RuntimeError(f"{path} compiled to the very program of the reference path: the backend "
                                   f"did not take effect (stale trace?); no ratio is reported")
            rp, rf = models.rate_fn(spec, model)
            rates = np.asarray(timing.compile_under(backend, rf, rp, x).fn(rp, x))
            loss = float(np.asarray(cf.fn(params, x), dtype=np.float64).sum())
        except Exception as e:  # noqa: BLE001  (one broken path must not cost the other rows)
            if path == "reference":
                raise
            why = f"FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            bar.write(f"[bench] {label}: {path} {why}")
            warnings.warn(f"{label}: {path} {why}", RuntimeWarning, stacklevel=1)
            rows[path] = dict(base, path=path, snnkern_backend=backend, speed_figure="skipped", note=why)
            if path in SPEED_PATHS:
                bar.update(2)
            continue
        compiled[path] = {"fwd": cf, "fwdbwd": cb}
        rows[path] = dict(base, path=path, snnkern_backend=backend,
                          speed_figure="yes" if path in SPEED_PATHS else "no (interpret)",
                          fused=fused, fallbacks=" | ".join(fallbacks), rates=_fmt_rates(rates), loss=loss,
                          compile_fwd_s=cf.compile_s, compile_fwdbwd_s=cb.compile_s,
                          mem_fwd_temp_bytes=cf.temp_bytes, mem_fwd_out_bytes=cf.out_bytes,
                          mem_fwd_bytes=cf.mem_bytes, mem_fwdbwd_temp_bytes=cb.temp_bytes,
                          mem_fwdbwd_out_bytes=cb.out_bytes, mem_fwdbwd_bytes=cb.mem_bytes)
        bar.write(f"[bench] {label} {path:<16} rates {rows[path]['rates']}  loss {loss:.6g}  "
                  f"compile fwd {cf.compile_s:.2f}s fwd+bwd {cb.compile_s:.2f}s  fused: {fused}")

    # -- timing: speed paths alternating, per mode -------------------------------------------------
    speed = [p for p in requested if p in SPEED_PATHS and p in compiled]
    for mode in ("fwd", "fwdbwd"):
        calls = {p: (lambda c=compiled[p][mode]: c.fn(params, x)) for p in speed}
        bar.set_postfix_str(f"{label} time {mode}")
        st = timing.measure_interleaved(calls, on_done=lambda name: bar.update(1), **timing_kw)
        for p, s in st.items():
            rows[p].update({f"{mode}_median_s": s.median, f"{mode}_p10_s": s.p10, f"{mode}_p90_s": s.p90,
                            f"{mode}_n": s.n})
    if "pallas-interpret" in compiled:       # correctness-sized, never a speed figure: one sample
        for mode in ("fwd", "fwdbwd"):
            c = compiled["pallas-interpret"][mode]
            s = timing.measure_interleaved({"i": lambda: c.fn(params, x)}, warmups=1, min_samples=1,
                                           min_time=0.0)["i"]
            rows["pallas-interpret"].update({f"{mode}_median_s": s.median, f"{mode}_p10_s": s.p10,
                                             f"{mode}_p90_s": s.p90, f"{mode}_n": s.n})
        rows["pallas-interpret"]["note"] = "interpret mode: correctness only, not a speed figure"

    # -- optional peers ------------------------------------------------------------------------------
    if "spyx" in args.paths:
        rows["spyx"] = _spyx_row(spec, model, x, base, timing_kw, bar, label)

    # -- GPU roofline figures and fresh-process peak memory -------------------------------------------
    if platform == "gpu" or args.micro:
        _micro(rows, speed, spec, B, T, N, platform, dev_kind, timing_kw, bar, label, args)
    if args.peak_mem and platform != "cpu":
        for p in speed:
            bar.set_postfix_str(f"{label} peak memory {p}")
            pk, note = peak_mem.peak_in_fresh_process(tier.model, N, T, B, scales, p)
            rows[p]["peak_bytes_fwdbwd"] = pk
            if note:
                rows[p]["note"] = (rows[p].get("note", "") + "; " + note).strip("; ")

    # -- ratios and the sanity check -------------------------------------------------------------------
    ref = rows.get("reference", {})
    for p, r in rows.items():
        if r.get("speed_figure") == "skipped":
            continue
        for mode in ("fwd", "fwdbwd"):
            if r.get("speed_figure") == "no (interpret)":
                break                         # interpret mode is never a speed figure
            if ref.get(f"{mode}_median_s") and r.get(f"{mode}_median_s"):
                r[f"{mode}_speedup"] = ref[f"{mode}_median_s"] / r[f"{mode}_median_s"]
        if ref.get("mem_fwdbwd_bytes") and r.get("mem_fwdbwd_bytes"):
            r["mem_ratio_fwdbwd"] = ref["mem_fwdbwd_bytes"] / r["mem_fwdbwd_bytes"]
        problems = []
        for mode in ("fwd", "fwdbwd"):
            if r.get(f"{mode}_median_s") is None:
                continue
            flops = spec.gemm_flops(B, T, mode)
            r[f"{mode}_gflops"] = flops / r[f"{mode}_median_s"] / 1e9
            res = sanity.check_rate(flops, r[f"{mode}_p10_s"], peak.flops, what=f"{mode}: GEMM")
            if not res.ok:
                problems.append(res.message)
        if r.get("loop_gbps") and peak.bytes_per_s:
            res = sanity.check_rate(float(r["loop_gbps"]) * 1e9, 1.0, peak.bytes_per_s, "neuron loop", "B/s")
            if not res.ok:
                problems.append(res.message)
        if problems:
            r["sanity"] = "REJECTED: " + " | ".join(problems)
            msg = f"{label} {p}: " + r["sanity"]
            warnings.warn(msg, RuntimeWarning, stacklevel=1)
            bar.write(f"[bench] WARNING {msg}")
        else:
            r["sanity"] = "ok"

    out = [rows[p] for p in list(requested) + [p for p in rows if p not in requested]]
    _print_summary(bar, label, out)
    return out


def _print_summary(bar, label, rows):
    ref = next((r for r in rows if r["path"] == "reference" and r.get("fwd_median_s")), None)
    for r in rows:
        if r["path"] == "reference" or r.get("speed_figure") == "skipped" or ref is None:
            continue
        if not r.get("fwd_median_s"):
            continue
        if r.get("speed_figure") == "no (interpret)":
            bar.write(f"[bench] {label} {r['path']}: ran (rates {r.get('rates')}); interpret mode, not a speed figure")
            continue
        mem = f"{ref.get('mem_fwdbwd_bytes', 0) / 2**20:.1f}->{(r.get('mem_fwdbwd_bytes') or 0) / 2**20:.1f} MB"
        bar.write(f"[bench] {label} {r['path']}: fwd {ref['fwd_median_s'] * 1e3:.2f}->{r['fwd_median_s'] * 1e3:.2f} ms "
                  f"({r.get('fwd_speedup', float('nan')):.2f}x), fwd+bwd {ref['fwdbwd_median_s'] * 1e3:.2f}->"
                  f"{r['fwdbwd_median_s'] * 1e3:.2f} ms ({r.get('fwdbwd_speedup', float('nan')):.2f}x), "
                  f"mem fwd+bwd {mem}, compile fwd+bwd {ref['compile_fwdbwd_s']:.2f}->{r['compile_fwdbwd_s']:.2f} s"
                  f"{'' if r.get('speed_figure') == 'yes' else ' [' + r['speed_figure'] + ']'}")


def _spyx_row(spec, model, x, base, timing_kw, bar, label) -> dict:
    from . import peers_spyx
    row = dict(base, path="spyx", snnkern_backend="", fused="n/a (peer library)")
    why = peers_spyx.unavailable(spec.kind)
    if why is not None:
        bar.write(f"[bench] {label}: skip spyx: {why}")
        return dict(row, speed_figure="skipped", note=why)
    try:
        sp, sf, sb, srates = peers_spyx.make_fns(spec, model)
        cf = timing.compile_under("reference", sf, sp, x)
        cb = timing.compile_under("reference", sb, sp, x)
        rates = np.asarray(jax.jit(srates)(sp, x))
        row.update(speed_figure="indicative (peer)", rates=_fmt_rates(rates),
                   compile_fwd_s=cf.compile_s, compile_fwdbwd_s=cb.compile_s,
                   mem_fwd_temp_bytes=cf.temp_bytes, mem_fwd_out_bytes=cf.out_bytes, mem_fwd_bytes=cf.mem_bytes,
                   mem_fwdbwd_temp_bytes=cb.temp_bytes, mem_fwdbwd_out_bytes=cb.out_bytes,
                   mem_fwdbwd_bytes=cb.mem_bytes,
                   note="spyx CuBaLIF, time-major, same weights; neuron details differ (rates shown)")
        for mode, c in (("fwd", cf), ("fwdbwd", cb)):
            st = timing.measure_interleaved({"spyx": lambda c=c: c.fn(sp, x)}, **timing_kw)["spyx"]
            row.update({f"{mode}_median_s": st.median, f"{mode}_p10_s": st.p10, f"{mode}_p90_s": st.p90,
                        f"{mode}_n": st.n})
        bar.write(f"[bench] {label} spyx rates {row['rates']}")
    except Exception as e:  # noqa: BLE001  (a peer never breaks the run)
        bar.write(f"[bench] {label}: spyx peer failed: {type(e).__name__}: {e}")
        row = dict(row, speed_figure="skipped", note=f"spyx peer failed: {type(e).__name__}: {e}")
    return row


_COPY_BW: Dict[str, float] = {}


def _micro(rows, speed, spec, B, T, N, platform, dev_kind, timing_kw, bar, label, args):
    from . import micro
    bar.set_postfix_str(f"{label} roofline figures")
    try:
        if platform not in _COPY_BW:
            n = (1 << 30) if platform == "gpu" else (64 << 20)
            _COPY_BW[platform] = micro.copy_bandwidth(n, **timing_kw)
        gemm = micro.gemm_rate(B * T, spec.N_in, N, **timing_kw)
        loop = micro.neuron_loop_rates(B, T, N, {p: PATH_BACKENDS[p] for p in speed}, **timing_kw)
    except Exception as e:  # noqa: BLE001
        bar.write(f"[bench] {label}: roofline figures failed: {type(e).__name__}: {e}")
        return
    for p in speed:
        rows[p].update(gemm_tflops=round(gemm / 1e12, 4), loop_gbps=round(loop[p] / 1e9, 2),
                       copy_gbps=round(_COPY_BW[platform] / 1e9, 2))
    bar.write(f"[bench] {label} GEMM {gemm / 1e12:.3g} TFLOP/s, copy {_COPY_BW[platform] / 1e9:.4g} GB/s, "
              "neuron loop " + ", ".join(f"{p} {v / 1e9:.4g} GB/s" for p, v in loop.items()))


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
    if a.repeats < 1 or a.warmups < 0:
        ap.error("--repeats must be >= 1 and --warmups >= 0")
    return a


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
    n_speed = sum(1 for p in args.paths if p in SPEED_PATHS)
    bar = _progress(sum(len(t.configs()) for t in runnable) * 2 * n_speed, args.quiet)
    written: Dict[Path, List[dict]] = {}
    last_env = None
    try:
        for tier in runnable:
            device = jax.devices(tier.platform)[0]
            env = environment(tier.platform)
            last_env = env
            csv_path = out_dir / f"{env['date']}-{report.slug(env['device_kind'])}.csv"
            if csv_path not in written:
                written[csv_path] = report.read_csv(csv_path) if csv_path.exists() else []
            with jax.default_device(device):
                scale_cache: Dict[int, List[float]] = {}
                for N, T in tier.configs():
                    if N not in scale_cache:      # calibrated once per tier (and width)
                        bar.set_postfix_str(f"{tier.name} N={N} calibrate")
                        spec = models.build(tier.model, N)
                        xc = jax.device_put(models.make_input(tier.B, tier.calib_T, spec.N_in))
                        scales, rates = models.calibrate(spec, xc)
                        scale_cache[N] = scales
                        ok = all(models.RATE_WINDOW[0] <= r <= models.RATE_WINDOW[1] for r in rates)
                        bar.write(f"[bench] {tier.name} N={N}: weight scales {[round(s, 3) for s in scales]} -> "
                                  f"LIF rates {[round(r, 4) for r in rates]} at T={tier.calib_T} (reference)"
                                  + ("" if ok else "  WARNING: outside the 2-20 % window"))
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
