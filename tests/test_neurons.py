"""Neuron dynamics against hand-computed / independent numpy traces (SPEC.md §5).

The oracle is tests/_np_reference.py, written straight from the SPEC equations in float32; it never
calls snnkern. Tolerances: state values are compared with atol=1e-5 (float32 rounding of ~10 chained
multiply-adds, possibly fused differently by XLA); spikes are compared exactly, and every random trace
asserts that no membrane came within 1e-3 of the threshold, so rounding cannot flip a spike.
"""
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from snnkern import snn
from snnkern.functional.surrogate import superspike_surrogate

import _np_reference as ref
from helpers import data

f32 = np.float32
ATOL = 1e-5


def run_neuron(neuron, state0, xs):
    """Step `neuron` through xs (T, ...) with its own __call__; returns (per-step states, outputs)."""
    state = state0
    states, outs = [], []
    for x in xs:
        state, out = neuron(state, jnp.asarray(x, jnp.float32))
        states.append([np.asarray(s) for s in state])
        outs.append(np.asarray(out))
    return states, np.stack(outs)


def zeros_state(n_state, shape):
    return [jnp.zeros(shape) for _ in range(n_state)]


# name, constructor, reference step, reference params, number of state entries, input range, spiking?
CASES = [
    ("SimpleLIF", lambda: snn.SimpleLIF([0.8]), ref.simple_lif, {"dc": [0.8], "thr": 1.0}, 2, (-0.5, 3.0), True),
    ("SimpleLIF-reset_val", lambda: snn.SimpleLIF([0.7], reset_val=0.3), ref.simple_lif,
     {"dc": [0.7], "thr": 1.0, "reset_val": 0.3}, 2, (-0.5, 3.0), True),
    ("SimpleLIF-clamped", lambda: snn.SimpleLIF([0.3], threshold=0.8), ref.simple_lif,
     {"dc": [0.3], "thr": 0.8}, 2, (-0.5, 2.5), True),
    ("LIF", lambda: snn.LIF([0.8, 0.7]), ref.lif, {"dc": [0.8, 0.7], "thr": 1.0}, 3, (-0.5, 4.0), True),
    ("LIF-reset_val", lambda: snn.LIF([0.8, 0.6], reset_val=0.2), ref.lif,
     {"dc": [0.8, 0.6], "thr": 1.0, "reset_val": 0.2}, 3, (-0.5, 4.0), True),
    ("LIF-clamped-threshold", lambda: snn.LIF([0.3, 0.2], threshold=0.5), ref.lif,
     {"dc": [0.3, 0.2], "thr": 0.5}, 3, (0.0, 2.0), True),
    ("LIFSoftReset", lambda: snn.LIFSoftReset([0.8, 0.7]), ref.lif_soft,
     {"dc": [0.8, 0.7], "thr": 1.0}, 3, (-0.5, 4.0), True),
    ("LIFSoftReset-reset_val", lambda: snn.LIFSoftReset([0.75, 0.6], reset_val=0.5), ref.lif_soft,
     {"dc": [0.75, 0.6], "thr": 1.0, "reset_val": 0.5}, 3, (-0.5, 4.0), True),
    ("AdaptiveLIF", lambda: snn.AdaptiveLIF([0.8]), ref.adaptive_lif, {"dc": [0.8], "thr": 1.0}, 3,
     (-0.5, 4.0), True),
    ("AdaptiveLIF-custom", lambda: snn.AdaptiveLIF([0.7], ada_decay_constant=[0.6], ada_step_val=[0.5],
                                                   ada_coupling_var=[-0.3], reset_val=0.1),
     ref.adaptive_lif, {"dc": [0.7], "thr": 1.0, "ada_decay": 0.6, "ada_step": 0.5, "ada_coupling": -0.3,
                        "reset_val": 0.1}, 3, (-0.5, 4.0), True),
    ("AdaptiveLIF-clamped", lambda: snn.AdaptiveLIF([0.1], ada_decay_constant=[1.4], ada_step_val=[3.0],
                                                    ada_coupling_var=[-2.0]),
     ref.adaptive_lif, {"dc": [0.1], "thr": 1.0, "ada_decay": 1.4, "ada_step": 3.0, "ada_coupling": -2.0},
     3, (0.0, 4.0), True),
    ("SimpleIAF", lambda: snn.SimpleIAF(leak=0.1), ref.simple_iaf, {"thr": 1.0, "leak": 0.1}, 2,
     (-0.3, 0.9), True),
    ("SimpleIAF-reset_val", lambda: snn.SimpleIAF(reset_val=0.4, threshold=1.5), ref.simple_iaf,
     {"thr": 1.5, "reset_val": 0.4}, 2, (-0.3, 0.9), True),
    ("IAF", lambda: snn.IAF([0.7], leak=0.05), ref.iaf, {"dc": [0.7], "thr": 1.0, "leak": 0.05}, 3,
     (-0.3, 1.0), True),
    ("IAF-reset_val-clamped", lambda: snn.IAF([0.2], reset_val=0.3, threshold=1.5), ref.iaf,
     {"dc": [0.2], "thr": 1.5, "reset_val": 0.3}, 3, (-0.3, 1.0), True),
    ("SimpleLI", lambda: snn.SimpleLI([0.75]), ref.simple_li, {"dc": [0.75]}, 1, (-1.0, 2.0), False),
    ("SimpleLI-clamped", lambda: snn.SimpleLI([1.3]), ref.simple_li, {"dc": [1.3]}, 1, (-1.0, 2.0), False),
    ("SigmaDelta", lambda: snn.SigmaDelta([0.9, 0.8, 0.7], threshold=0.5), ref.sigma_delta,
     {"dc": [0.9, 0.8, 0.7], "thr": 0.5}, 5, (-0.5, 1.0), True),
    # SigmaDelta does NOT clamp: 1.2 must act as 1.2
    ("SigmaDelta-unclamped", lambda: snn.SigmaDelta([1.2, 0.3, 0.6]), ref.sigma_delta,
     {"dc": [1.2, 0.3, 0.6], "thr": 1.0}, 5, (-0.5, 1.0), True),
    ("SpikeCounter", lambda: snn.SpikeCounter((4,)), ref.spike_counter, {}, 2, (0.0, 1.0), False),
]
IDS = [c[0] for c in CASES]

