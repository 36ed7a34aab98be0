"""The recurrent loop: its batching rule (kernels/neuron_loop.py) and the fused Pallas recurrent
kernels (kernels/pallas_recurrent.py).

- **Oracle**: autodiff of a plain per-sample ``lax.scan`` of ``I_t = ff_t + (W r_{t-1} + b)`` and
  the neuron's ``step`` (what the reference path computes), vmapped over the batch.
- **Equivalence** (interpret mode on CPU): the XLA batched loop and the Pallas kernels (GPU tile
  layout; TPU layout with time chunks and masked padded steps; W read per step instead of held; the
  streamed GPU kernels for large n: n = 256 / 512 in 64-neuron blocks, and 16-neuron blocks at n = 37)
  against the oracle, under ``jit``, ``vmap`` and ``value_and_grad`` (and ``vmap(grad)``, plain
  ``grad``, per-example weights), for several neuron types. Forward: atol 1e-5 (the in-loop dot
  of the kernel sums padded zeros in another order than XLA's matvec); gradients: atol 1e-4 +
  rtol 1e-4 relative to each leaf (float32 sums over B x T terms in a different order; observed
  ~1e-6 relative).
- **Batching rule**: under ``grad(vmap(...))`` dW_rec is one GEMM over time *and* batch: the
  differentiated program has no (B, n, n) intermediate.
- **Lowering** for cuda (abstract H200) and tpu, forward and backward.
- **Dispatch** and **fallbacks** (size limit, strict mode), and the model path against the
  reference.
"""
from __future__ import annotations

import functools
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import snnkern
from snnkern import snn
from snnkern.functional.surrogate import sigmoid_surrogate, superspike_surrogate
from snnkern.plan import impl as plan_impl
from snnkern.kernels import pallas_recurrent as PR
from snnkern.kernels import recurrent as REC
from snnkern.plan import Impl
from snnkern.kernels.tiling import RecTiling
from snnkern.plan.strategies import RecurrentLoop
from snnkern.plan.seq import neuron_step as _neuron_step


def _spike_idx(layer):
    return layer.binary_state_entries()
from helpers import (KERNEL_GRAD_TOL, assert_matches_reference, assert_rate, assert_trees_close, data, flip_columns,
                     membrane_index, pre_spike_gap, scale_linear)
from test_pallas import CUSTOM_CALL, _abstract_mesh

FWD_ATOL = 1e-5
GRAD_ATOL, GRAD_RTOL = 1e-4, 1e-4


def make_neuron(kind, n):
    thr = jnp.linspace(0.5, 1.0, n)
    if kind == "LIF":
        return snn.LIF([0.9, 0.8], threshold=thr, spike_fn=superspike_surrogate(10.0))
    if kind == "LIFSoftReset":
        return snn.LIFSoftReset([0.85, 0.7], threshold=jnp.array(0.6), stop_reset_grad=False,
                                spike_fn=sigmoid_surrogate(4.0))
    if kind == "SimpleLIF":
        return snn.SimpleLIF([0.8], threshold=0.5, reset_val=jnp.array(0.1))
    if kind == "AdaptiveLIF":
        return snn.AdaptiveLIF([0.9], threshold=thr, stop_reset_grad=False)
    if kind == "IAF":
        return snn.IAF([0.7], leak=jnp.full((n,), 0.02), threshold=0.6)
    if kind == "SimpleLI":
        return snn.SimpleLI([0.8])
    raise ValueError(kind)


KINDS = ("LIF", "LIFSoftReset", "SimpleLIF", "AdaptiveLIF", "IAF", "SimpleLI")


def problem(kind, n=37, T=9, B=3, seed=0, bias=True, ff_dtype=jnp.float32):
    layer = make_neuron(kind, n)
    k = jax.random.split(jax.random.PRNGKey(seed), 6)
    st = layer.init_state((n,), k[0])
    st = [s + 0.3 * jax.random.uniform(jax.random.fold_in(k[1], j), (n,)) for j, s in enumerate(st)]
    ff = (3.0 * jax.random.normal(k[2], (B, T, n)) + 2.0).astype(ff_dtype)
    w = 1.5 * jax.random.normal(k[3], (n, n)) / np.sqrt(n)
    b = 0.1 * jax.random.normal(k[4], (n,)) if bias else None
    return layer, layer.params(), st, ff, w, b


