"""Execution plans (SPEC §9; DESIGN "How a call runs"): ``snnkern.explain``, backend selection
(context manager and ``SNNKERN_BACKEND``, read at trace time), strict mode, Pallas fallback on CPU,
and the strongly-connected-components function the planner is built on.

Numerical equality of the paths is tested in test_equivalence.py; here only small equality checks
confirm that a path chosen by an environment variable or a fallback still computes the same thing.
"""
from __future__ import annotations

import itertools
import threading

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import snnkern
from snnkern.plan import Impl
from snnkern.plan.strategies import Batched, DelayLoop, Gemm, NeuronLoop, RecurrentLoop
from snnkern import snn
from snnkern.plan.graph import components

from helpers import (CPU_LOOP, CPU_LOOP_IMPL, assert_fires, assert_results_close, assert_trees_close, mixed_loss,
                     scale_linear)


# The models below fire on ``_inputs`` (uniform [0, 2), T = 12): the input Linears are scaled x3
# with a +0.5 bias (the default init gives currents of ~0.3, below any threshold) and the
# thresholds are 0.3-0.5, so every LIF fires on 5-30 % of its steps (asserted once per model by
# ``_inputs``; a model that never fires would make every backend comparison here vacuous).
def _k(n=6, seed=0):
    return jax.random.split(jax.random.PRNGKey(seed), n)


def _lin(nin, nout, key, gain=3.0, shift=0.5):
    return scale_linear(eqx.nn.Linear(nin, nout, key=key), gain, shift)


def seq_model():
    k = _k()
    return snn.Sequential(_lin(3, 5, k[0]), eqx.nn.LayerNorm(5), snn.LIF([0.8, 0.7], threshold=0.3),
                          _lin(5, 4, k[1], shift=0.6), snn.SimpleLIF([0.8], threshold=0.3))


def recurrent_model():
    k = _k(seed=1)
    comp = snn.CompoundLayer(snn.Parallel([_lin(3, 5, k[0]), eqx.nn.Linear(5, 5, key=k[1])]),
                             snn.LIF([0.8, 0.7], threshold=0.5))
    return snn.SequentialLocalFeedback([comp, _lin(5, 2, k[2], shift=0.6), snn.SimpleLIF([0.8], threshold=0.3)],
                                       feedback_layers=None)


def cycle_model():
    """Linear -> LIF -> Linear -> LIF with the feedback edge 3 -> 1: a cycle {1, 2, 3} through two
    neurons (a component loop with a fallback reason; a cycle through one neuron has none)."""
    k = _k(seed=2)
    return snn.SequentialLocalFeedback([_lin(3, 4, k[0]), snn.LIF([0.8, 0.7], threshold=0.5),
                                        _lin(4, 4, k[1], shift=0.6), snn.LIF([0.8, 0.7], threshold=0.5)],
                                       feedback_layers={3: 1})


def my_forward_fn(layers, struct, key, states, data):
    return snn.default_forward_fn(layers, struct, key, states, data)


def custom_forward_model():
    k = _k(seed=3)
    return snn.Sequential(_lin(3, 4, k[0]), snn.LIF([0.8, 0.7], threshold=0.5), forward_fn=my_forward_fn)


def my_loop_fn(f, init, xs):
    return jax.lax.scan(f, init, xs)


def custom_loop_model():
    k = _k(seed=4)
    return snn.Sequential(_lin(3, 4, k[0]), snn.LIF([0.8, 0.7], threshold=0.5), loop_fn=my_loop_fn)


_FIRING_CHECKED = set()


def _inputs(model, T=12, seed=0):
    """Initial states, input and key of ``_run``; asserts (once per model structure) that every
    spiking layer fires 2-98 % on them."""
    k = _k(seed=10 + seed)
    states = model.init_state((3,), k[0])
    x = jax.random.uniform(k[1], (T, 3), minval=0.0, maxval=2.0)
    tag = (str(jax.tree.structure(model)), T, seed)
    if tag not in _FIRING_CHECKED:
        with snnkern.strict(False):   # the recording loop_fn of assert_fires is a reference-path choice
            assert_fires(model, states, x, k[2])
        _FIRING_CHECKED.add(tag)
    return states, x, k[2]


