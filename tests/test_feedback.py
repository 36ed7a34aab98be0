"""SequentialLocalFeedback and recurrent compounds (SPEC.md §8.1, §8.2, §10).

Every expectation is a hand-written numpy recurrence (neuron steps from tests/_np_reference.py).
Tolerances: 1e-5 absolute on continuous values (float32 rounding of small matmuls over <= 10 steps);
spike trains compared exactly after checking no membrane lies within 1e-4 of the threshold.
"""
import equinox as eqx
import jax.numpy as jnp
import numpy as np

from snnkern import snn

import _np_reference as ref
from helpers import assert_matches_reference, data, np_linear

f32 = np.float32
ATOL = 1e-5


def recurrent_lif_reference(lin_ff, lin_rec, dc, thr, ff_inputs):
    """I_t = W_ff u_t + b_ff + W_rec s_{t-1} + b_rec; LIF(I_t) in the same step; s_{-1} = 0."""
    n = lin_rec.weight.shape[0]
    state = [np.zeros(n, f32)] * 3
    s = np.zeros(n, f32)
    currents, spikes, margin = [], [], np.inf
    for u in np.asarray(ff_inputs, f32):
        I = np_linear(lin_ff, u) + np_linear(lin_rec, s)
        state, s, v = ref.lif({"dc": dc, "thr": thr}, state, I)
        margin = min(margin, float(np.abs(v).min()))
        currents.append(I)
        spikes.append(s)
    return np.stack(currents), np.stack(spikes), state, margin


def _rec_compound(k, n_in, n, dc, thr):
    lin_ff = eqx.nn.Linear(n_in, n, key=k[0])
    lin_ff = eqx.tree_at(lambda l: l.weight, lin_ff, 2.0 * jnp.abs(lin_ff.weight))  # drive every neuron
    lin_rec = eqx.nn.Linear(n, n, key=k[1])
    lin_rec = eqx.tree_at(lambda l: l.weight, lin_rec, 2.0 * lin_rec.weight)  # make recurrence matter
    comp = snn.CompoundLayer([snn.Parallel([lin_ff, lin_rec]), snn.LIF(dc, threshold=thr)])
    return comp, lin_ff, lin_rec


DC, THR = [0.6, 0.5], 0.3


def test_self_edge_graph_for_compounds_only(keys):
    comp, _, _ = _rec_compound(keys, 3, 4, DC, THR)
    model = snn.SequentialLocalFeedback([comp, eqx.nn.Linear(4, 2, key=keys[2])], feedback_layers=None)
    g = model.graph_structure
    assert g.input_layer_ids == ((0,), ())
    assert g.input_connectivity == ((0,), (0,))
    # no compound -> no feedback edge at all
    plain = snn.SequentialLocalFeedback([eqx.nn.Linear(3, 4, key=keys[3]), snn.LIF(DC)])
    assert plain.graph_structure.input_connectivity == ((), (0,))


def test_recurrent_compound_first_layer_matches_equation(keys):
    # SPEC §10: layer 0 receives [x_t, own_output_{t-1}] (external input at the current step)
    comp, lin_ff, lin_rec = _rec_compound(keys, 3, 4, DC, THR)
    lin_out = eqx.nn.Linear(4, 2, key=keys[2])
    model = snn.SequentialLocalFeedback([comp, lin_out], feedback_layers=None)
    x = data((10, 3), seed=0, lo=0.0, hi=2.0)
    states = model.init_state((3,), keys[3])
    final, outs = model(states, x, keys[4])
    currents, spikes, lif_state, margin = recurrent_lif_reference(lin_ff, lin_rec, DC, THR, x)
    assert margin > 1e-4
    assert 0 < spikes.sum() < spikes.size, "test setup: want some spikes"
    # the Linear after the compound reads its spikes one step later (zeros first)
    expected = np_linear(lin_out, np.concatenate([np.zeros((1, 4), f32), spikes[:-1]]))
    assert outs[0].shape == (10, 2)
    np.testing.assert_allclose(np.asarray(outs[0]), expected, atol=ATOL)
    for j in range(3):
        np.testing.assert_allclose(np.asarray(final[0][1][j]), lif_state[j], atol=ATOL)


def test_recurrent_compound_sub_outputs(keys):
    # the compound alone: its entry in outs is [Parallel output I_t, spikes]
    comp, lin_ff, lin_rec = _rec_compound(keys, 3, 4, DC, THR)
    model = snn.SequentialLocalFeedback([comp])
    x = data((10, 3), seed=1, lo=0.0, hi=2.0)
    _, outs = model(model.init_state((3,), keys[3]), x, keys[4])
    currents, spikes, _, margin = recurrent_lif_reference(lin_ff, lin_rec, DC, THR, x)
    assert margin > 1e-4 and spikes.sum() > 0
    sub = outs[0]
    assert isinstance(sub, list) and len(sub) == 2
    np.testing.assert_allclose(np.asarray(sub[0]), currents, atol=ATOL)
    np.testing.assert_array_equal(np.asarray(sub[1]), spikes)