LIST_RETURNING = {"SimpleLIF", "LIF", "LIFSoftReset", "AdaptiveLIF"}


def _inputs(name, lo, hi, T=12, n=4):
    seed = sum(map(ord, name))  # fixed, per case
    x = np.asarray(data((T, n), seed, lo, hi))
    if name.startswith("SpikeCounter"):
        x = (x > 0.5).astype(f32)
    return x


@pytest.mark.parametrize("name,ctor,step,p,n_state,rng_range,spiking", CASES, ids=IDS)
def test_trace_matches_numpy_reference(name, ctor, step, p, n_state, rng_range, spiking):
    neuron = ctor()
    xs = _inputs(name, *rng_range)
    state0 = neuron.init_state((4,), jax.random.PRNGKey(0))
    assert len(state0) == n_state
    ref_states, ref_outs, margin = ref.run(step, p, [np.zeros(4, f32)] * n_state, xs)
    assert margin > 1e-3, "test setup: a membrane lies within rounding of the threshold; change inputs"
    states, outs = run_neuron(neuron, state0, xs)
    for t in range(len(xs)):
        assert len(states[t]) == n_state
        for j in range(n_state):
            np.testing.assert_allclose(states[t][j], ref_states[t][j], atol=ATOL, rtol=0,
                                       err_msg=f"{name}: state[{j}] at step {t}")
    if spiking:
        np.testing.assert_array_equal(outs, ref_outs)
        assert 0 < outs.sum() < outs.size, "test setup: trace should contain some but not only spikes"
    else:
        np.testing.assert_allclose(outs, ref_outs, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name,ctor,step,p,n_state,rng_range,spiking", CASES, ids=IDS)
def test_return_and_state_container_types(name, ctor, step, p, n_state, rng_range, spiking):
    # SPEC §5: SimpleLIF/LIF/(LIFSoftReset "as LIF")/AdaptiveLIF return a list [[...], spk];
    # the IAF family, SimpleLI, SigmaDelta, SpikeCounter return a tuple ([...], out). States are lists (§4).
    neuron = ctor()
    state0 = neuron.init_state((4,), jax.random.PRNGKey(0))
    assert type(state0) is list
    ret = neuron(state0, jnp.ones((4,)))
    base = name.split("-")[0]
    assert type(ret) is (list if base in LIST_RETURNING else tuple)
    assert len(ret) == 2
    new_state, out = ret
    assert type(new_state) is list
    assert len(new_state) == n_state
    assert out.shape == (4,)
    assert all(s.shape == (4,) for s in new_state)
    # the value other layers read is state[-1]; for every neuron here that is the returned output
    np.testing.assert_array_equal(np.asarray(new_state[-1]), np.asarray(out))


# ---------------------------------------------------------------- hand-worked examples (exact values)

def test_lif_deferred_reset_hand_example():
    # a = b = 0.5, threshold 1; all values below are exact in float32.
    lif = snn.LIF([0.5, 0.5])
    s = lif.init_state((1,), jax.random.PRNGKey(0))
    # t0: membrane integrates the OLD synaptic current (0), so it stays 0 although I = 4
    s, out = lif(s, jnp.array([4.0]))
    np.testing.assert_array_equal(np.concatenate(s), [0.0, 2.0, 0.0])
    # t1: mem = .5*0 + .5*2 = 1.0 == threshold -> spike (H(0) = 1); stored mem is PRE-reset (1.0)
    s, out = lif(s, jnp.array([0.0]))
    np.testing.assert_array_equal(np.concatenate(s), [1.0, 1.0, 1.0])
    assert float(out[0]) == 1.0
    # t2: deferred reset with the stored spike: mem 1 - 1*1 = 0, then .5*0 + .5*1 = 0.5
    s, out = lif(s, jnp.array([0.0]))
    np.testing.assert_array_equal(np.concatenate(s), [0.5, 0.5, 0.0])


def test_lif_reset_val_sets_membrane_to_reset_val():
    lif = snn.LIF([0.5, 0.5], reset_val=0.25)
    s = [jnp.array([1.5]), jnp.array([0.0]), jnp.array([1.0])]   # spiked at the previous step
    s, _ = lif(s, jnp.array([0.0]))
    # r = (1.5 - .25)*1 -> mem .25, then .5*.25 + .5*0 = .125
    np.testing.assert_allclose(np.asarray(s[0]), [0.125], atol=1e-7)


def test_lif_soft_reset_subtracts_one():
    lif = snn.LIFSoftReset([0.5, 0.5])
    s = [jnp.array([1.5]), jnp.array([0.0]), jnp.array([1.0])]
    s, _ = lif(s, jnp.array([0.0]))
    # r = spk_prev = 1 -> mem .5, then .5*.5 = .25
    np.testing.assert_allclose(np.asarray(s[0]), [0.25], atol=1e-7)


def test_simple_lif_hand_example_and_softplus_reset():
    n = snn.SimpleLIF([0.5])
    s = n.init_state((1,), jax.random.PRNGKey(0))
    s, out = n(s, jnp.array([2.0]))        # mem = 1.0 exactly -> fires, reset to 0
    assert float(out[0]) == 1.0
    np.testing.assert_array_equal(np.concatenate(s), [0.0, 1.0])
    s, out = n(s, jnp.array([0.5]))
    np.testing.assert_array_equal(np.concatenate(s), [0.25, 0.0])

    n = snn.SimpleLIF([0.5], reset_val=0.0)  # r = softplus(0)*spk = ln 2
    s = n.init_state((1,), jax.random.PRNGKey(0))
    s, out = n(s, jnp.array([2.0]))
    np.testing.assert_allclose(np.asarray(s[0]), [1.0 - np.log(2.0)], atol=1e-6)


def test_adaptive_lif_hand_example():
    n = snn.AdaptiveLIF([0.5])   # defaults: beta .8, a .5, b 1
    s = n.init_state((1,), jax.random.PRNGKey(0))
    s, out = n(s, jnp.array([2.0]))      # mem = .5*(2+0) = 1 -> fires
    assert float(out[0]) == 1.0
    # ada_new = .2*.5*1 + .8*0 - 1*1 = -0.9 ; mem reset to 0
    np.testing.assert_allclose(np.concatenate(s), [0.0, -0.9, 1.0], atol=1e-6)
    s, out = n(s, jnp.array([0.0]))      # mem = .5*(0 - .9) = -.45 ; ada = .1*(-.45) + .8*(-.9)
    np.testing.assert_allclose(np.concatenate(s), [-0.45, -0.765, 0.0], atol=1e-6)


def test_iaf_hand_example():
    n = snn.IAF([0.5])
    s = n.init_state((1,), jax.random.PRNGKey(0))
    s, out = n(s, jnp.array([2.0]))       # mem = 0 + old syn 0 ; syn = 1
    np.testing.assert_array_equal(np.concatenate(s), [0.0, 1.0, 0.0])
    s, out = n(s, jnp.array([0.0]))       # mem = 1.0 == threshold -> fires, reset now ; syn .5
    np.testing.assert_array_equal(np.concatenate(s), [0.0, 0.5, 1.0])


@pytest.mark.parametrize("ctor,inputs", [
    (lambda: snn.SimpleLIF([0.5]), [2.0]),
    (lambda: snn.LIF([0.5, 0.5]), [4.0, 0.0]),
    (lambda: snn.LIFSoftReset([0.5, 0.5]), [4.0, 0.0]),
    (lambda: snn.AdaptiveLIF([0.5]), [2.0]),
    (lambda: snn.SimpleIAF(), [1.0]),
    (lambda: snn.IAF([0.5]), [2.0, 0.0]),
    (lambda: snn.SigmaDelta([0.9, 0.9, 0.9]), [1.0]),
], ids=["SimpleLIF", "LIF", "LIFSoftReset", "AdaptiveLIF", "SimpleIAF", "IAF", "SigmaDelta"])
def test_fires_when_membrane_equals_threshold_exactly(ctor, inputs):
    # The membrane reaches exactly 1.0 (= threshold) at the last step: H(0) = 1 must fire.
    n = ctor()
    s = n.init_state((1,), jax.random.PRNGKey(0))
    for i in inputs:
        s, out = n(s, jnp.array([i]))
    assert float(out[0]) == 1.0
    # and just below threshold it must not fire
    s = n.init_state((1,), jax.random.PRNGKey(0))
    below = [i * (1 - 1e-3) for i in inputs]
    for i in below:
        s, out = n(s, jnp.array([i]))
    assert float(out[0]) == 0.0


def test_simple_iaf_leak_is_trainable_array():
    n = snn.SimpleIAF(leak=0.1)
    assert isinstance(n.leak, jax.Array)
    leaves = jax.tree_util.tree_leaves(eqx.filter(n, eqx.is_inexact_array))
    assert len(leaves) == 1


# ---------------------------------------------------------------- clamping of decay constants

def _half(shape, key, *args, **kwargs):
    return jnp.full(shape, 0.5)


@pytest.mark.parametrize("clamped,bound", [
    (lambda: snn.SimpleLIF([0.3]), lambda: snn.SimpleLIF([0.5])),
    (lambda: snn.SimpleLIF([1.2], init_fn=_half), lambda: snn.SimpleLIF([1.0], init_fn=_half)),
    (lambda: snn.LIF([0.3, 0.1]), lambda: snn.LIF([0.5, 0.5])),
    (lambda: snn.LIF([1.2, 0.7], init_fn=_half), lambda: snn.LIF([1.0, 0.7], init_fn=_half)),
    (lambda: snn.LIF([0.7, 1.2], init_fn=_half), lambda: snn.LIF([0.7, 1.0], init_fn=_half)),
    (lambda: snn.LIFSoftReset([0.1, 0.1]), lambda: snn.LIFSoftReset([0.5, 0.5])),
    (lambda: snn.IAF([0.2]), lambda: snn.IAF([0.5])),
    (lambda: snn.SimpleLI([1.3], init_fn=_half), lambda: snn.SimpleLI([1.0], init_fn=_half)),
    (lambda: snn.SimpleLI([-0.3]), lambda: snn.SimpleLI([0.5])),
    (lambda: snn.AdaptiveLIF([0.1], ada_decay_constant=[1.4], ada_step_val=[3.0], ada_coupling_var=[-2.0]),
     lambda: snn.AdaptiveLIF([0.5], ada_decay_constant=[1.0], ada_step_val=[2.0], ada_coupling_var=[-1.0])),
    (lambda: snn.AdaptiveLIF([0.7], ada_decay_constant=[0.2], ada_step_val=[-1.0], ada_coupling_var=[2.0]),
     lambda: snn.AdaptiveLIF([0.7], ada_decay_constant=[0.5], ada_step_val=[0.0], ada_coupling_var=[1.0])),
], ids=["SimpleLIF-low", "SimpleLIF-high", "LIF-low", "LIF-alpha-high", "LIF-beta-high", "LIFSoftReset",
        "IAF", "SimpleLI-high", "SimpleLI-low", "AdaptiveLIF-a", "AdaptiveLIF-b"])
def test_decay_constants_are_clamped_at_call_time(clamped, bound):
    xs = np.asarray(data((8, 3), seed=7, hi=2.0))
    a, b = clamped(), bound()
    sa, oa = run_neuron(a, a.init_state((3,), jax.random.PRNGKey(0)), xs)
    sb, ob = run_neuron(b, b.init_state((3,), jax.random.PRNGKey(0)), xs)
    np.testing.assert_array_equal(oa, ob)   # same arithmetic -> bitwise equal
    for t in range(len(xs)):
        for j in range(len(sa[t])):
            np.testing.assert_array_equal(sa[t][j], sb[t][j])
    assert np.abs(sa[-1][0]).max() > 0, "test setup: dynamics must be non-trivial"


def test_sigma_delta_is_not_clamped():
    xs = np.full((4, 1), 0.1, f32)
    a, b = snn.SigmaDelta([1.2, 0.5, 0.5]), snn.SigmaDelta([1.0, 0.5, 0.5])
    sa, _ = run_neuron(a, a.init_state((1,), jax.random.PRNGKey(0)), xs)
    sb, _ = run_neuron(b, b.init_state((1,), jax.random.PRNGKey(0)), xs)
    assert not np.allclose(sa[-1][0], sb[-1][0])
    # i_t = 1.2 i_{t-1} + .1  ->  .1, .22, .364, .5368
    np.testing.assert_allclose(sa[-1][0], [0.5368], atol=1e-6)


@pytest.mark.parametrize("dc,expected", [(0.3, 0.0), (0.5, 0.0), (0.8, 0.2 - 0.6), (1.0, 0.0), (1.2, 0.0)])
def test_simple_lif_grad_wrt_decay_constant_follows_lax_clamp(dc, expected):
    # mem' = a*m0 + (1-a)*I  ->  d mem'/d a = m0 - I strictly inside (0.5, 1), 0 at and outside the bounds
    # (lax.clamp semantics, not jnp.clip). No spike: mem' < threshold. Tolerance 1e-6 (float32).
    n = snn.SimpleLIF([dc])
    state = [jnp.array([0.2]), jnp.array([0.0])]

    def loss(neuron):
        new_state, _ = neuron(state, jnp.array([0.6]))
        return new_state[0].sum()

    g = eqx.filter_grad(loss)(n)
    np.testing.assert_allclose(np.asarray(g.decay_constants), [expected], atol=1e-6)


@pytest.mark.parametrize("alpha,beta", [(0.8, 0.7), (0.3, 0.7), (0.8, 1.2), (0.5, 1.0), (1.0, 0.5)])
def test_lif_grad_wrt_both_decay_constants_follows_lax_clamp(alpha, beta):
    m0, syn0, I = 0.2, 0.5, 0.9
    n = snn.LIF([alpha, beta])
    state = [jnp.array([m0]), jnp.array([syn0]), jnp.array([0.0])]

    def loss(neuron):
        new_state, _ = neuron(state, jnp.array([I]))
        return new_state[0].sum() + new_state[1].sum()   # mem' + syn' (mem' < 1: no spike)

    g = np.asarray(eqx.filter_grad(loss)(n).decay_constants)
    inside = lambda v: 0.5 < v < 1.0
    expected = [(m0 - syn0) if inside(alpha) else 0.0, (syn0 - I) if inside(beta) else 0.0]
    np.testing.assert_allclose(g, expected, atol=1e-6)


# ---------------------------------------------------------------- stop_reset_grad

def _simple_lif_mem_grad(stop_reset_grad):
    n = snn.SimpleLIF([0.8], stop_reset_grad=stop_reset_grad)
    state = [jnp.array([0.0]), jnp.array([0.0])]

    def f(I):
        new_state, _ = n(state, I)
        return new_state[0].sum()

    return float(jax.grad(f)(jnp.array([6.0]))[0])


def test_stop_reset_grad_true_vs_false_simple_lif():
    # mem = .2*6 = 1.2 -> spike; surrogate superspike(10): 1/(1 + 10*|1.2 - 1|) = 1/3.
    # stopped:   d(mem - sg(mem*spk))/dI = (1-a)                          = 0.2
    # unstopped: (1-a) - [(1-a)*spk + mem*surr*(1-a)] = -1.2*(1/3)*0.2 = -0.08      (tol 1e-5)
    a = f32(0.8)
    one_minus_a = float(f32(1.0) - a)
    np.testing.assert_allclose(_simple_lif_mem_grad(True), one_minus_a, atol=1e-5)
    np.testing.assert_allclose(_simple_lif_mem_grad(False), -1.2 * (1 / 3) * one_minus_a, atol=1e-5)


def test_stop_reset_grad_changes_lif_gradients_not_outputs():
    xs = jnp.array([[3.0], [3.0], [0.5], [0.5]])

    def run(stop):
        n = snn.LIF([0.6, 0.6], stop_reset_grad=stop)

        def f(xs):
            s = n.init_state((1,), jax.random.PRNGKey(0))
            outs = []
            for x in xs:
                s, o = n(s, x)
                outs.append(o)
            return s[0].sum(), jnp.stack(outs)

        (val, outs), g = jax.value_and_grad(f, has_aux=True)(xs)
        return val, outs, g

    v1, o1, g1 = run(True)
    v2, o2, g2 = run(False)
    assert float(o1.sum()) > 0, "test setup: the LIF must spike so that a reset happens"
    np.testing.assert_array_equal(np.asarray(o1), np.asarray(o2))
    np.testing.assert_allclose(float(v1), float(v2), atol=1e-6)
    assert not np.allclose(np.asarray(g1), np.asarray(g2), atol=1e-4)


# ---------------------------------------------------------------- init_state

STATE_LENGTHS = [
    (lambda **kw: snn.SimpleLIF([0.9], **kw), 2),
    (lambda **kw: snn.LIF([0.9, 0.8], **kw), 3),
    (lambda **kw: snn.LIFSoftReset([0.9, 0.8], **kw), 3),
    (lambda **kw: snn.AdaptiveLIF([0.9], **kw), 3),
    (lambda **kw: snn.SimpleIAF(**kw), 2),
    (lambda **kw: snn.IAF([0.9], **kw), 3),
    (lambda **kw: snn.SimpleLI([0.9], **kw), 1),
]
STATE_IDS = ["SimpleLIF", "LIF", "LIFSoftReset", "AdaptiveLIF", "SimpleIAF", "IAF", "SimpleLI"]


@pytest.mark.parametrize("ctor,n_state", STATE_LENGTHS + [
    (lambda **kw: snn.SigmaDelta([0.9, 0.8, 0.7], **kw), 5),
    (lambda **kw: snn.SpikeCounter((2, 3)), 2),
], ids=STATE_IDS + ["SigmaDelta", "SpikeCounter"])
def test_init_state_shapes_and_zeros(ctor, n_state):
    n = ctor()
    s = n.init_state((2, 3), jax.random.PRNGKey(0))
    assert type(s) is list and len(s) == n_state
    for x in s:
        assert x.shape == (2, 3)
        assert x.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(x), 0.0)


