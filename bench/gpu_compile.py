"""Compile snnkern's Pallas kernels and the bench models' training steps for an NVIDIA H200 / H100
on a host without a GPU, and measure what each kernel needs (registers, shared memory, spills).

The device is a compile-only one (:func:`snnkern.kernels.platform.compile_only_gpu`, from the
target configurations inside ``jax-cuda12-plugin``; ``make test-gpu-compile`` installs it). With it
as the default device, ``auto`` plans the Pallas kernels with the GPU tiling, and
``jax.jit(f).lower(...).compile()`` runs Pallas -> Triton -> LLVM -> PTX -> ptxas for sm_90a.

Cases (``case_ids()``), each a jitted function and its argument shapes:

- ``neuron:<kind>:<x dtype>:<residual>:<grad|fwd>``: the neuron-loop kernels of one neuron type
  (tests/test_pallas.py's neurons), vmapped over a batch; ``grad``: ``value_and_grad`` (the forward
  kernel with residuals + the backward kernel), ``fwd``: the forward kernel alone;
- ``rec:<kind>:<n>:<ff dtype>``: ``value_and_grad`` of the recurrent loop (forward + backward
  recurrent kernels) of ``n`` neurons, B = 64;
- ``model:<ff|rec>:<N>:<B>``: one SGD training step (``value_and_grad`` + update) of a bench model
  (bench/models.py) under ``auto``.

``python -m bench.gpu_compile`` compiles every case in a subprocess of its own with ptxas' verbose
output on (``TF_CPP_VMODULE=nvjitlink=3``, ``--xla_gpu_ptx_compiler_extra_flags=-v``: ptxas prints
to the process's stderr) and XLA's thunk dump (launch dimensions and dynamic shared memory per
kernel), and prints / writes the resource table of docs/kernels.md ("GPU resources").
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import math
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Dict, List, Optional, Tuple

__all__ = ["NEURONS", "REC_NS", "case_ids", "build_case", "compile_case", "kernel_calls", "parse_ptxas",
           "parse_thunks", "occupancy", "H200_SM", "measure", "markdown"]

NEURONS = ("LIF", "LIFSoftReset", "SimpleLIF", "AdaptiveLIF", "SimpleIAF", "IAF", "SimpleLI", "SigmaDelta",
           "SpikeCounter")
X_DTYPES = ("float32", "bfloat16")
RESIDUALS = ("none", "bfloat16", "float16")
REC_NS = (64, 128, 256, 512, 1024)
REC_KINDS = ("LIF", "LIFSoftReset", "SimpleLIF", "AdaptiveLIF", "SimpleIAF", "IAF", "SimpleLI", "SigmaDelta")
# the bench models at the gpu tiers' sizes (bench/tiers.py: gpu-small, gpu-on, gpu-rec), and rec at 128
# (the largest recurrent layer with W_rec on chip; 256 and 1024 run the streamed kernels)
MODELS = (("ff", 1024, 64), ("ff", 8192, 16), ("rec", 128, 64), ("rec", 256, 64), ("rec", 1024, 64))
MARK_BEGIN, MARK_END = "<!-- gpu-resources:begin -->", "<!-- gpu-resources:end -->"
TRITON_CALL = "__gpu$xla.gpu.triton"

# per-SM limits of an H200 (and H100: the same SM, sm_90)
H200_SM = dict(regs=65536, smem=228 * 1024, warps=64, blocks=32, reg_alloc_unit=256, smem_reserved_per_block=1024)


def case_ids(scope: str = "all", platform: str = "gpu") -> List[str]:
    """The case ids of ``scope``: ``all`` (every case), ``docs`` (the resource table's cases), for
    ``platform`` (``tpu``: no float16 residuals, which the Mosaic kernels reject)."""
    residuals = [r for r in RESIDUALS if platform != "tpu" or r != "float16"]
    neuron = [f"neuron:{k}:{x}:{r}:grad" for k in NEURONS for x in X_DTYPES for r in residuals]
    neuron += [f"neuron:{k}:float32:none:fwd" for k in NEURONS]
    rec = [f"rec:LIF:{n}:float32" for n in REC_NS] + [f"rec:LIF:{n}:bfloat16" for n in REC_NS]
    rec += [f"rec:{k}:{n}:float32" for n in (128, 1024) for k in REC_KINDS if k != "LIF"]
    models = [f"model:{m}:{n}:{b}" for m, n, b in MODELS]
    if scope == "docs":
        # bfloat16 inputs with a narrowed residual add nothing the two alone do not show
        neuron = [c for c in neuron if ":none:" in c or ":float32:" in c]
    return neuron + rec + models


# --------------------------------------------------------------------------------------------
# the cases

def _sds(tree):
    """Argument shapes of a pytree of arrays and Python scalars (weakly typed, as jit traces them)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    def one(a):
        if hasattr(a, "shape") and hasattr(a, "dtype"):
            return jax.ShapeDtypeStruct(a.shape, a.dtype)
        return jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a), weak_type=True)

    return jax.tree.map(one, tree)