def _run(model, T=12, seed=0):
    """``(final_states, outputs, gradients)`` of one jitted value-and-grad (a fresh function object:
    traced now, under the current backend); gradients of a loss mixing every output and final
    state, wrt the model's arrays, the states and the input."""
    states, x, key = _inputs(model, T, seed)

    def loss(diff):
        m, s, xx = diff
        finals, outs = m(s, xx, key)
        return mixed_loss(finals, outs), (finals, outs)

    g, (finals, outs) = eqx.filter_jit(eqx.filter_grad(loss, has_aux=True))((model, states, x))
    return finals, outs, g


def _jaxpr(model, T=6):
    k = _k(seed=20)
    states = model.init_state((3,), k[0])
    x = jnp.ones((T, 3))
    return str(jax.make_jaxpr(lambda xx: model(states, xx, k[1]))(x))


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """Tests here set SNNKERN_BACKEND / SNNKERN_STRICT themselves; start from neither."""
    monkeypatch.delenv("SNNKERN_BACKEND", raising=False)
    monkeypatch.delenv("SNNKERN_STRICT", raising=False)


# ================================================================================================
# explain()


def test_explain_sequential():
    model = seq_model()
    plan = snnkern.explain(model, (3,))
    assert plan.path == "planned"
    assert plan.fallbacks == []
    assert [c.layers for c in plan.components] == [(0,), (1,), (2,), (3,), (4,)]
    assert [c.kind for c in plan.components] == ["stateless", "stateless", "neuron", "stateless", "neuron"]
    assert not any(c.cyclic for c in plan.components)
    for c in plan.components:
        assert len(c.steps) == 1
        step = c.steps[0]
        assert step.reason is None
        if c.kind == "neuron":
            assert isinstance(step.spec, NeuronLoop) and step.impl in (Impl.XLA, Impl.NATIVE), step
        elif isinstance(model.layers[c.layers[0]], eqx.nn.Linear):
            assert type(step.spec) is Gemm and step.impl is None, step
        else:
            assert type(step.spec) is Batched and step.impl is None, step
    # the table names every component and path, and the chains
    text = str(plan)
    assert "planned" in text and f"neuron loop (custom VJP) [{CPU_LOOP}]" in text and "batched" in text
    assert plan.chains == (
        "layers 0-2: Linear -> LayerNorm -> LIF chain: GEMM over T·B rows + LayerNorm over all T·B rows"
        f" + fused neuron loop ({CPU_LOOP})",
        f"layers 3-4: Linear -> SimpleLIF chain: GEMM over T·B rows + fused neuron loop ({CPU_LOOP})")
    assert "  chains:\n    layers 0-2: Linear -> LayerNorm -> LIF chain" in text
    for i, name in enumerate(["Linear", "LayerNorm", "LIF", "Linear", "SimpleLIF"]):
        assert f"layer {i} ({name})" in text


def test_explain_names_recurrent_chains_and_cycles():
    plan = snnkern.explain(recurrent_model(), (3,))
    assert plan.chains[0] == ("layer 0: recurrent chain Parallel([Linear, Linear_rec]) -> LIF: GEMM over T·B rows"
                              " + fused recurrent loop (xla)")
    assert plan.chains[1] == f"layers 1-2: Linear -> SimpleLIF chain: GEMM over T·B rows + fused neuron loop ({CPU_LOOP})"
    k = _k()
    layers = [eqx.nn.Linear(3, 4, key=k[0]), snn.LIF([0.8, 0.7]), eqx.nn.Linear(4, 4, key=k[1]), snn.LIF([0.8, 0.7])]
    cyc = snnkern.explain(snn.SequentialLocalFeedback(layers, feedback_layers={3: 1}), (3,))
    # layer 0 is read by the cycle, so it is no chain; the cycle is one line with its path and fallback
    assert cyc.chains == ("layers 1-3: cycle of LIF, Linear, LIF: component loop (custom VJP) - a fallback, see above",)
    # a stateless layer read by two layers starts no chain
    fork = snn.StatefulModel(snn.GraphStructure(3, input_layer_ids=[[0], [], []], final_layer_ids=[1, 2],
                                                input_connectivity=[[], [0], [0]]),
                             [eqx.nn.Linear(3, 4, key=k[0]), snn.LIF([0.8, 0.7]), snn.LIF([0.8, 0.7])])
    assert snnkern.explain(fork, (3,)).chains == ()
    one = snnkern.explain(snn.SequentialLocalFeedback(layers, feedback_layers={3: 2}), (3,))
    assert one.chains[-1] == ("layers 2-3: Linear -> LIF: a recurrence through one neuron, delay 2: GEMM over T·B rows"
                              " + fused delay-2 loop (xla)")


