"""A new strategy is one module plus one registry entry (docs/architecture.md "Adding a strategy").

The toy strategy below runs an ``eqx.nn.Identity`` outside any cycle without calling it (its output
sequence is its input sequence). Registered, the planner picks it, explain() prints its line and the
runner runs it; the results (outputs, final states, gradients) equal the reference path's.
"""
from dataclasses import dataclass
from typing import ClassVar

import equinox as eqx
import jax
import pytest

import snnkern
from snnkern import snn
from snnkern.plan import Impl, Step, strategies
from snnkern.plan.strategies import Batched, ComponentLoop, LayerStrategy, NeuronLoop

from helpers import CPU_LOOP_IMPL, assert_matches_reference, scale_linear


@dataclass(frozen=True)
class PassThrough(LayerStrategy):
    """An ``eqx.nn.Identity`` outside any cycle: its input sequence is its output (no call at all)."""

    kind: ClassVar[str] = "stateless"

    @classmethod
    def take(cls, site):
        if type(site.layer) is not eqx.nn.Identity or isinstance(site.x, (list, tuple)):
            return None
        return Step(site.where, cls(), site.address)

    def run(self, layer, state, inp, key):
        return [inp[-1]], inp, None

    def describe(self) -> str:
        return "pass-through (toy strategy)"


def _model():
    k = jax.random.split(jax.random.PRNGKey(3), 2)
    # with these gains and biases the LIF layers fire on 4.5 % and 15 % of their entries (the helper asserts 2-98 %)
    return snn.Sequential(scale_linear(eqx.nn.Linear(6, 8, key=k[0]), 4.0, 1.0), eqx.nn.Identity(),
                          snn.LIF([0.9, 0.8]), scale_linear(eqx.nn.Linear(8, 4, key=k[1]), 8.0, 3.0),
                          snn.LIF([0.9, 0.8]))


def test_a_registered_toy_strategy_is_planned_described_and_run():
    model = _model()
    assert type(snnkern.explain(model, (6,)).components[1].step.spec) is Batched
    with strategies.registered(PassThrough, before=Batched):
        plan = snnkern.explain(model, (6,))
        assert type(plan.components[1].step.spec) is PassThrough and plan.fallbacks == []
        assert "pass-through (toy strategy)" in str(plan)
        states = model.init_state((6,), jax.random.PRNGKey(0))
        x = jax.random.bernoulli(jax.random.PRNGKey(1), 0.6, (4, 20, 6)).astype("float32")
        assert_matches_reference(model, states, x, jax.random.PRNGKey(2), batched=True)
    assert PassThrough not in strategies.LAYER
    assert type(snnkern.explain(model, (6,)).components[1].step.spec) is Batched


def test_register_places_a_strategy_before_the_fallbacks_and_rejects_duplicates():
    strategies.register(PassThrough)
    try:
        assert strategies.LAYER.index(PassThrough) < strategies.LAYER.index(strategies.AutodiffScan)
        assert strategies.LAYER.index(PassThrough) > strategies.LAYER.index(NeuronLoop)
        with pytest.raises(ValueError, match="registered already"):
            strategies.register(PassThrough)
    finally:
        strategies.unregister(PassThrough)
    assert ComponentLoop in strategies.CYCLE
    with pytest.raises(TypeError, match="neither"):
        strategies.register(int)


def test_a_call_traces_each_layer_once_to_check_and_plan_it():
    """One traced call evaluates each layer abstractly once before it runs: a stateless layer in
    ``init_state``'s check of the states (its output aval is then its state's), a neuron's step not at
    all (the loop traces it when it runs). Counted: the traces of a Lambda's function and of a
    neuron's step while one forward call is traced, with and without a compound around them."""
    n = {"lam": 0, "lif": 0}

    def double(x):
        n["lam"] += 1
        return 2.0 * x

    class CountingLIF(snn.LIF):
        def step(self, p, s, x):
            n["lif"] += 1
            return super().step(p, s, x)

    k = jax.random.split(jax.random.PRNGKey(0), 3)
    model = snn.Sequential(eqx.nn.Linear(4, 8, key=k[0]), eqx.nn.Lambda(double), CountingLIF([0.9, 0.8]),
                           snn.CompoundLayer(eqx.nn.Linear(8, 8, key=k[1]), eqx.nn.Lambda(double),
                                             CountingLIF([0.9, 0.8])))
    states = model.init_state((4,), k[2])
    n.update(lam=0, lif=0)
    jax.jit(lambda x: model(states, x, k[2]))(jax.numpy.ones((5, 4)))
    # per Lambda: the check of the states (init_state) + the run; per LIF: the run's loop, or with the
    # native CPU loop (kernels/native) the generator's three traces when planned (the step at the real
    # shape, checked elementwise; at scalars; its VJP at scalars) and none when it runs
    per_lif = 3 if CPU_LOOP_IMPL is Impl.NATIVE and jax.default_backend() == "cpu" else 1
    assert n == {"lam": 4, "lif": 2 * per_lif}, n