def test_recurrent_compound_in_second_position(keys):
    # §8.2: I_t = W_ff u_{t-1} + b_ff + W_rec s_{t-1} + b_rec, u = previous layer's output
    lin0 = eqx.nn.Linear(3, 5, key=keys[5])
    lin0 = eqx.tree_at(lambda l: l.weight, lin0, jnp.abs(lin0.weight))
    comp, lin_ff, lin_rec = _rec_compound(keys, 5, 4, DC, THR)
    model = snn.SequentialLocalFeedback(lin0, comp)       # star form
    assert model.graph_structure.input_connectivity == ((), (0, 1))
    x = data((10, 3), seed=2, lo=0.0, hi=2.0)
    states = model.init_state((3,), keys[3])
    _, outs = model(states, x, keys[4])
    u = np.concatenate([np.asarray(lin0.bias, f32)[None], np_linear(lin0, x)[:-1]])
    currents, spikes, _, margin = recurrent_lif_reference(lin_ff, lin_rec, DC, THR, u)
    assert margin > 1e-4 and spikes.sum() > 0
    np.testing.assert_allclose(np.asarray(outs[0][0]), currents, atol=ATOL)
    np.testing.assert_array_equal(np.asarray(outs[0][1]), spikes)


def test_recurrence_changes_the_result(keys):
    comp, lin_ff, lin_rec = _rec_compound(keys, 3, 4, DC, THR)
    x = data((10, 3), seed=0, lo=0.0, hi=2.0)
    rec = snn.SequentialLocalFeedback([comp])
    _, o_rec = rec(rec.init_state((3,), keys[3]), x, keys[4])
    # without feedback the Parallel would get one input only; compare with a hand run where s_{t-1} = 0
    _, spikes, _, _ = recurrent_lif_reference(lin_ff, lin_rec, DC, THR, x)
    n = 4
    state = [np.zeros(n, f32)] * 3
    no_rec = []
    for u in np.asarray(x):
        state, s, _ = ref.lif({"dc": DC, "thr": THR}, state, np_linear(lin_ff, u) + np.asarray(lin_rec.bias))
        no_rec.append(s)
    assert not np.array_equal(np.stack(no_rec), spikes), "test setup: recurrence should matter"
    np.testing.assert_array_equal(np.asarray(o_rec[0][1]), spikes)


def test_init_state_with_self_edge(keys):
    comp, lin_ff, lin_rec = _rec_compound(keys, 3, 4, DC, THR)
    model = snn.SequentialLocalFeedback([comp, snn.SimpleLI([0.8])])
    states = model.init_state((3,), keys[3])
    assert type(states) is list and len(states) == 2
    assert type(states[0]) is list and len(states[0]) == 2
    # the Parallel sub-layer starts from Parallel([zeros, zeros]) = b_ff + b_rec
    np.testing.assert_allclose(np.asarray(states[0][0][-1]),
                               np.asarray(lin_ff.bias) + np.asarray(lin_rec.bias), atol=1e-6)
    for s in states[0][1]:
        assert s.shape == (4,)
        np.testing.assert_array_equal(np.asarray(s), 0.0)
    assert [s.shape for s in states[1]] == [(4,)]


# ---------------------------------------------------------------- explicit feedback dicts

def test_explicit_back_edge_adds_the_edge(keys):
    lin = eqx.nn.Linear(3, 3, key=keys[0])
    a = 0.6
    fb = snn.SequentialLocalFeedback([lin, snn.SimpleLI([a])], feedback_layers={1: 0})
    ff = snn.SequentialLocalFeedback([lin, snn.SimpleLI([a])], feedback_layers={})
    assert fb.graph_structure.input_connectivity == ((1,), (0,))
    assert fb.graph_structure.input_layer_ids == ((0,), ())
    x = data((8, 3), seed=3, lo=-1.0, hi=1.0)
    states = fb.init_state((3,), keys[1])
    np.testing.assert_allclose(np.asarray(states[0][0]), np.asarray(lin.bias), atol=1e-6)
    _, o_fb = fb(states, x, keys[2])
    _, o_ff = ff(ff.init_state((3,), keys[1]), x, keys[2])
    # hand: L[t] = W(x[t] + m[t-1]) + b  (external + feedback summed), m[t] = a m[t-1] + (1-a) L[t-1]
    L_prev, m = np.asarray(lin.bias, f32), np.zeros(3, f32)
    expected = []
    for t in range(8):
        L = np_linear(lin, np.asarray(x[t]) + m)
        m = f32(a) * m + (f32(1) - f32(a)) * L_prev
        L_prev = L
        expected.append(m)
    np.testing.assert_allclose(np.asarray(o_fb[0]), np.stack(expected), atol=ATOL)
    assert not np.allclose(np.asarray(o_fb[0]), np.asarray(o_ff[0]), atol=1e-3)


