"""The one loop builder (kernels/loop_builder.py) on couplings no model reaches: feedback with a delay
d = 3 *and* a bias, the current stored or recomputed, against autodiff of a plain per-sample
``lax.scan`` of ``I_t = c_t + W s_{t-d} + b`` (``s_{-1}`` = the initial spike state, zeros before).

Outputs, reads, currents and final states, and gradients w.r.t. the neuron's parameters, W, b, the
initial state and the input, for one sample under ``jit``, under ``vmap`` (the builder's batching
rule), ``grad(vmap)`` (one batched loop), ``vmap(grad)`` (per-example gradients: the one-sample VJP)
and an ensemble (W batched: plain vmap of the one-sample loop). The initial spike entry is not 0/1
(the loop takes the last state entry from ``reads``, exactly, never from a bool copy). Tolerances of tests/helpers.py:
outputs 1e-5 + 1e-5 rel (the same float32 operations, the recurrent product a GEMM over the batch
instead of per sample), gradients 1e-5 + 1e-4 of each leaf's largest entry (sums over T x B terms
taken in another order). Every case fires 2-98 % (checked).
"""
from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from snnkern import snn
from snnkern.kernels.loop_builder import Feedback, batch_over, coupled_loop
from snnkern.plan.seq import neuron_step

from helpers import GRAD_ATOL, GRAD_RTOL, OUT_ATOL, OUT_RTOL, assert_rate, assert_trees_close
from test_pallas_recurrent import _shapes_in

N, T, B = 12, 10, 4


def _problem(seed=0):
    layer = snn.LIF([0.9, 0.8], threshold=jnp.linspace(0.4, 0.8, N))
    k = jax.random.split(jax.random.PRNGKey(seed), 5)
    st = layer.init_state((N,), k[0])
    st = [s + 0.3 * jax.random.uniform(jax.random.fold_in(k[1], j), (N,)) for j, s in enumerate(st)]
    st[-1] = jnp.where(jnp.arange(N) % 3 == 0, 0.7, 0.0)      # an initial "spike" entry that is not 0/1
    c = 5.0 * jax.random.normal(k[2], (B, T, N)) + 1.5       # ~13 % spikes; the feedback moves ~5 % of them
    w = 4.0 * jax.random.normal(k[3], (N, N)) / np.sqrt(N)
    b = 0.2 * jax.random.normal(k[4], (N,))
    return layer, layer.params(), st, c, w, b


def _oracle(layer, delay):
    step = neuron_step(layer)

    def one(p, st, c, w, b):
        def body(carry, ct):
            s, ring = carry
            hist = ring + [s[-1]]
            i = ct + (hist[0] @ w.T + b)
            ns, out = step(p, s, i)
            return (ns, hist[1:]), (out, s[-1], i)

        (sT, _), (o, r, i) = jax.lax.scan(body, (list(st), [jnp.zeros_like(st[-1])] * (delay - 1)), c)
        return sT, o, r, i

    return one


def _builder(layer, delay, recompute):
    step, sidx = neuron_step(layer), tuple(layer.binary_state_entries())
    coupling = Feedback(delay=delay, recompute=recompute)

    def one(p, st, c, w, b):
        dyn, static = eqx.partition(p, eqx.is_array)

        def many(d, ww, bb, s0, x):
            sT, o, r, i = coupled_loop(step, coupling, d, static, (ww, bb), s0, x, sidx, want_out=True, want_cur=True,
                                       axis=1)
            return sT, o, r, i

        return batch_over(many, 3)(dyn, w, b, list(st), c)

    return one


def _loss(outs):
    sT, o, r, i = outs
    tw = jnp.cos(jnp.arange(o.shape[0], dtype=jnp.float32))[:, None]
    return (sum(jnp.sum(jnp.sin(s * (j + 1))) for j, s in enumerate(sT)) + jnp.sum(o * tw)
            + jnp.sum(r * tw[::-1]) + 0.1 * jnp.sum(i ** 2))


