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
    # the floor columns reach the summary: the multiple in the headline, the parts in their own table
    row.update(floor_fwd_ms="0.5", floor_fwdbwd_ms="1.0", fwd_x_floor="2", fwdbwd_x_floor="2", mem_TBN="11.1",
               floor_parts="gemm0 0.2/0.4; loop1 0.3/0.6 (ms fwd/fwd+bwd)")
    report.update_docs(docs, [row], tmp_path / "r.csv", "python -m bench.run --tiers tiny")
    text = docs.read_text()
    assert "2.00× / 2.00×" in text and "/ 11.1 |" in text and "gemm0 0.2/0.4; loop1 0.3/0.6 |" in text
    from bench.tiers import MAKE_BENCH
    assert f"`python -m bench.run --tiers {MAKE_BENCH}`" in text


def test_floor_columns(tiny_run):
    """BENCH.md item 7: the parts alone, their sum, the path as a multiple of it, memory in (T,B,N)."""
    out, _, csv_path, rows = tiny_run
    parts = {"tiny": ["gemm0", "loop1", "gemm2", "loop3"], "tiny-rec": ["gemm0.0", "rec0", "gemm1"]}
    for r in (r for r in rows if r["speed_figure"] == "yes"):
        f, fb = float(r["floor_fwd_ms"]), float(r["floor_fwdbwd_ms"])
        assert 0 < f < fb, (r["tier"], f, fb)                     # fwd+bwd holds every forward part
        assert float(r["fwd_x_floor"]) == pytest.approx(float(r["fwd_median_s"]) * 1e3 / f, rel=1e-4)
        assert float(r["fwdbwd_x_floor"]) > 0
        each = r["floor_parts"].split(" (ms")[0].split("; ")
        names = [p.split(" ")[0] for p in each]
        assert names == parts[r["tier"]]
        for p in each:      # every neuron loop reports its forward's GB/s, a positive number
            if p.startswith("loop"):
                assert float(p.split("(")[1].split(" GB/s")[0]) > 0, p
        # (T, B, N) = (20, 2, 16) float32: 2560 bytes per unit
        assert float(r["mem_TBN"]) == pytest.approx(int(r["mem_fwdbwd_bytes"]) / 2560, rel=1e-4)
    md = csv_path.with_suffix(".md").read_text()
    assert "## Floor: the parts alone" in md and "× floor" in md


def test_spyx_row_runs_when_installed(tiny_run):
    pytest.importorskip("spyx")
    rows = tiny_run[3]
    (r,) = [r for r in rows if r["tier"] == "tiny" and r["path"] == "spyx"]
    assert r["speed_figure"] == "indicative (peer)", r.get("note")
    assert all(0.02 <= float(v) <= 0.20 for v in r["rates"].split("/")), r["rates"]
    assert int(r["mem_fwdbwd_bytes"]) > 0 and float(r["fwdbwd_median_s"]) > 0 and float(r["fwd_speedup"]) > 0
    (rr,) = [r for r in rows if r["tier"] == "tiny-rec" and r["path"] == "spyx"]
    assert rr["speed_figure"] == "skipped" and "feed-forward" in rr["note"]


def _tiny_cfg(tier="tiny", paths=("reference", "plan-xla", "spyx")):
    """A prepared configuration of ``tier`` (nothing compiled)."""
    from types import SimpleNamespace

    from bench import measure, tiers
    t = tiers.TIERS[tier]
    args = SimpleNamespace(warmups=1, repeats=1, min_time=0.0, paths=list(paths))
    env = dict(run.environment("cpu"))
    return measure._prepare(t, t.Ns[0], t.Ts[0], args, [1.0] * 4, env, "test")


class _Bar:
    def __init__(self):
        self.lines = []

    def write(self, s):
        self.lines.append(s)

    def update(self, k=1):
        pass

    def set_postfix_str(self, s):
        pass


def test_spyx_row_skipped_with_reason_when_absent(monkeypatch):
    from bench import measure, peers_spyx
    monkeypatch.setitem(sys.modules, "spyx", None)          # `import spyx` now raises ImportError
    monkeypatch.setitem(sys.modules, "spyx.nn", None)
    why = peers_spyx.unavailable("ff")
    assert why.startswith("spyx not importable (") and "Error" in why, why
    bar = _Bar()
    row, calls = measure._spyx_row(_tiny_cfg(), bar)
    assert calls is None and row["path"] == "spyx" and row["speed_figure"] == "skipped"
    assert row["note"].startswith("spyx not importable") and any("skip spyx" in s for s in bar.lines)


def test_checkpoint_path_skipped_with_reason_when_missing(monkeypatch):
    import snnkern
    from bench import measure
    monkeypatch.delattr(snnkern, "time_checkpoint", raising=False)
    cfg = _tiny_cfg("tiny-mem")
    assert cfg.requested == ["reference", "plan-xla", "plan-xla-ckpt"]      # the tier adds its path
    why = measure._eligible("plan-xla-ckpt", cfg.spec, "cpu", cfg.B, cfg.T, cfg.N)
    assert "time_checkpoint" in why
    assert cfg.timing_kw == dict(warmups=1, min_samples=1, min_time=0.0)    # quick tier