def oracle_one(layer, p, st, ff, w, b, want_out=True, entering=False):
    """Autodiff of a per-sample lax.scan: the reference's computation. ``entering``: also the state
    entering each step (what each spike was decided from)."""
    step = _neuron_step(layer)

    def body(s, x):
        rec = w @ s[-1]
        i = x + (rec + b if b is not None else rec)
        ns, out = step(p, s, i)
        return ns, (out if want_out else None, i, s[-1], s if entering else None)

    sT, (o, c, r, s_in) = jax.lax.scan(body, list(st), ff)
    return (sT, o, c, r, s_in) if entering else (sT, o, c, r)


def loop_one(layer, impl, want_out=True, want_cur=True):
    step, sidx = _neuron_step(layer), _spike_idx(layer)
    if impl == "oracle":
        def f(*a):
            sT, o, c, r = oracle_one(layer, *a, want_out=want_out)
            return sT, o, c if want_cur else c[-1:], r
        return f
    return lambda p, st, ff, w, b: REC.recurrent_loop(step, p, st, ff, w, b, sidx, want_out=want_out, impl=impl,
                                                     want_cur=want_cur)


def loss_fn(layer, impl, want_out=True, st_axis=None, want_cur=True, keep=None):
    """jit(value_and_grad) of a loss mixing every result; ``keep`` (B,) bool: only those samples
    enter the loss (the others get no cotangent, so they add nothing to any gradient)."""
    one = loop_one(layer, impl, want_out, want_cur)

    def loss(p, st, ff, w, b):
        sT, o, c, r = jax.vmap(one, in_axes=(None, st_axis, 0, None, None))(p, st, ff, w, b)
        T = ff.shape[1]
        m = jnp.ones((ff.shape[0], 1), jnp.float32) if keep is None else jnp.asarray(keep, jnp.float32)[:, None]
        tw = jnp.cos(jnp.arange(T, dtype=jnp.float32))[None, :, None] * m[:, :, None]
        val = sum(jnp.sum(m * jnp.sin(s.astype(jnp.float32) * (j + 1))) for j, s in enumerate(sT))
        val = val + 0.1 * jnp.sum(m[:, :, None] * c.astype(jnp.float32) ** 2) + jnp.sum(r * tw[:, ::-1])
        if o is not None:
            val = val + jnp.sum(o.astype(jnp.float32) * tw)
        return val, (sT, o, c, r)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True))


def grads_close(got, ref, what, atol=GRAD_ATOL, rtol=GRAD_RTOL):
    """Gradients: atol plus rtol of the leaf's largest magnitude (sums over B x T terms)."""
    assert_trees_close(got, ref, atol, rtol, what, rel_to="leaf")


def pallas(**kw):
    return functools.partial(PR.recurrent_batched, interpret=True, **kw)


def check(kind, impl, want_out=True, bias=True, ff_dtype=jnp.float32, want_cur=True, fwd_tol=FWD_ATOL,
          grad_tol=(GRAD_ATOL, GRAD_RTOL), max_flipped=0.0, **prob):
    """``impl`` against the oracle: every result, and the gradients of a loss mixing them.

    ``max_flipped`` > 0 (a compiled kernel on a GPU, whose rounding differs): spike trains are
    compared elementwise, a spike may differ only where the oracle's pre-spike membrane is within
    1e-4 of the threshold (:func:`helpers.flip_columns`, coupled: a flip changes its whole sample
    from the next step on, through W_rec), and at most that fraction of the samples may be left out
    of the comparison; the loss gives them no cotangent, so every gradient is compared in full."""
    layer, p, st, ff, w, b = problem(kind, bias=bias, ff_dtype=ff_dtype, **prob)
    (l_ref, aux_ref), g_ref = loss_fn(layer, "oracle", want_out, want_cur=want_cur)(p, st, ff, w, b)
    (l_got, aux_got), g_got = loss_fn(layer, impl, want_out, want_cur=want_cur)(p, st, ff, w, b)
    if layer.spike_states:   # the outputs, or the reads (the same spikes one step later, state0 first)
        assert_rate(aux_ref[1] if want_out else aux_ref[3][:, 1:], f"{kind} spikes")
    keep = np.ones(ff.shape[0], bool)
    if max_flipped > 0 and layer.spike_states:
        assert want_out, "the flip-tolerant comparison reads the spike outputs"
        step = _neuron_step(layer)
        s_in = jax.jit(jax.vmap(lambda x: oracle_one(layer, p, st, x, w, b, entering=True)[4]))(ff)
        gap = jax.jit(jax.vmap(jax.vmap(lambda s, i: pre_spike_gap(step, p, s, i, membrane_index(layer)))))(
            s_in, aux_ref[2].astype(jnp.float32))
        keep = ~flip_columns(aux_got[1], aux_ref[1], gap, coupled=True)
        assert keep.mean() >= 1 - max_flipped, f"{kind}: {int((~keep).sum())} of {keep.size} samples flipped"
    rows = lambda a, b: np.where(keep.reshape((-1,) + (1,) * (np.ndim(a) - 1)), a, b)  # noqa: E731
    got_kept = jax.tree.map(lambda a, b: rows(np.asarray(a, np.float32), np.asarray(b, np.float32)), aux_got, aux_ref)
    assert_trees_close(got_kept, jax.tree.map(lambda a: np.asarray(a, np.float32), aux_ref), fwd_tol, fwd_tol if
                       max_flipped > 0 else 0.0, what=f"{kind} forward")
    if keep.all():
        np.testing.assert_allclose(float(l_got), float(l_ref), rtol=1e-5)
    else:
        _, g_ref = loss_fn(layer, "oracle", want_out, want_cur=want_cur, keep=keep)(p, st, ff, w, b)
        _, g_got = loss_fn(layer, impl, want_out, want_cur=want_cur, keep=keep)(p, st, ff, w, b)
    grads_close(g_got, g_ref, f"{kind} gradients", *grad_tol)
    assert float(jnp.max(jnp.abs(g_ref[3]))) > 0, "dW_rec is zero: the recurrence is not exercised"
    return g_got


