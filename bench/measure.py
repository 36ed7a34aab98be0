"""One benchmark configuration (tier, N, T) of ``python -m bench.run``, step by step.

:func:`run_config` builds the scaled model and its input (:func:`_prepare`), compiles every path's
forward and forward+backward programs (compile time, memory analysis) and probes its firing rates
(:func:`_compile_path`), compiles the optional peer, times the speed paths and the peer alternating
(:func:`_time_speed_paths`), adds the floor (:func:`_floor`), the roofline and peak-memory figures,
the ratios to the reference path and the sanity check, and returns the rows in order.
"""
from __future__ import annotations

import contextlib
import dataclasses
import warnings
from typing import Callable, Dict, List, Optional

import jax
import numpy as np

import snnkern

from . import floor, models, peak_mem, sanity, timing
from .tiers import Tier

# path name in the results -> snnkern backend
PATH_BACKENDS = {"reference": "reference", "plan-xla": "xla", "pallas": "pallas",
                 "pallas-interpret": "pallas-interpret", "plan-xla-ckpt": "xla"}
SPEED_PATHS = ("reference", "plan-xla", "pallas", "plan-xla-ckpt")   # timed alternating; ratios are speed figures


def path_context(path: str, checkpoint="auto") -> Callable[[], contextlib.AbstractContextManager]:
    """The context a path traces under besides its backend: plan-xla-ckpt under
    ``snnkern.time_checkpoint(checkpoint)`` ("auto" or K); plan-xla and pallas explicitly without
    time checkpointing (on CPU it is the default for T >= 1000: plan-xla-ckpt is then the default
    plan, plan-xla the plan without it)."""
    if path == "plan-xla-ckpt":
        return lambda: snnkern.time_checkpoint(checkpoint)
    if path in ("plan-xla", "pallas", "pallas-interpret") and not _checkpoint_missing():
        return lambda: snnkern.time_checkpoint(None)
    return contextlib.nullcontext


def _checkpoint_missing() -> Optional[str]:
    if not hasattr(snnkern, "time_checkpoint"):    # bench code: runs against older snnkern trees too
        return "snnkern.time_checkpoint is not in this snnkern (time checkpointing not merged yet)"
    return None
# Interpret mode is for correctness only: timed once, and only on small problems.
INTERPRET_MAX_WORK = 200_000            # B*T*N: cpu-small and the test tiers


def _plan_info(spec, backend: str, context=contextlib.nullcontext):
    """(plan, fused-components text, fallback reasons, whether a Pallas step is in the plan)."""
    with snnkern.backend(backend), context():
        plan = snnkern.explain(spec.model, spec.in_shape)
    if plan.reference:
        return plan, "none (time-major lax.scan)", [], False
    fused = [f"c{n} {s.where}: {s.describe()}" for n, c in enumerate(plan.components) for s in c.steps
             if s.spec.is_loop]
    has_pallas = any(s.impl is not None and s.impl.is_pallas for s in plan.steps)
    return plan, "; ".join(fused) or "none", plan.fallbacks, has_pallas


def _eligible(path: str, spec, platform: str, B: int, T: int, N: int):
    """None if ``path`` can run here, else the reason it is skipped."""
    if path == "plan-xla-ckpt":
        return _checkpoint_missing()
    if path in ("pallas", "pallas-interpret"):
        if path == "pallas" and platform == "cpu":
            return "compiled Pallas kernels need a GPU/TPU (on CPU only pallas-interpret runs)"
        try:
            plan, _, fallbacks, has_pallas = _plan_info(spec, PATH_BACKENDS[path])
        except Exception as e:  # noqa: BLE001  (strict mode turns the fallback into an error)
            return f"no plan for {path}: {type(e).__name__}: {e}"
        if not has_pallas:
            return "the plan shows no Pallas step" + (f" ({fallbacks[0]})" if fallbacks else "")
        if path == "pallas-interpret" and B * T * max(N, spec.N_in) > INTERPRET_MAX_WORK:
            return f"interpret mode only on small problems (B*T*N <= {INTERPRET_MAX_WORK})"
    return None


def _same_program(a: "timing.Compiled", b: "timing.Compiled") -> bool:
    try:
        return a.fn.as_text() == b.fn.as_text()
    except Exception:  # noqa: BLE001  (no text form: cannot tell, assume different)
        return False


def _fmt_rates(r) -> str:
    return "/".join(f"{float(v):.6f}" for v in r)


