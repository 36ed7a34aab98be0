"""Recurrent chains with per-step layers inside the recurrence, on the fused loop.

``CompoundLayer([Parallel([ff..., Linear_rec]), per-step layers..., neuron])`` with its self-edge
(snnax's own recurrent model puts a LayerNorm there) runs as the hoisted feed-forward GEMM plus one
recurrent loop whose step applies the per-step layers to ``I_t`` before the neuron. Outputs, final
states and gradients must equal the reference path, on the XLA loop and (where the kernels take
it: no per-step parameters, no padded neuron) the Pallas recurrent kernel in interpret mode.
"""
from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import snnkern
from snnkern import snn
from snnkern.plan import Impl
from snnkern.plan.strategies import RecurrentLoop


def _chain(n_in, n, key, mids, neuron):
    k1, k2 = jax.random.split(key)
    par = snn.Parallel([eqx.nn.Linear(n_in, n, key=k1), eqx.nn.Linear(n, n, use_bias=False, key=k2)])
    return snn.CompoundLayer(par, *mids, neuron)


def _mids(kind, n):
    return {"ln": [eqx.nn.LayerNorm((n,), use_weight=False, use_bias=False, eps=1e-4)],
            "ln-affine": [eqx.nn.LayerNorm((n,), eps=1e-4)],
            "identity-lambda": [eqx.nn.Identity(), eqx.nn.Lambda(lambda h: 2.0 * jnp.tanh(h))],
            "none": []}[kind]


def recmlp(key, n=16, kind="ln", n_in=12, final=None):
    """snnax's recurrent MLP in small: Flatten -> C(n_in, n) -> C(n, n) -> Linear. ``final``: the
    layers whose outputs the model returns (default: the last; (1, 2, 3) also returns both chains'
    outputs, which exercises the loops' full-sequence outputs)."""
    k = jax.random.split(key, 3)
    # thresholds that make both chains fire 2-10 % (measured): the per-step layers give currents of
    # unit scale, the bare chain's second layer sees only the first one's sparse spikes
    th = 0.04 if kind == "none" else 0.1
    layers = [snn.Flatten(),
              _chain(n_in, n, k[0], _mids(kind, n), snn.LIFSoftReset([0.9, 0.8], threshold=th, reset_val=1)),
              _chain(n, n, k[1], _mids(kind, n), snn.LIF([0.9, 0.8], threshold=th)),
              eqx.nn.Linear(n, 4, key=k[2])]
    graph = snn.SequentialLocalFeedback(*layers, feedback_layers=None).graph_structure
    if final is not None:
        graph = snn.GraphStructure(4, graph.input_layer_ids, final, graph.input_connectivity)
    return snn.StatefulModel(graph, layers)


def _run(model, backend, x, st, key):
    def loss(m):
        with snnkern.backend(backend):
            f, o = eqx.filter_vmap(m, in_axes=(None, 0, None))(st, x, key)
        return sum(jnp.sum(jnp.sin(a)) for a in jax.tree.leaves((f, o))), (f, o)

    (_, (f, o)), g = eqx.filter_value_and_grad(loss, has_aux=True)(model)
    return f, o, g


def _close(a, b, what, atol=1e-5, rtol=1e-4):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        scale = float(jnp.max(jnp.abs(y))) if y.size else 0.0
        err = float(jnp.max(jnp.abs(x - y))) if x.size else 0.0
        assert err <= atol + rtol * scale, f"{what}: max error {err:.3g} (scale {scale:.3g})"


@functools.cache
def _case(kind):
    """The models, inputs and reference runs of ``kind``, shared by the xla and pallas-interpret cases."""
    key = jax.random.PRNGKey(7)
    model = recmlp(key, kind=kind)
    wide = recmlp(key, kind=kind, final=(1, 2, 3))         # the same model, returning both chains too
    st = model.init_state((3, 4), key)
    x = 2.0 * jax.random.bernoulli(jax.random.PRNGKey(1), 0.5, (3, 16, 3, 4)).astype(jnp.float32)
    refs = [_run(m, "reference", x, st, key) for m in (model, wide)]
    return key, model, wide, st, x, refs


@pytest.mark.parametrize("kind", ["ln", "ln-affine", "identity-lambda", "none"])
@pytest.mark.parametrize("backend", ["xla", "pallas-interpret"])
def test_recurrent_chain_matches_reference(kind, backend):
    key, model, wide, st, x, refs = _case(kind)
    ref_wide = refs[1]
    rates = [float(jnp.mean(ref_wide[1][c][-1])) for c in (0, 1)]      # each chain's neuron output
    assert all(0.02 <= r <= 0.98 for r in rates), f"both chains must fire (2-98 %): {rates}"
    with snnkern.backend(backend):
        plan = snnkern.explain(model, (3, 4))
    loops = [s for s in plan.steps if isinstance(s.spec, RecurrentLoop)]
    assert [c.kind for c in plan.components] == ["stateless", "recurrent-compound", "recurrent-compound", "stateless"]
    assert len(loops) == 2
    if backend == "pallas-interpret":
        # n = 16 is not padded; the kernel takes the chain unless a per-step layer has parameters
        want = Impl.XLA if kind == "ln-affine" else Impl.PALLAS_INTERPRET
        assert all(s.impl is want for s in loops), str(plan)
        if want is Impl.XLA:
            assert all("parameters" in s.reason for s in loops)
    else:
        assert all(s.impl is Impl.XLA and s.reason is None for s in loops), str(plan)
    for m, ref in zip((model, wide), refs):
        got = _run(m, backend, x, st, key)
        _close(got[0], ref[0], "final states")
        _close(got[1], ref[1], "outputs")
        _close(got[2], ref[2], "gradients")


def test_padded_neurons_keep_layernorm_chains_on_xla():
    model = recmlp(jax.random.PRNGKey(0), n=12)
    with snnkern.backend("pallas-interpret"):
        plan = snnkern.explain(model, (3, 4))
    loops = [s for s in plan.steps if isinstance(s.spec, RecurrentLoop)]
    assert loops and all(s.impl is Impl.XLA and "padded to 16" in s.reason for s in loops), str(plan)


def test_explain_names_the_chain():
    text = str(snnkern.explain(recmlp(jax.random.PRNGKey(0)), (3, 4)))
    assert "recurrence -> LayerNorm -> LIFSoftReset" in text and "recurrent loop (custom VJP) [xla]" in text


def test_a_linear_subclass_as_recurrent_branch_is_not_fused():
    class LinearNonDiag(eqx.nn.Linear):
        def __call__(self, x, *, key=None):
            w = self.weight * (1.0 - jnp.eye(self.weight.shape[0]))
            return w @ x

    k = jax.random.split(jax.random.PRNGKey(0), 3)
    rec = snn.CompoundLayer(snn.Parallel([eqx.nn.Linear(5, 8, key=k[0]), LinearNonDiag(8, 8, use_bias=False,
                                                                                         key=k[1])]),
                            snn.LIF([0.9, 0.8]))
    model = snn.SequentialLocalFeedback(rec, eqx.nn.Linear(8, 2, key=k[2]), feedback_layers=None)
    plan = snnkern.explain(model, (5,))
    assert plan.components[0].kind == "cycle"
    assert "LinearNonDiag, not a vector eqx.nn.Linear" in plan.fallbacks[0]