def test_explain_default_backend_on_cpu_is_xla_without_fallback():
    """auto on CPU: the XLA loops, the neuron loops native where they can (kernels/native)."""
    if jax.default_backend() != "cpu":
        pytest.skip("auto resolves to xla on CPU only")
    plan = snnkern.explain(seq_model())
    assert plan.backend == "auto" and plan.path == "planned" and plan.fallbacks == []
    cpu = (None, Impl.XLA, Impl.NATIVE)
    assert all(s.impl in cpu for s in plan.steps) and any(s.impl in cpu[1:] for s in plan.steps)


def test_explain_compound_lists_its_sub_layers():
    k = _k()
    model = snn.Sequential(snn.CompoundLayer([eqx.nn.Linear(3, 4, key=k[0]), eqx.nn.LayerNorm(4), snn.LIF([0.8, 0.7])]),
                           eqx.nn.Linear(4, 2, key=k[1]), snn.SimpleLIF([0.9]))
    plan = snnkern.explain(model, (3,))
    assert [c.kind for c in plan.components] == ["compound", "stateless", "neuron"]
    steps = plan.components[0].steps
    assert len(steps) == 3
    assert type(steps[0].spec) is Gemm and type(steps[1].spec) is Batched
    assert plan.chains[0] == ("layer 0: Linear -> LayerNorm -> LIF chain (a CompoundLayer): GEMM over T·B rows"
                              f" + LayerNorm over all T·B rows + fused neuron loop ({CPU_LOOP})")
    assert isinstance(steps[2].spec, NeuronLoop) and steps[2].impl is CPU_LOOP_IMPL and steps[2].address == (0, 2)
    assert "sub 2 (LIF)" in steps[2].where


def test_explain_recurrent_compound():
    plan = snnkern.explain(recurrent_model(), (3,))
    assert plan.path == "planned" and plan.fallbacks == []
    assert [c.kind for c in plan.components] == ["recurrent-compound", "stateless", "neuron"]
    rec = plan.components[0]
    assert rec.layers == (0,) and rec.cyclic
    assert [type(s.spec) for s in rec.steps] == [RecurrentLoop]
    assert rec.loop.impl is Impl.XLA
    assert all(s.reason is None for s in rec.steps)


def test_explain_multi_neuron_cycle():
    plan = snnkern.explain(cycle_model(), (3,))
    assert plan.path == "planned"
    assert [c.layers for c in plan.components] == [(0,), (1, 2, 3)]
    cyc = plan.components[-1]
    assert cyc.kind == "cycle" and cyc.cyclic
    assert cyc.steps and all(isinstance(s.reason, str) and s.reason.strip() for s in cyc.steps)
    assert len(plan.fallbacks) == 1 and plan.fallbacks[0].strip()
    assert "fallback" in str(plan)


