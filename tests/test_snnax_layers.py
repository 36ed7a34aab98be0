"""The parts of snnax that are broken there and work here: ``SRM``, ``ResNetBlock``, ``delayed_forward_fn``.

- SRM: its step against an independent numpy oracle written in Gerstner's kernel form (PSP kernel
  eps and refractory kernel eta summed over the whole history; docs/semantics.md "SRM"), spikes
  equal and traces to 1e-5; the planned XLA neuron loop and the Pallas kernels (``pallas-interpret``,
  strict: no fallback) against the reference path; the snnax form ``SRM(layer, ...)`` (the XLA
  neuron loop; never the elementwise kernels) against the reference path.
  The SRM model also lowers to the compiled kernels for cuda and tpu (no hardware needed).
- ResNetBlock: ``y = f(x) + x`` step by step; planned path against the reference path.
- delayed_forward_fn as ``forward_fn=`` (always the reference path) against the default forward on the
  planned and on the reference path; its ``(states, outs)`` carry form under ``lax.scan``.

Path comparisons use tests/test_equivalence.py's helpers and tolerances (outputs and final states
atol/rtol 1e-5, gradients w.r.t. model, initial states and input rtol 1e-4 / atol 1e-5), with inputs
that make every spiking layer fire at a rate in [2%, 98%].
"""
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import snnkern
from snnkern import snn
from snnkern.functional.surrogate import sigmoid_surrogate
from snnkern.kernels import pallas_neuron as PN
from snnkern.plan.protocol import layer_output

from test_pallas import CUSTOM_CALL, _abstract_mesh
from helpers import (GRAD_ATOL, GRAD_RTOL, OUT_ATOL, OUT_RTOL, _recording_scan, assert_fires, assert_trees_close,
                     check_equivalent, run_path)
from test_equivalence import _case, batch_data, linear

f64 = np.float64


def trajectories(model, states, x, key):
    """Every layer's state at every step, on the reference path (one sample)."""
    rec = snn.StatefulModel(model.graph_structure, model.layers, loop_fn=_recording_scan)
    with snnkern.backend("reference"):
        _, (_, traj) = eqx.filter_jit(lambda m, s, xx: m(s, xx, key))(rec, states, x)
    return traj


def assert_rate(spikes, where, lo=0.02, hi=0.98):
    r = float(jnp.mean(spikes))
    assert lo <= r <= hi, f"test setup: {where} fires at rate {r:.3f}, want a non-trivial rate"


# ================================================================================================
# SRM


def srm_oracle(x, a, b, g, rho, thr):
    """Gerstner's SRM from its kernels, float64: u_t = sum_k eps_k x_{t-k} - rho sum_{k>=1} g^(k-1) s_{t-k}."""
    T = x.shape[0]
    k = np.arange(T)
    eps = (1 - a) * (1 - b) * np.array([sum(a ** i * b ** (n - i) for i in range(n + 1)) for n in k])
    eta = np.concatenate([[0.0], -rho * g ** k[:-1]])               # eta_0 = 0, eta_k = -rho g^(k-1)
    psp, refr, u, s = (np.zeros_like(x, f64) for _ in range(4))
    for t in range(T):
        psp[t] = sum(eps[j] * x[t - j] for j in range(t + 1))
        refr[t] = sum(-eta[j] / rho * s[t - j] for j in range(1, t + 1))   # the trace r_t
        u[t] = psp[t] - rho * refr[t]
        s[t] = (u[t] >= thr).astype(f64)
    return psp, refr, u, s


