"""The fused Pallas neuron-loop kernels (kernels/pallas_neuron.py).

Three kinds of checks:

- **equivalence in interpret mode** (any host): ``pallas_neuron.neuron_loop(..., interpret=True)``
  against the XLA loop ``kernels.neuron_loop.neuron_loop`` for every neuron type, under ``jit`` and
  ``vmap``, with padding (odd neuron counts, several tiles, time chunks with masked padded steps),
  bf16 inputs, and every ``want_out``/``want_read`` combination. Both run the same ``step`` in the
  same float32 operation order and store the same residuals, so outputs, reads and final states
  must agree to 1e-6 (observed: bitwise equal) and gradients to atol 1e-5 / rtol 1e-5 (observed:
  bitwise equal; the slack covers XLA CPU fusion choices such as FMA contraction).
  Through a model: ``snnkern.backend("pallas-interpret")`` against the reference path, with the
  tolerances of tests/test_equivalence.py (skipped while the backend is not routed to the kernel).
- **lowering without hardware**: the forward and the backward (``value_and_grad`` under ``vmap``)
  are lowered for ``cuda`` (Triton; an abstract H200 device stands in for the GPU) and for ``tpu``
  (Mosaic), and the lowered module must contain the kernels' custom calls. This runs the whole
  Pallas -> Triton-IR / Mosaic-MLIR lowering of every neuron's step and of its VJP; only the
  device compilers (ptxas / the TPU compiler) are not exercised.
- **on a GPU** (``@pytest.mark.gpu``, skipped elsewhere): the compiled kernels against the XLA loop.
"""
from __future__ import annotations

import pathlib
import sys
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import snnkern
from snnkern import snn
from snnkern.kernels import dispatch
from snnkern.kernels import neuron_loop as NL
from snnkern.kernels import pallas_neuron as PN
from snnkern.kernels.tiling import NeuronTiling, layout_target
from snnkern.plan.planner import neuron_step as _neuron_step


def _spike_idx(layer):
    return layer.binary_state_entries()

_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:      # `pytest` (not `python -m pytest`) does not put the root on the path
    sys.path.insert(0, _ROOT)
from bench import residual_precision as _residual_precision  # noqa: E402

OUT_ATOL = 1e-6
GRAD_ATOL, GRAD_RTOL = 1e-5, 1e-5


# every neuron type with trainable array thresholds / reset values where it has them, so that every
# parameter path of the step (and of its VJP) is exercised; shared with bench/residual_precision.py
make_neuron = _residual_precision.make_neuron


NEURONS = ("LIF", "LIFSoftReset", "SimpleLIF", "AdaptiveLIF", "SimpleIAF", "IAF", "SimpleLI", "SigmaDelta",
           "SpikeCounter")


def setup(kind, n=37, T=11, B=2, seed=0, x_dtype=jnp.float32):
    layer = make_neuron(kind, n)
    k = jax.random.split(jax.random.PRNGKey(seed), 3)
    st = layer.init_state((n,), k[0])
    # a non-zero initial state, spikes included (0/1 entries, and a non-binary one for the exact
    # state0 path at t = 0)
    st = [s + 0.4 * jax.random.uniform(jax.random.fold_in(k[1], j), (n,)) for j, s in enumerate(st)]
    xs = (1.2 * jax.random.normal(k[2], (B, T, n)) + 0.3).astype(x_dtype)
    return layer, layer.params(), st, xs


def batched(fn, layer, want_out=True, want_read=True, **kw):
    """``fn`` (a neuron loop) over a batch: params/state shared, xs batched; jit-compiled."""
    step, sidx = _neuron_step(layer), _spike_idx(layer)

    def one(params, st, x):
        return fn(step, params, st, x, sidx, want_out=want_out, want_read=want_read,
                  out_is_last_state=True, **kw)

    return jax.jit(jax.vmap(one, in_axes=(None, None, 0)))


