"""Feedback cycles of affine stateless layers through one neuron run as a delay-d recurrence
(kernels/delay_loop.py, docs/plans.md "How cycles run"): outputs, final states (the cycle's
stateless layers' last outputs included) and gradients wrt weights, initial states and input equal
the reference path, batched and for one sample, with user initial states (shared and per sample),
and under time checkpointing. Tolerances of tests/helpers.py: outputs/states 1e-5 + 1e-5 rel,
gradients 1e-5 + 1e-4 of each leaf's largest entry (through feedback some gradients grow large and
their small entries are rounding of sums taken in another order, as in tests/test_cycles.py).
Every spiking layer fires 2-98 % on the reference.
"""
from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import snnkern
from snnkern import snn
from snnkern.plan import Impl
from snnkern.plan.strategies import ComponentLoop, DelayLoop, NeuronLoop

from helpers import (GRAD_ATOL, GRAD_RTOL, OUT_ATOL, OUT_RTOL, assert_fires, assert_rates, assert_trees_close, data,
                     mixed_loss, rates_of, run_path, scale_linear, under, _recording)

N_IN, N = 6, 12


def _lif():
    return snn.LIF([0.9, 0.8], threshold=0.1)


def _head(k):
    return [eqx.nn.Linear(N_IN, N, key=k[0]), _lif()]


def _fb(mid, feedback, bias=True):
    """``[Linear, LIF, *mid(keys), Linear(N, 3)]`` with ``feedback_layers=feedback``."""
    def build(key):
        k = jax.random.split(key, 4)
        return snn.SequentialLocalFeedback(_head(k) + mid(k, bias) + [eqx.nn.Linear(N, 3, key=k[3])],
                                           feedback_layers=feedback)
    return build


def _lin(k, bias, gain=8.0, shift=0.15):
    # sparse spikes in: a gain and a positive bias make the next LIF fire (without a bias: a larger gain)
    lin = eqx.nn.Linear(N, N, use_bias=bias, key=k)
    return scale_linear(lin, gain=gain, shift=shift) if bias else scale_linear(lin, gain=gain * 2)


def _graph_model(key):
    """x goes straight into the cycle's Linear (external input, no delay); the Linear is a final layer
    and is read by a layer outside the cycle: Linear(0) <- LIF(1), outputs [Linear(2), Linear(0)]."""
    k = jax.random.split(key, 2)
    layers = [scale_linear(eqx.nn.Linear(N, N, key=k[0]), gain=3.0, shift=0.05), _lif(), eqx.nn.Linear(N, 3, key=k[1])]
    graph = snn.GraphStructure(num_layers=3, input_layer_ids=[[0], [], []], final_layer_ids=[2, 0],
                               input_connectivity=[[1], [0], [1, 0]])
    return snn.StatefulModel(graph_structure=graph, layers=layers)


MODELS = {   # name: (build, delay)
    "fb-3-2": (_fb(lambda k, b: [_lin(k[1], b), _lif()], {3: 2}), 2),
    "fb-3-2-no-bias": (_fb(lambda k, b: [_lin(k[1], b), _lif()], {3: 2}, bias=False), 2),
    "self-1": (_fb(lambda k, b: [_lin(k[1], b), _lif()], {1: 1}), 1),
    "identity-2": (_fb(lambda k, b: [eqx.nn.Identity(), _lif()], {3: 2}), 2),
    # Linear -> Identity -> LIF and Identity -> Linear -> LIF: the weight before / after the Identity
    "linear-identity-3": (_fb(lambda k, b: [_lin(k[1], b, gain=4.0), eqx.nn.Identity(), _lif()], {4: 2}), 3),
    "identity-linear-3": (_fb(lambda k, b: [eqx.nn.Identity(), _lin(k[1], b, gain=4.0), _lif()], {4: 2}), 3),
    "graph-external": (_graph_model, 2),
}


def st_in(model):
    """The models' input width: their first layer is a Linear."""
    return model.layers[0].in_features


def _cycle_step(plan):
    (step,) = [s for c in plan.components if c.kind == "cycle" for s in c.steps]
    return step


def _x(shape, seed=1):
    return data(shape, seed=seed, lo=0.0, hi=1.5)


def _states(model, key, scale=0.0, batch=None):
    """``init_state``, with every entry of the cycle's layers (and the rest) moved by ``scale`` x a
    random value (spike entries: random 0/1); ``batch``: one such state per sample."""
    st = model.init_state((st_in(model),), key)
    if not scale:
        return st
    leaves, tree = jax.tree.flatten(st)
    rng = np.random.default_rng(7)
    shape = (lambda a: a.shape) if batch is None else (lambda a: (batch,) + a.shape)
    new = [jnp.asarray(rng.random(shape(a)) < 0.3, a.dtype) if _is_spike(st, a) else
           jnp.asarray(scale * rng.standard_normal(shape(a)), a.dtype) for a in leaves]
    return jax.tree.unflatten(tree, new)