def test_srm_step_is_gerstners_kernel_sum():
    a, b, g, rho, thr = 0.8, 0.7, 0.85, 0.6, 0.5
    neuron = snn.SRM(decay_constants=[a, b], r_decay_constants=[g], reset_val=rho, threshold=thr)
    x = np.random.default_rng(0).uniform(0.0, 1.6, (40, 9)).astype(np.float32)
    psp, refr, u, s = srm_oracle(x.astype(f64), a, b, g, rho, thr)
    assert np.min(np.abs(u - thr)) > 1e-4, "test setup: a membrane within rounding of the threshold"
    assert_rate(s, "SRM (oracle)")
    state = neuron.init_state((9,), None)
    for t in range(40):
        state, out = neuron(state, jnp.asarray(x[t]))
        p, q, r, spk = (np.asarray(v) for v in state)
        np.testing.assert_array_equal(spk, s[t], err_msg=f"spikes at step {t}")
        np.testing.assert_array_equal(np.asarray(out), s[t])
        np.testing.assert_allclose(q, psp[t], atol=1e-5, err_msg=f"PSP at step {t}")
        np.testing.assert_allclose(r, refr[t], atol=1e-5, err_msg=f"refractory trace at step {t}")


def srm_model(k):
    """Linear -> SRM (trainable per-neuron threshold, reset value and r-decay) -> Linear -> SRM
    (gradient through the refractory term, sigmoid surrogate)."""
    return snn.Sequential(
        linear(4, 7, k[0], gain=3.0, shift=0.6),
        snn.SRM(decay_constants=[0.8, 0.7], r_decay_constants=jnp.array([0.85]),
                threshold=jnp.linspace(0.3, 0.6, 7), reset_val=jnp.array(0.8)),
        linear(7, 5, k[1], gain=3.0, shift=0.5),
        snn.SRM(decay_constants=jnp.array([0.75, 0.6]), threshold=0.4, stop_reset_grad=False,
                spike_fn=sigmoid_surrogate(4.0)))


def test_srm_planned_matches_reference():
    model = srm_model(jax.random.split(jax.random.PRNGKey(7), 2))
    with snnkern.backend("xla"):
        plan = snnkern.explain(model, (4,))
    assert [c.kind for c in plan.components] == ["stateless", "neuron", "stateless", "neuron"] and not plan.fallbacks
    _case(model, (4,), T=14, seed=5, batched=True, perturb=True)


def test_srm_pallas_kernels_match_reference(monkeypatch):
    kernel_calls = []
    orig = PN.neuron_loop

    def spy(*args, **kwargs):
        kernel_calls.append(kwargs.get("interpret"))
        return orig(*args, **kwargs)

    monkeypatch.setattr(PN, "neuron_loop", spy)
    model = srm_model(jax.random.split(jax.random.PRNGKey(7), 2))
    k = jax.random.split(jax.random.PRNGKey(3), 2)
    states = model.init_state((4,), k[0])
    x = batch_data((14, 4), 6, batched=True)
    assert_fires(model, states, x, k[1], batched=True)
    ref = run_path("reference", model, states, x, k[1], batched=True)
    with snnkern.strict():       # a fallback to the XLA loop would raise
        got = run_path("pallas-interpret", model, states, x, k[1], batched=True)
    assert kernel_calls == [True, True], f"the Pallas kernels did not run both SRMs: {kernel_calls}"
    for what, g, r, tol in (("outputs", got[1], ref[1], (OUT_ATOL, OUT_RTOL)),
                            ("final states", got[0], ref[0], (OUT_ATOL, OUT_RTOL)),
                            ("gradients", got[2], ref[2], (GRAD_ATOL, GRAD_RTOL))):
        assert_trees_close(g, r, *tol, what)


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_srm_model_lowers_to_kernels(platform):
    """Compiled kernels without the hardware (an abstract H200 / TPU device, as in test_pallas.py):
    the SRM's step and its VJP lower through Triton / Mosaic, one forward and one backward kernel
    per SRM."""
    model = srm_model(jax.random.split(jax.random.PRNGKey(7), 2))
    states = model.init_state((4,), jax.random.PRNGKey(0))
    params, static = eqx.partition(model, eqx.is_array)

    def loss(params, st, xb):
        with snnkern.backend("pallas"), snnkern.strict():
            f, o = jax.vmap(eqx.combine(params, static), in_axes=(None, 0, None))(st, xb, jax.random.PRNGKey(1))
        return jnp.sum(o[0]) + sum(jnp.sum(l) for l in jax.tree.leaves(f))

    xb = jax.ShapeDtypeStruct((3, 16, 4), jnp.float32)
    with jax.sharding.use_abstract_mesh(_abstract_mesh(platform)), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)     # "the Pallas Triton backend is deprecated"
        text = jax.jit(jax.value_and_grad(loss)).trace(params, states, xb).lower(lowering_platforms=(platform,)).as_text()
    assert text.count(CUSTOM_CALL[platform]) == 4