@dataclasses.dataclass
class Case:
    """A jitted function, its argument shapes, and the snnkern kernels its executable must hold
    (name -> count of Triton custom calls)."""

    id: str
    fn: object
    args: tuple
    expect: Dict[str, int]
    note: str = ""


def _neuron_case(cid, kind, x_dtype, residual, mode, n=300, T=32, B=4):
    import jax
    import jax.numpy as jnp

    from bench.residual_precision import make_neuron
    from snnkern.kernels import pallas_neuron as PN
    from snnkern.kernels.tiling import NeuronTiling
    from snnkern.plan.seq import neuron_step

    layer = make_neuron(kind, n)
    params, st = layer.params(), layer.init_state((n,), None)
    rdt = None if residual == "none" else getattr(jnp, residual)
    step, sidx = neuron_step(layer), layer.binary_state_entries()
    run = jax.vmap(lambda p, s, x: PN.neuron_loop(step, p, s, x, sidx, want_out=True, want_read=True,
                                                  out_is_last_state=True, residual_dtype=rdt), in_axes=(None, None, 0))

    def loss(p, s, xs):
        sT, outs, reads = run(p, s, xs)
        return (jnp.sum(outs.astype(jnp.float32)) + jnp.sum(reads.astype(jnp.float32))
                + sum(jnp.sum(a.astype(jnp.float32)) for a in sT))

    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)) if mode == "grad" else run)
    args = (_sds(params), _sds(st), jax.ShapeDtypeStruct((B, T, n), getattr(jnp, x_dtype)))
    expect = {"snnkern_neuron_fwd": 1, "snnkern_neuron_bwd": 1} if mode == "grad" else {"snnkern_neuron_fwd": 1}
    return Case(cid, fn, args, expect, f"N={n} (tile {NeuronTiling('gpu').layout(T, n).block_n}), T={T}, B={B}")


def _rec_case(cid, kind, n, ff_dtype, platform, T=32, B=64):
    import jax
    import jax.numpy as jnp

    from bench.residual_precision import make_neuron
    from snnkern.kernels import pallas_recurrent as PR
    from snnkern.kernels import recurrent as NL
    from snnkern.kernels.tiling import RecTiling
    from snnkern.plan.seq import neuron_step

    layer = make_neuron(kind, n)
    p, st = layer.params(), layer.init_state((n,), None)
    step, sidx = neuron_step(layer), layer.binary_state_entries()

    def one(p, s, ff, w, b):
        # over the size limit the planner runs the XLA loop (the kernel would raise): so does the case
        impl = PR.recurrent_batched if PR.size_reason(n, platform) is None else None
        return NL.recurrent_loop(step, p, s, ff, w, b, sidx, want_out=True, impl=impl, want_cur=True)

    def loss(p, s, ff, w, b):
        sT, o, c, r = jax.vmap(one, in_axes=(None, None, 0, None, None))(p, s, ff, w, b)
        return (jnp.sum(o.astype(jnp.float32)) + jnp.sum(c.astype(jnp.float32)) + jnp.sum(r)
                + sum(jnp.sum(a) for a in sT))

    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4)))
    args = (_sds(p), _sds(st), jax.ShapeDtypeStruct((B, T, n), getattr(jnp, ff_dtype)),
            jax.ShapeDtypeStruct((n, n), jnp.float32), jax.ShapeDtypeStruct((n,), jnp.float32))
    fits = PR.size_reason(n, platform) is None
    expect = {"snnkern_recurrent_fwd": 1, "snnkern_recurrent_bwd": 1} if fits else {}
    target = "tpu" if platform == "tpu" else "gpu"
    streamed = target == "gpu" and not PR.resident_w(RecTiling(target).n_pad(n), jnp.float32, target)
    tl = RecTiling(target).layout(T, B, n, streamed=streamed)
    how = f", W streamed in {tl.bk} x {tl.bk} tiles" if streamed else ""
    return Case(cid, fn, args, expect, f"n={n} (n_pad {tl.n_pad}, bB {tl.bB}{how}), T={T}, B={B}"
                + ("" if fits else " - over the size limit: the XLA loop"))


