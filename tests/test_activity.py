"""snnkern.activity: record, firing_rates, synaptic_ops, rate_penalty, summary.

``record`` on every backend (reference, xla, pallas-interpret) is checked layer by layer against the
model's prefixes run alone (``Sequential(*layers[:k+1])``) on the reference path: the outputs within the
planned-vs-reference tolerances of tests/helpers.py (atol 1e-5 + rtol 1e-5), and the gradient of a loss
mixing every layer's output (atol 1e-5 + rtol 1e-4).
Tiny shapes (T=6, 4 inputs, 5 hidden, 3 classes): pallas-interpret is slow.
"""
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import snnkern
from helpers import (GRAD_ATOL, GRAD_RTOL, OUT_ATOL, OUT_RTOL, assert_rate, assert_trees_close, data, scale_linear,
                     under)
from snnkern import activity, encode, snn
from snnkern.plan.protocol import read_from_out

KEY = jax.random.PRNGKey(0)
T, N_IN, H, C = 6, 4, 5, 3


def _ff(key=KEY):
    k = jax.random.split(key, 2)
    return snn.Sequential(scale_linear(eqx.nn.Linear(N_IN, H, key=k[0]), 3.0, 0.4), snn.LIF([0.8, 0.7], threshold=0.5),
                          scale_linear(eqx.nn.Linear(H, C, key=k[1]), 2.0), snn.SimpleLI([0.9]))


def _rec(key=KEY):
    k = jax.random.split(key, 3)
    comp = snn.CompoundLayer(snn.Parallel([scale_linear(eqx.nn.Linear(N_IN, H, key=k[0]), 3.0, 0.4),
                                           eqx.nn.Linear(H, H, key=k[2])]), snn.LIF([0.8, 0.7], threshold=0.5))
    return snn.SequentialLocalFeedback(comp, scale_linear(eqx.nn.Linear(H, C, key=k[1]), 2.0), snn.SimpleLI([0.9]),
                                       feedback_layers=None)


def _prefix(model, k):
    """The model's first k + 1 layers, run alone (the same graph, cut after layer k)."""
    if isinstance(model, snn.SequentialLocalFeedback):
        return snn.SequentialLocalFeedback(*model.layers[:k + 1], feedback_layers=None)
    return snn.Sequential(*model.layers[:k + 1])


def _weights(tree):
    return jax.tree.map(lambda a: jnp.sin(jnp.arange(a.size, dtype=jnp.float32) * 1.37 + 0.3).reshape(a.shape), tree)


def _record_run(model, st, x):
    """(every layer's outputs, the gradient wrt the layers of sum_k <w_k, outs_k>) through record."""
    params, static = eqx.partition(model.layers, eqx.is_inexact_array)

    def loss(p):
        m = eqx.tree_at(lambda mm: mm.layers, model, eqx.combine(p, static))
        outs = activity.record(m, st, x, KEY, sublayers=True)
        return sum(jnp.vdot(w, o) for w, o in zip(jax.tree.leaves(_weights(outs)), jax.tree.leaves(outs))), outs

    g, outs = eqx.filter_jit(jax.grad(loss, has_aux=True))(params)
    return outs, g


def _prefix_runs(model, st, x):
    """The same from the prefixes, each run alone: outs[k] from prefix k, gradients summed over k."""
    params, static = eqx.partition(model.layers, eqx.is_inexact_array)
    n = len(model.layers)

    def loss(p):
        layers = eqx.combine(p, static)
        outs = []
        for k in range(n):
            pre = _prefix(eqx.tree_at(lambda mm: mm.layers, model, layers), k)
            outs.append(pre(st[:k + 1], x, KEY)[1][-1])
        return sum(jnp.vdot(w, o) for w, o in zip(jax.tree.leaves(_weights(outs)), jax.tree.leaves(outs))), outs

    g, outs = eqx.filter_jit(jax.grad(loss, has_aux=True))(params)
    return outs, g