def test_explain_unrecognised_recurrent_compound_is_a_cycle_with_reason():
    k = _k()
    # a Linear inside the recurrence is not one of the fused per-step layers (LayerNorm, Identity,
    # Lambda, Dropout: tests/test_recurrent_chains.py, tests/test_cycles.py)
    comp = snn.CompoundLayer(snn.Parallel([eqx.nn.Linear(3, 4, key=k[0]), eqx.nn.Linear(4, 4, key=k[1])]),
                             eqx.nn.Linear(4, 4, key=k[2]), snn.LIF([0.8, 0.7]))
    plan = snnkern.explain(snn.SequentialLocalFeedback([comp], feedback_layers=None), (3,))
    (c,) = plan.components
    assert c.kind == "cycle" and c.cyclic
    assert "CompoundLayer([Parallel, Linear, LIF])" in c.steps[0].reason


def test_explain_self_loop_on_a_neuron_is_a_cycle():
    k = _k()
    model = snn.SequentialLocalFeedback([eqx.nn.Linear(3, 4, key=k[0]), snn.LIF([0.8, 0.7])], feedback_layers={1: 1})
    plan = snnkern.explain(model, (3,))
    assert [(c.layers, c.cyclic, c.kind) for c in plan.components] == [((0,), False, "stateless"), ((1,), True, "cycle")]
    # a recurrence of the neuron with delay 1: the delay loop, no fallback (tests/test_delay_loop.py)
    step = plan.components[1].steps[0]
    assert isinstance(step.spec, DelayLoop) and step.reason is None and "delay 1" in step.where


@pytest.mark.parametrize("build, word", [(custom_forward_model, "forward_fn"), (custom_loop_model, "loop_fn")])
def test_explain_custom_forward_or_loop_fn_takes_reference_path(build, word):
    model = build()
    plan = snnkern.explain(model, (3,))
    assert plan.path == "reference"
    assert plan.components == ()
    assert plan.reason and word in plan.reason
    assert any(word in f for f in plan.fallbacks)
    assert word in str(plan)
    # it runs, and equals the same model with the default functions on the reference path
    plain = snn.Sequential(*model.layers)
    with snnkern.backend("reference"):
        want = _run(plain)
    got = _run(model)
    layers_and_rest = lambda r: (r[0], r[1], r[2][0].layers, r[2][1:])  # noqa: E731 - the models' static fields differ
    assert_trees_close(layers_and_rest(got), layers_and_rest(want), 0.0,
                       what="custom forward_fn / loop_fn vs the default functions")
    assert "custom_vjp" not in _jaxpr(model)


def test_explain_checks_in_shape():
    with pytest.raises(ValueError):
        snnkern.explain(seq_model(), (4,))


def test_explain_is_a_pure_description():
    """explain() twice gives equal plans; printing does not run the model."""
    model = cycle_model()
    assert snnkern.explain(model, (3,)) == snnkern.explain(model, (3,))
    assert isinstance(repr(snnkern.explain(model)), str)


# ================================================================================================
# strict mode


@pytest.mark.parametrize("build", [cycle_model, custom_forward_model, custom_loop_model])
def test_strict_raises_for_fallbacks(build):
    model = build()
    with snnkern.strict():
        with pytest.raises(snnkern.FallbackError):
            snnkern.explain(model, (3,))
        with pytest.raises(snnkern.FallbackError):
            _run(model)


@pytest.mark.parametrize("build", [seq_model, recurrent_model])
def test_strict_does_not_raise_without_fallback(build):
    model = build()
    with snnkern.strict():
        plan = snnkern.explain(model, (3,))
        _run(model)
    assert plan.fallbacks == []


def test_strict_env_var(monkeypatch):
    monkeypatch.setenv("SNNKERN_STRICT", "1")
    with pytest.raises(snnkern.FallbackError):
        snnkern.explain(cycle_model(), (3,))
    snnkern.explain(seq_model(), (3,))
    with snnkern.strict(False):   # the context manager overrides the environment
        assert snnkern.explain(cycle_model(), (3,)).fallbacks
    monkeypatch.setenv("SNNKERN_STRICT", "0")
    assert snnkern.explain(cycle_model(), (3,)).fallbacks


def test_strict_applies_to_an_already_traced_function():
    """A jitted function traced outside strict mode still raises when called inside it (strict is
    part of the jit key, like the backend), instead of silently reusing the fallback trace."""
    model = cycle_model()
    k = _k(seed=31)
    states = model.init_state((3,), k[0])
    x = jnp.ones((5, 3))
    f = jax.jit(lambda xx: model(states, xx, k[1]))
    f(x)
    with snnkern.strict(), pytest.raises(snnkern.FallbackError):
        f(x)


