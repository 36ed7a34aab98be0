"""Benchmark output: CSV (merged per day and device), Markdown tables, PNG plots and the summary in
docs/performance.md between ``<!-- bench:start -->`` and ``<!-- bench:end -->``.

``python -m bench.report bench/results/<file>.csv [--docs docs/performance.md]`` re-makes the .md and
.png files (and the docs summary) from a CSV: after a run cut short by a timeout (the CSV is written
after every configuration), or for the CSV a GPU machine sent back.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

from .tiers import MAKE_BENCH

__all__ = ["COLUMNS", "KEY", "read_csv", "write_csv", "merge_rows", "markdown", "plots", "update_docs",
           "write_all", "DOCS_START", "DOCS_END"]

COLUMNS = [
    "date", "jax_version", "jaxlib_version", "platform", "device_kind", "machine", "cores", "git_commit",
    "code_digest", "tier", "model", "path", "snnkern_backend", "speed_figure", "fused", "fallbacks",
    "N_in", "N", "N_out", "T", "B",
    "scales", "rates", "loss",
    "fwd_median_s", "fwd_p10_s", "fwd_p90_s", "fwd_n",
    "fwdbwd_median_s", "fwdbwd_p10_s", "fwdbwd_p90_s", "fwdbwd_n",
    "fwd_speedup", "fwdbwd_speedup",
    "floor_fwd_ms", "floor_fwdbwd_ms", "fwd_x_floor", "fwdbwd_x_floor", "floor_parts",
    "compile_fwd_s", "compile_fwdbwd_s",
    "mem_fwd_temp_bytes", "mem_fwd_out_bytes", "mem_fwd_bytes",
    "mem_fwdbwd_temp_bytes", "mem_fwdbwd_out_bytes", "mem_fwdbwd_bytes", "mem_ratio_fwdbwd", "mem_TBN",
    "peak_bytes_fwdbwd",
    "fwd_gflops", "fwdbwd_gflops", "peak_gflops", "sanity",
    "gemm_tflops", "loop_gbps", "copy_gbps",
    "note", "command",
]
# A row is replaced by a newer one with the same key (same file: same day and device).
KEY = ("tier", "model", "N", "T", "B", "path")
DOCS_START, DOCS_END = "<!-- bench:start -->", "<!-- bench:end -->"


# -- CSV ---------------------------------------------------------------------------------------------

def read_csv(path) -> List[Dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _key(row) -> tuple:
    return tuple(str(row.get(k, "")) for k in KEY)


_PATH_ORDER = ("reference", "plan-xla", "plan-xla-ckpt", "pallas", "pallas-interpret", "spyx")


def sort_rows(rows: Iterable[dict]) -> List[dict]:
    """Tiers in their table order (unknown ones last), then N, T, B, path."""
    from .tiers import TIERS
    tiers = list(TIERS)

    def key(r):
        t = tiers.index(r["tier"]) if r["tier"] in tiers else len(tiers)
        p = _PATH_ORDER.index(r["path"]) if r["path"] in _PATH_ORDER else len(_PATH_ORDER)
        return (t, r["tier"], int(r["N"]), int(r["T"]), int(r["B"]), p, r["path"])

    return sorted(rows, key=key)


def merge_rows(old: Iterable[dict], new: Iterable[dict]) -> List[dict]:
    """``old`` rows not superseded by ``new`` ones (same KEY) and ``new``, sorted (:func:`sort_rows`)."""
    new = list(new)
    fresh = {_key(r) for r in new}
    return sort_rows([r for r in old if _key(r) not in fresh] + new)


def _fmt_cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        return f"{v:.6g}"
    return str(v)


def write_csv(path, rows: Sequence[dict]) -> None:
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt_cell(r.get(k)) for k in COLUMNS})
    os.replace(tmp, path)


# -- Markdown ------------------------------------------------------------------------------------------

def _f(row, k) -> Optional[float]:
    v = row.get(k, "")
    if v in ("", None):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _num(v: float) -> str:
    """3 significant digits, never in exponent form for the magnitudes of a timing in ms."""
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"


def _ms(row, mode) -> str:
    m = _f(row, f"{mode}_median_s")
    if m is None:
        return "-"
    s = _num(m * 1e3)
    p10, p90 = _f(row, f"{mode}_p10_s"), _f(row, f"{mode}_p90_s")
    if p10 is not None and p90 is not None:
        s += f" [{_num(p10 * 1e3)}-{_num(p90 * 1e3)}]"
    if "REJECTED" in str(row.get("sanity", "")) and f"{mode}:" in str(row.get("sanity", "")):
        s += " ⚠"
    return s


def _x(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2f}×"


def _mb(v: Optional[float]) -> str:
    return "-" if v is None else f"{v / 2**20:.3g}"


def _config(row) -> tuple:
    return (row["tier"], row["model"], int(row["N"]), int(row["T"]), int(row["B"]))


def _rates_pair(ref: Optional[str], path: Optional[str]) -> str:
    if not ref or not path:
        return f"{ref or '-'} / {path or '-'}"
    if ref == path:
        return f"{path} (equal)"
    return f"ref {ref}, path {path} (differ)"


def headline_table(rows: Sequence[dict]) -> List[str]:
    """One line per (configuration, non-reference path): reference / path ratios."""
    ref = {_config(r): r for r in rows if r["path"] == "reference" and r.get("speed_figure") != "skipped"}
    out = ["| tier | model | N | T | B | path | fwd ref ms | fwd path ms | fwd speed-up | fwd+bwd ref ms "
           "| fwd+bwd path ms | fwd+bwd speed-up | fwd+bwd mem ref / path MB | compile fwd+bwd ref / path s "
           "| LIF firing rates | × floor fwd / fwd+bwd (ref; path) | mem ref / path in (T,B,N) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["path"] == "reference" or r.get("speed_figure") in ("skipped", "no (interpret)"):
            continue          # interpret mode is never a speed figure: detail table only
        c = _config(r)
        R = ref.get(c, {})
        tag = "" if r.get("speed_figure") == "yes" else f" ({r.get('speed_figure')})"
        fs, bs = _f(r, "fwd_speedup"), _f(r, "fwdbwd_speedup")
        out.append(
            f"| {c[0]} | {c[1]} | {c[2]} | {c[3]} | {c[4]} | {r['path']}{tag} | {_ms(R, 'fwd')} | {_ms(r, 'fwd')} "
            f"| **{_x(fs)}** | {_ms(R, 'fwdbwd')} | {_ms(r, 'fwdbwd')} | **{_x(bs)}** "
            f"| {_mb(_f(R, 'mem_fwdbwd_bytes'))} / {_mb(_f(r, 'mem_fwdbwd_bytes'))} "
            f"| {_f(R, 'compile_fwdbwd_s') or 0:.2f} / {_f(r, 'compile_fwdbwd_s') or 0:.2f} "
            f"| {_rates_pair(R.get('rates'), r.get('rates'))} | {_floor_pair(R)}; {_floor_pair(r)} "
            f"| {_tbn(R)} / {_tbn(r)} |")
    return out


def _floor_pair(r) -> str:
    """``fwd_x_floor / fwdbwd_x_floor`` of a row ("-" where the tier has no floor)."""
    a, b = _f(r, "fwd_x_floor"), _f(r, "fwdbwd_x_floor")
    return "-" if a is None and b is None else f"{_x(a)} / {_x(b)}"


def _tbn(r) -> str:
    v = _f(r, "mem_TBN")
    return "-" if v is None else f"{v:.3g}"


def floor_table(rows: Sequence[dict]) -> List[str]:
    """One line per configuration with a floor: the parts alone and their sums."""
    seen: Dict[tuple, dict] = {}
    for r in rows:
        if r.get("floor_parts") and _config(r) not in seen:
            seen[_config(r)] = r
    if not seen:
        return []
    out = ["| tier | model | N | T | B | floor fwd ms | floor fwd+bwd ms | parts (ms fwd / fwd+bwd) |",
           "|---|---|---|---|---|---|---|---|"]
    for c, r in seen.items():
        out.append(f"| {c[0]} | {c[1]} | {c[2]} | {c[3]} | {c[4]} | {_num(_f(r, 'floor_fwd_ms'))} "
                   f"| {_num(_f(r, 'floor_fwdbwd_ms'))} | {r['floor_parts'].replace(' (ms fwd/fwd+bwd)', '')} |")
    return out


def detail_table(rows: Sequence[dict]) -> List[str]:
    out = ["| tier | model | N | T | B | path | fused components | fwd ms [p10-p90] | fwd+bwd ms [p10-p90] "
           "| fwd+bwd us/step | compile fwd / fwd+bwd s | mem fwd / fwd+bwd MB (temp+out) | GPU peak MB "
           "| GFLOP/s fwd / fwd+bwd | rates | sanity |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("speed_figure") == "skipped":
            continue
        c = _config(r)
        tag = " (interpret: not a speed figure)" if r.get("speed_figure") == "no (interpret)" else (
            " (peer: indicative)" if r.get("speed_figure") == "indicative (peer)" else "")
        gf = "/".join("-" if _f(r, k) is None else f"{_f(r, k):.3g}" for k in ("fwd_gflops", "fwdbwd_gflops"))
        out.append(
            f"| {c[0]} | {c[1]} | {c[2]} | {c[3]} | {c[4]} | {r['path']}{tag} | {r.get('fused', '')} | {_ms(r, 'fwd')} "
            f"| {_ms(r, 'fwdbwd')} | {_per_step_us(r)} "
            f"| {_f(r, 'compile_fwd_s') or 0:.2f} / {_f(r, 'compile_fwdbwd_s') or 0:.2f} "
            f"| {_mb(_f(r, 'mem_fwd_bytes'))} / {_mb(_f(r, 'mem_fwdbwd_bytes'))} | {_mb(_f(r, 'peak_bytes_fwdbwd'))} "
            f"| {gf} | {r.get('rates', '')} | {r.get('sanity', '') or 'ok'} |")
    return out


def _per_step_us(r) -> str:
    """fwd+bwd time per time step in microseconds (the recurrent target is stated per step)."""
    t, T = _f(r, "fwdbwd_median_s"), _f(r, "T")
    return "-" if t is None or not T else f"{1e6 * t / T:.3g}"


def gpu_table(rows: Sequence[dict]) -> List[str]:
    rows = [r for r in rows if any(r.get(k) for k in ("gemm_tflops", "loop_gbps", "copy_gbps"))]
    if not rows:
        return []
    out = ["| tier | N | T | B | path | GEMM TFLOP/s (model shape) | neuron loop GB/s | device copy GB/s |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = _config(r)
        out.append(f"| {c[0]} | {c[2]} | {c[3]} | {c[4]} | {r['path']} | {r.get('gemm_tflops') or '-'} "
                   f"| {r.get('loop_gbps') or '-'} | {r.get('copy_gbps') or '-'} |")
    return out


def machine_line(rows: Sequence[dict]) -> str:
    r = max(rows, key=lambda x: str(x.get("date", "")))
    commits = ", ".join(dict.fromkeys(f"{x.get('git_commit', '?')}"
                                      + (f" (sources {x['code_digest']})" if x.get("code_digest") else "")
                                      for x in rows))
    return (f"{r.get('machine') or r['device_kind']} (jax platform {r['platform']}), jax {r['jax_version']} "
            f"(jaxlib {r['jaxlib_version']}), snnkern commit {commits}, {r['date']}")


def markdown(rows: Sequence[dict], title: str = "snnkern benchmark", plots_: Sequence[str] = ()) -> str:
    rows = list(rows)
    if not rows:
        return f"# {title}\n\nNo rows.\n"
    cmds = list(dict.fromkeys(r.get("command", "") for r in rows if r.get("command")))
    lines = [f"# {title}", "", f"Machine: {machine_line(rows)}.", "",
             "Command(s): " + ", ".join(f"`{c}`" for c in cmds), "",
             "Speed-up = reference median / path median, measured in the same process, alternating "
             "(reference, path, reference, ...). Reference = time-major `lax.scan` "
             "(`snnkern.backend(\"reference\")`); plan-xla = layer-major plan with XLA neuron loops. "
             "Times: median [p10-p90] in ms; by default >= 10 samples and >= 1 s per path after 3 warm-ups "
             "(the command line shows any other settings; the CSV's `*_n` columns the sample counts). "
             "Memory: `compiled.memory_analysis()` temp + output bytes. Equal LIF "
             "firing rates across paths show equal work.", "",
             "## Headline ratios", ""] + headline_table(rows) + ["", "## All rows", ""] + detail_table(rows)
    fl = floor_table(rows)
    if fl:
        lines += ["", "## Floor: the parts alone", "",
                  "Each GEMM (forward; backward dW + dX) and each neuron / recurrent loop (forward; "
                  "forward+backward) timed alone at the model's shapes, in the same process "
                  "(bench/floor.py); a path's `× floor` is its median over their sum, `mem (T,B,N)` its "
                  "fwd+bwd memory (temp + output) in (T, B, N) float32 arrays.", ""] + fl
    g = gpu_table(rows)
    if g:
        lines += ["", "## GPU roofline figures", ""] + g
    skipped = [r for r in rows if r.get("speed_figure") == "skipped"]
    notes = [r for r in rows if r.get("note") and r.get("speed_figure") != "skipped"]
    flagged = [r for r in rows if "REJECTED" in str(r.get("sanity", ""))]
    if flagged:
        lines += ["", "## Rejected timings (implied rate above the device peak)", ""]
        lines += [f"- {r['tier']} N={r['N']} T={r['T']} {r['path']}: {r['sanity']}" for r in flagged]
    if skipped or notes:
        lines += ["", "## Skipped paths and notes", ""]
        n_configs = len({_config(r) for r in rows})
        groups: Dict[tuple, List[str]] = {}
        for r in skipped + notes:
            groups.setdefault((r["path"], r["note"]), []).append(f"{r['tier']} N={r['N']} T={r['T']}")
        for (path, note), where in groups.items():
            where = list(dict.fromkeys(where))
            lines.append(f"- {path} ({'every configuration' if len(where) == n_configs else ', '.join(where)}): "
                         f"{note}")
    for p in plots_:
        lines += ["", f"![{Path(p).stem}]({Path(p).name})"]
    return "\n".join(lines) + "\n"


# -- plots ---------------------------------------------------------------------------------------------

def plots(rows: Sequence[dict], stem) -> List[str]:
    """time-vs-T (tiers with several T for one N) and speed-up per path per configuration."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:  # noqa: BLE001
        print(f"[bench] no plots: matplotlib unavailable ({e})")
        return []
    rows = [r for r in rows if r.get("speed_figure") not in ("skipped",) and _f(r, "fwd_median_s") is not None]
    made = []
    # time vs T
    groups: Dict[tuple, List[dict]] = {}
    for r in rows:
        groups.setdefault((r["tier"], r["model"], r["N"], r["B"]), []).append(r)
    multi = {k: v for k, v in groups.items() if len({x["T"] for x in v}) > 1}
    if multi:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
        for (tier, _model, N, B), rs in multi.items():
            for path in dict.fromkeys(x["path"] for x in rs):
                pr = sorted((x for x in rs if x["path"] == path and x.get("speed_figure") == "yes"),
                            key=lambda x: int(x["T"]))
                if not pr:
                    continue
                for ax, mode in zip(axes, ("fwd", "fwdbwd")):
                    T = [int(x["T"]) for x in pr]
                    med = [_f(x, f"{mode}_median_s") * 1e3 for x in pr]
                    lo = [m - _f(x, f"{mode}_p10_s") * 1e3 for m, x in zip(med, pr)]
                    hi = [_f(x, f"{mode}_p90_s") * 1e3 - m for m, x in zip(med, pr)]
                    ax.errorbar(T, med, yerr=[lo, hi], marker="o", capsize=3,
                                label=f"{path} ({tier}, N={N}, B={B})")
        for ax, mode in zip(axes, ("forward", "forward + backward")):
            ax.set_xscale("log"), ax.set_yscale("log")
            ax.set_xlabel("T (time steps)"), ax.set_ylabel("time per call, ms (median, p10-p90)")
            ax.set_title(mode), ax.grid(True, which="both", alpha=0.3), ax.legend(fontsize=7)
        fig.suptitle(f"snnkern: cost growth with T ({machine_line(rows)})", fontsize=8)
        p = f"{stem}-time-vs-T.png"
        fig.savefig(p, dpi=120)
        plt.close(fig)
        made.append(p)
    # speed-up per path per configuration
    sp = [r for r in rows if r["path"] != "reference" and r.get("speed_figure") in ("yes", "indicative (peer)")]
    if sp:
        configs = list(dict.fromkeys(_config(r) for r in sp))
        paths = list(dict.fromkeys(r["path"] for r in sp))
        fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.3 * len(configs) + 4), 4), constrained_layout=True)
        width = 0.8 / max(1, len(paths))
        for ax, mode in zip(axes, ("fwd", "fwdbwd")):
            for j, path in enumerate(paths):
                ys = []
                for c in configs:
                    r = next((x for x in sp if _config(x) == c and x["path"] == path), None)
                    ys.append((_f(r, f"{mode}_speedup") or 0.0) if r else 0.0)
                xs = [i + (j - (len(paths) - 1) / 2) * width for i in range(len(configs))]
                bars = ax.bar(xs, ys, width, label=path)
                ax.bar_label(bars, fmt="%.2f", fontsize=7)
            ax.axhline(1.0, color="k", lw=0.8, ls="--")
            ax.set_xticks(range(len(configs)))
            ax.set_xticklabels([f"{c[0]}\n{c[1]} N={c[2]}\nT={c[3]} B={c[4]}" for c in configs], fontsize=7)
            ax.set_ylabel("speed-up vs reference (×)")
            ax.set_title("forward" if mode == "fwd" else "forward + backward")
            ax.legend(fontsize=7)
        fig.suptitle(f"snnkern speed-up over the time-major reference ({machine_line(rows)})", fontsize=8)
        p = f"{stem}-speedup.png"
        fig.savefig(p, dpi=120)
        plt.close(fig)
        made.append(p)
    return made