def loss_of(fn, layer, want_out=True, want_read=True, **kw):
    """jit(value_and_grad) of a loss mixing every output, read and final-state entry; the loop's
    results come back as the aux value, so one compilation checks forward and backward."""
    run = jax.vmap(lambda p, s, x: fn(_neuron_step(layer), p, s, x, _spike_idx(layer), want_out=want_out,
                                      want_read=want_read, out_is_last_state=True, **kw),
                   in_axes=(None, None, 0))

    def loss(params, st, xs):
        sT, outs, reads = run(params, st, xs)
        T = xs.shape[1]
        w = jnp.cos(jnp.arange(T, dtype=jnp.float32))[None, :, None]
        val = sum(jnp.sum(jnp.sin(s.astype(jnp.float32) * (j + 1))) for j, s in enumerate(sT))
        if outs is not None:
            val = val + jnp.sum(outs.astype(jnp.float32) * w)
        if reads is not None:
            val = val + 0.5 * jnp.sum(reads.astype(jnp.float32) * w[:, ::-1])
        return val, (sT, outs, reads)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


def assert_trees_close(a, b, atol, rtol=0.0, what=""):
    la, ta = jax.tree.flatten(eqx.filter(a, eqx.is_array))
    lb, tb = jax.tree.flatten(eqx.filter(b, eqx.is_array))
    assert ta == tb, f"{what}: structures differ: {ta} vs {tb}"
    for k, (u, v) in enumerate(zip(la, lb)):
        assert u.shape == v.shape and u.dtype == v.dtype, f"{what} leaf {k}: {u.shape}/{u.dtype} vs {v.shape}/{v.dtype}"
        np.testing.assert_allclose(np.asarray(u, np.float32), np.asarray(v, np.float32), atol=atol, rtol=rtol,
                                   err_msg=f"{what} leaf {k}")


def check_equal(kind, want_out=True, want_read=True, n=37, T=11, x_dtype=jnp.float32, **kw):
    """Forward results and gradients of the interpreted kernels vs the XLA loop (jit + vmap)."""
    layer, params, st, xs = setup(kind, n=n, T=T, x_dtype=x_dtype)
    (l_ref, ref), g_ref = loss_of(NL.neuron_loop, layer, want_out, want_read)(params, st, xs)
    (l_got, got), g_got = loss_of(PN.neuron_loop, layer, want_out, want_read, interpret=True, **kw)(params, st, xs)
    assert_trees_close(got, ref, OUT_ATOL, what=f"{kind} forward")
    if want_out and layer.spike_states:
        assert 0 < float(jnp.mean(ref[1])) < 1, "no spikes or only spikes: the comparison would be vacuous"
    np.testing.assert_allclose(float(l_got), float(l_ref), rtol=1e-6, atol=1e-6)
    assert_trees_close(g_got, g_ref, GRAD_ATOL, GRAD_RTOL, what=f"{kind} gradients")
    return g_ref


# ================================================================================================
# interpret-mode equivalence with the XLA loop


@pytest.mark.parametrize("kind", NEURONS)
def test_every_neuron_matches_xla_loop(kind):
    # 37 neurons in tiles of 32 (GPU layout: 32 lanes x 1 row): two tiles, 27 padded neurons
    g = check_equal(kind, block_n=32)
    if kind != "SpikeCounter":   # the gradients are not all zero
        assert any(float(jnp.max(jnp.abs(l))) > 0 for l in jax.tree.leaves(g[0]) + jax.tree.leaves(g[2]))


@pytest.mark.parametrize("want_out,want_read", [(True, False), (False, True)])
def test_output_selection(want_out, want_read):
    check_equal("LIF", want_out=want_out, want_read=want_read)


def test_row_tiles_and_padding():
    # 300 neurons in tiles of 2 rows x 128 lanes: 2 tiles, 212 padded neurons
    check_equal("SigmaDelta", n=300, block_n=256)


