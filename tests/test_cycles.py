"""Feedback cycles that no fused kernel recognises run as one loop of the component (custom VJP).

Cross-layer cycles (``SequentialLocalFeedback(..., feedback_layers={3: 1})``), a neuron fed its own
output, a custom stateful layer in a cycle, and a recurrent compound whose recurrent branch is a
Linear subclass with its own ``__call__``: outputs, final states and gradients equal the reference
path (tolerances of tests/helpers.py: outputs 1e-5 + 1e-5 rel, gradients 1e-5 + 1e-4 rel), vmapped
over a batch and for one sample, with every spiking layer firing 2-98 % on the reference.
"""
from __future__ import annotations

import sys
from pathlib import Path as _FsPath

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import snnkern
from snnkern import snn
from snnkern.plan import Impl
from snnkern.plan.strategies import AutodiffScan, ComponentLoop, ComponentScan, DelayLoop, NeuronLoop, RecurrentLoop
from snnkern.plan.protocol import AbstractStatefulLayer

ROOT = _FsPath(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:          # `pytest` (not `python -m pytest`) does not put the root on the path
    sys.path.insert(0, str(ROOT))

from bench.cycles import Integrator  # noqa: E402  (a custom stateful layer: v <- 0.8 v + tanh(x))
from helpers import (GRAD_ATOL, GRAD_RTOL, OUT_ATOL, OUT_RTOL, assert_fires, assert_trees_close,  # noqa: E402
                     data, mixed_loss, run_path, scale_linear, under)

N_IN, N = 6, 12


def _chain(key, n_in=N_IN, n=N, thr=0.1):
    """Linear -> LIF -> Linear -> LIF -> Linear (the measured models of bench/cycles.py, small)."""
    k = jax.random.split(key, 3)
    # the second Linear sees sparse spikes: a gain and a positive bias make its LIF fire too
    return [eqx.nn.Linear(n_in, n, key=k[0]), snn.LIF([0.9, 0.8], threshold=thr),
            scale_linear(eqx.nn.Linear(n, n, key=k[1]), gain=8.0, shift=0.15), snn.LIF([0.9, 0.8], threshold=thr),
            eqx.nn.Linear(n, 3, key=k[2])]


class Counter(AbstractStatefulLayer):
    """A custom stateful layer with an integer state entry (the component loop cannot carry it)."""

    def init_state(self, shape, key=None, *args, **kwargs):
        return [jnp.zeros((), jnp.int32), jnp.zeros(shape)]

    def __call__(self, state, synaptic_input, *, key=None):
        return [state[0] + 1, synaptic_input], synaptic_input


class LinearNonDiag(eqx.nn.Linear):
    """snnax's LinearNonDiag: a Linear without self-connections (its own ``__call__``)."""

    def __call__(self, x, *, key=None):
        return (self.weight * (1.0 - jnp.eye(self.weight.shape[0]))) @ x + self.bias


def _non_diag_model(key):
    k = jax.random.split(key, 3)
    rec = snn.CompoundLayer(snn.Parallel([eqx.nn.Linear(N_IN, N, key=k[0]), LinearNonDiag(N, N, key=k[1])]),
                            snn.LIF([0.9, 0.8], threshold=0.1))
    return snn.SequentialLocalFeedback(rec, eqx.nn.Linear(N, 3, key=k[2]), feedback_layers=None)


MODELS = {
    "cross-2-3": lambda k: snn.SequentialLocalFeedback(_chain(k), feedback_layers={3: 2}),
    "self-1": lambda k: snn.SequentialLocalFeedback(_chain(k), feedback_layers={1: 1}),
    "multi-1-3": lambda k: snn.SequentialLocalFeedback(_chain(k), feedback_layers={3: 1}),
    "custom-stateful": lambda k: snn.SequentialLocalFeedback(
        [*_chain(k)[:3], Integrator(), snn.LIF([0.9, 0.8], threshold=0.1), eqx.nn.Linear(N, 3, key=k)],
        feedback_layers={4: 2}),
    "linear-non-diag": _non_diag_model,
}


def _delay3(k):
    """Linear(2) -> Linear(3) -> LIF(4) -> back to Linear(2): a cycle of length 3 through one neuron."""
    ks = jax.random.split(k, 2)
    layers = _chain(k)[:3] + [scale_linear(eqx.nn.Linear(N, N, key=ks[0]), gain=2.0, shift=0.1),
                              snn.LIF([0.9, 0.8], threshold=0.1), eqx.nn.Linear(N, 3, key=ks[1])]
    return snn.SequentialLocalFeedback(layers, feedback_layers={4: 2})


MODELS["delay-3"] = _delay3


def _random_feedback(seed):
    """Two random back edges source -> target (target <= source) among the layers 1..3 of the chain."""
    rng = np.random.default_rng(seed)
    srcs = rng.choice([1, 2, 3], size=2, replace=False)
    return {int(s): int(rng.integers(1, s + 1)) for s in srcs}


for _seed in range(2):
    MODELS[f"random-{_seed}"] = (lambda fb: lambda k: snn.SequentialLocalFeedback(_chain(k), feedback_layers=fb))(
        _random_feedback(_seed))


def _compare(model, x, key, batched, backend="xla", st=None):
    st = model.init_state(x.shape[-1:], key) if st is None else st
    assert_fires(model, st, x, key, batched=batched)
    ref = run_path("reference", model, st, x, key, batched=batched)
    got = run_path(backend, model, st, x, key, batched=batched)
    assert_trees_close(got[1], ref[1], OUT_ATOL, OUT_RTOL, "outputs")
    assert_trees_close(got[0], ref[0], OUT_ATOL, OUT_RTOL, "final states")
    # relative to each leaf's largest entry: through a feedback loop some gradients grow to ~1e12 and
    # their small entries are rounding of sums taken in another order
    assert_trees_close(got[2], ref[2], GRAD_ATOL, GRAD_RTOL, "gradients", rel_to="leaf")


def _random_state(model, shape, seed):
    """An initial state with every entry non-zero: floats in [-0.5, 0.5), spike entries 0/1."""
    from snnkern.plan.strategies.component_loop import binary_entries

    rng = np.random.default_rng(seed)
    st = model.init_state(shape, jax.random.PRNGKey(0))

    def fill(a, binary):
        if binary:
            return jnp.asarray(rng.random(a.shape) < 0.4, a.dtype)
        return jnp.asarray(rng.uniform(-0.5, 0.5, a.shape), a.dtype)

    return [jax.tree.map(fill, s, binary_entries(layer, s)) for layer, s in zip(model.layers, st)]


def _cycle_steps(plan):
    return [s for c in plan.components if c.kind == "cycle" for s in c.steps]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_cycle_matches_reference_batched(name):
    key = jax.random.PRNGKey(3)
    model = MODELS[name](key)
    plan = snnkern.explain(model, (N_IN,))
    cyc = _cycle_steps(plan)
    # a single-neuron cycle of affine layers is the delay loop (tests/test_delay_loop.py)
    assert cyc and all(isinstance(s.spec, (ComponentLoop, DelayLoop)) for s in cyc), str(plan)
    assert any(isinstance(s.spec, DelayLoop) for s in cyc) == (name in ("cross-2-3", "self-1", "random-1")), str(plan)
    assert not [s for s in plan.steps if isinstance(s.spec, (AutodiffScan, ComponentScan))], str(plan)
    _compare(model, data((3, 24, N_IN), seed=1, lo=0.0, hi=1.5), key, batched=True)


@pytest.mark.parametrize("name", ["self-1", "custom-stateful", "linear-non-diag"])
def test_cycle_matches_reference_one_sample(name):
    key = jax.random.PRNGKey(5)
    _compare(MODELS[name](key), data((30, N_IN), seed=2, lo=0.0, hi=1.5), key, batched=False)


def test_cycle_from_a_nonzero_initial_state():
    """The loop reads an outside source (the Linear before the cycle) one step late from its
    unshifted sequence: at step 0 the source's initial output. A user state with every entry
    non-zero makes that value, and its gradient, count."""
    key = jax.random.PRNGKey(7)
    model = MODELS["multi-1-3"](key)
    _compare(model, data((3, 24, N_IN), seed=4, lo=0.0, hi=1.5), key, batched=True,
             st=_random_state(model, (N_IN,), seed=1))


def test_cycle_ensemble():
    """Two models vmapped together (per-example parameters: the batching rule vmaps the one-sample
    loop, each model's neuron parameters with it): outputs and gradients equal the reference."""
    keys = jax.random.split(jax.random.PRNGKey(8), 2)
    model = MODELS["multi-1-3"](keys[0])
    params, static = eqx.partition(eqx.filter_vmap(lambda k: MODELS["multi-1-3"](k))(keys), eqx.is_inexact_array)
    st = model.init_state((N_IN,), keys[0])
    xs = data((2, 12, N_IN), seed=5, lo=0.0, hi=1.5)
    assert_fires(model, st, xs[0], keys[0])

    def ensemble(p, x):   # one model per example
        def loss(pp, xx):
            finals, outs = eqx.combine(pp, static)(st, xx, keys[0])
            return mixed_loss(finals, outs), outs

        return jax.grad(lambda pp: (lambda r: (jnp.sum(r[0]), r[1]))(jax.vmap(loss)(pp, x)), has_aux=True)(p)

    got, ref = (under(b, jax.jit(ensemble), params, xs) for b in ("xla", "reference"))
    assert_trees_close(got[1], ref[1], OUT_ATOL, OUT_RTOL, "outputs")
    assert_trees_close(got[0], ref[0], GRAD_ATOL, GRAD_RTOL, "gradients", rel_to="leaf")


def test_component_loop_needs_no_more_memory_than_the_reference():
    """The compiled fwd+bwd of the cycle {3: 1} (two neurons) without time checkpointing needs no
    more temp memory on the planned path than on the reference path (memory_analysis, exact)."""
    B, T, n = 4, 64, 32
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    model = snn.SequentialLocalFeedback(
        [eqx.nn.Linear(n, n, key=k[0]), snn.LIF([0.95, 0.9], threshold=0.1), eqx.nn.Linear(n, n, key=k[1]),
         snn.LIF([0.95, 0.9], threshold=0.1), eqx.nn.Linear(n, 10, key=k[2])], feedback_layers={3: 1})
    st = model.init_state((n,), k[0])
    x = jnp.asarray(np.random.default_rng(0).random((B, T, n)) < 0.3, jnp.float32)
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loss(p, xx):
        _, outs = jax.vmap(lambda xb: eqx.combine(p, static)(st, xb, k[0]))(xx)
        return sum(jnp.sum(o) for o in jax.tree.leaves(outs))

    mem = {}
    for backend in ("reference", "xla"):
        with snnkern.backend(backend), snnkern.time_checkpoint(None):
            c = jax.jit(jax.grad(loss)).lower(params, x).compile()
        mem[backend] = c.memory_analysis().temp_size_in_bytes
    assert 0 < mem["xla"] <= mem["reference"], mem


def test_cycle_under_pallas_interpret():
    # the neurons outside the cycle take the interpreted kernel; the cycle its XLA delay loop
    key = jax.random.PRNGKey(3)
    model = MODELS["cross-2-3"](key)
    with snnkern.backend("pallas-interpret"):
        plan = snnkern.explain(model, (N_IN,))
    assert [s.impl.value for s in plan.steps if isinstance(s.spec, NeuronLoop)] == ["pallas-interpret"], str(plan)
    assert [(type(s.spec), s.impl) for s in _cycle_steps(plan)] == [(DelayLoop, Impl.XLA)], str(plan)
    _compare(model, data((2, 12, N_IN), seed=1, lo=0.0, hi=1.5), key, batched=True, backend="pallas-interpret")


def test_explain_names_the_component_loop_and_why():
    text = str(snnkern.explain(MODELS["multi-1-3"](jax.random.PRNGKey(0)), (N_IN,)))
    assert "layer 1 (LIF), layer 2 (Linear), layer 3 (LIF) component loop (custom VJP)" in text, text
    plan = snnkern.explain(MODELS["linear-non-diag"](jax.random.PRNGKey(0)), (N_IN,))
    assert plan.components[0].kind == "cycle" and isinstance(plan.components[0].steps[0].spec, ComponentLoop)
    assert "the recurrent branch is a LinearNonDiag, not a vector eqx.nn.Linear" in plan.fallbacks[0]
    with snnkern.strict(), pytest.raises(snnkern.FallbackError, match="component loop"):
        snnkern.explain(MODELS["multi-1-3"](jax.random.PRNGKey(0)), (N_IN,))


def test_integer_state_in_a_cycle_keeps_the_autodiff_scan():
    key = jax.random.PRNGKey(4)
    layers = [*_chain(key)[:3], Counter(), snn.LIF([0.9, 0.8], threshold=0.1), eqx.nn.Linear(N, 3, key=key)]
    model = snn.SequentialLocalFeedback(layers, feedback_layers={4: 2})
    plan = snnkern.explain(model, (N_IN,))
    (step,) = _cycle_steps(plan)
    assert isinstance(step.spec, ComponentScan) and "non-floating state entry (int32[])" in step.reason, str(plan)
    _compare(model, data((2, 16, N_IN), seed=1, lo=0.0, hi=1.5), key, batched=True)


def test_component_loop_stores_less_than_autodiff():
    """The compiled fwd+bwd of the cycle {1: 1} over a long sequence needs less temp memory on the
    component loop than as the autodiff scan of the component it replaced (bool spikes, no
    per-step intermediates)."""
    from snnkern.kernels.component_loop import component_loop
    from snnkern.plan.strategies.component_loop import binary_entries

    lif = snn.LIF([0.9, 0.8], threshold=0.1)
    s0 = lif.init_state((64,))
    dyn, static = eqx.partition(lif, eqx.is_inexact_array)

    def step(d, s, x):
        layer = eqx.combine(d, static)
        ns, out = layer(s, x + s[-1])
        return ns, out

    def loss_loop(d, x):
        return jnp.sum(component_loop(step, d, s0, x, binary_entries(lif, s0))[1])

    def loss_scan(d, x):
        return jnp.sum(jax.lax.scan(lambda s, xt: step(d, s, xt), s0, x)[1])

    x = jnp.ones((2000, 64))
    mem = [jax.jit(jax.grad(f)).lower(dyn, x).compile().memory_analysis().temp_size_in_bytes
           for f in (loss_loop, loss_scan)]
    assert mem[0] < mem[1], mem


@pytest.mark.parametrize("inference", [False, True])
@pytest.mark.parametrize("backend", ["xla", "pallas-interpret"])
def test_dropout_in_a_recurrent_chain(inference, backend):
    """Dropout among the per-step layers of a recurrent chain draws the same mask at every step (the
    compound's key, split like the reference's): training and inference mode equal the reference."""
    k = jax.random.split(jax.random.PRNGKey(2), 4)
    par = snn.Parallel([scale_linear(eqx.nn.Linear(N_IN, 16, key=k[0]), 2.0),
                        eqx.nn.Linear(16, 16, use_bias=False, key=k[1])])
    chain = snn.CompoundLayer(par, eqx.nn.Dropout(0.3, inference=inference), snn.LIF([0.9, 0.8], threshold=0.1))
    model = snn.SequentialLocalFeedback(chain, eqx.nn.Linear(16, 3, key=k[2]), feedback_layers=None)
    with snnkern.backend(backend):
        plan = snnkern.explain(model, (N_IN,))
    (loop,) = [s for s in plan.steps if isinstance(s.spec, RecurrentLoop)]
    assert "Dropout" in loop.where, str(plan)
    if backend == "pallas-interpret":
        # inference mode is the identity: the kernel takes it; a training mask is a per-neuron array
        assert loop.impl.value == ("pallas-interpret" if inference else "xla"), str(plan)
    _compare(model, data((3, 20, N_IN), seed=3, lo=0.0, hi=1.5), k[3], batched=True, backend=backend)
    if not inference:
        # the mask really drops: a chain without the Dropout gives other outputs
        plain = snn.SequentialLocalFeedback(snn.CompoundLayer(par, snn.LIF([0.9, 0.8], threshold=0.1)),
                                            eqx.nn.Linear(16, 3, key=k[2]), feedback_layers=None)
        x = data((20, N_IN), seed=3, lo=0.0, hi=1.5)
        a = model(model.init_state((N_IN,), k[3]), x, k[3])[1]
        b = plain(plain.init_state((N_IN,), k[3]), x, k[3])[1]
        assert not np.allclose(np.asarray(a[0]), np.asarray(b[0]), atol=1e-3)


@pytest.mark.parametrize("name,delay", [("self-1", 1), ("cross-2-3", 2), ("delay-3", 3)])
def test_single_neuron_cycles_are_delayed_recurrences(name, delay):
    """A cycle of stateless layers through one neuron is a recurrence with a delay: explain() names
    it. With at most one Linear it is the delay loop, no fallback (strict mode does not raise); the
    delay-3 cycle has two Linears and stays on the component loop with the reason."""
    key = jax.random.PRNGKey(3)
    model = MODELS[name](key)
    if name == "delay-3":
        (step,) = _cycle_steps(snnkern.explain(model, (N_IN,)))
        assert isinstance(step.spec, ComponentLoop) and "2 Linears in the cycle" in step.reason, step
        assert f"a recurrence through one neuron, delay {delay}, but" in step.reason
        with snnkern.strict(), pytest.raises(snnkern.FallbackError, match="2 Linears"):
            snnkern.explain(model, (N_IN,))
        return
    with snnkern.strict():
        plan = snnkern.explain(model, (N_IN,))
        (step,) = _cycle_steps(plan)
        assert isinstance(step.spec, DelayLoop) and step.reason is None and not plan.fallbacks, str(plan)
        assert f"a recurrence through one neuron, delay {delay}" in step.where
        # a traced call raises on any fallback here (its equivalence: test_cycle_matches_reference_batched)
        outs = eqx.filter_jit(model)(model.init_state((N_IN,), key), data((8, N_IN), seed=1), key)[1]
    assert outs[0].shape == (8, 3)