@pytest.mark.parametrize("make", [_ff, _rec], ids=["ff", "rec"])
def test_record_equals_prefixes_on_every_backend(make):
    model = make()
    st = model.init_state((N_IN,), KEY)
    x = encode.rate(data((N_IN,), seed=3), T, jax.random.PRNGKey(5)).astype(jnp.float32)
    ref_outs, ref_g = under("reference", _prefix_runs, model, st, x)
    hidden = read_from_out(model.layers[0 if make is _rec else 1], ref_outs[0 if make is _rec else 1])
    assert_rate(hidden, "hidden spikes")
    for backend in ("reference", "xla", "pallas-interpret"):
        with snnkern.backend(backend):   # the recorder has the model's plan
            assert str(snnkern.explain(activity.recorder(model), (N_IN,))) == str(snnkern.explain(model, (N_IN,)))
            assert snnkern.explain(activity.recorder(model), (N_IN,)).reference == (backend == "reference")
        rec_outs, rec_g = under(backend, _record_run, model, st, x)
        assert_trees_close(rec_outs, ref_outs, OUT_ATOL, OUT_RTOL, f"{backend}: record vs the prefixes")
        assert_trees_close(rec_g, ref_g, GRAD_ATOL, GRAD_RTOL, f"{backend}: gradients through record vs the prefixes")
    # without sublayers, a compound's entry is its last sub-layer's output (the LIF's spikes)
    last = activity.record(model, st, x, KEY)
    assert len(last) == len(model.layers)
    for k, layer in enumerate(model.layers):
        np.testing.assert_array_equal(np.asarray(last[k]), np.asarray(read_from_out(layer, rec_outs[k])))


def test_record_burnin_jit_vmap():
    model = _ff()
    st = model.init_state((N_IN,), KEY)
    xb = data((2, T, N_IN), seed=1)
    full = jax.jit(jax.vmap(lambda xx: activity.record(model, st, xx, KEY)))(xb)
    assert [o.shape for o in full] == [(2, T, H), (2, T, H), (2, T, C), (2, T, C)]
    one = jax.jit(lambda xx: activity.record(model, st, xx, KEY))
    for b in range(2):
        for o, f in zip(one(xb[b]), full):
            np.testing.assert_allclose(np.asarray(o), np.asarray(f[b]), atol=OUT_ATOL, rtol=OUT_RTOL)
    burnt, want = jax.jit(lambda xx: (activity.record(model, st, xx, KEY, burnin=2),
                                      model(st, xx, KEY, burnin=2)[1][-1]))(xb[0])
    assert [o.shape[0] for o in burnt] == [T - 2] * 4
    np.testing.assert_allclose(np.asarray(burnt[-1]), np.asarray(want), atol=OUT_ATOL, rtol=OUT_RTOL)


# ------------------------------------------------------------------------------------------------
# firing rates


def test_firing_rates_hand_case():
    """Identity -> SimpleLIF(alpha 0.5, threshold 0.6) -> SimpleLI on x = 1: the LIF reads x one step
    late (0 at t=0), so mem = 0, .5, .75 (spike, reset to 0), .5, .75 (spike), .5: 2 spikes in 6 steps."""
    model = snn.Sequential(eqx.nn.Identity(), snn.SimpleLIF([0.5], threshold=0.6), snn.SimpleLI([0.9]))
    st = model.init_state((2,), KEY)
    x = jnp.ones((6, 2))
    assert activity.spiking_layers(model) == [1]                       # SimpleLI's output is a membrane
    rates, rec, burnt = jax.jit(lambda xx: (activity.firing_rates(model, st, xx, KEY), activity.record(model, st, xx, KEY),
                                            activity.firing_rates(model, st, xx, KEY, burnin=3)))(x)
    assert list(rates) == [1] and float(rates[1]) == pytest.approx(1 / 3, abs=1e-7)
    np.testing.assert_array_equal(np.asarray(rec[1][:, 0]), [0, 0, 1, 0, 1, 0])
    # burnin=3: steps 3..5, one spike in 3
    assert float(burnt[1]) == pytest.approx(1 / 3, abs=1e-7)
    batched = jax.jit(jax.vmap(lambda xx: activity.firing_rates(model, st, xx, KEY)))(jnp.stack([x, 0 * x]))
    np.testing.assert_allclose(np.asarray(batched[1]), [1 / 3, 0.0], atol=1e-7)


def test_firing_rates_compound_reports_its_neuron():
    model = _rec()
    st = model.init_state((N_IN,), KEY)
    x = data((T, N_IN), seed=2)
    assert activity.spiking_layers(model) == [0]
    rates, rec = jax.jit(lambda xx: (activity.firing_rates(model, st, xx, KEY), activity.record(model, st, xx, KEY)))(x)
    rate, spikes = float(rates[0]), rec[0]
    assert spikes.shape == (T, H) and rate == pytest.approx(float(np.mean(np.asarray(spikes))), abs=1e-7)
    assert 0.0 < rate < 1.0