def test_strict_with_requested_reference_backend_is_not_a_fallback():
    """Asking for the reference path is a choice, not a fallback."""
    with snnkern.strict(), snnkern.backend("reference"):
        plan = snnkern.explain(cycle_model(), (3,))
        _run(cycle_model())
    assert plan.path == "reference" and plan.fallbacks == []


class _Accumulator(snn.StatefulLayer):
    """A user-defined stateful layer without a ``step`` function (runs as a generic scan)."""

    def __call__(self, state, x, *, key=None):
        new = 0.5 * state[0] + x
        return [new, new], new


def custom_stateful_model():
    return snn.Sequential(eqx.nn.Linear(3, 4, key=_k()[0]), _Accumulator())


def test_custom_stateful_layer_is_listed_as_a_fallback():
    plan = snnkern.explain(custom_stateful_model(), (3,))
    assert [c.kind for c in plan.components] == ["stateless", "stateful"]
    assert len(plan.fallbacks) == 1 and "_Accumulator" in plan.fallbacks[0]


@pytest.mark.parametrize("build", [cycle_model, custom_forward_model, custom_stateful_model])
def test_strict_raises_for_every_listed_fallback(build):
    """DESIGN: nothing falls back silently and strict mode turns *a* fallback into an error, so any
    model whose plan lists a fallback must raise under strict."""
    model = build()
    assert snnkern.explain(model, (3,)).fallbacks
    with snnkern.strict(), pytest.raises(snnkern.FallbackError):
        snnkern.explain(model, (3,))


def test_fallbacks_are_logged(caplog):
    with caplog.at_level("INFO", logger="snnkern"):
        plan = snnkern.explain(cycle_model(), (3,))
    reason = plan.components[-1].steps[0].reason
    assert any(reason in r.getMessage() for r in caplog.records)


# ================================================================================================
# backend selection


def test_backend_context_manager_selects_path():
    model = seq_model()
    with snnkern.backend("reference"):
        assert snnkern.explain(model).path == "reference"
        assert "custom_vjp" not in _jaxpr(model)
        ref = _run(model)
    with snnkern.backend("xla"):
        assert snnkern.explain(model).path == "planned"
        assert "custom_vjp" in _jaxpr(model)
        got = _run(model)
    assert_results_close(got, ref, "xla vs reference:")


def test_same_jitted_function_is_retraced_per_backend_block(monkeypatch):
    """snnkern.backend(): "the choice is part of JAX's jit cache key, so the same jitted function
    traced inside two different blocks gets two traces (and each runs the path it asked for)"."""
    import snnkern.snn.architecture as arch

    planned = []
    orig = arch.run_plan
    monkeypatch.setattr(arch, "run_plan", lambda *a, **kw: planned.append(1) or orig(*a, **kw))
    model = seq_model()
    states, x, key = _inputs(model)
    traces = []

    def loss(xx):
        finals, outs = model(states, xx, key)
        return mixed_loss(finals, outs), (finals, outs)

    f = jax.jit(lambda xx: traces.append(1) or jax.value_and_grad(loss, has_aux=True)(xx))
    with snnkern.backend("reference"):
        ref = f(x)
    assert (len(traces), len(planned)) == (1, 0)
    with snnkern.backend("xla"):
        got = f(x)
    assert (len(traces), len(planned)) == (2, 1), "the xla block reused the reference trace"
    with snnkern.backend("xla"):
        f(x)
    with snnkern.backend("reference"):
        f(x)
    assert len(traces) == 2   # both traces are cached
    (_, (got_f, got_o)), got_g = got
    (_, (ref_f, ref_o)), ref_g = ref
    assert_results_close((got_f, got_o, got_g), (ref_f, ref_o, ref_g), "xla vs reference:")