def _compile_fields(cf: "timing.Compiled", cb: "timing.Compiled") -> dict:
    """Compile times and ``memory_analysis()`` bytes of the forward and forward+backward programs."""
    return dict(compile_fwd_s=cf.compile_s, compile_fwdbwd_s=cb.compile_s,
                mem_fwd_temp_bytes=cf.temp_bytes, mem_fwd_out_bytes=cf.out_bytes, mem_fwd_bytes=cf.mem_bytes,
                mem_fwdbwd_temp_bytes=cb.temp_bytes, mem_fwdbwd_out_bytes=cb.out_bytes,
                mem_fwdbwd_bytes=cb.mem_bytes)


def _stat_fields(mode: str, s) -> dict:
    """The timing columns of ``mode`` ("fwd" or "fwdbwd") from one path's sample statistics."""
    return {f"{mode}_median_s": s.median, f"{mode}_p10_s": s.p10, f"{mode}_p90_s": s.p90, f"{mode}_n": s.n}


@dataclasses.dataclass
class _Config:
    """One measured configuration (tier, N, T): the scaled model, its input and functions, the
    device peak for the sanity check, and the columns every row of it shares."""
    tier: Tier
    N: int
    T: int
    scales: List[float]
    spec: "models.ModelSpec"      # spec.model: the scaled model (explain() and the probes see it)
    x: jax.Array
    params: object
    fwd: object
    fwdbwd: object
    peak: "sanity.Peak"
    timing_kw: dict
    base: dict
    requested: List[str]          # the snnkern paths asked for, in order
    checkpoint: object = "auto"   # plan-xla-ckpt: the argument of snnkern.time_checkpoint

    @property
    def B(self) -> int:
        return self.tier.B

    @property
    def platform(self) -> str:
        return self.base["platform"]

    @property
    def label(self) -> str:
        return f"{self.tier.name} {self.tier.model} N={self.N} T={self.T} B={self.B}"


def _prepare(tier: Tier, N: int, T: int, args, scales, env: dict, command: str) -> _Config:
    """Build the model (weights scaled by ``scales``), the input and the jitted-to-be functions."""
    spec = models.build(tier.model, N, N_in=tier.n_in or None)
    spec.model = models.scale_model(spec, spec.model, scales)
    x = jax.device_put(models.make_input(tier.B, T, spec.N_in, spec.in_shape))
    params, fwd, fwdbwd = models.make_fns(spec, spec.model)
    peak = sanity.device_peak(env["platform"], env["device_kind"], env["cores"],
                              jax.config.jax_default_matmul_precision)
    base = dict(env, tier=tier.name, model=tier.model, N_in=spec.N_in, N=N, N_out=spec.N_out, T=T, B=tier.B,
                scales="/".join(f"{s:.6g}" for s in scales), command=command,
                peak_gflops=peak.flops / 1e9)
    timing_kw = dict(warmups=args.warmups, min_samples=args.repeats, min_time=args.min_time)
    if tier.quick:          # memory-first tier: its long T make full timing too slow on a CPU
        timing_kw = dict(warmups=min(args.warmups, 1), min_samples=min(args.repeats, 3), min_time=0.0)
    requested = [p for p in args.paths if p in PATH_BACKENDS]
    requested += [p for p in tier.extra_paths if p not in requested]
    return _Config(tier, N, T, list(scales), spec, x, params, fwd, fwdbwd, peak, timing_kw, base, requested,
                   getattr(args, "time_checkpoint", "auto"))


def run_config(tier: Tier, N: int, T: int, args, scales, env: dict, bar, command: str) -> List[dict]:
    """All rows of one configuration: every requested path and peer, timed, checked, in order."""
    cfg = _prepare(tier, N, T, args, scales, env, command)
    rows: Dict[str, dict] = {}
    compiled: Dict[str, Dict[str, timing.Compiled]] = {}
    for path in cfg.requested:
        rows[path] = _compile_path(cfg, path, compiled, bar)
    speed = [p for p in cfg.requested if p in SPEED_PATHS and p in compiled]
    peers: Dict[str, Dict[str, Callable]] = {}
    if "spyx" in args.paths:      # the anchor: timed alternating with the speed paths
        rows["spyx"], spyx_calls = _spyx_row(cfg, bar)
        if spyx_calls:
            peers["spyx"] = spyx_calls
    _time_speed_paths(cfg, rows, compiled, speed, bar, peers)
    if "pallas-interpret" in compiled:
        _time_interpret(cfg, rows["pallas-interpret"], compiled["pallas-interpret"])
    _floor(cfg, rows, bar)
    if cfg.platform == "gpu" or args.micro:     # GPU roofline figures
        _micro(cfg, rows, speed, bar)
    if args.peak_mem and cfg.platform != "cpu":
        _peak_memory(cfg, rows, speed, bar)
    ref = rows.get("reference", {})
    for p, r in rows.items():
        if r.get("speed_figure") != "skipped":
            _add_ratios(r, ref)
            _add_floor_ratios(cfg, r)
            _check_sanity(cfg, p, r, bar)
    out = [rows[p] for p in list(cfg.requested) + [p for p in rows if p not in cfg.requested]]
    _print_summary(bar, cfg.label, out)
    return out