def srm_layer_model(k):
    """snnax's form: the layer inside the neuron maps the PSPs (input shape) to the membrane (its
    output shape); the first is hidden (its step's output shape differs from its input's)."""
    return snn.Sequential(
        snn.SRM(eqx.nn.Sequential([linear(4, 6, k[0], gain=2.0, shift=0.2), eqx.nn.LayerNorm(6)]),
                decay_constants=[0.8, 0.7], reset_val=[1.0], threshold=0.5, input_shape=[4], shape=[6]),
        snn.SRM(linear(6, 3, k[1], gain=1.5, shift=0.4), decay_constants=[0.7, 0.6],
                threshold=jnp.array(0.3), reset_val=jnp.array(0.5), stop_reset_grad=False))


def test_srm_with_layer_matches_reference():
    """It mixes neurons, so it runs on the XLA neuron loop (with full-size parameter gradients)."""
    k = jax.random.split(jax.random.PRNGKey(11), 3)
    model = srm_layer_model(k)
    states = model.init_state((4,), k[2])
    assert [[tuple(s.shape) for s in st] for st in states] == [[(4,), (4,), (6,), (6,)], [(6,), (6,), (3,), (3,)]]
    with snnkern.backend("xla"):
        plan = snnkern.explain(model, (4,))
    assert [c.kind for c in plan.components] == ["neuron", "neuron"] and not plan.fallbacks
    x = batch_data((16, 4), 8, batched=True)
    assert_fires(model, states, x, k[2], batched=True)
    _, flipped = check_equivalent(model, states, x, k[2], batched=True)
    assert not flipped


def test_srm_with_layer_never_takes_the_elementwise_kernels():
    """Under pallas-interpret it falls back to the XLA loop (a plan field; strict mode raises),
    also with a shape-preserving, parameter-free layer that mixes neurons."""
    k = jax.random.split(jax.random.PRNGKey(11), 3)
    mixing = snn.Sequential(linear(4, 5, k[0]), snn.SRM(eqx.nn.Lambda(jax.nn.softmax), decay_constants=[0.8, 0.7],
                                                        threshold=0.15))
    for model in (srm_layer_model(k), mixing):
        with snnkern.backend("pallas-interpret"):
            plan = snnkern.explain(model, (4,))
            assert plan.fallbacks and all("broadcast" in f for f in plan.fallbacks), plan
            with snnkern.strict(), pytest.raises(snnkern.FallbackError):
                snnkern.explain(model, (4,))
    states = mixing.init_state((4,), k[2])
    x = batch_data((12, 4), 9, batched=False)
    assert_fires(mixing, states, x, k[2])
    ref = run_path("reference", mixing, states, x, k[2])
    got = run_path("pallas-interpret", mixing, states, x, k[2])
    for what, g, r in (("outputs", got[1], ref[1]), ("final states", got[0], ref[0])):
        assert_trees_close(g, r, OUT_ATOL, OUT_RTOL, what)
    assert_trees_close(got[2], ref[2], GRAD_ATOL, GRAD_RTOL, "gradients")