# ------------------------------------------------------------------------------------------------
# synaptic operations


def test_synaptic_ops_linear_hand_case():
    model = snn.Sequential(eqx.nn.Linear(4, 3, key=KEY), snn.SimpleLIF([0.5], threshold=0.01), eqx.nn.Linear(3, 2, key=KEY))
    st = model.init_state((4,), KEY)
    x = jnp.array([[1, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]], jnp.float32)   # 6 non-zeros
    ops, rec = jax.jit(lambda xx: (activity.synaptic_ops(model, st, xx, KEY), activity.record(model, st, xx, KEY)))(x)
    assert list(ops) == [(0,), (2,)]
    o = {k: float(v) for k, v in ops[(0,)].items()}
    assert o["synaptic_ops"] == 6 * 3 and o["dense_macs"] == 4 * 3 * 5 and o["spiking_input"] == 1.0
    assert o["energy_pj"] == pytest.approx(18 * 0.9) and o["dense_energy_pj"] == pytest.approx(60 * 4.6)
    # layer 2 reads layer 1's spikes one step late (zeros at t = 0): spikes of steps 0..T-2 x 2 outputs
    spikes = np.asarray(rec[1])
    assert spikes[:-1].sum() > 0
    assert float(ops[(2,)]["synaptic_ops"]) == spikes[:-1].sum() * 2 and float(ops[(2,)]["dense_macs"]) == 3 * 2 * 5
    # non-binary input: every op needs a multiply (a MAC)
    half, burnt = jax.jit(lambda xx: (activity.synaptic_ops(model, st, 0.5 * xx, KEY, e_mac=5.0)[(0,)],
                                      activity.synaptic_ops(model, st, xx, KEY, burnin=2)[(0,)]))(x)
    assert float(half["spiking_input"]) == 0.0 and float(half["energy_pj"]) == pytest.approx(18 * 5.0)
    # burn-in: the steps before it are not counted (x[2:] holds 4 non-zeros)
    assert float(burnt["synaptic_ops"]) == 4 * 3


def test_synaptic_ops_conv_exact_at_borders_and_strides():
    """Conv1d(1 -> 2 channels, kernel 3, padding 1) on L = 5 positions. Stride 1: a spike at the
    border reaches 2 output positions, one inside 3 (x 2 channels). Stride 2 (outputs centred on 0,
    2, 4): input position 0 is reached by 1 output, 1 by 2, 2 by 1, 3 by 2, 4 by 1."""
    for stride, counts in ((1, [2, 3, 3, 3, 2]), (2, [1, 2, 1, 2, 1])):
        conv = eqx.nn.Conv1d(1, 2, 3, stride=stride, padding=1, key=KEY)
        model = snn.Sequential(conv, snn.SimpleLIF([0.5]))
        st = model.init_state((1, 5), KEY)
        x = jnp.eye(5, dtype=jnp.float32)[:, None, :]              # step t: one spike at position t
        o = jax.jit(lambda xx: activity.synaptic_ops(model, st, xx, KEY)[(0,)])(x)
        assert float(o["synaptic_ops"]) == 2 * sum(counts)
        n_out = 5 if stride == 1 else 3
        assert float(o["dense_macs"]) == n_out * 2 * (1 * 3) * 5     # outputs x out_ch x (in_ch x kernel) x T
        per_step = jax.jit(jax.vmap(lambda xt: activity.synaptic_ops(model, st, xt[None], KEY)[(0,)]["synaptic_ops"]))(x)
        np.testing.assert_array_equal(np.asarray(per_step), 2 * np.array(counts, np.float32))


def test_synaptic_ops_recurrent_compound_jit_vmap():
    model = _rec()
    st = model.init_state((N_IN,), KEY)
    xb = encode.rate(data((2, N_IN), seed=4), T, jax.random.PRNGKey(1)).astype(jnp.float32).transpose(1, 0, 2)
    ops = jax.jit(jax.vmap(lambda xx: activity.synaptic_ops(model, st, xx, KEY)))(xb)
    assert sorted(ops) == [(0, 0, 0), (0, 0, 1), (1,)]        # input Linear, recurrent Linear, read-out Linear
    spikes = np.asarray(jax.vmap(lambda xx: activity.record(model, st, xx, KEY)[0])(xb))
    for b in range(2):
        assert float(ops[(0, 0, 0)]["synaptic_ops"][b]) == np.count_nonzero(np.asarray(xb[b])) * H
        # the recurrent Linear reads the LIF's own spikes one step late
        assert float(ops[(0, 0, 1)]["synaptic_ops"][b]) == spikes[b, :-1].sum() * H
        assert float(ops[(1,)]["synaptic_ops"][b]) == spikes[b, :-1].sum() * C
    assert np.asarray(ops[(1,)]["dense_macs"]).tolist() == [H * C * T] * 2
    text = activity.summary(model, {0: jnp.array([0.1, 0.3])}, ops)
    assert "layer 0 (CompoundLayer) 0.200" in text and "layer 0.0.1 (Linear)" in text and "Horowitz" in text


