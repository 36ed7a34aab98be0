"""Model-level semantics (SPEC.md §2, §3, §4, §7): delays, init_state, burn-in, keys, transforms,
GraphStructure, Sequential/StatefulModel/CompoundLayer/Parallel.

Expected values are computed independently in numpy (tests/_np_reference.py for neuron dynamics).
Tolerances: 1e-5 absolute for float32 values built from a few matmuls + neuron steps (rounding of
XLA vs numpy matmuls). Transformed runs (vmap, jit, filter_jit, grad) of the default (planned) path
are compared with the untransformed reference path, with the tolerances of tests/helpers.py.
Spike trains are compared exactly after checking no membrane is within 1e-4 of the threshold
(100x the float32 rounding of a 10-term matmul), so rounding cannot flip a spike.
"""
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from snnkern import snn

import snnkern
import _np_reference as ref
from helpers import (GRAD_ATOL, GRAD_RTOL, OUT_ATOL, OUT_RTOL, assert_fires, assert_trees_close, data, mixed_loss,
                     np_linear, scale_linear)

f32 = np.float32
THR = 0.5   # a low threshold so that the short hand-computed traces contain spikes


def np_layernorm(x, eps=1e-5):
    x = np.asarray(x, np.float64)
    mu = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return ((x - mu) / np.sqrt(var + eps)).astype(f32)


def shift(seq, first):
    """Delay a (T, ...) sequence by one step, `first` at t = 0 (SPEC §3)."""
    return np.concatenate([np.asarray(first, f32)[None], np.asarray(seq, f32)[:-1]], 0)


# ---------------------------------------------------------------- delays (§3)

def test_identity_chain_is_a_pipeline(key):
    model = snn.Sequential(eqx.nn.Identity(), eqx.nn.Identity(), eqx.nn.Identity())
    x = data((6, 3), seed=1, lo=1.0, hi=2.0)
    states = model.init_state((3,), key)
    final, outs = model(states, x, key)
    assert isinstance(outs, list) and len(outs) == 1
    y = np.asarray(outs[0])
    assert y.shape == (6, 3)
    expected = np.concatenate([np.zeros((2, 3), f32), np.asarray(x)[:-2]])   # y[t] = x[t-2]
    np.testing.assert_array_equal(y, expected)
    # final states: layer i holds its output at the last step = x[T-1-i]
    for i in range(3):
        np.testing.assert_array_equal(np.asarray(final[i][0]), np.asarray(x)[5 - i])


def test_lambda_chain_is_a_pipeline(key):
    model = snn.Sequential(eqx.nn.Lambda(lambda v: v * 2.0), eqx.nn.Lambda(lambda v: v + 1.0))
    x = data((5, 2), seed=2)
    _, outs = model(model.init_state((2,), key), x, key)
    # layer 0 at t: 2 x[t]; layer 1 at t: (layer0 at t-1) + 1, layer0 initial output = 2*0
    expected = shift(2.0 * np.asarray(x), np.zeros(2)) + 1.0
    np.testing.assert_allclose(np.asarray(outs[0]), expected, atol=1e-6)


def test_linear_lif_pipeline_matches_hand_computation(keys):
    lin = eqx.nn.Linear(3, 4, key=keys[0])
    dc = [0.6, 0.5]
    model = snn.Sequential(lin, snn.LIF(dc, threshold=THR))
    x = data((12, 3), seed=3, lo=0.0, hi=4.0)
    states = model.init_state((3,), keys[1])
    final, outs = model(states, x, keys[2])
    lin_out = np_linear(lin, x)                      # the Linear sees x[t] at step t
    currents = shift(lin_out, np.asarray(lin.bias))  # the LIF sees it one step later; bias first
    ref_states, ref_spikes, margin = ref.lif_trace(dc, THR, currents)
    assert margin > 1e-4
    assert 0 < ref_spikes.sum() < ref_spikes.size, "test setup: want some spikes"
    np.testing.assert_array_equal(np.asarray(outs[0]), ref_spikes)
    for j in range(3):
        np.testing.assert_allclose(np.asarray(final[1][j]), ref_states[-1][j], atol=1e-5)
    np.testing.assert_allclose(np.asarray(final[0][0]), lin_out[-1], atol=1e-5)