# -- docs ----------------------------------------------------------------------------------------------

_DOCS_TEMPLATE = """# Performance

How fast snnkern's planned paths are against the time-major reference path on the same model, and
how the numbers are made. The protocol is the project's BENCH.md; the harness is `bench/` (`make
bench`, `make bench-quick`). Ratios measured in one process, alternating, are the headline: absolute
times on a shared CPU move from run to run, the ratios much less.

{start}
{end}
"""


def update_docs(docs_path, rows: Sequence[dict], csv_path, command: str) -> None:
    """Replace the text between the bench markers of ``docs_path`` with the latest summary."""
    docs_path = Path(docs_path)
    text = docs_path.read_text() if docs_path.exists() else _DOCS_TEMPLATE.format(start=DOCS_START, end=DOCS_END)
    if DOCS_START not in text or DOCS_END not in text:
        text = text.rstrip() + "\n\n" + DOCS_START + "\n" + DOCS_END + "\n"
    rel = os.path.relpath(csv_path, docs_path.parent)
    cmds = list(dict.fromkeys([r.get("command") for r in rows if r.get("command")] + [command]))
    body = ["", f"Latest run: {machine_line(rows)}.", "",
            ("Command: " if len(cmds) == 1 else "Commands (rows of the same day and device are merged): ")
            + ", ".join(f"`{c}`" for c in cmds) + " (from the repository root; `make bench` runs "
            f"`python -m bench.run --tiers {MAKE_BENCH}`).", "",
            f"Full results: [{Path(csv_path).name}]({rel}) (and the .md / .png files beside it).", ""]
    body += headline_table(rows)
    fl = floor_table(rows)
    if fl:
        body += ["", "Floor (the parts alone, bench/floor.py; `× floor` above = path median / floor):", ""] + fl
    flagged = [r for r in rows if "REJECTED" in str(r.get("sanity", ""))]
    if flagged:
        body += ["", f"⚠ {len(flagged)} timing(s) rejected by the sanity check (implied rate above the "
                     "device peak); see the results file."]
    skipped = list(dict.fromkeys(f"{r['path']}: {r['note']}" for r in rows if r.get("speed_figure") == "skipped"))
    if skipped:
        body += ["", "Paths not run: " + "; ".join(skipped)]
    body.append("")
    pre, rest = text.split(DOCS_START, 1)
    _, post = rest.split(DOCS_END, 1)
    docs_path.parent.mkdir(parents=True, exist_ok=True)
    docs_path.write_text(pre + DOCS_START + "\n" + "\n".join(body) + "\n" + DOCS_END + post)


def write_all(csv_path, rows: Sequence[dict], make_plots: bool = True) -> List[str]:
    """CSV, then the .md (and plots) beside it. Returns the files written."""
    csv_path = Path(csv_path)
    write_csv(csv_path, rows)
    stem = str(csv_path.with_suffix(""))
    made = plots(rows, stem) if make_plots else []
    md = csv_path.with_suffix(".md")
    md.write_text(markdown(rows, plots_=made))
    return [str(csv_path), str(md)] + made


def slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-") or "device"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="re-make the .md and .png files from a benchmark CSV")
    ap.add_argument("csv")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--docs", help="also put the summary into this file (e.g. docs/performance.md)")
    a = ap.parse_args(argv)
    rows = read_csv(a.csv)
    for f in write_all(a.csv, rows, make_plots=not a.no_plots):
        print(f)
    if a.docs and rows:
        update_docs(a.docs, rows, a.csv, rows[-1].get("command", "python -m bench.run"))
        print(a.docs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