# ================================================================================================
# the XLA batched loop (custom batching rule) against the oracle


@pytest.mark.parametrize("kind", KINDS)
def test_xla_batched_loop_matches_oracle(kind):
    check(kind, None)


def test_xla_loop_without_bias_and_outputs():
    check("LIF", None, want_out=False, bias=False)


def test_xla_loop_bf16_feed_forward():
    # bf16 ff with float32 state and W: I_t is float32, so it cannot take ff's buffer (the in-place
    # path is for equal dtypes); d ff comes back in bf16
    g = check("IAF", None, ff_dtype=jnp.bfloat16)
    assert g[2].dtype == jnp.bfloat16


@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_last_current_only(impl):
    # a non-final recurrent compound keeps only I_T (its state): want_cur=False gives (1, n), and
    # the program has no (T, B, n) current cotangent
    check("SimpleLIF", None if impl == "xla" else pallas(), want_out=False, want_cur=False)


def test_per_example_gradients_and_unbatched_call():
    """``vmap(grad)`` (per-example gradients) and a call without vmap take the one-sample custom
    VJP (JAX cannot linearize a custom_vmap function); both equal the oracle."""
    layer, p, st, ff, w, b = problem("AdaptiveLIF")
    for impl in (None, pallas()):
        one = loop_one(layer, impl)
        ref = loop_one(layer, "oracle")

        def per_example(f):
            def l(w, x):
                sT, o, c, r = f(p, st, x, w, b)
                return jnp.sum(o * jnp.arange(o.shape[0])[:, None]) + jnp.sum(sT[0] ** 2)
            return jax.jit(jax.vmap(jax.grad(l), in_axes=(None, 0)))

        g_got, g_ref = per_example(one)(w, ff), per_example(ref)(w, ff)
        assert g_got.shape == (ff.shape[0],) + w.shape
        grads_close(g_got, g_ref, "per-example dW_rec")
        g1 = jax.grad(lambda w: jnp.sum(one(p, st, ff[0], w, b)[1] ** 2))(w)
        g1_ref = jax.grad(lambda w: jnp.sum(ref(p, st, ff[0], w, b)[1] ** 2))(w)
        grads_close(g1, g1_ref, "unbatched dW_rec")


def test_per_example_weights_fall_back_to_vmap_of_one_sample():
    # an ensemble (one W_rec per example): the batching rule vmaps the one-sample loop
    layer, p, st, ff, w, b = problem("LIF")
    ws = jnp.stack([w, 0.5 * w, -w])
    for impl in (None, pallas()):
        got = jax.jit(jax.vmap(loop_one(layer, impl), in_axes=(None, None, 0, 0, None)))(p, st, ff, ws, b)
        ref = jax.vmap(loop_one(layer, "oracle"), in_axes=(None, None, 0, 0, None))(p, st, ff, ws, b)
        assert_trees_close(got, ref, FWD_ATOL, what="ensemble")