def test_srm_layer_commutes_with_a_bias_free_linear():
    """Gerstner's sum of weighted PSPs: SRM(Linear) (weights after the PSP kernel) equals a Linear into
    an elementwise SRM (weights before it), inside a CompoundLayer so that there is no extra delay."""
    k = jax.random.split(jax.random.PRNGKey(2), 2)
    w = eqx.nn.Linear(5, 4, use_bias=False, key=k[0])
    w = eqx.tree_at(lambda l: l.weight, w, 2.0 * w.weight)
    kw = dict(decay_constants=[0.8, 0.75], r_decay_constants=[0.8], threshold=0.3, reset_val=0.7)
    inside = snn.Sequential(snn.SRM(w, **kw))
    before = snn.Sequential(snn.CompoundLayer(w, snn.SRM(**kw)))
    x = batch_data((30, 5), 4, batched=False)
    f_in, o_in = inside(inside.init_state((5,), k[1]), x, k[1])
    f_bf, o_bf = before(before.init_state((5,), k[1]), x, k[1])
    assert_rate(o_in[0], "SRM(Linear)")
    np.testing.assert_array_equal(np.asarray(o_in[0]), np.asarray(o_bf[0][-1]))
    np.testing.assert_allclose(np.asarray(f_in[0][2]), np.asarray(f_bf[0][1][2]), atol=1e-5)   # r


def test_srm_arguments():
    n = snn.SRM([0.9, 0.8])                     # decay constants first, like LIF([a, b])
    assert n.layer is None and n.decay_constants.shape == (2,) and n.params()["reset_val"] == 1.0
    with pytest.raises(ValueError, match=r"SRM: decay_constants needs 2 value"):
        snn.SRM(0.9)
    with pytest.raises(TypeError, match="SRM needs decay_constants"):
        snn.SRM()
    with pytest.raises(TypeError, match="SRM: layer must be an equinox Module"):
        snn.SRM("linear", decay_constants=[0.9, 0.8])
    with pytest.raises(ValueError, match=r"SRM: state must have 4 entries"):
        n([jnp.zeros(3)], jnp.zeros(3))


# ================================================================================================
# ResNetBlock


def resnet_model(k):
    block = snn.ResNetBlock(linear(6, 6, k[1], gain=2.0, shift=0.3), snn.LIF([0.85, 0.7], threshold=0.4))
    return snn.Sequential(linear(4, 6, k[0], gain=1.0, shift=0.1), block,
                          linear(6, 3, k[2], gain=2.0, shift=0.2), snn.LIF([0.8, 0.7], threshold=0.5))


def test_resnet_block_adds_its_input():
    k = jax.random.split(jax.random.PRNGKey(4), 3)
    block = resnet_model(k).layers[1]
    chain = snn.CompoundLayer(*block.layers)
    st_b, st_c = block.init_state((6,), k[0]), chain.init_state((6,), k[0])
    assert len(st_b) == 3 and float(jnp.abs(layer_output(block, st_b)).max()) == 0.0
    for t, xt in enumerate(batch_data((6, 6), 1, batched=False)):
        st_b, y = block(st_b, xt, key=k[1])
        st_c, outs = chain(st_c, xt, key=k[1])
        np.testing.assert_array_equal(np.asarray(y), np.asarray(outs[-1] + xt), err_msg=f"step {t}")
        assert layer_output(block, st_b) is y
        assert_trees_close(st_b[:-1], st_c, 0.0, 0.0, f"sub-layer states at step {t}")


def test_resnet_block_planned_matches_reference():
    k = jax.random.split(jax.random.PRNGKey(4), 3)
    model = resnet_model(k)
    states = model.init_state((4,), k[0])
    x = batch_data((12, 4), 3, batched=False)
    assert_rate(trajectories(model, states, x, k[1])[1][1][2], "the LIF inside the ResNetBlock")
    assert_fires(model, states, x, k[1])
    _, flipped = check_equivalent(model, states, x, k[1])
    assert not flipped