def test_time_chunks_with_masked_padding():
    # the TPU grid, interpreted: T = 13 in chunks of 4 (3 padded steps, masked); 300 neurons in
    # (rows, 128) tiles (3 rows -> one tile spanning all rows); bf16 inputs, f32 state: the kernel
    # reads bf16, the step computes in f32, d xs comes back in bf16
    g = check_equal("AdaptiveLIF", n=300, T=13, block_t=4, x_dtype=jnp.bfloat16)
    assert g[2].dtype == jnp.bfloat16


def test_time_chunks_several_row_tiles():
    check_equal("IAF", n=2100, T=9, block_t=3, block_n=1024)    # 17 rows -> 3 tiles of 8 rows


def test_multidim_neuron_shape():
    layer = snn.LIF([0.9, 0.8])
    params = layer.params()
    st = layer.init_state((3, 5, 7), None)
    xs = jax.random.normal(jax.random.PRNGKey(3), (2, 6, 3, 5, 7)) * 2
    ref = batched(NL.neuron_loop, layer)(params, st, xs)
    got = batched(PN.neuron_loop, layer, interpret=True, block_n=32)(params, st, xs)
    assert_trees_close(got, ref, OUT_ATOL, what="(3, 5, 7) neurons")


def test_unbroadcastable_params_fall_back_to_xla():
    # a parameter that does not broadcast against the neuron shape: the XLA loop runs (same
    # results), logged; strict mode turns it into an error
    def step(p, s, x):
        mem = s[0] * 0.9 + x * jnp.sum(p["w"])
        return [mem], mem

    params = {"w": jnp.ones((4,))}
    xs = jnp.ones((5, 3))
    assert "broadcast" in PN.unsupported(step, params, [jnp.zeros(3)], xs, "cpu")
    with pytest.raises(ValueError, match="broadcast"):        # the kernel never chooses another path
        PN.neuron_loop(step, params, [jnp.zeros(3)], xs, interpret=True)
    assert NL.neuron_loop(step, params, [jnp.zeros(3)], xs)[1].shape == (5, 3)   # the XLA loop takes it


# ================================================================================================
# tiling rules and eligibility


def test_tiling_rules():
    gpu = NeuronTiling("gpu").layout(100, 5000)
    assert gpu.L == 128 and gpu.rb & (gpu.rb - 1) == 0 and gpu.tc == 100 and gpu.R * gpu.L >= 5000
    small = NeuronTiling("gpu").layout(7, 20)
    assert (small.L, small.rb, small.R) == (32, 1, 1)                  # 20 neurons -> one 32-lane row
    tpu = NeuronTiling("tpu", block_n=1024).layout(100, 5000)
    assert tpu.L == 128 and tpu.rb % 8 == 0 and tpu.R % tpu.rb == 0 and tpu.T_pad % tpu.tc == 0
    assert NeuronTiling("tpu").layout(100, 300).rb == 3                          # one tile spanning all rows
    anyp = NeuronTiling("any").layout(100, 300)
    assert anyp.L == 128 and anyp.rb == 4 and anyp.tc == 100           # valid for Triton and Mosaic
    with pytest.raises(ValueError, match="power of 2"):
        NeuronTiling("gpu", block_n=96).layout(10, 100)
    with pytest.raises(ValueError, match="1024"):
        NeuronTiling("tpu", block_n=512).layout(10, 5000)
    with pytest.raises(ValueError, match="block_t"):
        NeuronTiling("gpu", block_t=5).layout(10, 100)


def test_eligible():
    assert PN.eligible((10, 37), jnp.float32, "cuda") is None
    assert PN.eligible((10, 4, 5), jnp.bfloat16, "tpu") is None
    assert PN.eligible((10, 37), jnp.float32, "cpu") is None            # interpret mode
    assert "dtype" in PN.eligible((10, 37), jnp.int32, "gpu")
    assert "T = 0" in PN.eligible((0, 37), jnp.float32, "gpu")
    assert "empty" in PN.eligible((5, 0), jnp.float32, "gpu")
    assert "float16" in PN.eligible((5, 3), jnp.float16, "tpu")
    assert "platform" in PN.eligible((5, 3), jnp.float32, "metal")