def _is_spike(st, leaf):
    # LIF states are [mem, syn, spk]: the spike entry is the third of a 3-entry list
    return any(isinstance(s, list) and len(s) == 3 and s[2] is leaf for s in st)


def _compare(model, st, x, key, batched, per_sample_states=False, ckpt=None):
    if per_sample_states:
        got, ref = _run_per_sample("xla", model, st, x, key, ckpt), _run_per_sample("reference", model, st, x, key)
    else:
        ref = run_path("reference", model, st, x, key, batched=batched)
        if ckpt is None:
            got = run_path("xla", model, st, x, key, batched=batched)
        else:
            with snnkern.time_checkpoint(ckpt):
                got = run_path("xla", model, st, x, key, batched=batched)
    assert_trees_close(got[1], ref[1], OUT_ATOL, OUT_RTOL, "outputs")
    assert_trees_close(got[0], ref[0], OUT_ATOL, OUT_RTOL, "final states")
    assert_trees_close(got[2], ref[2], GRAD_ATOL, GRAD_RTOL, "gradients", rel_to="leaf")


def _run_per_sample(backend, model, st, x, key, ckpt=None):
    """Batched run with one initial state per sample (states vmapped too): finals, outs, grads."""
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loss(diff):
        p, s, xx = diff
        m = eqx.combine(p, static)
        finals, outs = jax.vmap(lambda sb, xb: m(sb, xb, key))(s, xx)
        return mixed_loss(finals, outs), (finals, outs)

    f = eqx.filter_jit(eqx.filter_grad(loss, has_aux=True))
    ctx = snnkern.time_checkpoint(ckpt) if ckpt else snnkern.time_checkpoint(None)
    with ctx:
        g, (finals, outs) = under(backend, f, (params, st, x))
    return finals, outs, g


@pytest.mark.parametrize("name", sorted(MODELS))
def test_delay_loop_matches_reference_batched(name):
    build, delay = MODELS[name]
    key = jax.random.PRNGKey(3)
    model = build(key)
    st = _states(model, key)
    x = _x((3, 20, st_in(model)))
    with snnkern.strict():
        plan = snnkern.explain(model, x.shape[2:])
    step = _cycle_step(plan)
    assert isinstance(step.spec, DelayLoop) and step.reason is None and not plan.fallbacks, str(plan)
    assert step.spec.delay == delay and step.impl is Impl.XLA and f"delay {delay}" in step.where
    has_linear = name not in ("identity-2", "self-1")
    assert step.spec.has_weight == has_linear and ("GEMM over T·B rows" in step.spec.summary()) == has_linear, str(plan)
    assert_fires(model, st, x, key, batched=True)
    _compare(model, st, x, key, batched=True)


@pytest.mark.parametrize("name", ["self-1", "linear-identity-3"])
def test_delay_loop_matches_reference_one_sample(name):
    key = jax.random.PRNGKey(5)
    model = MODELS[name][0](key)
    st, x = _states(model, key), _x((24, N_IN), seed=2)
    assert_fires(model, st, x, key)
    _compare(model, st, x, key, batched=False)


def _assert_fires_per_sample(model, per, x, key):
    with snnkern.strict(False):   # the recording loop_fn takes the reference path on purpose
        _, (_, traj) = jax.vmap(lambda s, xb: _recording(model)(s, xb, key))(per, x)
    assert_rates(rates_of(model, traj))


@pytest.mark.parametrize("name, per_sample", [("linear-identity-3", False), ("graph-external", False),
                                              ("fb-3-2", True)])
def test_user_initial_states(name, per_sample):
    """Non-zero initial states of every layer (the cycle's stateless layers decide its first d steps),
    shared by the batch or one per sample."""
    key = jax.random.PRNGKey(3)
    model = MODELS[name][0](key)
    x = _x((3, 16, st_in(model)), seed=4)
    st = _states(model, key, scale=0.5, batch=3 if per_sample else None)
    base = model.init_state((st_in(model),), key)
    cyc = _cycle_step(snnkern.explain(model, (st_in(model),))).address
    assert all(not np.allclose(np.asarray(st[i][0]), np.asarray(base[i][0])) for i in cyc)   # really moved
    if per_sample:
        _assert_fires_per_sample(model, st, x, key)
    else:
        assert_fires(model, st, x, key, batched=True)
    _compare(model, st, x, key, batched=True, per_sample_states=per_sample)