def _model_case(cid, kind, N, B, device, T=32):
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    import snnkern
    from bench import models

    spec = models.build(kind, N)
    params, _, vag = models.make_fns(spec, spec.model)

    def train_step(params, x):
        loss, g = vag(params, x)
        return loss, jax.tree.map(lambda p, d: p - 1e-3 * d, params, g)

    from snnkern.plan.strategies import NeuronLoop

    with jax.default_device(device):
        plan = snnkern.explain(spec.model)
    expect: Dict[str, int] = {}
    for s in plan.steps:
        if s.spec.is_loop and s.impl.is_pallas:
            name = "neuron" if isinstance(s.spec, NeuronLoop) else "recurrent"
            for d in ("fwd", "bwd"):
                expect[f"snnkern_{name}_{d}"] = expect.get(f"snnkern_{name}_{d}", 0) + 1
    args = (_sds(eqx.filter(params, eqx.is_array)), jax.ShapeDtypeStruct((B, T, spec.N_in), jnp.float32))
    return Case(cid, jax.jit(train_step), args, expect, f"{kind} N={N}, B={B}, T={T}; plan: "
                + "; ".join(f"{s.where}: {s.describe()}" for s in plan.steps if s.spec.is_loop))


def compile_only_device(target: str):
    """The device of ``target``: ``H200`` / ``H100`` (compile-only GPUs), ``v5e`` / ``v6e``
    (compile-only TPU chips), ``local`` (this machine's first GPU)."""
    import jax

    from snnkern.kernels import platform as KP
    if target == "local":
        return jax.devices("gpu")[0]
    return KP.compile_only_tpu(target) if target in KP.TPU_TARGETS else KP.compile_only_gpu(target)


def device_unavailable(target: str) -> Optional[str]:
    """None if ``target``'s device can be made here, else why not."""
    from snnkern.kernels import platform as KP
    if target == "local":
        return None
    if target in KP.TPU_TARGETS:
        return KP.compile_only_tpu_unavailable(target)
    return KP.compile_only_gpu_unavailable(target)


def build_case(cid: str, device) -> Case:
    """The :class:`Case` of id ``cid`` (see the module docstring), for ``device`` (the plans of the
    model cases are made with it as the default device). Concrete arrays (weights) are made on the
    host: a compile-only device cannot run anything."""
    parts = cid.split(":")
    if parts[0] == "neuron" and len(parts) == 5:
        return _neuron_case(cid, parts[1], parts[2], parts[3], parts[4])
    if parts[0] == "rec" and len(parts) == 4:
        return _rec_case(cid, parts[1], int(parts[2]), parts[3], device.platform)
    if parts[0] == "model" and len(parts) == 4:
        return _model_case(cid, parts[1], int(parts[2]), int(parts[3]), device)
    raise ValueError(f"unknown case id {cid!r}")


# --------------------------------------------------------------------------------------------
# compiling

_CALL_RE = re.compile(r'custom_call_target="__gpu\$xla\.gpu\.triton".*?backend_config=\{(.*?)\}\s*(?:,|$)')