@pytest.mark.parametrize("ctor,n_state", STATE_LENGTHS, ids=STATE_IDS)
def test_init_fn_sets_only_the_membrane(ctor, n_state):
    calls = []

    def init_fn(shape, key, *args, **kwargs):
        calls.append(tuple(shape))
        return jnp.full(shape, 0.25)

    n = ctor(init_fn=init_fn)
    s = n.init_state((3,), jax.random.PRNGKey(0))
    assert calls and calls[-1] == (3,)
    np.testing.assert_array_equal(np.asarray(s[0]), 0.25)
    for x in s[1:]:
        np.testing.assert_array_equal(np.asarray(x), 0.0)


# ---------------------------------------------------------------- construction errors and parameters

@pytest.mark.parametrize("ctor,name", [
    (lambda: snn.LIF(0.9), "LIF"),
    (lambda: snn.LIF([0.9]), "LIF"),
    (lambda: snn.LIFSoftReset([0.9]), "LIF"),
    (lambda: snn.SigmaDelta([0.9, 0.8]), "SigmaDelta"),
    (lambda: snn.SimpleLIF([]), "SimpleLIF"),
], ids=["LIF-float", "LIF-one", "LIFSoftReset-one", "SigmaDelta-two", "SimpleLIF-empty"])
def test_wrong_number_of_decay_constants_raises(ctor, name):
    with pytest.raises(ValueError, match=name):
        ctor()


