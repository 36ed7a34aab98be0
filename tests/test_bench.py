"""The benchmark harness (bench/) on a tiny tier: its CSV, equal work across paths, the sanity check.

This checks the harness, not snnkern's speed (a timed test is not a benchmark).
"""
import csv
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:          # `pytest` (not `python -m pytest`) does not put the root on the path
    sys.path.insert(0, str(ROOT))

from bench import report, run, sanity  # noqa: E402


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One harness run over the tiny feed-forward and recurrent tiers, with the CPU peak made absurdly
    low so that every timing must be flagged (the flag path is what can silently break)."""
    out = tmp_path_factory.mktemp("bench")
    docs = out / "performance.md"
    mp = pytest.MonkeyPatch()
    mp.setattr(sanity, "CPU_FLOP_PER_CYCLE", 1e-12)
    try:
        with pytest.warns(RuntimeWarning, match="REJECTED"):
            rc = run.main(["--tiers", "tiny,tiny-rec", "--repeats", "1", "--min-time", "0", "--warmups", "1",
                           "--out", str(out), "--no-docs", "--docs", str(docs), "--quiet", "--no-plots"])
    finally:
        mp.undo()
    assert rc == 0
    csvs = list(out.glob("*.csv"))
    assert len(csvs) == 1
    with open(csvs[0], newline="") as f:
        rows = list(csv.DictReader(f))
    return out, docs, csvs[0], rows


def test_csv_columns_and_rows(tiny_run):
    out, docs, csv_path, rows = tiny_run
    with open(csv_path, newline="") as f:
        header = next(csv.reader(f))
    assert header == report.COLUMNS
    for col in ("jax_version", "platform", "device_kind", "cores", "git_commit", "path", "fused", "N", "T", "B",
                "fwd_median_s", "fwd_p10_s", "fwd_p90_s", "fwdbwd_median_s", "compile_fwd_s",
                "compile_fwdbwd_s", "mem_fwdbwd_bytes", "rates"):
        assert col in header
    timed = [r for r in rows if r["speed_figure"] == "yes"]
    assert {(r["tier"], r["path"]) for r in timed} == {("tiny", "reference"), ("tiny", "plan-xla"),
                                                       ("tiny-rec", "reference"), ("tiny-rec", "plan-xla")}
    for r in timed:
        assert (r["N"], r["T"], r["B"]) == ("16", "20", "2")
        assert float(r["fwd_p10_s"]) <= float(r["fwd_median_s"]) <= float(r["fwd_p90_s"])
        assert float(r["compile_fwdbwd_s"]) > 0 and int(r["mem_fwdbwd_bytes"]) > 0
        assert r["git_commit"] and r["jax_version"]
        if r["path"] == "reference":
            assert r["fused"].startswith("none") and float(r["fwd_speedup"]) == 1.0
        else:   # the plan must really have run its fused loops, and the ratio must be there
            assert "loop" in r["fused"] and float(r["fwdbwd_speedup"]) > 0
    # paths that cannot run here are rows with a reason, not silence
    skipped = [r for r in rows if r["speed_figure"] == "skipped"]
    assert skipped and all(r["note"] for r in skipped)
    assert csv_path.with_suffix(".md").exists()
    assert not docs.exists()              # --no-docs


def test_rates_equal_across_paths(tiny_run):
    rows = tiny_run[3]
    for tier, n_lif in (("tiny", 2), ("tiny-rec", 1)):
        timed = {r["path"]: r for r in rows if r["tier"] == tier and r["speed_figure"] == "yes"}
        ref, plan = timed["reference"], timed["plan-xla"]
        rates = [float(v) for v in ref["rates"].split("/")]
        assert len(rates) == n_lif
        assert all(0.02 <= v <= 0.20 for v in rates), rates          # the calibrated 2-20 % window
        assert ref["rates"] == plan["rates"]                           # equal work
        assert float(ref["loss"]) == pytest.approx(float(plan["loss"]), rel=1e-5, abs=1e-3)


def test_impossible_timings_are_flagged_in_the_table(tiny_run):
    out, _, csv_path, rows = tiny_run
    timed = [r for r in rows if r["speed_figure"] == "yes"]
    assert timed and all(r["sanity"].startswith("REJECTED") for r in timed)
    md = csv_path.with_suffix(".md").read_text()
    assert "Rejected timings" in md and "⚠" in md


def test_check_rate_unit():
    peak = sanity.device_peak("cpu", cores=2).flops
    assert peak == 2 * 32 * 4e9
    # 1 GFLOP in 1 s on a 256 GFLOP/s machine: fine
    ok = sanity.check_rate(1e9, 1.0, peak)
    assert ok.ok and ok.message == "" and ok.rate == pytest.approx(1e9)
    # 1 TFLOP in 1 ms = 1 PFLOP/s: impossible on two cores
    bad = sanity.check_rate(1e12, 1e-3, peak, what="fwd: GEMM")
    assert not bad.ok and "rejected" in bad.message and bad.rate == pytest.approx(1e15)
    assert not sanity.check_rate(1.0, 0.0, peak).ok
    # H200: fp32 peak at full precision, TF32 peak at JAX's default precision
    assert sanity.device_peak("gpu", "NVIDIA H200", matmul_precision="highest").flops == 67e12
    assert sanity.device_peak("gpu", "NVIDIA H200", matmul_precision=None).flops > 67e12


def test_update_docs_replaces_only_between_markers(tmp_path):
    docs = tmp_path / "performance.md"
    docs.write_text(f"# Perf\n\nintro\n\n{report.DOCS_START}\nold table\n{report.DOCS_END}\n\nafter\n")
    row = {k: "" for k in report.COLUMNS}
    row.update(date="2025-01-01", jax_version="0.x", jaxlib_version="0.x", platform="cpu", device_kind="cpu",
               machine="test CPU, 2 cores", cores="2", git_commit="abc", tier="tiny", model="ff", path="plan-xla",
               speed_figure="yes", N="16", T="20", B="2", fwd_median_s="0.001", fwdbwd_median_s="0.002",
               fwd_speedup="1.5", fwdbwd_speedup="2.5")
    report.update_docs(docs, [row], tmp_path / "r.csv", "python -m bench.run --tiers tiny")
    text = docs.read_text()
    assert text.startswith("# Perf\n\nintro\n") and text.endswith("\n\nafter\n")
    assert "old table" not in text and "`python -m bench.run --tiers tiny`" in text and "2.50×" in text
    assert text.count(report.DOCS_START) == 1 and text.count(report.DOCS_END) == 1