@pytest.fixture(scope="module")
def conv_mem_run(tmp_path_factory):
    """tiny-conv (snnax's tutorial conv net, a training step) and tiny-mem (two T, with the checkpoint
    path). Without ``snnkern.time_checkpoint`` a stand-in context records that the path enters it."""
    import contextlib

    import snnkern
    out = tmp_path_factory.mktemp("bench-conv-mem")
    mp = pytest.MonkeyPatch()
    entered = []
    fake = not hasattr(snnkern, "time_checkpoint")
    if fake:
        @contextlib.contextmanager
        def time_checkpoint(k):
            entered.append(k)
            yield
        mp.setattr(snnkern, "time_checkpoint", time_checkpoint, raising=False)
    try:
        rc = run.main(["--tiers", "tiny-conv,tiny-mem", "--paths", "reference,plan-xla", "--repeats", "2",
                       "--min-time", "0", "--warmups", "1", "--out", str(out), "--no-docs", "--quiet", "--no-plots"])
    finally:
        mp.undo()
    assert rc == 0
    (csv_path,) = list(out.glob("*.csv"))
    return fake, entered, report.read_csv(csv_path)


def test_conv_tier_training_step(conv_mem_run):
    rows = {r["path"]: r for r in conv_mem_run[2] if r["tier"] == "tiny-conv"}
    ref, plan = rows["reference"], rows["plan-xla"]
    assert (ref["N_in"], ref["T"], ref["B"]) == ("2048", "40", "1")       # (B, T, 2, 32, 32) event input
    rates = [float(v) for v in ref["rates"].split("/")]
    assert len(rates) == 4 and all(0.02 <= v <= 0.20 for v in rates), rates   # every LIF layer fires
    assert ref["rates"] == plan["rates"]
    assert float(ref["loss"]) == pytest.approx(float(plan["loss"]), rel=1e-5, abs=1e-3)
    assert plan["fused"].count("neuron loop") == 4
    for r in (ref, plan):
        assert float(r["fwdbwd_median_s"]) > 0 and int(r["mem_fwdbwd_bytes"]) > 0 and float(r["fwdbwd_gflops"]) > 0
        assert not r["floor_fwd_ms"] and not r["mem_TBN"]               # no floor model for the conv net


def test_mem_tier_with_checkpoint_path(conv_mem_run):
    fake, entered, rows = conv_mem_run
    rows = [r for r in rows if r["tier"] == "tiny-mem"]
    assert sorted({r["T"] for r in rows}) == ["20", "40"]
    for T in ("20", "40"):
        by = {r["path"]: r for r in rows if r["T"] == T}
        assert {"reference", "plan-xla", "plan-xla-ckpt"} <= set(by)
        ck = by["plan-xla-ckpt"]
        assert ck["speed_figure"] == "yes", ck.get("note")
        assert ck["rates"] == by["reference"]["rates"] and int(ck["mem_fwdbwd_temp_bytes"]) > 0
        assert int(by["reference"]["fwdbwd_n"]) == 2        # quick tier: at most 3 samples (2 asked)
        assert ck["snnkern_backend"] == "xla, time_checkpoint('auto')"
        if fake:      # the stand-in changes nothing: the harness says so instead of a false memory gain
            assert "compiled to plan-xla's program" in ck["note"]
    if fake:
        assert entered and set(entered) == {"auto"}


def test_make_bench_runs_the_listed_tiers():
    from bench import tiers
    make = (ROOT / "Makefile").read_text()
    assert f"bench.run --tiers {tiers.MAKE_BENCH}\n" in make
    assert all(t in tiers.TIERS for t in tiers.MAKE_BENCH.split(","))
    assert '".[peers]"' in make and "bench/micro_suite" in make


def test_time_checkpoint_option():
    assert run.parse_args(["--time-checkpoint", "64"]).time_checkpoint == 64
    assert run.parse_args([]).time_checkpoint == "auto"
    with pytest.raises(SystemExit):
        run.parse_args(["--time-checkpoint", "0"])


@pytest.mark.parametrize("kind", ["ff", "rec", "recmlp"])
def test_gemm_floor_lists_the_documented_gemms(kind):
    """bench.gemm_floor times the products the GEMM FLOP model (ModelSpec.gemm_flops) counts: each
    listed product forward, its dW, and its dX where needed; the program runs and is finite."""
    import jax
    import numpy as np

    from bench import gemm_floor, models

    spec = models.build(kind, 8, N_in=12, N_out=4) if kind != "recmlp" else models.build(kind, 8, N_in=12)
    gemms = gemm_floor.gemm_plan(spec)
    B, T = 3, 5
    flops = sum(2.0 * B * T * i * o * (2 + dx) for _, i, o, dx in gemms)
    assert flops == spec.gemm_flops(B, T, "fwdbwd")
    assert sum(2.0 * B * T * i * o for _, i, o, _ in gemms) == spec.gemm_flops(B, T, "fwd")
    assert [g[0] for g in gemms].count("step") == {"ff": 0, "rec": 1, "recmlp": 2}[kind]
    f, args = gemm_floor.gemm_program(gemms, B, T)
    assert np.isfinite(float(jax.jit(f)(*args)))