def _floor(cfg: _Config, rows: dict, bar) -> None:
    """The floor columns (bench/floor.py) into every row that ran: the parts timed alone."""
    if not cfg.tier.floor or cfg.spec.kind not in floor.KINDS:
        return
    bar.set_postfix_str(f"{cfg.label} floor (parts alone)")
    try:
        f = floor.measure(cfg.spec, cfg.x, **cfg.timing_kw)
    except Exception as e:  # noqa: BLE001  (the floor is a figure beside the rows, never breaks them)
        bar.write(f"[bench] {cfg.label}: floor failed: {type(e).__name__}: {e}")
        warnings.warn(f"{cfg.label}: floor failed: {type(e).__name__}: {e}", RuntimeWarning, stacklevel=1)
        return
    cols = dict(floor_fwd_ms=f["floor_fwd_s"] * 1e3, floor_fwdbwd_ms=f["floor_fwdbwd_s"] * 1e3,
                floor_parts=f["floor_parts"])
    for r in rows.values():
        if r.get("speed_figure") != "skipped":
            r.update(cols)
    bar.write(f"[bench] {cfg.label} floor fwd {cols['floor_fwd_ms']:.3g} ms, fwd+bwd {cols['floor_fwdbwd_ms']:.3g} ms "
              f"({f['floor_parts']})")


def _add_floor_ratios(cfg: _Config, r: dict) -> None:
    """``fwd_x_floor`` / ``fwdbwd_x_floor``: the path's median over the floor; ``mem_TBN``: its
    fwd+bwd memory (temp + output) in (T, B, N) float32 arrays (models with a width N per step)."""
    if r.get("speed_figure") not in ("no (interpret)", "skipped"):
        for mode in ("fwd", "fwdbwd"):
            if r.get(f"floor_{mode}_ms") and r.get(f"{mode}_median_s"):
                r[f"{mode}_x_floor"] = r[f"{mode}_median_s"] * 1e3 / r[f"floor_{mode}_ms"]
    if r.get("mem_fwdbwd_bytes") and cfg.spec.kind in floor.KINDS:
        r["mem_TBN"] = r["mem_fwdbwd_bytes"] / floor.tbn_bytes(cfg.T, cfg.B, cfg.N)


def _skipped_row(cfg: _Config, path: str, why: str, bar) -> dict:
    """The row of a path that does not run (``why`` goes into its note)."""
    if path in SPEED_PATHS:
        bar.update(2)                         # the two timings it will not make
    return dict(cfg.base, path=path, snnkern_backend=PATH_BACKENDS[path], speed_figure="skipped", note=why)


def _compile_path(cfg: _Config, path: str, compiled: dict, bar) -> dict:
    """Compile ``path`` (forward and forward+backward: compile time, memory), probe its firing rates
    and loss; on success its programs go into ``compiled``. Returns its row: a skipped row with the
    reason if it cannot run here or fails (a failing reference path raises)."""
    why = _eligible(path, cfg.spec, cfg.platform, cfg.B, cfg.T, cfg.N)
    if why is not None:
        bar.write(f"[bench] {cfg.label}: skip {path}: {why}")
        return _skipped_row(cfg, path, why, bar)
    backend, context = PATH_BACKENDS[path], path_context(path, cfg.checkpoint)
    bar.set_postfix_str(f"{cfg.label} compile {path}")
    try:
        _, fused, fallbacks, _ = _plan_info(cfg.spec, backend, context)
        cf = timing.compile_under(backend, cfg.fwd, cfg.params, cfg.x, context=context)
        cb = timing.compile_under(backend, cfg.fwdbwd, cfg.params, cfg.x, context=context)
        if path != "reference" and "reference" in compiled and _same_program(compiled["reference"]["fwdbwd"], cb):
            raise RuntimeError(f"{path} compiled to the very program of the reference path: the backend "
                               f"did not take effect (stale trace?); no ratio is reported")
        rates, loss = _probe_rates(cfg, backend, cf)
    except Exception as e:  # noqa: BLE001  (one broken path must not cost the other rows)
        if path == "reference":
            raise
        why = f"FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        bar.write(f"[bench] {cfg.label}: {path} {why}")
        warnings.warn(f"{cfg.label}: {path} {why}", RuntimeWarning, stacklevel=1)
        return _skipped_row(cfg, path, why, bar)
    compiled[path] = {"fwd": cf, "fwdbwd": cb}
    note = {}
    if path == "plan-xla-ckpt" and "plan-xla" in compiled and _same_program(compiled["plan-xla"]["fwdbwd"], cb):
        note = {"note": f"time_checkpoint({cfg.checkpoint!r}) compiled to plan-xla's program at this T (no checkpoints)"}
    if path == "plan-xla-ckpt":
        backend = f"{backend}, time_checkpoint({cfg.checkpoint!r})"
    row = dict(**note, **cfg.base, path=path, snnkern_backend=backend,
               speed_figure="yes" if path in SPEED_PATHS else "no (interpret)",
               fused=fused, fallbacks=" | ".join(fallbacks), rates=_fmt_rates(rates), loss=loss,
               **_compile_fields(cf, cb))
    bar.write(f"[bench] {cfg.label} {path:<16} rates {row['rates']}  loss {loss:.6g}  "
              f"compile fwd {cf.compile_s:.2f}s fwd+bwd {cb.compile_s:.2f}s  fused: {fused}")
    return row


