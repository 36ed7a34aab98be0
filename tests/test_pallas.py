"""The fused Pallas neuron-loop kernels (kernels/pallas_neuron.py).

Three kinds of checks:

- **equivalence in interpret mode** (any host): ``pallas_neuron.neuron_loop(..., interpret=True)``
  against the XLA loop ``kernels.neuron_loop.neuron_loop`` for every neuron type, under ``jit`` and
  ``vmap``, with padding (odd neuron counts, several tiles, time chunks with masked padded steps),
  bf16 inputs, and every ``want_out``/``want_read`` combination. Both run the same ``step`` in the
  same float32 operation order and store the same residuals, so outputs, reads and final states
  must agree to 1e-6 (observed: bitwise equal) and gradients to atol 1e-5 / rtol 1e-5 (observed:
  bitwise equal; the slack covers XLA CPU fusion choices such as FMA contraction).
  Through a model: ``snnkern.backend("pallas-interpret")`` against the reference path (outputs,
  final states, gradients; the tolerances of tests/helpers.py), in the GPU tile layout and in the
  TPU layout with masked padded time steps. Every spiking neuron fires on 2-98 % of its steps.
- **lowering without hardware**: the forward and the backward (``value_and_grad`` under ``vmap``)
  are lowered for ``cuda`` (Triton; an abstract H200 device stands in for the GPU) and for ``tpu``
  (Mosaic), and the lowered module must contain the kernels' custom calls. This runs the whole
  Pallas -> Triton-IR / Mosaic-MLIR lowering of every neuron's step and of its VJP; only the
  device compilers (ptxas / the TPU compiler) are not exercised.
- **on a GPU** (``@pytest.mark.gpu``, skipped elsewhere): the compiled kernels against the XLA loop,
  spike trains elementwise and every final state; a spike may differ only where the reference's
  membrane lies within 1e-4 of the threshold (FMA contraction in Triton vs XLA rounds differently),
  and what such a flip changes afterwards (its neuron's later steps) is left out of the comparison
  of outputs, states and gradients.
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
from snnkern.kernels import neuron_loop as NL
from snnkern.kernels import pallas_neuron as PN
from snnkern.kernels.tiling import NeuronTiling, layout_target
from snnkern.plan.seq import neuron_step as _neuron_step


def _spike_idx(layer):
    return layer.binary_state_entries()

from helpers import (assert_matches_reference, assert_rate, assert_trees_close, data, flip_columns,
                     membrane_index, pre_spike_gap, scale_linear)

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
    # mean 1.2 above the thresholds (0.4-0.9): the slow LIF (alpha 0.9) fires within 11 steps
    # (4 %); the spread (sd 1.2) keeps the integrators (IAF 89 %, SigmaDelta 87 %) below saturation
    xs = (1.2 * jax.random.normal(k[2], (B, T, n)) + 1.2).astype(x_dtype)
    return layer, layer.params(), st, xs


def batched(fn, layer, want_out=True, want_read=True, **kw):
    """``fn`` (a neuron loop) over a batch: params/state shared, xs batched; jit-compiled."""
    step, sidx = _neuron_step(layer), _spike_idx(layer)

    def one(params, st, x):
        return fn(step, params, st, x, sidx, want_out=want_out, want_read=want_read,
                  out_is_last_state=True, **kw)

    return jax.jit(jax.vmap(one, in_axes=(None, None, 0)))


def loss_of(fn, layer, want_out=True, want_read=True, keep=None, **kw):
    """jit(value_and_grad) of a loss mixing every output, read and final-state entry; the loop's
    results come back as the aux value, so one compilation checks forward and backward. ``keep``
    (B, n) bool: only those (sample, neuron) columns enter the loss (the others get no cotangent, so
    they add nothing to any gradient)."""
    run = jax.vmap(lambda p, s, x: fn(_neuron_step(layer), p, s, x, _spike_idx(layer), want_out=want_out,
                                      want_read=want_read, out_is_last_state=True, **kw),
                   in_axes=(None, None, 0))

    def loss(params, st, xs):
        sT, outs, reads = run(params, st, xs)
        T = xs.shape[1]
        w = jnp.cos(jnp.arange(T, dtype=jnp.float32)).reshape((1, T) + (1,) * (xs.ndim - 2))
        m = 1.0 if keep is None else jnp.asarray(keep, jnp.float32)        # (B, *neuron shape)
        val = sum(jnp.sum(m * jnp.sin(s.astype(jnp.float32) * (j + 1))) for j, s in enumerate(sT))
        if keep is not None:
            w = w * m[:, None]
        if outs is not None:
            val = val + jnp.sum(outs.astype(jnp.float32) * w)
        if reads is not None:
            val = val + 0.5 * jnp.sum(reads.astype(jnp.float32) * w[:, ::-1])
        return val, (sT, outs, reads)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


def check_problem(layer, params, st, xs, what, want_out=True, want_read=True, **kw):
    """Forward results and gradients of the interpreted kernels vs the XLA loop (jit + vmap), on
    spike trains that fire 2-98 % (the outputs, or the reads: the same spikes one step later)."""
    (l_ref, ref), g_ref = loss_of(NL.neuron_loop, layer, want_out, want_read)(params, st, xs)
    (l_got, got), g_got = loss_of(PN.neuron_loop, layer, want_out, want_read, interpret=True, **kw)(params, st, xs)
    if layer.spike_states:
        assert_rate(ref[1] if want_out else ref[2], f"{what} spikes")
    assert_trees_close(got, ref, OUT_ATOL, what=f"{what} forward")
    np.testing.assert_allclose(float(l_got), float(l_ref), rtol=1e-6, atol=1e-6)
    assert_trees_close(g_got, g_ref, GRAD_ATOL, GRAD_RTOL, what=f"{what} gradients")
    return g_ref


def check_equal(kind, want_out=True, want_read=True, n=37, T=11, x_dtype=jnp.float32, **kw):
    return check_problem(*setup(kind, n=n, T=T, x_dtype=x_dtype), kind, want_out, want_read, **kw)


def reference_entering_states(layer, params, st, xs):
    """The state entering every step, ``[(B, T, n)] per entry``, of a plain per-sample scan (the
    values the reference decides each spike from)."""
    step = _neuron_step(layer)

    def one(x):
        return jax.lax.scan(lambda s, xt: (step(params, s, xt)[0], s), list(st), x)[1]

    return jax.jit(jax.vmap(one))(xs)


def check_allowing_flips(kind, n, T, B, fwd_tol, grad_tol, max_flipped=0.01, **kw):
    """The kernels (``kw``: compiled, or interpreted) against the XLA loop where rounding may
    differ (GPU: FMA contraction in Triton vs XLA). Spike trains are compared elementwise; a spike
    may differ only where the reference's pre-spike membrane is within 1e-4 of the threshold
    (:func:`helpers.flip_columns`), and the (sample, neuron) columns such a flip changes (its later
    steps, its final state) are left out: their outputs and final states are not compared and the
    loss gives them no cotangent, so every gradient (parameters, state0, xs) is compared in full on
    both paths. At most ``max_flipped`` of the columns may be left out."""
    layer, params, st, xs = setup(kind, n=n, T=T, B=B)
    (_, ref), g_ref = loss_of(NL.neuron_loop, layer)(params, st, xs)
    (_, got), g_got = loss_of(PN.neuron_loop, layer, **kw)(params, st, xs)
    keep = np.ones((B, n), bool)
    if layer.spike_states:
        assert_rate(ref[1], f"{kind} spikes")
        s_in = reference_entering_states(layer, params, st, xs)
        gap = jax.jit(jax.vmap(jax.vmap(lambda s, x: pre_spike_gap(_neuron_step(layer), params, s, x,
                                                                   membrane_index(layer)))))(s_in, xs)
        keep = ~flip_columns(got[1], ref[1], gap)
        assert keep.mean() >= 1 - max_flipped, f"{kind}: {int((~keep).sum())} columns flipped"
    cols = lambda a, b, lead: np.where(keep.reshape(keep.shape[:1] + (1,) * lead + keep.shape[1:]), a, b)  # noqa: E731
    sT, outs, reads = got
    for k, (u, v) in enumerate(zip(sT, ref[0])):
        np.testing.assert_allclose(cols(np.asarray(u), np.asarray(v), 0), np.asarray(v), atol=fwd_tol,
                                   rtol=fwd_tol, err_msg=f"{kind} final state entry {k}")
    spike_tol = 0.0 if layer.spike_states else fwd_tol
    np.testing.assert_allclose(cols(np.asarray(outs), np.asarray(ref[1]), 1), np.asarray(ref[1]), atol=spike_tol,
                               rtol=spike_tol, err_msg=f"{kind} outputs")
    np.testing.assert_allclose(cols(np.asarray(reads), np.asarray(ref[2]), 1), np.asarray(ref[2]), atol=spike_tol,
                               rtol=spike_tol, err_msg=f"{kind} reads")
    if not keep.all():
        _, g_ref = loss_of(NL.neuron_loop, layer, keep=keep)(params, st, xs)
        _, g_got = loss_of(PN.neuron_loop, layer, keep=keep, **kw)(params, st, xs)
    assert_trees_close(g_got, g_ref, grad_tol, grad_tol, what=f"{kind} gradients")
    return g_ref


# ================================================================================================
# interpret-mode equivalence with the XLA loop


@pytest.mark.parametrize("kind", NEURONS)
def test_every_neuron_matches_xla_loop(kind):
    # 37 neurons in tiles of 32 (GPU layout: 32 lanes x 1 row): two tiles, 27 padded neurons. The
    # comparison of the GPU test below, here with the interpreted kernels: their rounding is the
    # XLA loop's, so no spike may flip (max_flipped 0) and the tolerances are the tight ones
    g = check_allowing_flips(kind, n=37, T=11, B=2, fwd_tol=OUT_ATOL, grad_tol=GRAD_ATOL, max_flipped=0.0,
                             interpret=True, block_n=32)
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
    # (3, 5, 7) neurons flattened into tiles; a threshold of 0.5 under currents of mean 1, sd 2
    # fires on 13 % of the steps of T = 8 (the deferred LIF needs two steps to see a current)
    layer = snn.LIF([0.8, 0.7], threshold=jnp.array(0.5))
    st = layer.init_state((3, 5, 7), None)
    xs = jax.random.normal(jax.random.PRNGKey(3), (2, 8, 3, 5, 7)) * 2 + 1.0
    check_problem(layer, layer.params(), st, xs, "(3, 5, 7) neurons", block_n=32)


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
    # a hidden neuron (the kernel emits the shifted read sequence) and a final one (outputs). The
    # default Linear init gives currents of ~0.3; x3 with a +0.8 bias drives the slow LIF (alpha
    # 0.9, threshold 0.5) on 7 % of its 13 steps, x2 with +0.3 the SigmaDelta (threshold 0.7) on 17 %
    return snn.Sequential(scale_linear(eqx.nn.Linear(6, 37, key=keys[0]), 3.0, 0.8),
                          snn.LIF([0.9, 0.8], threshold=jnp.array(0.5)),
                          scale_linear(eqx.nn.Linear(37, 19, key=keys[1]), 2.0, 0.3),
                          snn.SigmaDelta([0.5, 0.6, 0.7], threshold=jnp.array(0.7)))


@pytest.mark.parametrize("layout", ["gpu-tiles", "tpu-time-chunks"])
def test_model_backend_matches_reference(monkeypatch, keys, layout):
    """The whole model under ``pallas-interpret`` (both neurons run the interpreted kernels) against
    the reference: outputs, final states and gradients. ``tpu-time-chunks``: the kernels in their
    TPU grid layout, T = 13 in chunks of 4, so 3 padded steps must be masked out."""
    calls, padded = [], []
    orig = PN.neuron_loop

    def spy(*a, **k):
        calls.append(k.get("interpret"))
        if layout == "tpu-time-chunks":   # instead of the planner's tiling
            k["tiling"] = PN.default_tiling(None, True, block_t=4)
            T, n = a[3].shape[0], int(np.prod(a[3].shape[1:]))
            padded.append(k["tiling"].layout(T, n).T_pad - T)
        return orig(*a, **k)

    monkeypatch.setattr(PN, "neuron_loop", spy)
    model = _model(keys)
    st = model.init_state((6,), keys[3])
    xb = data((3, 13, 6), seed=4, lo=-1.0, hi=2.0)
    assert_matches_reference(model, st, xb, keys[5], batched=True, backend="pallas-interpret")
    assert calls and all(calls), f"the kernels must run, interpreted, under pallas-interpret: {calls}"
    if layout == "tpu-time-chunks":
        assert padded and all(p == 3 for p in padded), f"want 3 padded (masked) steps per loop: {padded}"


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
    assert text.count(CUSTOM_CALL[platform]) == 4     # LIF and SigmaDelta, forward and backward


# ================================================================================================
# on a real GPU


def test_flip_columns_allows_only_near_threshold_flips():
    ref = np.zeros((2, 4, 3))
    ref[0, 1, 2] = ref[1, 3, 0] = 1.0
    gap = np.full((2, 4, 3), 0.3)
    got = ref.copy()
    got[0, 1, 2], gap[0, 1, 2] = 0.0, 5e-5          # a near-threshold flip: column (0, 2) left out
    got[0, 2:, 2] = 1.0                               # ... with whatever follows it in that column
    assert flip_columns(got, ref, gap).tolist() == [[False, False, True], [False, False, False]]
    assert flip_columns(got, ref, gap, coupled=True).tolist() == [True, False]
    got[1, 3, 1] = 1.0                                # a flip 0.3 away from the threshold
    with pytest.raises(AssertionError, match="from the threshold"):
        flip_columns(got, ref, gap)
    with pytest.raises(AssertionError, match="from the threshold"):
        flip_columns(got, ref, gap, coupled=True)


def test_masked_loss_gives_left_out_columns_no_cotangent():
    # what the GPU test relies on after a flip: a left-out (sample, neuron) column adds nothing to
    # any gradient (here: d xs of that column is exactly zero, the others are not)
    layer, params, st, xs = setup("LIF")
    keep = np.ones((2, 37), bool)
    keep[1, 5] = False
    _, (_, _, g_x) = loss_of(NL.neuron_loop, layer, keep=keep)(params, st, xs)
    assert float(jnp.max(jnp.abs(g_x[1, :, 5]))) == 0.0
    assert float(jnp.min(jnp.max(jnp.abs(g_x), axis=1)[keep])) > 0


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")
@pytest.mark.parametrize("kind", NEURONS)
def test_compiled_on_gpu_matches_xla_loop(kind):
    # states and membranes to 1e-4 after 64 steps (FMA rounding compounds through the decays);
    # gradients to 1e-3 (surrogate derivatives at rounded membranes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        check_allowing_flips(kind, n=1000, T=64, B=4, fwd_tol=1e-4, grad_tol=1e-3)


# ================================================================================================
# residual_dtype: narrower membrane residuals (docs/kernels.md, "Membrane residual precision")

# measured at these sizes (LIF, n=37, T=11, B=2): largest per-leaf relative gradient difference
# bf16 vs the default (float32) residuals 1.5e-2; the bound leaves 3x room
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