def test_batched_initial_state():
    # a per-example initial state (the usual case: init_state under vmap)
    layer, p, st, ff, w, b = problem("LIF")
    sts = [jnp.stack([s, 0.5 * s, s + 0.1]) for s in st]
    (_, aux_ref), g_ref = loss_fn(layer, "oracle", st_axis=0)(p, sts, ff, w, b)
    for impl in (None, pallas()):
        (_, aux), g = loss_fn(layer, impl, st_axis=0)(p, sts, ff, w, b)
        assert_trees_close(aux, aux_ref, FWD_ATOL, what="batched state0 forward")
        grads_close(g, g_ref, "batched state0 gradients")


def _shapes_in(jaxpr):
    """Every intermediate's shape in a jaxpr, sub-jaxprs included."""
    out = []
    for eqn in jaxpr.eqns:
        out += [tuple(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape")]
        for p in eqn.params.values():
            for j in (p if isinstance(p, (list, tuple)) else [p]):
                if hasattr(j, "jaxpr") and hasattr(j.jaxpr, "eqns"):
                    out += _shapes_in(j.jaxpr)
                elif hasattr(j, "eqns"):
                    out += _shapes_in(j)
    return out


@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_grad_of_vmap_forms_dw_once(impl):
    """The point of the batching rule: under ``grad(vmap(...))`` dW_rec is one GEMM over time and
    batch. Without it (vmap of the one-sample custom VJP) the program holds a (B, n, n) array of
    per-example dW_rec before summing them."""
    layer, p, st, ff, w, b = problem("LIF", n=24, B=5)
    fn = loss_fn(layer, None if impl == "xla" else pallas())
    shapes = _shapes_in(jax.make_jaxpr(fn)(p, st, ff, w, b).jaxpr)
    B, n = ff.shape[0], w.shape[0]
    assert (n, n) in shapes
    assert (B, n, n) not in shapes, "per-example dW_rec formed"
    # the control: JAX's own vmap of the one-sample custom VJP does form it (so the check above can fail)
    step, sidx = _neuron_step(layer), _spike_idx(layer)
    dyn, static = eqx.partition(p, eqx.is_array)

    def per_sample(w, x):   # the one-sample custom VJP, vmapped by JAX's generic rule
        sT, o, c, r = REC.recurrent_batched(step, dyn, static, w, b, [s[None] for s in st], x[None], sidx)
        return jnp.sum(o)

    ctrl = _shapes_in(jax.make_jaxpr(jax.grad(lambda w: jnp.sum(jax.vmap(lambda x: per_sample(w, x))(ff))))(w).jaxpr)
    assert (B, n, n) in ctrl


# ================================================================================================
# the Pallas kernels (interpret mode) against the oracle


@pytest.mark.parametrize("kind", KINDS)
def test_pallas_gpu_layout_matches_oracle(kind):
    # 37 neurons -> 64 (power of 2), 3 samples -> one tile of 16
    check(kind, pallas())


def test_pallas_tpu_layout_time_chunks_and_batch_tiles():
    # T = 13 in chunks of 4 (3 padded steps, masked); 11 samples in tiles of 8 (2 tiles, 5 padded);
    # 37 neurons -> 128 lanes; bf16 feed-forward currents with float32 state
    g = check("AdaptiveLIF", pallas(block_t=4, block_b=8), T=13, B=11, ff_dtype=jnp.bfloat16)
    assert g[2].dtype == jnp.bfloat16


def test_pallas_several_batch_tiles_no_bias_no_outputs():
    check("LIFSoftReset", pallas(block_b=16), B=35, bias=False, want_out=False, want_cur=False)


def test_pallas_w_read_every_step(monkeypatch):
    # W^T too big to hold: the streamed kernels (the path of 256+ neurons on GPU), here one block of 64
    monkeypatch.setitem(PR.RESIDENT_W_BYTES, "gpu", 0)
    # with the flip-tolerant comparison of the GPU test (the interpreted kernel rounds as the
    # oracle does, so nothing is left out: it runs the code path the GPU test depends on)
    check("LIF", pallas(), max_flipped=0.25)


@pytest.mark.parametrize("n", [256, 512])
def test_pallas_streamed_large_n_matches_oracle(n):
    # 256 / 512 neurons: W_rec not on chip (256^2 x 4 B > 64 KiB), streamed in 64 x 64 tiles: 4 / 8 column
    # blocks; the state in the output blocks. Outputs, final states and gradients against the oracle
    assert not PR.resident_w(n, jnp.float32, "gpu") and RecTiling("gpu").layout(8, 2, n, streamed=True).bk == 64
    check("LIF", pallas(), n=n, T=8, B=2)


@pytest.mark.parametrize("kind", KINDS)
def test_pallas_streamed_column_blocks_match_oracle(kind):
    # the streamed kernels in 16-neuron blocks (37 neurons -> 64: 4 blocks, the last 11 of them padding),
    # every neuron type, with and without the bias and the outputs
    plain = KINDS.index(kind) % 2 == 0
    check(kind, pallas(tiling=RecTiling("gpu", block_k=16), resident=False), bias=plain, want_out=plain,
          want_cur=plain, T=7)


def test_pallas_streamed_bf16_feed_forward_and_batch_tiles():
    g = check("AdaptiveLIF", pallas(tiling=RecTiling("gpu", block_b=16, block_k=32), resident=False), B=19,
              ff_dtype=jnp.bfloat16, T=6)
    assert g[2].dtype == jnp.bfloat16


def test_pallas_kernel_raises_on_w_it_cannot_hold():
    layer, p, st, ff, w, b = problem("LIF", n=200, T=3, B=2)
    with pytest.raises(ValueError, match="cannot hold W_rec on chip.*200 neurons.*resident=False"):
        loss_fn(layer, pallas(resident=True))(p, st, ff, w, b)
    with pytest.raises(ValueError, match="block_k must be a power of 2"):
        RecTiling("gpu", block_k=48)
    with pytest.raises(ValueError, match="need the gpu tiling"):
        RecTiling("tpu").layout(3, 2, 256, streamed=True)


def test_plan_w_choices():
    # resident up to 64 KiB on GPU; streamed above, with the tile and the reason; TPU keeps W in VMEM
    assert PR.plan_w(128, jnp.float32, "gpu") == (True, "W_rec on chip: 128 x 128 x 4 B <= 64 KiB", None)
    res, note, why = PR.plan_w(300, jnp.float32, "gpu")
    assert not res and why is None and note.startswith("W_rec streamed per step in 64 x 64 tiles") and "512 x 512" in note
    assert PR.plan_w(1024, jnp.float32, "tpu")[0] is True
    assert PR.plan_w(256, jnp.bfloat16, "gpu")[0] is False            # 128 KiB
    res, note, why = PR.plan_w(256, jnp.float32, "gpu", per_step=("LayerNorm",))
    assert "LayerNorm" in why and "64-neuron blocks" in why


def test_per_step_layers_keep_a_streamed_size_on_xla():
    # a LayerNorm (or any per-step layer) inside the recurrence needs whole rows: 256 unpadded neurons
    # (the streamed size) run the XLA loop, with the reason; without per-step layers the streamed kernels
    from test_recurrent_chains import recmlp
    with snnkern.backend("pallas-interpret"):
        for kind, n in (("ln", 256), ("identity-lambda", 256)):
            loops = [s for s in snnkern.explain(recmlp(jax.random.PRNGKey(0), n=n, kind=kind), (3, 4)).steps
                     if isinstance(s.spec, RecurrentLoop)]
            assert loops and all(s.impl is Impl.XLA and "need a whole row" in s.reason for s in loops), kind
        loops = [s for s in snnkern.explain(recmlp(jax.random.PRNGKey(0), n=256, kind="none"), (3, 4)).steps
                 if isinstance(s.spec, RecurrentLoop)]
        assert loops and all(s.impl is Impl.PALLAS_INTERPRET and "streamed" in str(s) for s in loops)


def test_pallas_kernel_raises_when_too_large(monkeypatch):
    # the planner keeps such a layer on XLA (test_plan_checks_the_recurrent_size_limit); the kernel
    # itself never falls back: handed a loop it cannot take, it raises
    monkeypatch.setattr(PR, "MAX_N", 32)
    layer, p, st, ff, w, b = problem("LIF", n=37)
    with pytest.raises(ValueError, match="W_rec does not fit"):
        loss_fn(layer, pallas())(p, st, ff, w, b)


def test_rec_tiling_and_eligible():
    g = RecTiling("gpu").layout(100, 3, 37)
    assert (g.bB, g.B_pad, g.n_pad, g.tc) == (16, 16, 64, 100)
    g = RecTiling("gpu", block_b=32).layout(10, 100, 300)
    assert (g.bB, g.B_pad, g.n_pad, g.n_tiles) == (32, 128, 512, 4)
    t = RecTiling("tpu").layout(100, 20, 300)
    assert t.bB % 8 == 0 and t.n_pad == 384 and t.tc == 64 and t.T_pad == 128 and t.B_pad % t.bB == 0
    a = RecTiling("any").layout(100, 3, 37)
    assert (a.bB, a.n_pad, a.tc) == (16, 128, 100)
    with pytest.raises(ValueError, match="power of 2"):
        RecTiling("gpu", block_b=24).layout(10, 4, 8)
    with pytest.raises(ValueError, match="multiple of 8"):
        RecTiling("tpu", block_b=12).layout(10, 4, 8)
    assert PR.eligible(10, 128, jnp.float32, "cuda") is None
    # GPU: 256+ padded neurons run the streamed kernels (tests/test_gpu_compile.py), up to MAX_N
    assert PR.eligible(10, 256, jnp.float32, "cuda") is None and PR.eligible(10, 1024, jnp.float32, "cuda") is None
    s = RecTiling("gpu").layout(10, 3, 300, streamed=True)
    assert (s.streamed, s.bk, s.n_pad, s.num_warps) == (True, 64, 512, 8)
    assert RecTiling("gpu", block_k=256).layout(10, 3, 100, streamed=True).bk == 128     # at most n_pad
    assert RecTiling("gpu").layout(10, 3, 300).num_warps == 16                          # resident: n_pad // 8
    assert PR.eligible(10, 256, jnp.float32, "tpu") is None
    assert PR.eligible(10, 1024, jnp.bfloat16, "tpu") is None
    assert "1025" in PR.eligible(10, 1025, jnp.float32, "cuda")
    assert "dtype" in PR.eligible(10, 8, jnp.int32, "cpu")
    assert "T = 0" in PR.eligible(0, 8, jnp.float32, "cpu")
    assert "float16" in PR.eligible(3, 8, jnp.float16, "tpu")


# ================================================================================================
# implementation choice


def test_auto_picks_pallas_on_accelerators(monkeypatch):
    monkeypatch.delenv("SNNKERN_BACKEND", raising=False)
    monkeypatch.delenv("SNNKERN_AUTO_PALLAS", raising=False)
    for plat in ("gpu", "cuda", "tpu"):
        assert plan_impl.choose_impl("x", plat) == plan_impl.Choice(Impl.PALLAS)
    assert plan_impl.choose_impl("x", "cpu") == plan_impl.Choice(Impl.XLA)
    monkeypatch.setenv("SNNKERN_AUTO_PALLAS", "0")
    assert plan_impl.choose_impl("x", "gpu") == plan_impl.Choice(Impl.XLA)
    monkeypatch.delenv("SNNKERN_AUTO_PALLAS")
    c = plan_impl.choose_impl("x", "metal")
    assert c.impl is Impl.XLA and "metal" in c.reason
    with snnkern.strict(), pytest.raises(snnkern.FallbackError, match="metal"):
        plan_impl.choose_impl("x", "metal")
    with snnkern.backend("xla"):
        assert plan_impl.choose_impl("x", "gpu") == plan_impl.Choice(Impl.XLA)


def test_plan_checks_the_recurrent_size_limit(keys, monkeypatch):
    # the planner knows n from the recurrent Linear: a layer over the limit is planned on XLA with
    # the reason shown by explain (not only logged when traced)
    monkeypatch.setattr(PR, "MAX_N", 16)
    with snnkern.backend("pallas-interpret"):
        plan = snnkern.explain(rec_model(keys, n=24), (5,))
        rec = [s for s in plan.steps if isinstance(s.spec, RecurrentLoop)][0]
        assert rec.impl is Impl.XLA and "W_rec does not fit" in rec.reason
        with snnkern.strict(), pytest.raises(snnkern.FallbackError, match="W_rec"):
            snnkern.explain(rec_model(keys, n=24), (5,))
        small = [s for s in snnkern.explain(rec_model(keys, n=8), (5,)).steps if isinstance(s.spec, RecurrentLoop)][0]
        assert small.impl is Impl.PALLAS_INTERPRET and small.reason is None and small.spec.tiling is not None
        assert small.spec.resident_w and "W_rec on chip: 16 x 16 x 4 B <= 64 KiB" in str(small)
    monkeypatch.setattr(PR, "MAX_N", 1024)
    with snnkern.backend("pallas-interpret"):
        plan = snnkern.explain(rec_model(keys, n=256), (5,))
    big = [s for s in plan.steps if isinstance(s.spec, RecurrentLoop)][0]
    assert big.impl is Impl.PALLAS_INTERPRET and not big.spec.resident_w and big.reason is None
    assert "W_rec streamed per step in 64 x 64 tiles, state in global memory: 256 x 256 x 4 B > 64 KiB" in str(plan)


def test_recurrent_spec_routing(keys, monkeypatch):
    # the runner hands the planned spec to the loop: the Pallas kernel gets the planned tiling
    seen = []
    orig = PR.recurrent_batched
    monkeypatch.setattr(PR, "recurrent_batched", lambda *a, **kw: seen.append(kw) or orig(*a, **kw))
    model = rec_model(keys, n=8)
    with snnkern.backend("pallas-interpret"):
        spec = [s for s in snnkern.explain(model, (5,)).steps if isinstance(s.spec, RecurrentLoop)][0].spec
        x = jnp.ones((3, 6, 5))
        eqx.filter_vmap(model, in_axes=(None, 0, None))(model.init_state((5,), keys[2]), x, keys[2])
    assert seen and seen[0]["interpret"] is True and seen[0]["tiling"] == spec.tiling
    assert seen[0]["resident"] == spec.resident_w


# ================================================================================================
# through a model


def rec_model(keys, n=24):
    # the feed-forward branch x2 with a +0.3 bias (the default init gives currents of ~0.3): the
    # LIF (threshold 0.3) fires on 11 % of its steps for inputs in [0, 2)
    ff = scale_linear(eqx.nn.Linear(5, n, key=keys[0]), 2.0, 0.3)
    comp = snn.CompoundLayer(snn.Parallel([ff, eqx.nn.Linear(n, n, key=keys[1])]),
                             snn.LIF([0.9, 0.8], threshold=jnp.array(0.3)))
    return snn.SequentialLocalFeedback([comp, eqx.nn.Linear(n, 3, key=keys[2]), snn.SimpleLI([0.8])])


@pytest.mark.parametrize("layout", ["gpu-tiles", "tpu-time-chunks"])
def test_model_recurrent_pallas_interpret_matches_reference(keys, monkeypatch, layout):
    """The recurrent model under ``pallas-interpret`` against the reference: outputs, final states
    and gradients (dW_rec included). ``tpu-time-chunks``: the recurrent kernel in its TPU grid
    layout, T = 15 in chunks of 4 (one padded step, masked), samples in tiles of 8."""
    calls, padded = [], []
    orig = PR.recurrent_batched

    def spy(*a, **k):
        calls.append((k.get("interpret"), a[6].shape))
        if layout == "tpu-time-chunks":   # instead of the planner's tiling
            k["tiling"] = PR.default_tiling(None, True, block_b=8, block_t=4)
            B, T, n = a[6].shape
            padded.append(k["tiling"].layout(T, B, n).T_pad - T)
        return orig(*a, **k)

    monkeypatch.setattr(PR, "recurrent_batched", spy)
    model = rec_model(keys)
    with snnkern.backend("pallas-interpret"):
        plan = snnkern.explain(model, (5,))
    rec = [s for s in plan.steps if isinstance(s.spec, RecurrentLoop)]
    assert rec and rec[0].impl is Impl.PALLAS_INTERPRET and rec[0].reason is None, str(plan)
    st = model.init_state((5,), keys[3])
    _, _, g = assert_matches_reference(model, st, data((4, 15, 5), seed=4, hi=2.0), keys[5], batched=True,
                                       backend="pallas-interpret", grad_tol=KERNEL_GRAD_TOL)
    # interpreted, and batched: one loop over the 4 samples (batch-major ff (B, T, n)); the model's
    # input check traces one sample abstractly first (B = 1)
    assert all(c[0] for c in calls) and (True, (4, 15, 24)) in calls, calls
    if layout == "tpu-time-chunks":
        assert padded and all(p == 1 for p in padded), f"want 1 padded (masked) step per loop: {padded}"
    assert float(jnp.max(jnp.abs(g[0].layers[0].layers[0].layers[1].weight))) > 0


# ================================================================================================
# lowering for cuda and tpu without the hardware


def lower(kind, platform, n=100, T=40, B=8, ff_dtype=jnp.bfloat16, want_out=True, want_cur=True, bias=True, **kw):
    layer = make_neuron(kind, n)
    p, st = layer.params(), layer.init_state((n,), None)   # concrete arrays: made outside the mesh
    w, b = jnp.zeros((n, n)), (jnp.zeros((n,)) if bias else None)
    one = loop_one(layer, functools.partial(PR.recurrent_batched, **kw), want_out, want_cur)

    def f(p, st, ff, w, b):
        sT, o, c, r = jax.vmap(one, in_axes=(None, None, 0, None, None))(p, st, ff, w, b)
        return (jnp.sum(c.astype(jnp.float32)) + jnp.sum(r) + sum(jnp.sum(s) for s in sT)
                + (jnp.sum(o.astype(jnp.float32)) if o is not None else 0.0))

    fn = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3, 4)))
    ff = jax.ShapeDtypeStruct((B, T, n), ff_dtype)
    with jax.sharding.use_abstract_mesh(_abstract_mesh(platform)), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return fn.trace(p, st, ff, w, b).lower(lowering_platforms=(platform,)).as_text()


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
@pytest.mark.parametrize("kind", KINDS)
def test_lowering_forward_and_backward(kind, platform):
    # W^T resident (n = 100 -> 128), bf16 currents; every other neuron without the bias
    text = lower(kind, platform, bias=KINDS.index(kind) % 2 == 0)
    assert text.count(CUSTOM_CALL[platform]) == 2, "one forward kernel and one backward kernel"
    assert "snnkern_recurrent_fwd" in text and "snnkern_recurrent_bwd" in text


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_lowering_large_w_read_per_step_and_time_chunks(platform, monkeypatch):
    # 300 neurons: GPU n_pad 512 (W^T 1 MiB, streamed in 64 x 64 tiles), TPU 384 (resident); T = 200 in
    # TPU chunks of 64 (masked); 40 samples in several batch tiles; float32, no outputs, last current only
    del monkeypatch
    text = lower("LIF", platform, n=300, T=200, B=40, ff_dtype=jnp.float32, want_out=False, want_cur=False)
    assert text.count(CUSTOM_CALL[platform]) == 2


