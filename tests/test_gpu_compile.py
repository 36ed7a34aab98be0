"""Every Pallas kernel, and the bench models' training steps, compiled for an NVIDIA H200 (sm_90a)
and an H100 on a machine without a GPU (marker ``gpu_compile``; ``make test-gpu-compile`` installs
the CUDA plugin and runs them; without it they skip, saying why).

The device is a compile-only one (:func:`snnkern.kernels.platform.compile_only_gpu`); with it as
the default device, ``auto`` plans the kernels with the GPU tiling and ``.compile()`` runs Pallas ->
Triton -> LLVM -> PTX -> ptxas. A case fails on a compile error, a register spill in any kernel
(``xla_gpu_fail_ptx_compilation_on_register_spilling``), shared memory over the device's limit
(RESOURCE_EXHAUSTED), or an executable without exactly the snnkern kernels the case expects (an
XLA fallback). The cases are bench/gpu_compile.py's (the resource table of docs/kernels.md).
"""
from __future__ import annotations

import os
import pathlib
import sys

import pytest

_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
from bench import gpu_compile as G  # noqa: E402

pytestmark = pytest.mark.gpu_compile


def _device(name):
    why = G.device_unavailable(name)
    if why is not None:
        part = "TPU" if name.startswith("v") else "GPU"
        install = os.environ.get(f"SNNKERN_{part}_COMPILE_INSTALL_ERROR")
        pytest.skip(f"{why}; `make test-gpu-compile` could not install it: {install}" if install else why)
    return G.compile_only_device(name)


@pytest.fixture(scope="module")
def h200():
    return _device("H200")


@pytest.fixture(scope="module")
def h100():
    return _device("H100")


@pytest.fixture(scope="module")
def v5e():
    return _device("v5e")


def compile_ok(cid, device):
    """Compile case ``cid`` for ``device`` (fails on errors, and on GPU on spills and shared memory);
    check its kernels."""
    case = G.build_case(cid, device)
    _, text, _ = G.compile_case(case, device, fail_on_spill=True)
    err = G.check_kernels(case, text)
    assert err is None, err
    return case, text


# ================================================================================================
# every kernel, H200

NEURON_CASES = [c for c in G.case_ids("all") if c.startswith("neuron:")]
REC_CASES = [c for c in G.case_ids("all") if c.startswith("rec:")]
MODEL_CASES = [c for c in G.case_ids("all") if c.startswith("model:")]


@pytest.mark.parametrize("cid", NEURON_CASES)
def test_neuron_kernels_compile_for_h200(cid, h200):
    # every neuron type x float32 / bfloat16 inputs x residual None / bfloat16 / float16
    # (value_and_grad: forward with residuals + backward), and the forward kernel alone
    compile_ok(cid, h200)