def test_decay_constants_are_trainable_arrays():
    n = snn.LIF([0.9, 0.8])
    assert isinstance(n.decay_constants, jax.Array)
    assert n.decay_constants.shape == (2,)
    np.testing.assert_allclose(np.asarray(n.decay_constants), [0.9, 0.8], rtol=1e-7)


@pytest.mark.parametrize("ctor", [
    lambda thr: snn.LIF([0.9, 0.8], threshold=thr),
    lambda thr: snn.SimpleLIF([0.9], threshold=thr),
    lambda thr: snn.SimpleIAF(threshold=thr),
], ids=["LIF", "SimpleLIF", "SimpleIAF"])
def test_float_threshold_is_constant_array_threshold_is_trainable(ctor):
    n_float = ctor(1.0)
    n_arr = ctor(jnp.array(1.0))
    leaves_f = jax.tree_util.tree_leaves(eqx.filter(n_float, eqx.is_inexact_array))
    leaves_a = jax.tree_util.tree_leaves(eqx.filter(n_arr, eqx.is_inexact_array))
    assert len(leaves_a) == len(leaves_f) + 1


def test_array_threshold_gets_surrogate_gradient():
    n = snn.SimpleLIF([0.5], threshold=jnp.array(1.0))
    state = [jnp.zeros(2), jnp.zeros(2)]
    I = jnp.array([1.6, 3.0])           # mem = .8, 1.5 -> v = -.2, .5

    def loss(neuron):
        _, spk = neuron(state, I)
        return spk.sum()

    g = eqx.filter_grad(loss)(n)
    # d H(mem - thr)/d thr = -1/(1 + 10|v|) summed: -(1/3 + 1/6) = -0.5     (tol 1e-6)
    np.testing.assert_allclose(float(g.threshold), -0.5, atol=1e-6)