def test_linear_layernorm_lif_uses_initial_outputs(keys):
    lin = eqx.nn.Linear(3, 5, key=keys[0])
    dc = [0.6, 0.5]
    model = snn.Sequential(lin, eqx.nn.LayerNorm(5), snn.LIF(dc, threshold=THR))
    x = data((10, 3), seed=4, lo=-2.0, hi=2.0)
    states = model.init_state((3,), keys[1])
    _, outs = model(states, x, keys[2])
    lin_out = np_linear(lin, x)
    ln_out = np_layernorm(shift(lin_out, np.asarray(lin.bias)))    # LN reads Linear's previous output
    currents = shift(ln_out, np_layernorm(np.asarray(lin.bias)))    # LIF reads LN's previous output
    _, ref_spikes, margin = ref.lif_trace(dc, THR, currents)
    assert margin > 1e-4
    assert ref_spikes.sum() > 0
    np.testing.assert_array_equal(np.asarray(outs[0]), ref_spikes)


# ---------------------------------------------------------------- init_state (§4)

def test_init_state_values_and_containers(keys):
    lin = eqx.nn.Linear(4, 5, key=keys[0])
    ln = eqx.nn.LayerNorm(5)
    model = snn.Sequential(lin, ln, snn.LIF([0.9, 0.8]), eqx.nn.Linear(5, 2, key=keys[1]))
    states = model.init_state((4,), keys[2])
    assert type(states) is list and len(states) == 4
    assert all(type(s) is list for s in states)
    assert len(states[0]) == 1 and len(states[1]) == 1 and len(states[2]) == 3 and len(states[3]) == 1
    np.testing.assert_allclose(np.asarray(states[0][0]), np.asarray(lin.bias), atol=1e-7)       # [bias]
    np.testing.assert_allclose(np.asarray(states[1][0]), np.asarray(ln(lin.bias)), atol=1e-6)   # [LN(bias)]
    for s in states[2]:
        assert s.shape == (5,)
        np.testing.assert_array_equal(np.asarray(s), 0.0)
    # the Linear after the LIF is applied to the LIF's initial output (zeros) -> its bias
    np.testing.assert_allclose(np.asarray(states[3][0]), np.asarray(model.layers[3].bias), atol=1e-7)


def test_init_state_dropout_after_linear(keys):
    lin = eqx.nn.Linear(4, 6, key=keys[0])
    model = snn.Sequential(lin, eqx.nn.Dropout(p=0.0), snn.SimpleLI([0.8]))
    states = model.init_state((4,), keys[1])
    np.testing.assert_allclose(np.asarray(states[1][0]), np.asarray(lin.bias), atol=1e-7)


def test_final_states_have_init_state_structure(keys):
    model = snn.Sequential(eqx.nn.Linear(3, 4, key=keys[0]), snn.LIF([0.9, 0.8]),
                           snn.CompoundLayer(eqx.nn.Linear(4, 2, key=keys[1]), snn.SimpleLIF([0.8])))
    states = model.init_state((3,), keys[2])
    final, outs = model(states, data((5, 3)), keys[3])
    assert jax.tree.structure(final) == jax.tree.structure(states)
    assert [a.shape for a in jax.tree.leaves(final)] == [a.shape for a in jax.tree.leaves(states)]
    assert type(final) is list and all(type(s) is list for s in final)


# ---------------------------------------------------------------- burn-in (§2)

def _li_model(keys):
    return snn.Sequential(eqx.nn.Linear(3, 4, key=keys[0]), snn.SimpleLI([0.8]))


