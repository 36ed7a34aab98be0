"""Mutation check of the test suite: plant known bugs in a scratch copy of the repository and see
which tests catch them.

    .venv/bin/python tools/mutants.py            # every mutant against its targets, prints the table
    .venv/bin/python tools/mutants.py --docs     # ... and writes it into docs/testing.md
    .venv/bin/python tools/mutants.py --check    # only: is every snippet still found exactly once?
    .venv/bin/python tools/mutants.py --only xla-recurrent-wT --targets all

Each mutant is (file, exact old snippet, new snippet, description). The snippet must occur exactly
once in the file of this checkout, else the script stops with an error naming the mutant: when code
moves, re-point the snippet (copy the new text of the line). The repository is copied to a temp
directory (``.git``, ``.venv`` and build outputs left out) and the tests run there with this
checkout's Python, with ``PYTHONPATH`` set to the copy and ``snnkern/kernels`` a link to the copy's
``kernels/``: the copy's code is imported ahead of the editable install of this checkout (whose
finder comes after the path finder, and maps ``snnkern.kernels`` to this checkout's ``kernels/``).
Before any mutant, the script proves both: the unmutated copy is the code that is imported, and an
obviously broken copy fails a test.

Targets are pytest runs with ``-x`` (stop at the first failure), one process each; a mutant is
caught by a target when that run fails. Model-level targets run whole models (``StatefulModel``
calls), not loop functions: every mutant must be caught by at least one of them (exit status 1
otherwise).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "testing.md"
BEGIN, END = "<!-- mutants:begin -->", "<!-- mutants:end -->"
IGNORE = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", "build", "demo_out", ".pytest_cache",
                                "bench_out", "*.pyc")


@dataclasses.dataclass(frozen=True)
class Target:
    args: Tuple[str, ...]
    model_level: bool


TARGETS: Dict[str, Target] = {
    "test_equivalence.py": Target(("tests/test_equivalence.py",), True),
    "test_model.py": Target(("tests/test_model.py",), True),
    "test_feedback.py": Target(("tests/test_feedback.py",), True),
    "test_plan.py": Target(("tests/test_plan.py",), True),
    "test_neurons.py": Target(("tests/test_neurons.py",), True),   # the float64 model test
    "test_pallas.py models": Target(("tests/test_pallas.py", "-k", "model_backend"), True),
    "test_pallas.py loops": Target(("tests/test_pallas.py", "-k", "not model and not lowering and not lowers"), False),
    "test_pallas_recurrent.py models": Target(("tests/test_pallas_recurrent.py", "-k", "model_recurrent"), True),
    "test_pallas_recurrent.py loops": Target(("tests/test_pallas_recurrent.py", "-k",
                                              "not model and not lowering and not lowers"), False),
}


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str
    what: str
    targets: Tuple[str, ...]


MUTANTS: List[Mutant] = [
    Mutant("xla-surrogate-x1.2", "kernels/loop_builder.py",
           "dd, ds, di = grads.vjp(d, s, i_t, (g_s, cot_out))",
           "dd, ds, di = grads.vjp(d, s, i_t, (g_s, 1.2 * cot_out))",
           "XLA neuron, recurrent and delay loops, backward: the cotangent of each step's output x1.2 (a "
           "surrogate 1.2x too steep on the output path)",
           ("test_model.py", "test_feedback.py", "test_plan.py", "test_equivalence.py")),
    Mutant("pallas-no-reset", "kernels/pallas_common.py",
           "ns, out = step(p, list(s), x)",
           "ns, out = step(p, list(s[:-1]) + [jnp.zeros_like(s[-1])], x)",
           "Pallas forward kernels: the step sees no previous spike (the deferred reset of LIF / "
           "LIFSoftReset is dropped)",
           ("test_pallas.py models", "test_pallas_recurrent.py models", "test_pallas.py loops")),
    Mutant("xla-recurrent-wT", "kernels/loop_builder.py",
           "return di if w is None else di @ w ",
           "return di if w is None else di @ w.T ",
           "XLA recurrent and delay loops, backward: the recurrent cotangent dI_t @ W^T instead of dI_t @ W",
           ("test_feedback.py", "test_equivalence.py", "test_pallas_recurrent.py loops")),
    Mutant("restore-ignores-state0", "kernels/residuals.py",
           "return jnp.where(t == 0, s0, kept.astype(s0.dtype))",
           "return kept.astype(s0.dtype)",
           "every loop (XLA and Pallas), backward: the exact initial spike state at t = 0 ignored (its "
           "bool / int8 copy used)",
           ("test_model.py", "test_equivalence.py", "test_pallas.py loops")),
    Mutant("pallas-padding-unmasked", "kernels/pallas_neuron.py",
           "valid = masked_step_valid(tl.T_pad > tl.T, c, tl.tc, j, tl.T)",
           "valid = masked_step_valid(False, c, tl.tc, j, tl.T)",
           "Pallas neuron forward kernel: padded time steps (T not a multiple of the time chunk) not masked",
           ("test_pallas.py models", "test_pallas.py loops")),
    Mutant("shift-ignores-initial-output", "snnkern/plan/seq.py",
           "return jnp.concatenate([first[None], seq[:-1].astype(first.dtype)], axis=0)",
           "return jnp.concatenate([jnp.zeros_like(first)[None], seq[:-1].astype(first.dtype)], axis=0)",
           "planned path: a consumer reads zeros at t = 0 instead of its source's initial output "
           "(a Linear's bias)",
           ("test_model.py", "test_plan.py", "test_equivalence.py")),
    Mutant("param-grad-mean", "kernels/common.py",
           "g = jnp.sum(g, axis=tuple(range(lead))) if lead else g",
           "g = jnp.mean(g, axis=tuple(range(lead))) if lead else g",
           "XLA and Pallas loops, backward: per-neuron parameter gradients averaged instead of summed",
           ("test_model.py", "test_equivalence.py", "test_pallas.py models")),
    Mutant("pallas-recurrent-wT", "kernels/pallas_recurrent.py",
           "wp = jnp.pad(w_.astype(cfg[\"dot_dtype\"]), [(0, tl.n_pad - n)] * 2)",
           "wp = jnp.pad(w_.T.astype(cfg[\"dot_dtype\"]), [(0, tl.n_pad - n)] * 2)",
           "Pallas recurrent backward kernel: W^T where W belongs (the recurrent cotangent)",
           ("test_pallas_recurrent.py models", "test_pallas_recurrent.py loops")),
]

# the proof that a broken copy fails: a quick model test that runs the XLA neuron loop
_SANITY_TARGET = ("tests/test_plan.py", "-k", "backend_context_manager_selects_path")
_SANITY_BREAK = ("kernels/neuron_loop.py", "    dyn, static = eqx.partition(params, eqx.is_array)\n",
                 '    raise RuntimeError("mutants.py: deliberately broken copy")\n')


def check_snippets(mutants) -> None:
    """Every snippet occurs exactly once in this checkout (else: an error naming the mutant)."""
    bad = []
    for m in mutants:
        text = (ROOT / m.path).read_text()
        n = text.count(m.old)
        if n != 1:
            bad.append(f"  {m.name}: the snippet occurs {n} times in {m.path} (want exactly once):\n    {m.old!r}")
        for t in m.targets:
            if t not in TARGETS:
                bad.append(f"  {m.name}: unknown target {t!r}")
    text = (ROOT / _SANITY_BREAK[0]).read_text()
    if text.count(_SANITY_BREAK[1]) != 1:
        bad.append(f"  the sanity break: its snippet is not found exactly once in {_SANITY_BREAK[0]}")
    if bad:
        raise SystemExit("mutants.py: re-point these snippets (the code moved):\n" + "\n".join(bad))


def make_copy(dest: Path) -> Path:
    scratch = dest / "repo"
    shutil.copytree(ROOT, scratch, ignore=IGNORE, symlinks=True)
    link = scratch / "snnkern" / "kernels"
    if not link.exists():
        link.symlink_to(Path("..") / "kernels", target_is_directory=True)
    return scratch


def env_for(scratch: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SNNKERN_", "PYTEST_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(scratch)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["JAX_PLATFORMS"] = env.get("JAX_PLATFORMS", "cpu")
    return env


def run_pytest(scratch: Path, args, timeout: int) -> Tuple[str, Optional[str], float]:
    """(status, first failing test, seconds): status is caught | missed | error."""
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-rfE", *args]
    try:
        r = subprocess.run(cmd, cwd=scratch, env=env_for(scratch), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "error", f"timed out after {timeout} s", time.perf_counter() - t0
    dt = time.perf_counter() - t0
    out = r.stdout + r.stderr
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", out, re.M)
    first = failed[0].split("/")[-1] if failed else None
    if r.returncode == 0:
        return "missed", None, dt
    if r.returncode == 1 and failed:
        return "caught", first, dt
    return "error", first or f"pytest exit {r.returncode}: {out.strip().splitlines()[-1] if out.strip() else ''}", dt


def prove_the_copy_runs(scratch: Path) -> None:
    code = ("import snnkern, snnkern.kernels.neuron_loop as a, snnkern.plan.runner as b, snnkern.kernels.pallas_neuron as c;"
            "print('\\n'.join(m.__file__ for m in (snnkern, a, b, c)))")
    r = subprocess.run([sys.executable, "-c", code], cwd=scratch, env=env_for(scratch), capture_output=True, text=True)
    files = r.stdout.split()
    if r.returncode != 0 or len(files) != 4 or not all(f.startswith(str(scratch)) for f in files):
        raise SystemExit(f"mutants.py: the copy is not what gets imported:\n{r.stdout}{r.stderr}")
    status, first, _ = run_pytest(scratch, _SANITY_TARGET, 600)
    if status != "missed":
        raise SystemExit(f"mutants.py: the unmutated copy fails {_SANITY_TARGET}: {first}")
    path, old, new = _SANITY_BREAK
    f = scratch / path
    orig = f.read_text()
    f.write_text(orig.replace(old, old + new, 1))
    try:
        status, first, _ = run_pytest(scratch, _SANITY_TARGET, 600)
    finally:
        f.write_text(orig)
    if status != "caught":
        raise SystemExit(f"mutants.py: a deliberately broken copy did not fail {_SANITY_TARGET} ({status})")
    print("copy checked: its code is imported, and a broken copy fails a test", flush=True)


def run(mutants, target_mode: str, timeout: int, keep: bool):
    check_snippets(mutants)
    tmp = Path(tempfile.mkdtemp(prefix="snnkern-mutants-"))
    results = []
    t_all = time.perf_counter()
    try:
        scratch = make_copy(tmp)
        prove_the_copy_runs(scratch)
        for m in mutants:
            f = scratch / m.path
            orig = f.read_text()
            f.write_text(orig.replace(m.old, m.new, 1))
            try:
                targets = list(TARGETS) if target_mode == "all" else list(m.targets)
                rows = []
                for t in targets:
                    status, first, dt = run_pytest(scratch, TARGETS[t].args, timeout)
                    rows.append((t, status, first, dt))
                    print(f"{m.name:30} {t:34} {status:7} {dt:6.1f} s  {first or ''}", flush=True)
            finally:
                f.write_text(orig)
            results.append((m, rows))
    finally:
        if keep:
            print(f"scratch copy kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return results, time.perf_counter() - t_all


def table(results, seconds: float, argv: List[str]) -> str:
    lines = [f"Command: `{' '.join(['.venv/bin/python', 'tools/mutants.py'] + argv)}`",
             f"({seconds / 60:.1f} minutes on this machine; every run `pytest -x`, one process per target).", "",
             "| mutant | what it plants | caught by (first failing test) | not caught by |",
             "|---|---|---|---|"]
    for m, rows in results:
        caught = [f"{t}{' (model)' if TARGETS[t].model_level else ''}: `{first}`" for t, s, first, _ in rows
                  if s == "caught"]
        missed = [t for t, s, _, _ in rows if s == "missed"]
        errors = [f"{t}: error {first}" for t, s, first, _ in rows if s == "error"]
        lines.append(f"| `{m.name}` | {m.what} (`{m.path}`) | {'<br>'.join(caught + errors) or '**none**'} | "
                     f"{', '.join(missed) or '-'} |")
    return "\n".join(lines)


def write_docs(text: str) -> None:
    doc = DOC.read_text()
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"mutants.py: {DOC} has no {BEGIN} ... {END} markers")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="comma-separated mutant names")
    ap.add_argument("--targets", choices=("default", "all"), default="default",
                    help="each mutant's own targets (default), or every target")
    ap.add_argument("--check", action="store_true", help="only check that every snippet is found exactly once")
    ap.add_argument("--docs", action="store_true", help=f"write the table into {DOC.relative_to(ROOT)}")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per pytest run")
    ap.add_argument("--keep", action="store_true", help="keep the scratch copy")
    ap.add_argument("--list", action="store_true", help="list the mutants")
    a = ap.parse_args(argv)
    mutants = MUTANTS
    if a.only:
        names = a.only.split(",")
        unknown = set(names) - {m.name for m in MUTANTS}
        if unknown:
            raise SystemExit(f"unknown mutants: {sorted(unknown)}; see --list")
        mutants = [m for m in MUTANTS if m.name in names]
    if a.list:
        for m in mutants:
            print(f"{m.name:30} {m.path:28} {m.what}")
        return 0
    check_snippets(mutants)
    if a.check:
        print(f"all {len(mutants)} snippets found exactly once")
        return 0
    results, seconds = run(mutants, a.targets, a.timeout, a.keep)
    text = table(results, seconds, [x for x in argv if x != "--docs"])
    print(text)
    if a.docs:
        write_docs(text)
    uncaught = [m.name for m, rows in results
                if not any(s == "caught" and TARGETS[t].model_level for t, s, _, _ in rows)]
    if uncaught:
        print(f"NOT caught by any model-level test: {', '.join(uncaught)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