def _probe_rates(cfg: _Config, backend: str, cf: "timing.Compiled"):
    """(firing rate of each LIF layer, summed forward output) on ``backend``: equal work across paths."""
    rp, rf = models.rate_fn(cfg.spec, cfg.spec.model)
    rates = np.asarray(timing.compile_under(backend, rf, rp, cfg.x).fn(rp, cfg.x))
    loss = float(np.asarray(cf.fn(cfg.params, cfg.x), dtype=np.float64).sum())
    return rates, loss


def _time_speed_paths(cfg: _Config, rows: dict, compiled: dict, speed: List[str], bar,
                      peers: Optional[Dict[str, Dict[str, Callable]]] = None) -> None:
    """Time the speed paths (and the peers' calls, ``{peer: {mode: call}}``) alternating in this one
    process, per mode (fwd, then fwd+bwd)."""
    for mode in ("fwd", "fwdbwd"):
        calls = {p: (lambda c=compiled[p][mode]: c.fn(cfg.params, cfg.x)) for p in speed}
        calls.update({p: c[mode] for p, c in (peers or {}).items()})
        bar.set_postfix_str(f"{cfg.label} time {mode}")
        st = timing.measure_interleaved(calls, on_done=lambda name: bar.update(1), **cfg.timing_kw)
        for p, s in st.items():
            rows[p].update(_stat_fields(mode, s))


def _time_interpret(cfg: _Config, row: dict, comp: dict) -> None:
    """Pallas interpret mode is correctness-sized, never a speed figure: one sample per mode."""
    for mode in ("fwd", "fwdbwd"):
        c = comp[mode]
        s = timing.measure_interleaved({"i": lambda: c.fn(cfg.params, cfg.x)}, warmups=1, min_samples=1,
                                       min_time=0.0)["i"]
        row.update(_stat_fields(mode, s))
    row["note"] = "interpret mode: correctness only, not a speed figure"


def _peak_memory(cfg: _Config, rows: dict, speed: List[str], bar) -> None:
    """Peak device memory of fwd+bwd for each speed path, each measured in a fresh process."""
    for p in speed:
        bar.set_postfix_str(f"{cfg.label} peak memory {p}")
        pk, note = peak_mem.peak_in_fresh_process(cfg.tier.model, cfg.N, cfg.T, cfg.B, cfg.scales, p)
        rows[p]["peak_bytes_fwdbwd"] = pk
        if note:
            rows[p]["note"] = (rows[p].get("note", "") + "; " + note).strip("; ")


def _add_ratios(r: dict, ref: dict) -> None:
    """Speed-ups over the reference path (never for interpret mode) and the fwd+bwd memory ratio."""
    if r.get("speed_figure") != "no (interpret)":
        for mode in ("fwd", "fwdbwd"):
            if ref.get(f"{mode}_median_s") and r.get(f"{mode}_median_s"):
                r[f"{mode}_speedup"] = ref[f"{mode}_median_s"] / r[f"{mode}_median_s"]
    if ref.get("mem_fwdbwd_bytes") and r.get("mem_fwdbwd_bytes"):
        r["mem_ratio_fwdbwd"] = ref["mem_fwdbwd_bytes"] / r["mem_fwdbwd_bytes"]