@pytest.mark.parametrize("name, per_sample", [("fb-3-2", True), ("self-1", False), ("identity-linear-3", False)])
def test_delay_loop_under_time_checkpointing(name, per_sample):
    """Chunks of 4 steps (and a remainder of 2): the last outputs come out as the cycle's final states
    and seed the next chunk."""
    key = jax.random.PRNGKey(3)
    model = MODELS[name][0](key)
    st, x = _states(model, key, scale=0.3, batch=2 if per_sample else None), _x((2, 22, N_IN), seed=5)
    with snnkern.time_checkpoint(4):
        plan = snnkern.explain(model, (N_IN,), T=22)
    assert plan.checkpoint_every == 4 and isinstance(_cycle_step(plan).spec, DelayLoop)
    if per_sample:
        _assert_fires_per_sample(model, st, x, key)
    else:
        assert_fires(model, st, x, key, batched=True)
    _compare(model, st, x, key, batched=True, per_sample_states=per_sample, ckpt=4)


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
@pytest.mark.parametrize("backend", ["auto", "pallas"])
def test_delay_loop_is_the_planned_path_on_accelerators(platform, backend):
    """On GPU/TPU (abstract devices: nothing runs) the cycle is the XLA delay loop, no fallback; the
    neurons outside it take the Pallas kernels."""
    import warnings
    from jax.sharding import AbstractDevice, AbstractMesh, AxisType
    dev = (AbstractDevice(device_kind="NVIDIA H200", num_cores=132, platform="gpu") if platform == "cuda"
           else AbstractDevice(device_kind="TPU v5 lite", num_cores=1, platform="tpu"))
    mesh = AbstractMesh((1,), ("x",), axis_types=(AxisType.Explicit,), abstract_device=dev)
    model = MODELS["fb-3-2"][0](jax.random.PRNGKey(0))
    with warnings.catch_warnings(), snnkern.backend(backend), snnkern.strict(), jax.sharding.use_abstract_mesh(mesh):
        warnings.simplefilter("ignore", DeprecationWarning)
        plan = snnkern.explain(model, (N_IN,))
    step = _cycle_step(plan)
    assert isinstance(step.spec, DelayLoop) and step.impl is Impl.XLA and not plan.fallbacks, str(plan)
    assert [s.impl for s in plan.steps if isinstance(s.spec, NeuronLoop)] == [Impl.PALLAS], str(plan)


def test_explain_shows_the_delay_loop():
    text = str(snnkern.explain(MODELS["fb-3-2"][0](jax.random.PRNGKey(0)), (N_IN,)))
    row = "layers 2-3: Linear -> LIF: a recurrence through one neuron, delay 2 delay loop (custom VJP) [xla, delay 2]"
    chain = ("layers 2-3: Linear -> LIF: a recurrence through one neuron, delay 2: GEMM over T·B rows + fused "
             "delay-2 loop (xla)")
    assert row in text and chain in text and "fallback" not in text, text
    text = str(snnkern.explain(MODELS["self-1"][0](jax.random.PRNGKey(0)), (N_IN,)))
    assert "layer 1: LIF: a recurrence through one neuron, delay 1: fused delay-1 loop (xla)" in text, text


@pytest.mark.parametrize("mid, why", [
    (lambda k: [eqx.nn.Lambda(jnp.tanh)], "layer 2 (Lambda) in the cycle is not affine"),
    (lambda k: [eqx.nn.LayerNorm(N)], "layer 2 (LayerNorm) in the cycle is not affine"),
    (lambda k: [eqx.nn.Linear(N, N, key=k[1]), eqx.nn.Linear(N, N, key=k[2])], "2 Linears in the cycle"),
])
def test_other_single_neuron_cycles_stay_on_the_component_loop(mid, why):
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    d = len(mid(k)) + 1
    model = snn.SequentialLocalFeedback(_head(k) + mid(k) + [_lif(), eqx.nn.Linear(N, 3, key=k[3])],
                                        feedback_layers={1 + d: 2})
    step = _cycle_step(snnkern.explain(model, (N_IN,)))
    assert isinstance(step.spec, ComponentLoop) and why in step.reason, step
    assert f"a recurrence through one neuron, delay {d}, but" in step.reason
    with snnkern.strict(), pytest.raises(snnkern.FallbackError, match="not affine|Linears"):
        snnkern.explain(model, (N_IN,))


def test_strict_traced_call_runs_the_delay_loop():
    """A traced call in strict mode (any fallback raises) runs the delay loop: no component loop in
    the traced program's plan, outputs of the right shape."""
    from snnkern.plan import recorded_plans
    key = jax.random.PRNGKey(3)
    model = MODELS["linear-identity-3"][0](key)
    with snnkern.strict(), recorded_plans() as plans:
        outs = eqx.filter_jit(model)(model.init_state((N_IN,), key), _x((8, N_IN)), key)[1]
    assert outs[0].shape == (8, 3)
    assert [type(_cycle_step(p).spec) for p in plans] == [DelayLoop]