_TPU_NAME = re.compile(r"%\S*?(snnkern_(?:neuron|recurrent)_(?:fwd|bwd))")


def kernel_calls(hlo_text: str) -> List[dict]:
    """The kernel calls of an optimized HLO module: Triton (GPU) calls with their name, num_warps,
    num_stages and grid; Mosaic (TPU) calls with the name (from the instruction's name)."""
    calls = []
    for line in hlo_text.splitlines():
        if 'custom_call_target="tpu_custom_call"' in line and "custom-call(" in line:
            m = _TPU_NAME.search(line)
            calls.append(dict(name=m.group(1) if m else "?", num_warps=None, num_stages=None, grid=None))
            continue
        if TRITON_CALL not in line or "custom-call(" not in line:
            continue
        name = re.search(r'name = "([^"]+)"', line)
        get = lambda key: (int(m.group(1)) if (m := re.search(rf"\b{key} = (\d+)", line)) else None)  # noqa: E731
        calls.append(dict(name=name.group(1) if name else "?", num_warps=get("num_warps"),
                          num_stages=get("num_stages"), grid=(get("grid_x"), get("grid_y"), get("grid_z"))))
    return calls


def compile_case(case: Case, device, fail_on_spill: bool = True):
    """Lower and compile ``case`` for ``device`` (the default device while tracing); returns
    ``(compiled, hlo_text, seconds)``. Raises on a compile error, shared memory over the device's
    limit (RESOURCE_EXHAUSTED) and, with ``fail_on_spill``, a register spill in any kernel."""
    import jax
    gpu = device.platform != "tpu"
    opts = {"xla_gpu_fail_ptx_compilation_on_register_spilling": True} if fail_on_spill and gpu else {}
    t0 = time.perf_counter()
    with jax.default_device(device), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)      # "the Pallas Triton backend is deprecated"
        compiled = case.fn.lower(*case.args).compile(compiler_options=opts)
    return compiled, compiled.as_text(), time.perf_counter() - t0


def check_kernels(case: Case, hlo_text: str) -> Optional[str]:
    """None if the executable holds exactly the snnkern kernels ``case`` expects, else what differs."""
    got: Dict[str, int] = {}
    for c in kernel_calls(hlo_text):
        got[c["name"]] = got.get(c["name"], 0) + 1
    snn = {k: v for k, v in got.items() if k.startswith("snnkern_")}
    if snn != case.expect:
        return f"{case.id}: expected the kernels {case.expect}, the executable has {snn or 'none (an XLA fallback)'}"
    return None


# --------------------------------------------------------------------------------------------
# ptxas / thunk parsing and occupancy

_PTX_FN = re.compile(r"Compiling entry function '([^']+)' for '(sm_[0-9a-z]+)'")
_PTX_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTX_USED = re.compile(r"Used (\d+) registers(?:, used (\d+) barriers)?(?:, (\d+) bytes smem)?")


def parse_ptxas(text: str) -> Dict[str, dict]:
    """Per kernel (entry function) from ptxas -v output: arch, registers, spill stores / loads,
    stack frame and static shared memory bytes (the last compile of a name wins)."""
    out: Dict[str, dict] = {}
    cur = None
    for line in text.splitlines():
        m = _PTX_FN.search(line)
        if m:
            cur = out[m.group(1)] = dict(arch=m.group(2))
            continue
        if cur is None:
            continue
        if (m := _PTX_SPILL.search(line)) and "stack" not in cur:
            cur.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        elif (m := _PTX_USED.search(line)) and "registers" not in cur:
            cur.update(registers=int(m.group(1)), smem_static=int(m.group(3) or 0))
    return out


_THUNK = re.compile(r"\] (\S+) grid: \[(\d+), (\d+), (\d+)\] threads: \[(\d+), (\d+), (\d+)\]\s+shared_memory: (\d+) bytes")