def test_burnin_drops_outputs_and_keeps_forward_values(keys):
    model = _li_model(keys)
    x = data((8, 3), seed=5)
    states = model.init_state((3,), keys[1])
    f_all, o_all = model(states, x, keys[2])
    f_b, o_b = model(states, x, keys[2], burnin=3)
    assert o_b[0].shape == (5, 4)
    np.testing.assert_allclose(np.asarray(o_b[0]), np.asarray(o_all[0])[3:], atol=1e-6)
    for a, b in zip(jax.tree.leaves(f_all), jax.tree.leaves(f_b)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_burnin_stops_gradient(keys):
    model = _li_model(keys)
    x = data((8, 3), seed=6)
    states = model.init_state((3,), keys[1])

    def loss(x, burnin):
        final, outs = model(states, x, keys[2], burnin=burnin)
        return jnp.sum(outs[0] ** 2) + jnp.sum(final[-1][0])

    g_b = np.asarray(jax.grad(loss)(x, 3))
    g_0 = np.asarray(jax.grad(loss)(x, 0))
    np.testing.assert_array_equal(g_b[:3], 0.0)         # exactly zero: the state is stop_gradient'ed
    assert np.abs(g_b[3:-1]).min() > 0                  # after burn-in the input matters
    assert np.abs(g_0[2]).max() > 0                      # without burn-in x[2] does influence the loss


# ---------------------------------------------------------------- keys (§2)

def test_same_key_every_step_dropout_mask(key):
    drop = eqx.nn.Dropout(p=0.5, inference=False)
    model = snn.Sequential(eqx.nn.Identity(), drop)
    x = data((6, 64), seed=7, lo=1.0, hi=2.0)
    _, outs = model(model.init_state((64,), key), x, key)
    y = np.asarray(outs[0])
    np.testing.assert_array_equal(y[0], 0.0)            # reads the Identity's initial output (zeros)
    masks = y[1:] != 0
    assert (masks == masks[0]).all(), "the dropout mask must be the same at every step"
    assert 0 < masks[0].sum() < 64
    # layer i gets jax.random.split(key, n_layers)[i]
    k1 = jax.random.split(key, 2)[1]
    for t in range(1, 6):
        np.testing.assert_allclose(y[t], np.asarray(drop(x[t - 1], key=k1)), atol=1e-6)


def test_compound_sub_layer_key(key):
    drop = eqx.nn.Dropout(p=0.5, inference=False)
    model = snn.Sequential(eqx.nn.Identity(), snn.CompoundLayer(eqx.nn.Identity(), drop))
    x = data((4, 64), seed=8, lo=1.0, hi=2.0)
    _, outs = model(model.init_state((64,), key), x, key)
    sub_outs = outs[0]
    assert isinstance(sub_outs, list) and len(sub_outs) == 2
    # sub-layer m of a compound gets split(that layer's key, n_sub)[m]
    k = jax.random.split(jax.random.split(key, 2)[1], 2)[1]
    for t in range(1, 4):
        np.testing.assert_allclose(np.asarray(sub_outs[1][t]), np.asarray(drop(x[t - 1], key=k)), atol=1e-6)


# ---------------------------------------------------------------- transforms (§2)

def _model(keys):
    # weights x3 with a +0.5 bias (the default init gives currents of ~0.3): the LIF (threshold
    # 0.3) fires on 11-17 % of its steps for inputs in [0, 3)
    return snn.Sequential(scale_linear(eqx.nn.Linear(3, 5, key=keys[0]), 3.0, 0.5), snn.LIF([0.8, 0.7], threshold=0.3),
                          eqx.nn.Linear(5, 2, key=keys[1]), snn.SimpleLI([0.9]))


def _reference(model, states, x, key):
    """One sample on the reference path, eagerly (no jit, no vmap)."""
    with snnkern.backend("reference"):
        return model(states, x, key)


def _loss(m, s, x, k):
    finals, outs = m(s, x, k)
    return mixed_loss(finals, outs)


def test_vmap_matches_per_sample(keys):
    """eqx.filter_vmap and jax.vmap of the (planned) model = the reference run per sample, outputs,
    final states and the gradient of the summed loss wrt the model."""
    model = _model(keys)
    states = model.init_state((3,), keys[2])
    xb = data((3, 7, 3), seed=9, lo=0.0, hi=3.0)
    assert_fires(model, states, xb, keys[3], batched=True)
    fb, ob = eqx.filter_vmap(model, in_axes=(None, 0, None))(states, xb, keys[3])
    fj, oj = jax.vmap(lambda x: model(states, x, keys[3]))(xb)
    assert ob[0].shape == (3, 7, 2)
    assert_trees_close((fj, oj), (fb, ob), 0.0, what="jax.vmap vs eqx.filter_vmap (the same trace)")
    for b in range(3):
        fs, os_ = _reference(model, states, xb[b], keys[3])
        assert_trees_close(jax.tree.map(lambda a: a[b], (fb, ob)), (fs, os_), OUT_ATOL, OUT_RTOL,
                           what=f"vmapped vs reference sample {b}")
    g = eqx.filter_grad(lambda m: sum(jax.vmap(lambda x: _loss(m, states, x, keys[3]))(xb)))(model)
    with snnkern.backend("reference"):
        ref_grad = eqx.filter_jit(eqx.filter_grad(_loss))
        g_ref = [ref_grad(model, states, xb[b], keys[3]) for b in range(3)]
    g_ref = jax.tree.map(lambda *a: sum(a), *g_ref)
    assert_trees_close(g, g_ref, GRAD_ATOL, GRAD_RTOL, what="gradient of the vmapped loss")


def test_jit_and_filter_jit_agree(keys):
    model = _model(keys)
    states = model.init_state((3,), keys[2])
    x = data((7, 3), seed=11, lo=0.0, hi=3.0)
    assert_fires(model, states, x, keys[3])
    want = _reference(model, states, x, keys[3])
    got = [jax.jit(lambda s, x, k: model(s, x, k))(states, x, keys[3]),
           eqx.filter_jit(model)(states, x, keys[3]),
           eqx.filter_jit(lambda m, s, x, k: m(s, x, k))(model, states, x, keys[3])]
    for name, r in zip(("jax.jit", "eqx.filter_jit(model)", "eqx.filter_jit, model as argument"), got):
        assert_trees_close(r, want, OUT_ATOL, OUT_RTOL, what=f"{name} vs eager reference")


def test_grad_and_filter_grad_agree_under_jit(keys):
    model = _model(keys)
    states = model.init_state((3,), keys[2])
    x = data((7, 3), seed=12, lo=0.0, hi=3.0)
    assert_fires(model, states, x, keys[3])
    loss_x = lambda x: _loss(model, states, x, keys[3])  # noqa: E731
    with snnkern.backend("reference"):
        gx_ref = jax.jit(jax.grad(loss_x))(x)
        gm_ref = eqx.filter_jit(eqx.filter_grad(_loss))(model, states, x, keys[3])
    assert_trees_close(jax.jit(jax.grad(loss_x))(x), gx_ref, GRAD_ATOL, GRAD_RTOL, what="jit(grad) wrt x")
    gm = eqx.filter_jit(eqx.filter_grad(_loss))(model, states, x, keys[3])
    assert_trees_close(gm, gm_ref, GRAD_ATOL, GRAD_RTOL, what="filter_jit(filter_grad) wrt the model")
    assert np.abs(np.asarray(gx_ref)).sum() > 0
    assert np.abs(np.asarray(gm.layers[0].weight)).sum() > 0
    assert np.abs(np.asarray(gm.layers[1].decay_constants)).sum() > 0


def test_single_array_or_one_element_list_input(keys):
    model = _model(keys)
    states = model.init_state((3,), keys[2])
    x = data((5, 3), seed=13, lo=0.0, hi=3.0)
    _, o1 = model(states, x, keys[3])
    _, o2 = model(states, [x], keys[3])
    np.testing.assert_allclose(np.asarray(o2[0]), np.asarray(o1[0]), atol=1e-6)


# ---------------------------------------------------------------- GraphStructure (§7)

def test_graph_structure_forms():
    g3 = snn.GraphStructure(3, [[0], [], []], [[], [0], [1]])
    g4 = snn.GraphStructure(3, [[0], [], []], [2], [[], [0], [1]])
    gk = snn.GraphStructure(num_layers=3, input_layer_ids=[[0], [], []], final_layer_ids=[2],
                            input_connectivity=[[], [0], [1]])
    gk3 = snn.GraphStructure(num_layers=3, input_layer_ids=[[0], [], []], input_connectivity=[[], [0], [1]])
    for g in (g3, g4, gk, gk3):
        assert g.num_layers == 3
        assert g.input_layer_ids == ((0,), (), ())
        assert g.input_connectivity == ((), (0,), (1,))
        assert isinstance(g.input_layer_ids, tuple) and all(isinstance(t, tuple) for t in g.input_layer_ids)
        hash(g)
    assert tuple(g4.final_layer_ids) == (2,) and tuple(gk.final_layer_ids) == (2,)
    assert hash(g4) == hash(gk)


def test_graph_structure_default_final_is_last_layer(key):
    g3 = snn.GraphStructure(3, [[0], [], []], [[], [0], [1]])
    model = snn.StatefulModel(g3, [eqx.nn.Identity(), eqx.nn.Lambda(lambda v: v * 2.0),
                                   eqx.nn.Lambda(lambda v: v + 1.0)])
    x = data((5, 2), seed=14)
    _, outs = model(model.init_state((2,), key), x, key)
    assert len(outs) == 1
    expected = shift(2.0 * shift(np.asarray(x), np.zeros(2)), np.zeros(2)) + 1.0
    np.testing.assert_allclose(np.asarray(outs[0]), expected, atol=1e-6)


def test_final_layer_ids_pick_outputs_in_order(key):
    g = snn.GraphStructure(3, [[0], [], []], [2, 0], [[], [0], [1]])
    model = snn.StatefulModel(g, [eqx.nn.Identity(), eqx.nn.Identity(), eqx.nn.Identity()])
    x = data((6, 2), seed=15, lo=1.0, hi=2.0)
    _, outs = model(model.init_state((2,), key), x, key)
    assert len(outs) == 2
    np.testing.assert_array_equal(np.asarray(outs[0]), np.concatenate([np.zeros((2, 2), f32), np.asarray(x)[:-2]]))
    np.testing.assert_array_equal(np.asarray(outs[1]), np.asarray(x))


def test_model_is_hashable_under_filter_jit(keys):
    """The static fields (graph, forward_fn) hash, so eqx.filter_jit traces the model once: a second
    call with another input reuses the trace, and both results equal the reference."""
    model = _model(keys)
    hash(model.graph_structure)
    hash(jax.tree.structure(model))      # static fields (graph, forward_fn) must be hashable
    states = model.init_state((3,), keys[2])
    traces = []
    f = eqx.filter_jit(lambda m, s, x, k: traces.append(1) or m(s, x, k)[1][0])
    for seed in (21, 22):
        x = data((6, 3), seed=seed, lo=0.0, hi=3.0)
        assert_trees_close(f(model, states, x, keys[3]), _reference(model, states, x, keys[3])[1][0],
                           OUT_ATOL, OUT_RTOL, what=f"filter_jit vs reference (input {seed})")
    assert len(traces) == 1, "the second call retraced: the model's static part does not hash equal"


# ---------------------------------------------------------------- Sequential / StatefulModel (§7, §10)

def _spec_layers(k):
    # SPEC §10's first example, with a threshold of 0.3 instead of 1: the LayerNorm's outputs are
    # of order 1 and this slow LIF (alpha 0.9) reaches 0.3 on ~5 % of 16 steps, never 1
    return [eqx.nn.Linear(10, 20, key=k[0]), eqx.nn.LayerNorm(20), snn.LIF([0.9, 0.8], threshold=0.3)]


def test_sequential_star_and_list_forms_are_equal(keys):
    layers = _spec_layers(keys)
    a, b = snn.Sequential(*layers), snn.Sequential(layers)
    assert len(a) == len(b) == 3
    assert a[0] is layers[0] and b[2] is layers[2]
    assert isinstance(a[1], eqx.nn.LayerNorm)
    assert a.graph_structure == b.graph_structure
    assert a.graph_structure.input_layer_ids == ((0,), (), ())
    assert a.graph_structure.input_connectivity == ((), (0,), (1,))
    x = data((16, 10), seed=16, lo=0.0, hi=3.0)
    sa, sb = a.init_state((10,), keys[1]), b.init_state((10,), keys[1])
    assert_fires(a, sa, x, keys[2])
    assert_trees_close(b(sb, x, keys[2]), a(sa, x, keys[2]), 0.0, what="Sequential(list) vs Sequential(*layers)")


def test_explicit_graph_equals_sequential(keys):
    # SPEC §10 first example
    layers = _spec_layers(keys)
    ff = snn.Sequential(*layers)
    graph = snn.GraphStructure(num_layers=3, input_layer_ids=[[0], [], []], final_layer_ids=[2],
                               input_connectivity=[[], [0], [1]])
    ff2 = snn.StatefulModel(graph_structure=graph, layers=layers)
    x = data((16, 10), seed=17, lo=0.0, hi=3.0)
    s1, s2 = ff.init_state((10,), keys[1]), ff2.init_state((10,), keys[1])
    assert_trees_close(s2, s1, 0.0, what="init_state")
    assert_fires(ff, s1, x, keys[2])
    f1, o1 = ff(s1, x, keys[2])
    assert o1[0].shape == (16, 20)
    assert_trees_close(ff2(s2, x, keys[2]), (f1, o1), 1e-6, what="StatefulModel(graph) vs Sequential")


# ---------------------------------------------------------------- CompoundLayer (§7)

def test_compound_final_layer_returns_all_sub_outputs(keys):
    lin1 = eqx.nn.Linear(4, 6, key=keys[0])
    lin2 = eqx.nn.Linear(6, 5, key=keys[1])
    lin2 = eqx.tree_at(lambda l: l.weight, lin2, 3.0 * lin2.weight)   # larger currents -> spikes
    dc = [0.6, 0.5]
    model = snn.Sequential(lin1, snn.CompoundLayer(lin2, snn.LIF(dc, threshold=THR)))
    states = model.init_state((4,), keys[2])
    # compound state: list of sub-states; the Linear inside starts from lin2(zeros) = its bias
    assert type(states[1]) is list and len(states[1]) == 2
    assert type(states[1][0]) is list and len(states[1][0]) == 1
    np.testing.assert_allclose(np.asarray(states[1][0][0]), np.asarray(lin2.bias), atol=1e-7)
    assert len(states[1][1]) == 3
    x = data((9, 4), seed=18, lo=3.0, hi=6.0)
    final, outs = model(states, x, keys[3])
    sub = outs[0]
    assert isinstance(sub, list) and len(sub) == 2
    assert sub[0].shape == (9, 5) and sub[1].shape == (9, 5)
    h = np_linear(lin2, shift(np_linear(lin1, x), np.asarray(lin1.bias)))  # chained within the step
    np.testing.assert_allclose(np.asarray(sub[0]), h, atol=1e-5)
    _, spikes, margin = ref.lif_trace(dc, THR, h)
    assert margin > 1e-4 and spikes.sum() > 0
    np.testing.assert_array_equal(np.asarray(sub[1]), spikes)


def test_compound_constructor_forms(keys):
    # x3 weights + 0.5 bias, threshold 0.5: the LIF fires on ~15 % of 8 steps for inputs in [0, 4)
    l = [scale_linear(eqx.nn.Linear(3, 4, key=keys[0]), 3.0, 0.5), snn.LIF([0.8, 0.7], threshold=0.5)]

    def init_fn(shape, key, *a, **k):
        return jnp.zeros(shape)

    forms = [snn.CompoundLayer(*l), snn.CompoundLayer(l), snn.CompoundLayer(l, init_fn),
             snn.CompoundLayer(*l, init_fn=init_fn)]
    x = data((8, 3), seed=19, lo=0.0, hi=4.0)
    first = snn.Sequential(forms[0])
    assert_fires(first, first.init_state((3,), keys[1]), x, keys[2])
    want = first(first.init_state((3,), keys[1]), x, keys[2])
    for c in forms[1:]:
        model = snn.Sequential(c)
        assert_trees_close(model(model.init_state((3,), keys[1]), x, keys[2]), want, 0.0, what="constructor forms")


def test_compound_called_directly(keys):
    lin = eqx.nn.Linear(3, 4, key=keys[0])
    c = snn.CompoundLayer(lin, snn.SimpleLI([0.5]))
    s = c.init_state((3,), keys[1])
    x = jnp.array([1.0, 2.0, 3.0])
    new_s, outs = c(s, x, key=keys[2])
    assert isinstance(outs, list) and len(outs) == 2
    h = np_linear(lin, np.asarray(x))
    np.testing.assert_allclose(np.asarray(outs[0]), h, atol=1e-5)
    np.testing.assert_allclose(np.asarray(outs[1]), 0.5 * h, atol=1e-5)   # .5*0 + .5*h
    np.testing.assert_allclose(np.asarray(new_s[1][0]), 0.5 * h, atol=1e-5)


def test_shape_changing_compound_then_linear(keys):
    lin1 = eqx.nn.Linear(10, 20, key=keys[0])
    lin2 = eqx.nn.Linear(20, 5, key=keys[1])
    dc = [0.6, 0.5]
    model = snn.Sequential(snn.CompoundLayer(lin1, snn.LIF(dc, threshold=THR)), lin2)
    states = model.init_state((10,), keys[2])
    assert [s.shape for s in states[0][1]] == [(20,)] * 3
    np.testing.assert_allclose(np.asarray(states[1][0]), np.asarray(lin2.bias), atol=1e-7)
    x = data((8, 10), seed=20, lo=0.0, hi=3.0)
    final, outs = model(states, x, keys[3])
    assert outs[0].shape == (8, 5)
    _, spikes, margin = ref.lif_trace(dc, THR, np_linear(lin1, x))
    assert margin > 1e-4 and spikes.sum() > 0
    expected = np_linear(lin2, shift(spikes, np.zeros(20)))
    np.testing.assert_allclose(np.asarray(outs[0]), expected, atol=1e-5)


# ---------------------------------------------------------------- Parallel (§7, §8.2, §8.3)

def test_parallel_standalone_sums_outputs(keys):
    l1, l2 = eqx.nn.Linear(3, 4, key=keys[0]), eqx.nn.Linear(5, 4, key=keys[1])
    x1, x2 = data((3,), seed=21), data((5,), seed=22)
    expected = np_linear(l1, x1) + np_linear(l2, x2)
    for par in (snn.Parallel(l1, l2), snn.Parallel([l1, l2])):
        np.testing.assert_allclose(np.asarray(par([x1, x2])), expected, atol=1e-6)
        np.testing.assert_allclose(np.asarray(par([x1, x2], key=keys[2])), expected, atol=1e-6)


def test_parallel_standalone_broadcasts(keys):
    l1 = eqx.nn.Linear(3, 4, key=keys[0])
    par = snn.Parallel(l1, eqx.nn.Lambda(lambda v: jnp.sum(v)))
    x1, x2 = data((3,), seed=23), data((2,), seed=24)
    expected = np_linear(l1, x1) + float(np.sum(np.asarray(x2)))
    np.testing.assert_allclose(np.asarray(par([x1, x2])), expected, atol=1e-6)


def test_parallel_as_model_layer_fed_by_two_sources(keys):
    l0, l1 = eqx.nn.Linear(3, 4, key=keys[0]), eqx.nn.Linear(3, 6, key=keys[1])
    pa, pb = eqx.nn.Linear(4, 5, key=keys[2]), eqx.nn.Linear(6, 5, key=keys[3])
    g = snn.GraphStructure(3, [[0], [0], []], [[], [], [0, 1]])
    model = snn.StatefulModel(g, [l0, l1, snn.Parallel(pa, pb)])
    states = model.init_state((3,), keys[4])
    init_par = np_linear(pa, np.asarray(l0.bias)) + np_linear(pb, np.asarray(l1.bias))
    np.testing.assert_allclose(np.asarray(states[2][-1]), init_par, atol=1e-5)
    x = data((6, 3), seed=25, lo=-1.0, hi=1.0)
    _, outs = model(states, x, keys[5])
    assert outs[0].shape == (6, 5)
    # input k (source k in listed order, each delayed one step) goes to branch k
    expected = (np_linear(pa, shift(np_linear(l0, x), np.asarray(l0.bias)))
                + np_linear(pb, shift(np_linear(l1, x), np.asarray(l1.bias))))
    np.testing.assert_allclose(np.asarray(outs[0]), expected, atol=1e-5)