def test_layout_target():
    assert layout_target("cuda") == "gpu" and layout_target("tpu") == "tpu"
    assert layout_target("cpu") == "any"
    with jax.sharding.use_abstract_mesh(_abstract_mesh("cuda")):
        assert layout_target() == "gpu"


# ================================================================================================
# the model path: snnkern.backend("pallas-interpret") against the reference


def _model(keys):
    import equinox.nn as nn
    # a hidden neuron (the kernel emits the shifted read sequence) and a final one (outputs)
    return snn.Sequential(nn.Linear(6, 37, key=keys[0]), snn.LIF([0.9, 0.8], threshold=jnp.array(0.5)),
                          nn.Linear(37, 19, key=keys[1]), snn.SigmaDelta([0.5, 0.6, 0.7]))


def test_model_backend_matches_reference(monkeypatch, keys):
    calls = []
    orig = PN.neuron_loop

    def spy(*a, **k):
        calls.append(k.get("interpret"))
        return orig(*a, **k)

    monkeypatch.setattr(PN, "neuron_loop", spy)
    model = _model(keys)
    st = model.init_state((6,), keys[3])
    xb = 2.0 * jax.random.normal(keys[4], (3, 12, 6))

    def loss(model, st, xb, be):
        with snnkern.backend(be):
            f, o = eqx.filter_vmap(model, in_axes=(None, 0, None))(st, xb, keys[5])
        return jnp.sum(o[0] ** 2) + sum(jnp.sum(jnp.sin(l)) for l in jax.tree.leaves(f)), (f, o)

    vg = eqx.filter_jit(eqx.filter_value_and_grad(loss, has_aux=True))
    (l_got, aux_got), g_got = vg(model, st, xb, "pallas-interpret")
    if not calls:
        pytest.skip("the pallas-interpret backend is not routed to kernels/pallas_neuron.py yet")
    assert all(calls), "the kernels must run in interpret mode under pallas-interpret"
    (l_ref, aux_ref), g_ref = vg(model, st, xb, "reference")
    assert_trees_close(aux_got, aux_ref, 1e-5, 1e-5, what="model outputs/final states")
    assert_trees_close(g_got, g_ref, 1e-5, 1e-4, what="model gradients")   # tolerances of test_equivalence


# ================================================================================================
# lowering for cuda and tpu without the hardware


def _abstract_mesh(platform):
    from jax.sharding import AbstractDevice, AbstractMesh, AxisType
    dev = (AbstractDevice(device_kind="NVIDIA H200", num_cores=132, platform="gpu") if platform == "cuda"
           else AbstractDevice(device_kind="TPU v5 lite", num_cores=1, platform="tpu"))
    return AbstractMesh((1,), ("x",), (AxisType.Explicit,), abstract_device=dev)


CUSTOM_CALL = {"cuda": "__gpu$xla.gpu.triton", "tpu": "tpu_custom_call"}


def lower(kind, platform, grad=True, T=40, n=300, B=2, x_dtype=jnp.bfloat16, **kw):
    """Lower the (vmapped) loop, or its value_and_grad, for ``platform``; the module text."""
    layer = make_neuron(kind, n)
    params, st = layer.params(), layer.init_state((n,), None)   # concrete arrays: made outside the mesh
    run = batched(PN.neuron_loop, layer, **kw)

    def f(params, st, xs):
        sT, outs, reads = run(params, st, xs)
        return jnp.sum(outs.astype(jnp.float32)) + jnp.sum(reads) + sum(jnp.sum(s) for s in sT)

    fn = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2))) if grad else jax.jit(run)
    xs = jax.ShapeDtypeStruct((B, T, n), x_dtype)
    with jax.sharding.use_abstract_mesh(_abstract_mesh(platform)), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)     # "the Pallas Triton backend is deprecated"
        return fn.trace(params, st, xs).lower(lowering_platforms=(platform,)).as_text()


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
@pytest.mark.parametrize("kind", NEURONS)
def test_lowering_forward_and_backward(kind, platform):
    text = lower(kind, platform, grad=True)
    assert text.count(CUSTOM_CALL[platform]) == 2, "one forward kernel and one backward kernel"
    assert "snnkern_neuron_fwd" in text and "snnkern_neuron_bwd" in text


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_lowering_forward_only_large(platform):
    # several tiles (and, on TPU, several masked time chunks: T = 200 in chunks of 64)
    text = lower("LIF", platform, grad=False, T=200, n=5000, x_dtype=jnp.float32)
    assert text.count(CUSTOM_CALL[platform]) == 1