# ================================================================================================
# on a real GPU


def test_masked_loss_gives_left_out_samples_no_cotangent():
    # what the GPU test relies on after a flip: a left-out sample adds nothing to any gradient
    # (its d ff is exactly zero; the recurrence couples only neurons of one sample)
    layer, p, st, ff, w, b = problem("LIF")
    keep = np.array([True, False, True])
    _, g = loss_fn(layer, None, keep=keep)(p, st, ff, w, b)
    assert float(jnp.max(jnp.abs(g[2][1]))) == 0.0
    assert float(jnp.max(jnp.abs(g[2][0]))) > 0 and float(jnp.max(jnp.abs(g[2][2]))) > 0


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")
@pytest.mark.parametrize("n", [100, 256])
def test_compiled_recurrent_on_gpu_matches_xla(n):
    # the compiled kernel against the oracle (autodiff of a per-sample scan on the GPU), HIGHEST
    # matmul precision on both; states and currents to 1e-3 after 64 steps, spikes elementwise
    # with documented near-threshold flips (see ``check``)
    hi = functools.partial(PR.recurrent_batched, precision=jax.lax.Precision.HIGHEST)
    with jax.default_matmul_precision("highest"), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        check("LIF", hi, n=n, T=64, B=32, fwd_tol=1e-3, max_flipped=0.25)


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_auto_backend_lowers_a_model_to_the_kernels(platform, keys, monkeypatch):
    """The issue's dispatch rule end to end, without the hardware: with ``auto`` (the default) a
    recurrent model and a feed-forward neuron, traced for an abstract GPU / TPU device, lower to
    the Pallas kernels (recurrent forward + backward, neuron loop forward + backward), and the plan
    says so without a fallback."""
    monkeypatch.delenv("SNNKERN_BACKEND", raising=False)
    monkeypatch.delenv("SNNKERN_AUTO_PALLAS", raising=False)
    model = rec_model(keys)
    st = model.init_state((5,), keys[3])
    params, static = eqx.partition(model, eqx.is_array)
    k = keys[5]

    def loss(params, xb):
        f, o = jax.vmap(eqx.combine(params, static), in_axes=(None, 0, None))(st, xb, k)
        return jnp.sum(o[0])

    xb = jax.ShapeDtypeStruct((4, 20, 5), jnp.float32)
    with jax.sharding.use_abstract_mesh(_abstract_mesh(platform)), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        plan = snnkern.explain(model)
        text = jax.jit(jax.value_and_grad(loss)).trace(params, xb).lower(lowering_platforms=(platform,)).as_text()
    assert plan.platform in ("gpu", "tpu") and not plan.fallbacks, str(plan)
    loops = [s for s in plan.steps if s.spec.is_loop]
    assert loops and all(s.impl is Impl.PALLAS and s.spec.tiling.target == ("gpu" if platform == "cuda" else "tpu")
                         for s in loops), str(plan)
    assert text.count(CUSTOM_CALL[platform]) == 4
    assert "snnkern_recurrent_fwd" in text and "snnkern_recurrent_bwd" in text
    assert "snnkern_neuron_fwd" in text and "snnkern_neuron_bwd" in text
    # and on this CPU host, outside the abstract mesh, auto stays on XLA
    assert all(s.impl in (None, Impl.XLA) for s in snnkern.explain(model).steps)