def test_resnet_block_needs_a_shape_preserving_chain():
    block = snn.ResNetBlock(eqx.nn.Linear(6, 5, key=jax.random.PRNGKey(0)), snn.LIF([0.9, 0.8]))
    with pytest.raises(ValueError, match=r"ResNetBlock: its sub-layers map the input shape \(6,\) to \(5,\)"):
        block.init_state((6,), None)
    model = snn.Sequential(eqx.nn.Linear(3, 6, key=jax.random.PRNGKey(1)), block)
    with pytest.raises(ValueError, match=r"layer 1 \(ResNetBlock\).*skip connection needs the same shape"):
        model.init_state((3,), jax.random.PRNGKey(2))


# ================================================================================================
# delayed_forward_fn


def feedback_model(k, forward_fn=snn.default_forward_fn):
    """A recurrent compound (Parallel input, self-edge), a feedback edge 3 -> 2 and a two-layer output."""
    rec = snn.CompoundLayer(snn.Parallel([linear(3, 5, k[0], gain=2.0, shift=0.3),
                                          linear(5, 5, k[1], gain=0.8, shift=0.0)]),
                            snn.LIF([0.85, 0.75], threshold=0.5))
    layers = [rec, linear(5, 4, k[2], gain=2.0, shift=0.4), snn.LIFSoftReset([0.8, 0.7], threshold=0.6),
              linear(4, 4, k[3], gain=1.0, shift=0.0), snn.SimpleLI([0.8])]
    return snn.SequentialLocalFeedback(layers, feedback_layers={0: 0, 3: 2}, forward_fn=forward_fn)


def test_delayed_forward_fn_equals_the_default_forward():
    k = jax.random.split(jax.random.PRNGKey(9), 6)
    default, delayed = feedback_model(k), feedback_model(k, forward_fn=snn.delayed_forward_fn)
    plan = snnkern.explain(delayed, (3,))
    assert plan.path == "reference" and "forward_fn" in plan.reason
    states = default.init_state((3,), k[4])
    x = batch_data((14, 3), 2, batched=True)
    assert_fires(default, states, x, k[5], batched=True)
    ref, _ = check_equivalent(default, states, x, k[5], batched=True)      # default: planned == reference
    got = run_path("reference", delayed, states, x, k[5], batched=True)
    assert_trees_close(got[1], ref[1], OUT_ATOL, OUT_RTOL, "outputs")
    assert_trees_close(got[0], ref[0], OUT_ATOL, OUT_RTOL, "final states")
    # gradients w.r.t. the layers (the models differ in their static forward_fn), states and input
    (m_got, s_got, x_got), (m_ref, s_ref, x_ref) = got[2], ref[2]
    assert_trees_close((m_got.layers, s_got, x_got), (m_ref.layers, s_ref, x_ref), GRAD_ATOL, GRAD_RTOL, "gradients")


def test_delayed_forward_fn_with_snnax_carry():
    """snnax's carry ``(states, outs)``: outs[j] is what layer j exposed at the previous step."""
    k = jax.random.split(jax.random.PRNGKey(9), 6)
    model = feedback_model(k)
    states = model.init_state((3,), k[4])
    x = batch_data((10, 3), 2, batched=False)
    outs0 = [layer_output(layer, s) for layer, s in zip(model.layers, states)]
    step = lambda c, xt: snn.delayed_forward_fn(model.layers, model.graph_structure, k[5], c, xt)  # noqa: E731
    (final, reads), ys = jax.lax.scan(step, (states, outs0), x)
    with snnkern.backend("reference"):
        want_final, want_outs = model(states, x, k[5])
    assert_trees_close(final, want_final, 1e-6, 1e-6, "final states")
    assert_trees_close(ys, want_outs, 1e-6, 1e-6, "outputs")
    assert_trees_close(reads, [layer_output(l, s) for l, s in zip(model.layers, final)], 0.0, 0.0, "reads")
    with pytest.raises(ValueError, match=r"\(states, outs\) with one entry per layer"):
        snn.delayed_forward_fn(model.layers, model.graph_structure, k[5], (states,), x[0])