def test_explicit_self_loop_on_plain_layer(keys):
    lin = eqx.nn.Linear(3, 3, key=keys[0])
    lin = eqx.tree_at(lambda l: l.weight, lin, 0.5 * lin.weight)   # keep the loop stable
    model = snn.SequentialLocalFeedback([lin, snn.SimpleLI([0.5])], feedback_layers={0: 0})
    assert model.graph_structure.input_connectivity == ((0,), (0,))
    x = data((8, 3), seed=4, lo=-1.0, hi=1.0)
    final, outs = model(model.init_state((3,), keys[1]), x, keys[2])
    # L[t] = W(x[t] + L[t-1]) + b, L[-1] = b  (the Linear's initial output: W*0 + b)
    L = np.asarray(lin.bias, f32)
    Ls = []
    for t in range(8):
        L = np_linear(lin, np.asarray(x[t]) + L)
        Ls.append(L)
    np.testing.assert_allclose(np.asarray(final[0][0]), Ls[-1], atol=ATOL)
    # the LI integrates L one step later
    m, expected, prev = np.zeros(3, f32), [], np.asarray(lin.bias, f32)
    for t in range(8):
        m = f32(0.5) * m + f32(0.5) * prev
        prev = Ls[t]
        expected.append(m)
    np.testing.assert_allclose(np.asarray(outs[0]), np.stack(expected), atol=ATOL)


def test_long_back_edge_from_later_stateful_layer(keys):
    l0, l2 = eqx.nn.Linear(3, 3, key=keys[0]), eqx.nn.Linear(3, 3, key=keys[1])
    model = snn.SequentialLocalFeedback([l0, snn.SimpleLI([0.6]), l2, snn.SimpleLI([0.7])],
                                        feedback_layers={3: 0})
    assert model.graph_structure.input_connectivity == ((3,), (0,), (1,), (2,))
    states = model.init_state((3,), keys[2])
    assert len(states) == 4
    x = data((9, 3), seed=5, lo=-1.0, hi=1.0)
    _, outs = model(states, x, keys[3])
    L0p, m1, L2p, m3 = (np.asarray(l0.bias, f32), np.zeros(3, f32), np.asarray(l2.bias, f32), np.zeros(3, f32))
    expected = []
    for t in range(9):
        L0 = np_linear(l0, np.asarray(x[t]) + m3)
        L2 = np_linear(l2, m1)
        m1_new = f32(0.6) * m1 + f32(0.4) * L0p
        m3 = f32(0.7) * m3 + f32(1 - f32(0.7)) * L2p
        m1, L0p, L2p = m1_new, L0, L2
        expected.append(m3)
    np.testing.assert_allclose(np.asarray(outs[0]), np.stack(expected), atol=ATOL)


def test_list_and_star_forms_equal(keys):
    comp, _, _ = _rec_compound(keys, 3, 4, DC, THR)
    layers = [comp, eqx.nn.Linear(4, 2, key=keys[2])]
    a = snn.SequentialLocalFeedback(layers)
    b = snn.SequentialLocalFeedback(*layers)
    assert a.graph_structure == b.graph_structure
    assert len(a) == 2 and a[1] is layers[1]
    x = data((5, 3), seed=6, lo=0.0, hi=2.0)
    _, oa = a(a.init_state((3,), keys[3]), x, keys[4])
    _, ob = b(b.init_state((3,), keys[3]), x, keys[4])
    np.testing.assert_array_equal(np.asarray(oa[0]), np.asarray(ob[0]))


def test_feedback_model_matches_reference_with_gradients(keys):
    """The recurrent compound (planned: one recurrent loop with a hand-written backward pass, under
    jit and vmap) against the reference path: outputs, final states and gradients wrt the model
    (W_rec included), the states and the input. The LIF fires on ~50 % of its steps."""
    comp, _, _ = _rec_compound(keys, 3, 4, DC, THR)
    model = snn.SequentialLocalFeedback([comp, snn.SimpleLI([0.8])])
    states = model.init_state((3,), keys[3])
    xb = data((2, 8, 3), seed=7, lo=0.0, hi=2.0)
    _, _, g = assert_matches_reference(model, states, xb, keys[4], batched=True)
    w_rec_grad = np.asarray(g[0].layers[0].layers[0].layers[1].weight)
    assert np.abs(w_rec_grad).sum() > 0                 # gradient flows through the self-edge