def test_synaptic_ops_unrecorded_input_is_an_error():
    model = snn.Sequential(eqx.nn.Linear(3, 3, key=KEY), snn.ResNetBlock(snn.LIF([0.8, 0.7]), eqx.nn.Linear(3, 3, key=KEY)))
    st = model.init_state((3,), KEY)
    with pytest.raises(NotImplementedError, match=r"ResNetBlock at \(1,\)"):
        activity.synaptic_ops(model, st, jnp.ones((4, 3)), KEY)


# ------------------------------------------------------------------------------------------------
# rate penalty


def test_rate_penalty_hand_case_and_gradient():
    s = jnp.array([[1.0, 0.0], [1.0, 1.0]])                        # mean 0.75
    assert float(activity.rate_penalty(s, 0.1, 0.5)) == pytest.approx(0.25 ** 2)
    assert float(activity.rate_penalty(s, 0.8, 0.9)) == pytest.approx(0.05 ** 2)
    assert float(activity.rate_penalty(s, 0.5, 0.8)) == 0.0
    assert float(activity.rate_penalty([s, jnp.zeros((3, 1))], 0.1, 0.5)) == pytest.approx(0.25 ** 2 + 0.1 ** 2)
    assert float(activity.rate_penalty({1: s}, 0.1, 0.5)) == pytest.approx(0.25 ** 2)
    u = jax.random.uniform(jax.random.PRNGKey(3), (5, 4))          # mean ~0.5, away from the band's edges
    # finite differences (eps 1e-3) vs autodiff in float32: atol = rtol = 1e-2 (see tests/test_losses.py)
    check_grads(jax.jit(lambda a: activity.rate_penalty(a, 0.0, 0.2)), (u,), order=1, modes=["fwd", "rev"],
                eps=1e-3, atol=1e-2, rtol=1e-2)
    check_grads(jax.jit(lambda a: activity.rate_penalty([a, 1 - a], 0.7, 0.9)), (u,), order=1, modes=["fwd", "rev"],
                eps=1e-3, atol=1e-2, rtol=1e-2)


def test_rate_penalty_trains_through_the_surrogate():
    """The penalty on record()'s hidden spikes (rate 0.25 > high = 0.05) has a non-zero gradient wrt
    the input weights (through the LIF's surrogate), and a step against it lowers the hidden rate."""
    model = _ff()
    st = model.init_state((N_IN,), KEY)
    x = data((12, N_IN), seed=3, lo=0.5, hi=1.5)

    def pen(m):
        return activity.rate_penalty(activity.record(m, st, x, KEY)[1], 0.0, 0.05)

    g = eqx.filter_jit(eqx.filter_grad(pen))(model)
    w = np.abs(np.asarray(g.layers[0].weight))
    assert w.min() > 0
    rate0 = float(activity.firing_rates(model, st, x, KEY)[1])
    stepped = eqx.apply_updates(model, jax.tree.map(lambda a: -0.5 / w.max() * a, g))
    assert rate0 == 0.25 and float(activity.firing_rates(stepped, st, x, KEY)[1]) < rate0
    assert float(pen(stepped)) < float(pen(model))


@pytest.mark.parametrize("call, exc, match", [
    (lambda: activity.rate_penalty([], 0, 1), ValueError, "empty"),
    (lambda: activity.rate_penalty(jnp.ones(3), 0.5, 0.2), ValueError, "low=0.5, high=0.2"),
    (lambda: activity.rate_penalty(np.array(["a"]), 0, 1), TypeError, r"spikes\[0\]"),
    (lambda: activity.record(eqx.nn.Linear(2, 2, key=KEY), None, jnp.ones((3, 2)), KEY), TypeError,
     "must be an snn.StatefulModel"),
])
def test_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