def _run(one, mode, p, st, c, w, b):
    """``(outputs, gradients wrt (p, st, c, w, b))`` of ``one`` under ``mode``."""
    def loss1(p, st, c, w, b):
        out = one(p, st, c, w, b)
        return _loss(out), out

    vg1 = jax.value_and_grad(loss1, argnums=(0, 1, 2, 3, 4), has_aux=True)
    if mode == "jit":
        (_, out), g = jax.jit(vg1)(p, st, c[0], w, b)
        return out, g
    if mode == "vmap-of-grad":
        (_, out), g = jax.jit(jax.vmap(vg1, in_axes=(None, None, 0, None, None)))(p, st, c, w, b)
        return out, g
    w_axis = 0 if mode == "ensemble" else None
    ws = jnp.stack([w * (1.0 + 0.1 * k) for k in range(B)]) if mode == "ensemble" else w

    def loss(p, st, c, w, b):
        out = jax.vmap(one, in_axes=(None, None, 0, w_axis, None))(p, st, c, w, b)
        return jnp.sum(jax.vmap(_loss)(out)), out

    if mode == "vmap":
        return jax.jit(jax.vmap(one, in_axes=(None, None, 0, w_axis, None)))(p, st, c, ws, b), None
    (_, out), g = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True))(p, st, c, ws, b)
    return out, g


@pytest.mark.parametrize("mode", ["jit", "vmap", "grad-of-vmap", "vmap-of-grad", "ensemble"])
@pytest.mark.parametrize("delay,recompute", [(3, False), (3, True), (1, True)])
def test_feedback_coupling_matches_autodiff_of_a_scan(delay, recompute, mode):
    layer, p, st, c, w, b = _problem()
    got, g_got = _run(_builder(layer, delay, recompute), mode, p, st, c, w, b)
    ref, g_ref = _run(_oracle(layer, delay), mode, p, st, c, w, b)
    assert_rate(ref[1], f"spikes d={delay}")
    assert_trees_close(got[1:], ref[1:], OUT_ATOL, OUT_RTOL, f"{mode}: outputs, reads, currents")
    assert_trees_close(got[0], ref[0], OUT_ATOL, OUT_RTOL, f"{mode}: final state")
    if g_ref is not None:
        assert_trees_close(g_got, g_ref, GRAD_ATOL, GRAD_RTOL, f"{mode}: gradients (p, state0, c, W, b)",
                           rel_to="leaf")
        # the gradients the coupling makes (W, b) and the initial spike entry's (not 0/1: its bool residual
        # would give another) are not vacuous
        assert min(float(jnp.max(jnp.abs(g))) for g in (g_ref[3], g_ref[4], g_ref[1][-1])) > 1e-3


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_sequence_no_longer_than_the_delay(steps):
    """T <= d: every s_{t-d} is a zero seed or the initial state, dW is empty or one step's (grad(vmap),
    the batched loop)."""
    layer, p, st, c, w, b = _problem()
    c = c[:, :steps]
    got, g_got = _run(_builder(layer, 3, True), "grad-of-vmap", p, st, c, w, b)
    ref, g_ref = _run(_oracle(layer, 3), "grad-of-vmap", p, st, c, w, b)
    assert_trees_close(got, ref, OUT_ATOL, OUT_RTOL, f"T={steps}: outputs")
    assert_trees_close(g_got, g_ref, GRAD_ATOL, GRAD_RTOL, f"T={steps}: gradients", rel_to="leaf")
    assert (float(jnp.max(jnp.abs(g_ref[3]))) > 0) == (steps == 3), "dW is zero exactly while T < d"


def test_grad_of_vmap_runs_one_batched_loop():
    """Under grad(vmap) the batching rule runs one loop over the batch: dW is formed as an (N, N)
    contraction over time and batch, never as a (B, N, N) per-example gradient (the control: the
    ensemble fallback does form one)."""
    layer, p, st, c, w, b = _problem()
    one = _builder(layer, 3, False)

    def shapes(w_axis, ws):
        def loss(w):
            out = jax.vmap(one, in_axes=(None, None, 0, w_axis, None))(p, st, c, w, b)
            return jnp.sum(out[1])

        return set(_shapes_in(jax.make_jaxpr(jax.grad(loss))(ws).jaxpr))

    assert (B, N, N) not in shapes(None, w), "per-example dW formed under grad(vmap)"
    assert (B, N, N) in shapes(0, jnp.stack([w] * B))