def test_export_for_both_platforms():
    # the serialisable route (jax.export): Mosaic custom calls are stable; the Triton one must be
    # allowed explicitly
    from jax import export
    layer = make_neuron("LIF", 64)
    params, st = layer.params(), layer.init_state((64,), None)
    run = batched(PN.neuron_loop, layer)
    xs = jax.ShapeDtypeStruct((2, 16, 64), jnp.float32)
    for platform, checks in (("tpu", []), ("cuda", [export.DisabledSafetyCheck.custom_call(CUSTOM_CALL["cuda"])])):
        with jax.sharding.use_abstract_mesh(_abstract_mesh(platform)), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            exp = export.export(run, platforms=[platform], disabled_checks=checks)(params, st, xs)
        assert exp.platforms == (platform,)
        assert CUSTOM_CALL[platform] in exp.mlir_module()


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_model_lowers_with_pallas_backend(platform, keys):
    # backend "pallas" (compiled kernels) on a CPU host: under an abstract accelerator device the
    # whole model's value_and_grad lowers, with one forward and one backward kernel per neuron
    model = _model(keys)
    st = model.init_state((6,), keys[3])
    params, static = eqx.partition(model, eqx.is_array)
    k = keys[5]

    def loss(params, st, xb):
        with snnkern.backend("pallas"):
            f, o = jax.vmap(eqx.combine(params, static), in_axes=(None, 0, None))(st, xb, k)
        return jnp.sum(o[0])

    xb = jax.ShapeDtypeStruct((4, 20, 6), jnp.float32)
    with jax.sharding.use_abstract_mesh(_abstract_mesh(platform)), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        text = jax.jit(jax.value_and_grad(loss)).trace(params, st, xb).lower(lowering_platforms=(platform,)).as_text()
    if text.count(CUSTOM_CALL[platform]) == 0:
        pytest.skip("the pallas backend is not routed to kernels/pallas_neuron.py yet")
    assert text.count(CUSTOM_CALL[platform]) == 4     # LIF and SigmaDelta, forward and backward