def parse_thunks(dump_dir: str) -> Dict[str, dict]:
    """Per kernel from XLA's thunk sequence dump: threads per block and dynamic shared memory."""
    out: Dict[str, dict] = {}
    for f in sorted(pathlib.Path(dump_dir).glob("*thunk_sequence.txt")):
        for m in _THUNK.finditer(f.read_text()):
            name, g, t, smem = m.group(1), m.groups()[1:4], m.groups()[4:7], int(m.group(8))
            out[name] = dict(grid=tuple(int(v) for v in g), threads=math.prod(int(v) for v in t), smem_dynamic=smem)
    return out


def occupancy(registers: int, threads: int, smem_bytes: int, sm: dict = H200_SM) -> Tuple[int, str]:
    """Resident warps per SM these resources allow (CUDA's occupancy rules: registers allocated
    per warp in units of 256, shared memory per block plus 1 KiB reserved, at most 64 warps and 32
    blocks per SM), and the limiting resource."""
    warps = max(1, -(-threads // 32))
    regs_per_warp = -(-max(registers, 1) * 32 // sm["reg_alloc_unit"]) * sm["reg_alloc_unit"]
    limits = {
        "registers": sm["regs"] // (regs_per_warp * warps),
        "shared memory": sm["smem"] // (smem_bytes + sm["smem_reserved_per_block"]),
        "warps": sm["warps"] // warps,
        "blocks": sm["blocks"],
    }
    by = min(limits, key=lambda k: limits[k])
    return limits[by] * warps, by


# --------------------------------------------------------------------------------------------
# the resource table (one subprocess per case: ptxas writes to the process's stderr)

def _child(cid: str, target: str) -> None:
    """Compile one case (without failing on spills: they are measured) and print a JSON line."""
    dev = compile_only_device(target)
    res = dict(case=cid)
    try:
        case = build_case(cid, dev)
        _, text, sec = compile_case(case, dev, fail_on_spill=False)
        res.update(seconds=round(sec, 2), calls=kernel_calls(text), note=case.note, kernels_error=check_kernels(case, text))
    except Exception as e:  # noqa: BLE001 - reported in the table
        res.update(error=f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}")
    print("GPU_COMPILE_RESULT " + json.dumps(res), flush=True)


def _run_one(cid: str, target: str, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="snnkern-gpu-") as dump:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0", TF_CPP_VMODULE="nvjitlink=3",
                   XLA_FLAGS=" ".join([os.environ.get("XLA_FLAGS", ""), "--xla_gpu_ptx_compiler_extra_flags=-v",
                                       f"--xla_dump_to={dump}", "--xla_dump_hlo_pass_re=NONE",
                                       "--xla_dump_hlo_module_re=.*(step|loss|run|lambda).*"]).strip())
        if target != "local":
            env["JAX_PLATFORMS"] = "cpu"
        root = str(pathlib.Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        try:
            p = subprocess.run([sys.executable, "-m", "bench.gpu_compile", "--child", cid, "--target", target],
                               capture_output=True, text=True, timeout=timeout, env=env, cwd=root)
        except subprocess.TimeoutExpired:
            return dict(case=cid, error=f"timed out after {timeout:.0f} s")
        line = [ln for ln in p.stdout.splitlines() if ln.startswith("GPU_COMPILE_RESULT ")]
        res = json.loads(line[-1].split(" ", 1)[1]) if line else dict(
            case=cid, error=f"exit {p.returncode}: {(p.stderr.strip().splitlines() or ['?'])[-1][:300]}")
        ptx = parse_ptxas(p.stderr)
        thunks = parse_thunks(dump)
    kernels = []
    for call in res.get("calls", []):
        name = call["name"]
        k = dict(name=name, num_warps=call["num_warps"], **ptx.get(name, {}), **thunks.get(name, {}))
        if "registers" in k and "threads" in k:
            k["occupancy_warps"], k["limited_by"] = occupancy(k["registers"], k["threads"],
                                                              k.get("smem_static", 0) + k.get("smem_dynamic", 0))
        kernels.append(k)
    res["kernels"] = kernels
    res.pop("calls", None)
    return res


def measure(cases: List[str], target: str = "H200", jobs: int = 1, timeout: float = 300,
            progress: bool = True) -> List[dict]:
    """Compile every case in its own process; one result per case (``kernels``: per kernel call
    its registers, spills, shared memory, threads, occupancy; or ``error``)."""
    results: Dict[str, dict] = {}
    with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
        futs = {pool.submit(_run_one, c, target, timeout): c for c in cases}
        for f in concurrent.futures.as_completed(futs):
            r = f.result()
            results[r["case"]] = r
            if progress:
                print(f"  {r['case']}: {r.get('error') or ', '.join(_brief(k) for k in r['kernels']) or 'no kernels'}",
                      file=sys.stderr, flush=True)
    return [results[c] for c in cases]


def _brief(k: dict) -> str:
    return f"{k['name']} {k.get('registers', '?')} regs"


def _kb(b: Optional[int]) -> str:
    return "-" if b is None else ("0" if b == 0 else f"{b / 1024:.1f} KiB")


def _cell(k: Optional[dict], key: str) -> str:
    return "-" if k is None else str(k.get(key, "?"))


def _kernel(r: dict, name: str) -> Optional[dict]:
    return next((k for k in r.get("kernels", []) if k["name"] == name), None)


def _neuron_table(results: List[dict]) -> List[str]:
    """Neuron-loop kernels, one row per neuron type: registers per variant, the worst spills /
    shared memory / occupancy over the variants."""
    variants = [("float32", "none", "grad"), ("bfloat16", "none", "grad"), ("float32", "bfloat16", "grad"),
                ("float32", "float16", "grad"), ("float32", "none", "fwd")]
    by = {tuple(r["case"].split(":")[1:]): r for r in results if r["case"].startswith("neuron:")}
    kinds = list(dict.fromkeys(c[0] for c in by))
    if not kinds:
        return []
    out = ["Neuron-loop kernels (N = 300 in one tile of 4 x 128, T = 32, B = 4): registers per thread for "
           "float32 inputs / bfloat16 inputs / float32 with `residual_dtype` bfloat16 / float16, and the forward "
           "kernel without residuals (inference); spills, shared memory and the lowest occupancy over all of them.",
           "",
           "| neuron | num_warps | forward registers (f32 / bf16 x / bf16 res / f16 res / no res) "
           "| backward registers (f32 / bf16 x / bf16 res / f16 res) | spills (B) | shared memory "
           "| lowest occupancy (warps / SM) |", "|---|---|---|---|---|---|---|"]
    for kind in kinds:
        cells = {v: by.get((kind, *v)) for v in variants}
        errs = [r["error"] for r in cells.values() if r is not None and r.get("error")]
        if errs:
            out.append(f"| {kind} | **compile error**: {errs[0].replace('|', '/')} | | | | | |")
            continue
        ks = [k for r in cells.values() if r is not None for k in r["kernels"] if k["name"].startswith("snnkern_")]
        fwd = " / ".join(_cell(_kernel(r, "snnkern_neuron_fwd") if r else None, "registers") for r in cells.values())
        bwd = " / ".join(_cell(_kernel(r, "snnkern_neuron_bwd") if r else None, "registers")
                         for v, r in cells.items() if v[2] == "grad")
        spills = max((k.get("spill_stores", 0) + k.get("spill_loads", 0) for k in ks), default=0)
        smem = max(((k.get("smem_static") or 0) + (k.get("smem_dynamic") or 0) for k in ks), default=0)
        occ = min(ks, key=lambda k: k.get("occupancy_warps", 99), default=None)
        warps = "/".join(sorted({str(k.get("num_warps")) for k in ks}))
        out.append(f"| {kind} | {warps} | {fwd} | {bwd} | {spills} | {_kb(smem)} | "
                   f"{_cell(occ, 'occupancy_warps')} ({_cell(occ, 'limited_by')}) |")
    return out


def markdown(results: List[dict], target: str = "H200") -> str:
    """The resource tables: neuron-loop kernels one row per neuron type (:func:`_neuron_table`),
    the other cases one row per distinct snnkern kernel."""
    out = _neuron_table(results)
    rest = [r for r in results if not r["case"].startswith("neuron:")]
    if not rest:
        return "\n".join(out)
    if out:
        out.append("")
    out += ["| case | kernel | num_warps | registers / thread | spill stores / loads (B) | shared memory (static + dynamic) "
            "| occupancy (warps / SM, of 64) | limited by |", "|---|---|---|---|---|---|---|---|"]
    for r in rest:
        if r.get("error"):
            out.append(f"| `{r['case']}` | **compile error** | | | | {r['error'].replace('|', '/')} | | |")
            continue
        ks = [k for k in r["kernels"] if k["name"].startswith("snnkern_")]
        if not ks:
            out.append(f"| `{r['case']}` | (no snnkern kernel: {r.get('note', '')}) | | | | | | |")
        seen = {}
        for k in ks:
            smem = (k.get("smem_static") or 0) + (k.get("smem_dynamic") or 0)
            spill = f"{k.get('spill_stores', '?')} / {k.get('spill_loads', '?')}"
            row = (f"| {k.get('num_warps')} | {k.get('registers', '?')} | {spill} | {_kb(smem)} "
                   f"| {k.get('occupancy_warps', '?')} | {k.get('limited_by', '?')} |")
            key = (k["name"], row)
            seen[key] = seen.get(key, 0) + 1
        for (name, row), count in seen.items():
            label = name[len("snnkern_"):] + (f" (x{count})" if count > 1 else "")
            out.append(f"| `{r['case']}` | {label} {row}")
    return "\n".join(out)


def write_docs(path: str, body: str) -> None:
    """Replace the text between the gpu-resources markers of ``path`` with ``body``."""
    p = pathlib.Path(path)
    text = p.read_text()
    if MARK_BEGIN not in text or MARK_END not in text:
        raise SystemExit(f"{path} has no {MARK_BEGIN} ... {MARK_END} block")
    a, rest = text.split(MARK_BEGIN, 1)
    _, b = rest.split(MARK_END, 1)
    p.write_text(a + MARK_BEGIN + "\n" + body.strip() + "\n" + MARK_END + b)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default="H200", help="H200 | H100 (compile-only GPUs) | local (this machine's GPU); "
                    "v5e | v6e compile for a TPU (no resource figures: ptxas only)")
    ap.add_argument("--cases", default="docs", help="docs | all | a comma-separated list of case ids")
    ap.add_argument("--jobs", type=int, default=max(1, min(4, (os.cpu_count() or 2) // 2)))
    ap.add_argument("--timeout", type=float, default=300, help="seconds per case")
    ap.add_argument("--docs", help="write the table into this file between the gpu-resources markers")
    ap.add_argument("--out", help="also write the table (Markdown) and the raw results (.json beside it) here")
    ap.add_argument("--from-json", help="render the table of a previous run's .json (no compiling)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        _child(a.child, a.target)
        return 0
    if a.from_json:
        run = json.loads(pathlib.Path(a.from_json).read_text())
        body = run["header"] + "\n\n" + markdown(run["results"], run["target"])
        print(body)
        if a.docs:
            write_docs(a.docs, body)
        return 0
    if a.target != "local":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        why = device_unavailable(a.target)
        if why:
            print(f"gpu_compile: {why}", file=sys.stderr)
            return 2
    plat = "tpu" if a.target.startswith("v") else "gpu"
    cases = case_ids(a.cases, plat) if a.cases in ("all", "docs") else [c.strip() for c in a.cases.split(",") if c.strip()]
    t0 = time.time()
    results = measure(cases, a.target, a.jobs, a.timeout)
    import jax
    header = (f"Compiled for {a.target} by `python -m bench.gpu_compile --target {a.target} --cases {a.cases}` "
              f"(jax {jax.__version__}, {len(cases)} cases, {time.time() - t0:.0f} s with {a.jobs} jobs).")
    body = header + "\n\n" + markdown(results, a.target)
    print(body)
    if a.docs:
        write_docs(a.docs, body)
    if a.out:
        pathlib.Path(a.out).write_text(body + "\n")
        pathlib.Path(a.out).with_suffix(".json").write_text(
            json.dumps(dict(header=header, target=a.target, results=results), indent=1))
    return 1 if any(r.get("error") or r.get("kernels_error") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