def test_default_spike_fn_is_superspike_10():
    # the gradient of the spike wrt the input must be the superspike(10) tangent (SPEC §5 default)
    n = snn.SimpleIAF()
    ref_fn = superspike_surrogate(10.0)
    state = [jnp.zeros(1), jnp.zeros(1)]

    def f(I):
        return n(state, I)[1].sum()

    g = float(jax.grad(f)(jnp.array([0.7]))[0])
    g_ref = float(jax.grad(lambda v: ref_fn(v).sum())(jnp.array([0.7 - 1.0]))[0])
    np.testing.assert_allclose(g, 1.0 / (1.0 + 10.0 * 0.3), atol=1e-6)
    np.testing.assert_allclose(g, g_ref, atol=1e-7)


def test_float64_mode_runs_every_decayed_neuron():
    """With ``jax_enable_x64`` the decays (float32 arrays) meet float64 inputs and weights: the decay
    clamp must not mix dtypes (it raised "lax.clamp requires arguments to have the same dtypes"
    before). Run in a subprocess: x64 is process-wide. One chain of every decayed neuron, each
    behind a Linear scaled x3 with a +1 bias (currents of ~1-2 against thresholds 0.5-1: every
    spiking layer fires 7-45 %), planned path against the reference: outputs, final states and
    gradients (tests/helpers.py tolerances)."""
    import subprocess
    import sys
    import textwrap
    code = textwrap.dedent("""
        import sys
        sys.path.insert(0, %r)
        import jax, jax.numpy as jnp, equinox as eqx
        from snnkern import snn
        from helpers import assert_matches_reference, scale_linear
        assert jax.config.jax_enable_x64
        k = jax.random.split(jax.random.PRNGKey(0), 8)
        neurons = [snn.LIF([0.9, 0.8], threshold=0.5), snn.LIFSoftReset([0.9, 0.8], threshold=0.5),
                   snn.SimpleLIF([0.8], threshold=0.5), snn.IAF([0.9], threshold=1.0),
                   snn.AdaptiveLIF([0.9], threshold=0.5), snn.SimpleLI([0.8])]
        layers = []
        for i, n in enumerate(neurons):
            layers += [scale_linear(eqx.nn.Linear(3 if i == 0 else 6, 6, key=k[i]), 3.0, 1.0), n]
        model = snn.Sequential(*layers)
        states = model.init_state((3,), k[6])
        x = jax.random.uniform(k[7], (2, 16, 3), jnp.float64, 0.0, 2.0)
        assert x.dtype == model.layers[0].weight.dtype == jnp.float64
        assert_matches_reference(model, states, x, k[5], batched=True)
        print("ok")
    """ % os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