# ================================================================================================
# on a real GPU


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")
@pytest.mark.parametrize("kind", NEURONS)
def test_compiled_on_gpu_matches_xla_loop(kind):
    layer, params, st, xs = setup(kind, n=1000, T=64, B=4)
    ref = batched(NL.neuron_loop, layer)(params, st, xs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        got = batched(PN.neuron_loop, layer)(params, st, xs)
        _, g_got = loss_of(PN.neuron_loop, layer)(params, st, xs)
    # GPU rounding (FMA contraction in Triton vs XLA) may flip near-threshold spikes: compare
    # membranes loosely and the spike rate tightly
    np.testing.assert_allclose(np.asarray(got[0][0]), np.asarray(ref[0][0]), atol=1e-3)
    np.testing.assert_allclose(float(jnp.mean(got[1])), float(jnp.mean(ref[1])), atol=1e-3)
    _, g_ref = loss_of(NL.neuron_loop, layer)(params, st, xs)
    assert_trees_close(g_got, g_ref, 1e-3, 1e-3, what=f"{kind} gradients on GPU")


# ================================================================================================
# residual_dtype: narrower membrane residuals (docs/kernels.md, "Membrane residual precision")

# measured at these sizes (LIF, n=37, T=11, B=2): largest per-leaf relative gradient difference
# bf16 vs the default (float32) residuals 1.2e-2; the bound leaves 4x room
BF16_RESIDUAL_GRAD_RTOL = 5e-2


@pytest.mark.parametrize("kw", [dict(block_n=32), dict(block_t=4)], ids=["gpu-layout", "tpu-chunks"])
def test_bf16_residuals_forward_equal_gradients_close(kw):
    layer, params, st, xs = setup("LIF")
    (l_ref, ref), g_ref = loss_of(PN.neuron_loop, layer, interpret=True, **kw)(params, st, xs)
    (l_got, got), g_got = loss_of(PN.neuron_loop, layer, interpret=True, residual_dtype=jnp.bfloat16,
                                  **kw)(params, st, xs)
    # the forward pass does not depend on what is stored for the backward pass
    assert_trees_close(got, ref, OUT_ATOL, what="forward with bf16 residuals")
    assert float(l_got) == float(l_ref)
    la, lb = jax.tree.leaves(g_got), jax.tree.leaves(g_ref)
    assert len(la) == len(lb)
    for k, (u, v) in enumerate(zip(la, lb)):
        assert u.dtype == v.dtype and u.shape == v.shape
        scale = float(jnp.max(jnp.abs(v)))
        assert float(jnp.max(jnp.abs(u - v))) <= BF16_RESIDUAL_GRAD_RTOL * scale, f"gradient leaf {k}"
    # the option takes effect: the membrane/synaptic residuals are rounded, d xs moves
    assert float(jnp.max(jnp.abs(g_got[2] - g_ref[2]))) > 0


@pytest.mark.parametrize("kind", ["LIF", "SigmaDelta"])
def test_bf16_residuals_use_exact_state0_at_t0(kind):
    # one step: the only residual read is the exact state0, so the gradients are the default's
    # bit for bit (a rounded state0 would move them)
    layer, params, st, xs = setup(kind, T=1)
    _, g_ref = loss_of(PN.neuron_loop, layer, interpret=True, block_n=32)(params, st, xs)
    _, g_got = loss_of(PN.neuron_loop, layer, interpret=True, block_n=32, residual_dtype=jnp.bfloat16)(params, st, xs)
    assert_trees_close(g_got, g_ref, 0.0, what=f"{kind} T=1 gradients with bf16 residuals")


def test_bad_residual_dtype():
    layer, params, st, xs = setup("LIF", T=3)
    step, sidx = _neuron_step(layer), _spike_idx(layer)
    with pytest.raises(TypeError, match="residual_dtype must be a floating dtype"):
        PN.neuron_loop(step, params, st, xs[0], sidx, interpret=True, residual_dtype=jnp.int32)
    with pytest.raises(TypeError, match="residual_dtype"):
        PN.neuron_loop(step, params, st, xs[0], sidx, interpret=True, residual_dtype="not a dtype")
    with pytest.raises(ValueError, match="not supported"):
        PN.neuron_loop(step, params, st, xs[0], sidx, interpret=True, residual_dtype=jnp.float8_e4m3fn)
    with pytest.raises(ValueError, match="TPU"):
        lower("LIF", "tpu", grad=False, residual_dtype=jnp.float16)
    # which entries are narrowed: floats wider than the residual dtype; spikes are int8 anyway
    f32, bf16, f16 = jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)
    assert PN.residual_dtypes([f32, f32, f32], (2,)) == [f32, f32, jnp.dtype(jnp.int8)]
    assert PN.residual_dtypes([f32, f16, f32], (2,), jnp.bfloat16) == [bf16, f16, jnp.dtype(jnp.int8)]


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_lowering_with_bf16_residuals(platform):
    # float32 inputs and state: the only bf16 arrays in the module are the narrowed residuals
    assert "bf16" not in lower("LIF", platform, grad=True, x_dtype=jnp.float32)
    text = lower("LIF", platform, grad=True, x_dtype=jnp.float32, residual_dtype=jnp.bfloat16)
    assert text.count(CUSTOM_CALL[platform]) == 2, "one forward kernel and one backward kernel"
    assert "bf16" in text