def test_backend_context_managers_nest():
    model = seq_model()
    with snnkern.backend("reference"):
        with snnkern.backend("xla"):
            assert snnkern.explain(model).path == "planned"
        assert snnkern.explain(model).path == "reference"
    assert snnkern.explain(model).path == "planned"


def test_env_backend_read_at_trace_time(monkeypatch):
    model = seq_model()
    monkeypatch.setenv("SNNKERN_BACKEND", "reference")
    assert snnkern.explain(model).path == "reference"
    assert "custom_vjp" not in _jaxpr(model)
    ref = _run(model)
    monkeypatch.setenv("SNNKERN_BACKEND", "xla")   # same process, same model: the new value is used
    assert snnkern.explain(model).path == "planned"
    assert "custom_vjp" in _jaxpr(model)
    assert_results_close(_run(model), ref, "xla vs reference:")
    monkeypatch.setenv("SNNKERN_BACKEND", "reference")
    with snnkern.backend("xla"):   # the context manager wins over the environment
        assert snnkern.explain(model).path == "planned"


def test_env_backend_case_and_blank(monkeypatch):
    monkeypatch.setenv("SNNKERN_BACKEND", " Reference ")
    assert snnkern.explain(seq_model()).path == "reference"
    monkeypatch.setenv("SNNKERN_BACKEND", "")
    assert snnkern.explain(seq_model()).path == "planned"


def test_unknown_backend_raises_value_error(monkeypatch):
    with pytest.raises(ValueError, match="bogus"):
        with snnkern.backend("bogus"):
            pass
    monkeypatch.setenv("SNNKERN_BACKEND", "bogus")
    with pytest.raises(ValueError, match="bogus"):
        snnkern.explain(seq_model())
    with pytest.raises(ValueError, match="bogus"):
        _run(seq_model())


def test_all_documented_backends_are_accepted():
    assert set(snnkern.BACKENDS) == {"auto", "reference", "xla", "pallas", "pallas-interpret"}
    for name in snnkern.BACKENDS:
        with snnkern.backend(name):
            pass


def test_backend_is_thread_local():
    model = seq_model()
    seen = {}

    def other():
        seen["path"] = snnkern.explain(model).path

    with snnkern.backend("reference"):
        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert seen["path"] == "planned"


@pytest.mark.parametrize("name", ["pallas", "pallas-interpret"])
@pytest.mark.parametrize("build", [seq_model, recurrent_model])
def test_pallas_backend_runs_or_falls_back_with_reason(name, build):
    """On this host a Pallas backend either really runs Pallas kernels (the plan says so *and* the
    traced program contains ``pallas_call``) or falls back to the XLA loops with a reason; strict
    mode raises exactly when it falls back. Compiled ``pallas`` kernels cannot execute on a CPU, so
    that case is only traced; ``pallas-interpret`` (and any fallback) is run against the reference."""
    model = build()
    with snnkern.backend(name):
        plan = snnkern.explain(model, (3,))
        jaxpr = _jaxpr(model)
    kernel_steps = [s for s in plan.steps if s.spec.is_loop]
    assert kernel_steps
    fell_back = [s for s in kernel_steps if not s.impl.is_pallas]
    for s in fell_back:
        assert s.impl is Impl.XLA, s
        assert isinstance(s.reason, str) and s.reason.strip(), "a fallback must say why"
    if len(fell_back) < len(kernel_steps):
        assert "pallas_call" in jaxpr, "the plan says Pallas but the traced program has no pallas_call"
    if fell_back or name == "pallas-interpret" or jax.default_backend() != "cpu":
        with snnkern.backend(name):
            got = _run(model)
        with snnkern.backend("reference"):
            ref = _run(model)
        assert_results_close(got, ref, "xla vs reference:")
    with snnkern.strict(), snnkern.backend(name):
        if fell_back:
            with pytest.raises(snnkern.FallbackError):
                snnkern.explain(model, (3,))
        else:
            snnkern.explain(model, (3,))


# ================================================================================================
# strongly connected components


def _scc(n, conn):
    return components(n, [tuple(c) for c in conn])