@pytest.mark.parametrize("cid", REC_CASES)
def test_recurrent_kernels_compile_for_h200(cid, h200):
    # n in 64..1024, float32 / bfloat16 feed-forward currents; every neuron type at n = 128 (W_rec on chip)
    # and n = 1024 (streamed). Every one of them plans the kernels now (up to MAX_N = 1024)
    case, text = compile_ok(cid, h200)
    n = int(cid.split(":")[2])
    from snnkern.kernels import pallas_recurrent as PR
    assert PR.size_reason(n, "gpu") is None and "snnkern_recurrent_fwd" in text and "snnkern_recurrent_bwd" in text
    streamed = not PR.resident_w(n, case.args[3].dtype, "gpu")
    assert streamed == (n > 128)
    calls = {c["name"]: c for c in G.kernel_calls(text)}
    assert calls["snnkern_recurrent_fwd"]["num_warps"] == (8 if streamed else min(16, max(4, n // 8)))


@pytest.mark.parametrize("cid", MODEL_CASES)
def test_bench_model_training_step_compiles_for_h200(cid, h200):
    # one SGD step (value_and_grad + update) of each bench model under auto: the executable holds a
    # forward and a backward kernel per Pallas loop of the plan
    import snnkern
    from bench import models
    kind, N = cid.split(":")[1], int(cid.split(":")[2])
    import jax
    spec = models.build(kind, N)
    with jax.default_device(h200):
        plan = snnkern.explain(spec.model)
    assert plan.platform == "gpu", str(plan)
    from snnkern.plan import Impl
    from snnkern.plan.strategies import NeuronLoop, RecurrentLoop
    loops = [s for s in plan.steps if s.spec.is_loop]
    if kind == "ff":
        assert len(loops) == 2 and all(isinstance(s.spec, NeuronLoop) and s.impl is Impl.PALLAS for s in loops), str(plan)
    else:   # W_rec on chip at 128, streamed above
        assert [(type(s.spec), s.impl) for s in loops] == [(RecurrentLoop, Impl.PALLAS)], str(plan)
        assert ("W_rec on chip" if N <= 128 else "W_rec streamed per step") in str(plan), str(plan)
    case, _ = compile_ok(cid, h200)
    assert case.expect


# ================================================================================================
# H100: the same SM, another device description (132 SMs, 80 GB): one case per kernel family

@pytest.mark.parametrize("cid", ["neuron:LIF:float32:none:grad", "neuron:SigmaDelta:bfloat16:bfloat16:grad",
                                 "neuron:AdaptiveLIF:float32:float16:grad", "rec:LIF:128:float32",
                                 "rec:SigmaDelta:128:float32", "model:ff:1024:64", "model:rec:128:64"])
def test_kernels_compile_for_h100(cid, h100):
    compile_ok(cid, h100)


# ================================================================================================
# TPU v5e (libtpu's compiler, Mosaic's passes down to LLO), and one case on v6e

TPU_CASES = G.case_ids("all", "tpu")


@pytest.mark.parametrize("cid", TPU_CASES)
def test_kernels_compile_for_tpu_v5e(cid, v5e):
    # every neuron case but float16 residuals (rejected below); recurrent n up to 1024 (the TPU
    # kernels hold W_rec in VMEM up to MAX_N); the bench models' training steps
    compile_ok(cid, v5e)


def test_auto_plans_for_a_tpu_default_device(v5e):
    import jax

    import snnkern
    from bench import models
    from snnkern.kernels.tiling import layout_target
    model = models.build("rec", 1024).model           # concrete weights: made on the host
    with jax.default_device(v5e):
        assert layout_target() == "tpu"
        plan = snnkern.explain(model)
    assert plan.platform == "tpu" and not plan.fallbacks, str(plan)


def test_tpu_rejects_float16_residuals(v5e):
    case = G.build_case("neuron:LIF:float32:float16:grad", v5e)
    with pytest.raises(ValueError, match="float16 is not supported by the TPU"):
        G.compile_case(case, v5e)


def test_kernels_compile_for_tpu_v6e():
    dev = _device("v6e")
    for cid in ("neuron:SigmaDelta:bfloat16:bfloat16:grad", "rec:LIF:1024:float32"):
        compile_ok(cid, dev)


# ================================================================================================
# the platform comes from the device compiled for, and the GPU tiling is used

def test_auto_plans_for_the_default_device(h200):
    import jax

    import snnkern
    from snnkern.plan.impl import choose_impl
    from snnkern.kernels.platform import tracing_platform
    from snnkern.plan import Impl
    from snnkern.kernels.tiling import layout_target
    from bench import models
    model = models.build("ff", 64).model
    with jax.default_device(h200):
        assert tracing_platform() == "gpu"
        assert layout_target() == "gpu"
        assert choose_impl("x", tracing_platform()).impl is Impl.PALLAS
        plan = snnkern.explain(model)
    assert plan.platform == "gpu" and not plan.fallbacks, str(plan)
    # on this host, outside the block: the CPU and the XLA loops
    assert tracing_platform() == "cpu" and snnkern.explain(model).platform == "cpu"


def test_argument_placement_visible_at_trace_time(h200):
    # a NamedSharding over a Mesh of the device is in every aval (so tracing_platform(x) sees it);
    # a SingleDeviceSharding is not (the aval's mesh is empty): documented in docs/kernels.md
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

    from snnkern.kernels.platform import tracing_platform
    seen = {}

    def f(x):
        y = jnp.tanh(x) * 2
        seen["x"], seen["y"], seen["none"] = tracing_platform(x), tracing_platform(y), tracing_platform()
        return y

    named = NamedSharding(Mesh([h200], ("x",)), PartitionSpec())
    jax.jit(f).trace(jax.ShapeDtypeStruct((4,), jnp.float32, sharding=named))
    assert seen == {"x": "gpu", "y": "gpu", "none": "cpu"}
    jax.jit(f).trace(jax.ShapeDtypeStruct((4,), jnp.float32, sharding=SingleDeviceSharding(h200)))
    assert seen == {"x": "cpu", "y": "cpu", "none": "cpu"}
    with jax.set_mesh(Mesh([h200], ("x",))):         # a mesh context sets the abstract mesh too
        assert tracing_platform() == "gpu"


def test_compiled_kernels_use_the_gpu_tiling(h200):
    from snnkern.kernels.tiling import NeuronTiling, RecTiling
    _, text = compile_ok("neuron:LIF:float32:none:grad", h200)
    tl = NeuronTiling("gpu").layout(32, 300)                    # the case: N = 300, T = 32, B = 4
    calls = {c["name"]: c for c in G.kernel_calls(text)}
    assert calls["snnkern_neuron_fwd"]["num_warps"] == tl.block_n // 128 == 4
    assert sorted(calls["snnkern_neuron_fwd"]["grid"]) == sorted((tl.n_tiles, 1, 4))   # tiles x chunks x batch
    _, text = compile_ok("rec:LIF:128:float32", h200)
    calls = {c["name"]: c for c in G.kernel_calls(text)}
    assert calls["snnkern_recurrent_fwd"]["num_warps"] == calls["snnkern_recurrent_bwd"]["num_warps"] == 16
    assert RecTiling("gpu").layout(32, 64, 128).n_tiles in calls["snnkern_recurrent_fwd"]["grid"]


# ================================================================================================
# the checks can fail

def test_a_spill_fails_the_compile(h200, monkeypatch):
    # the recurrent kernel's former configuration (4 warps at n = 128) spills in the backward kernel
    import jax
    from jax.experimental.pallas import triton as plgpu

    from snnkern.kernels.tiling import RecLayout
    del plgpu
    monkeypatch.setattr(RecLayout, "num_warps", property(lambda self: 4))
    case = G.build_case("rec:AdaptiveLIF:128:float32", h200)
    with pytest.raises(jax.errors.JaxRuntimeError, match="spill"):
        G.compile_case(case, h200, fail_on_spill=True)


def test_shared_memory_over_the_limit_fails_the_compile(h200, monkeypatch):
    # float32 W_rec of 256 neurons in one block (on chip, not streamed): 256 KiB of shared memory > the
    # H200's 227 KiB per block
    import jax

    from snnkern.kernels import pallas_recurrent as PR
    monkeypatch.setitem(PR.RESIDENT_W_BYTES, "gpu", 256 * 1024)
    case = G.build_case("rec:LIF:256:float32", h200)
    with pytest.raises(jax.errors.JaxRuntimeError, match="RESOURCE_EXHAUSTED.*[Ss]hared memory"):
        G.compile_case(case, h200)


def test_a_fallback_is_reported(h200, monkeypatch):
    # SNNKERN_AUTO_PALLAS=0: auto runs the XLA loops, the executable has no snnkern kernel
    monkeypatch.setenv("SNNKERN_AUTO_PALLAS", "0")
    case = G.build_case("model:ff:1024:64", h200)
    case.expect = {"snnkern_neuron_fwd": 2, "snnkern_neuron_bwd": 2}
    _, text, _ = G.compile_case(case, h200)
    assert "an XLA fallback" in G.check_kernels(case, text)