def _check_sanity(cfg: _Config, path: str, r: dict, bar) -> None:
    """GFLOP/s columns, and ``sanity``: "ok", or "REJECTED: ..." (with a warning) where a timing
    implies more than the device's peak GEMM rate or memory bandwidth."""
    problems = []
    for mode in ("fwd", "fwdbwd"):
        if r.get(f"{mode}_median_s") is None:
            continue
        flops = cfg.spec.gemm_flops(cfg.B, cfg.T, mode)
        r[f"{mode}_gflops"] = flops / r[f"{mode}_median_s"] / 1e9
        res = sanity.check_rate(flops, r[f"{mode}_p10_s"], cfg.peak.flops, what=f"{mode}: GEMM")
        if not res.ok:
            problems.append(res.message)
    if r.get("loop_gbps") and cfg.peak.bytes_per_s:
        res = sanity.check_rate(float(r["loop_gbps"]) * 1e9, 1.0, cfg.peak.bytes_per_s, "neuron loop", "B/s")
        if not res.ok:
            problems.append(res.message)
    if problems:
        r["sanity"] = "REJECTED: " + " | ".join(problems)
        msg = f"{cfg.label} {path}: " + r["sanity"]
        warnings.warn(msg, RuntimeWarning, stacklevel=1)
        bar.write(f"[bench] WARNING {msg}")
    else:
        r["sanity"] = "ok"


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


def _spyx_row(cfg: _Config, bar):
    """The row of the optional peer spyx (same weights and input) and its calls to time
    (``{mode: call}``), or a skipped row with the reason and None."""
    from . import peers_spyx
    spec, x, label = cfg.spec, cfg.x, cfg.label
    row = dict(cfg.base, path="spyx", snnkern_backend="", fused="n/a (peer library)")
    why = peers_spyx.unavailable(spec.kind)
    if why is not None:
        bar.write(f"[bench] {label}: skip spyx: {why}")
        return dict(row, speed_figure="skipped", note=why), None
    try:
        sp, sf, sb, srates = peers_spyx.make_fns(spec, spec.model)
        cf = timing.compile_under("reference", sf, sp, x)
        cb = timing.compile_under("reference", sb, sp, x)
        rates = np.asarray(jax.jit(srates)(sp, x))
        jax.block_until_ready((cf.fn(sp, x), cb.fn(sp, x)))      # fails here rather than while timing
    except Exception as e:  # noqa: BLE001  (a peer never breaks the run)
        bar.write(f"[bench] {label}: spyx peer failed: {type(e).__name__}: {e}")
        return dict(row, speed_figure="skipped", note=f"spyx peer failed: {type(e).__name__}: {e}"), None
    row.update(speed_figure="indicative (peer)", rates=_fmt_rates(rates), **_compile_fields(cf, cb),
               note="spyx CuBaLIF, time-major, same weights; neuron details differ (rates shown)")
    bar.write(f"[bench] {label} spyx rates {row['rates']}")
    return row, {"fwd": lambda: cf.fn(sp, x), "fwdbwd": lambda: cb.fn(sp, x)}


_COPY_BW: Dict[str, float] = {}


def _micro(cfg: _Config, rows: dict, speed: List[str], bar) -> None:
    """GEMM rate, copy bandwidth and neuron-loop bandwidth (roofline figures) into the speed rows."""
    from . import micro
    label, platform, timing_kw = cfg.label, cfg.platform, cfg.timing_kw
    bar.set_postfix_str(f"{label} roofline figures")
    try:
        if platform not in _COPY_BW:
            n = (1 << 30) if platform == "gpu" else (64 << 20)
            _COPY_BW[platform] = micro.copy_bandwidth(n, **timing_kw)
        gemm = micro.gemm_rate(cfg.B * cfg.T, cfg.spec.N_in, cfg.N, **timing_kw)
        loop = micro.neuron_loop_rates(cfg.B, cfg.T, cfg.N, {p: PATH_BACKENDS[p] for p in speed}, **timing_kw)
    except Exception as e:  # noqa: BLE001
        bar.write(f"[bench] {label}: roofline figures failed: {type(e).__name__}: {e}")
        return
    for p in speed:
        rows[p].update(gemm_tflops=round(gemm / 1e12, 4), loop_gbps=round(loop[p] / 1e9, 2),
                       copy_gbps=round(_COPY_BW[platform] / 1e9, 2))
    bar.write(f"[bench] {label} GEMM {gemm / 1e12:.3g} TFLOP/s, copy {_COPY_BW[platform] / 1e9:.4g} GB/s, "
              "neuron loop " + ", ".join(f"{p} {v / 1e9:.4g} GB/s" for p, v in loop.items()))