def test_components_chain():
    assert _scc(4, [(), (0,), (1,), (2,)]) == [((0,), False), ((1,), False), ((2,), False), ((3,), False)]


def test_components_self_loop():
    assert _scc(3, [(), (0, 1), (1,)]) == [((0,), False), ((1,), True), ((2,), False)]


def test_components_two_cycle():
    # 0 -> 1 -> 2 -> 1, 2 -> 3
    assert _scc(4, [(), (0, 2), (1,), (2,)]) == [((0,), False), ((1, 2), True), ((3,), False)]


def test_components_diamond():
    # 0 -> {1, 2} -> 3
    assert _scc(4, [(), (0,), (0,), (1, 2)]) == [((0,), False), ((1,), False), ((2,), False), ((3,), False)]


def test_components_reverse_list_order():
    # layer 0 reads layer 1 reads layer 2: sources first, whatever the list order
    assert _scc(3, [(1,), (2,), ()]) == [((2,), False), ((1,), False), ((0,), False)]


def test_components_long_cycle_and_disconnected():
    # 1 -> 2 -> 3 -> 1 (cycle), 0 alone, 4 reads 0 and 3
    assert _scc(5, [(), (3,), (1,), (2,), (0, 3)]) == [((0,), False), ((1, 2, 3), True), ((4,), False)]


def test_components_nested_cycles_merge():
    # 0 <-> 1 and 1 <-> 2: one component {0, 1, 2}
    assert _scc(3, [(1,), (0, 2), (1,)]) == [((0, 1, 2), True)]


def test_components_deep_chain_has_no_recursion_limit():
    n = 3000
    out = _scc(n, [()] + [(i - 1,) for i in range(1, n)])
    assert out == [((i,), False) for i in range(n)]
    ring = _scc(n, [(n - 1,)] + [(i - 1,) for i in range(1, n)])
    assert ring == [(tuple(range(n)), True)]


def _reach(n, edges):
    r = np.eye(n, dtype=bool)
    for j, i in edges:
        r[j, i] = True
    for m in range(n):
        r |= r[:, m:m + 1] & r[m:m + 1, :]
    return r


@st.composite
def graphs(draw):
    n = draw(st.integers(1, 9))
    pairs = list(itertools.product(range(n), range(n)))
    edges = draw(st.lists(st.sampled_from(pairs), max_size=2 * n, unique=True))
    conn = [tuple(j for j, i in edges if i == t) for t in range(n)]
    return n, conn, edges


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_components_property(g):
    """Against reachability: the partition is the SCCs, every edge between components goes forward,
    ``cyclic`` is right, and ties are broken by the smallest layer id (Kahn's order)."""
    n, conn, edges = g
    out = _scc(n, conn)
    r = _reach(n, edges)
    expected = sorted({tuple(sorted(j for j in range(n) if r[i, j] and r[j, i])) for i in range(n)})
    assert sorted(ids for ids, _ in out) == expected
    pos = {i: k for k, (ids, _) in enumerate(out) for i in ids}
    for j, i in edges:
        assert pos[j] <= pos[i]
    for ids, cyclic in out:
        assert cyclic == (len(ids) > 1 or any((i, i) in edges for i in ids))
        assert list(ids) == sorted(ids)
    # Kahn with the smallest-first-id rule, computed independently
    comp_of = {i: c for c in expected for i in c}
    deps = {c: {comp_of[j] for j, i in edges if comp_of[i] == c and comp_of[j] != c} for c in expected}
    done, order = set(), []
    while len(order) < len(expected):
        c = min((c for c in expected if c not in done and deps[c] <= done), key=lambda c: c[0])
        done.add(c)
        order.append(c)
    assert [ids for ids, _ in out] == order


def test_reading_a_plan_doc_example_runs():
    """The example of docs/plans.md "Reading a plan" runs as written (its assert is the chain line)."""
    from pathlib import Path as _P

    text = (_P(__file__).parent.parent / "docs" / "plans.md").read_text()
    section = text[text.index("## Reading a plan"):text.index("## How cycles run")]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "docs/plans.md", "exec"), {})
