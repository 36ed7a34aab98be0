"""The planned path equals the reference path (SPEC §9; DESIGN "How a call runs").

Every model here is run twice, traced once under ``snnkern.backend("reference")`` (the time-major
``lax.scan`` of ``default_forward_fn``) and once under ``snnkern.backend("xla")`` (the layer-major plan:
batched stateless layers, custom-VJP neuron loops, recurrent loops, per-step scans of cycles), by
``helpers.check_equivalent``. Both runs must agree on the outputs, the final states and the gradients
of a loss that mixes every output and every final-state entry, with respect to every inexact array
leaf of the model, the initial states and the input (tolerances: tests/helpers.py). Spikes must be
equal, except where a membrane lies within float32 rounding of the threshold; the hand-picked cases
assert that no such flip happened, the property tests allow it (comparing the steps before it).

Every compared model fires: 2-98 % in every spiking layer, measured on the reference run. The
property-based tests draw random models (neuron types and options, depths, LayerNorm, Dropout,
convolutions, compounds, recurrent compounds, feedback cycles, several final layers, burn-in,
batching, random initial states with fractional spikes) and compare only the ones that fire (a
silent or saturated draw is rejected, ``assume``); the example budget and the no-shrink CI profile
are in tests/conftest.py.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, event, given, note
from hypothesis import strategies as st

import snnkern
from snnkern import snn
from snnkern.functional.surrogate import piecewise_surrogate, sigmoid_surrogate, superspike_surrogate
from snnkern.plan.protocol import is_compound

from helpers import (GRAD_ATOL, GRAD_RTOL, OUT_ATOL, OUT_RTOL, assert_fires, assert_matches_reference,
                     assert_near_threshold_flip, assert_rates, assert_trees_close, check_equivalent, data,
                     is_neuron, mixed_loss, rates_ok, scale_linear, spike_index, trees_close, under)

f32 = np.float32

NEURONS = ("SimpleLIF", "LIF", "LIFSoftReset", "AdaptiveLIF", "SimpleIAF", "IAF", "SimpleLI", "SigmaDelta",
           "SpikeCounter")
SPIKING = tuple(n for n in NEURONS if n not in ("SimpleLI", "SpikeCounter"))
SURROGATES = {"superspike": lambda: superspike_surrogate(10.0), "sigmoid": lambda: sigmoid_surrogate(4.0),
              "piecewise": lambda: piecewise_surrogate(0.5)}


# ================================================================================================
# Model construction


@dataclasses.dataclass(frozen=True)
class NeuronSpec:
    kind: str = "LIF"
    surrogate: str = "superspike"
    threshold: str = "float"           # float | scalar_array | vector_array (arrays are trainable)
    reset: Optional[str] = None        # None | float | array
    stop_reset_grad: bool = True


ALL_OPTIONS = dict(surrogate="sigmoid", threshold="vector_array", reset="array", stop_reset_grad=False)


def make_neuron(spec: NeuronSpec, shape, rng: np.random.Generator):
    """A neuron of ``spec.kind`` with decay constants strictly inside the clamp ranges."""
    shape = tuple(shape)
    sf = SURROGATES[spec.surrogate]()
    thr_val = float(rng.uniform(0.4, 0.9))
    if spec.threshold == "float":
        thr = thr_val
    elif spec.threshold == "scalar_array":
        thr = jnp.asarray(thr_val, jnp.float32)
    else:
        thr = jnp.asarray(rng.uniform(0.4, 0.9, shape).astype(f32))

    def reset(lo, hi):
        v = float(rng.uniform(lo, hi))
        return None if spec.reset is None else v if spec.reset == "float" else jnp.asarray(v, jnp.float32)

    a, b = (float(v) for v in rng.uniform(0.55, 0.85, 2))
    common = dict(spike_fn=sf, threshold=thr, stop_reset_grad=spec.stop_reset_grad)
    kind = spec.kind
    if kind == "SimpleLIF":
        return snn.SimpleLIF([a], reset_val=reset(-0.5, 0.5), **common)
    if kind == "LIF":
        return snn.LIF([a, b], reset_val=reset(0.0, 0.3), **common)
    if kind == "LIFSoftReset":
        return snn.LIFSoftReset([a, b], reset_val=reset(0.7, 1.2), **common)
    if kind == "AdaptiveLIF":
        return snn.AdaptiveLIF([a], ada_decay_constant=[float(rng.uniform(0.6, 0.9))],
                               ada_step_val=[float(rng.uniform(0.1, 0.5))],
                               ada_coupling_var=[float(rng.uniform(-0.5, 0.5))], reset_val=reset(0.7, 1.2), **common)
    if kind == "SimpleIAF":
        return snn.SimpleIAF(leak=float(rng.uniform(0.0, 0.1)), reset_val=reset(0.7, 1.2), **common)
    if kind == "IAF":
        return snn.IAF([b], leak=float(rng.uniform(0.0, 0.1)), reset_val=reset(0.7, 1.2), **common)
    if kind == "SimpleLI":
        return snn.SimpleLI([a])
    if kind == "SigmaDelta":
        return snn.SigmaDelta([float(v) for v in rng.uniform(0.5, 0.9, 3)], threshold=thr, spike_fn=sf)
    if kind == "SpikeCounter":
        return snn.SpikeCounter()
    raise AssertionError(kind)


def drive(layer, gain=4.0, shift=0.8):
    """A Linear/Conv scaled so that the neurons behind it cross their thresholds: the default init
    gives currents of ~0.3 for inputs in [0, 1.5); x4 plus a bias of +0.8 gives ~1-3, above the
    thresholds of 0.4-0.9 often but not always."""
    return scale_linear(layer, gain, shift)


def linear(nin, nout, key, gain=4.0, shift=0.8):
    return drive(eqx.nn.Linear(nin, nout, key=key), gain, shift)


def rec_compound(nin, n, spec, key, rng, layernorm=False):
    """The recognised recurrent chain ``CompoundLayer(Parallel([Linear(nin,n), Linear(n,n)]), neuron)``
    (with a LayerNorm in between it is not recognised and runs as a per-step cycle)."""
    k1, k2 = jax.random.split(key)
    par = snn.Parallel([linear(nin, n, k1), linear(n, n, k2, gain=1.5, shift=0.0)])
    subs = [par] + ([eqx.nn.LayerNorm(n)] if layernorm else []) + [make_neuron(spec, (n,), rng)]
    return snn.CompoundLayer(*subs)


# ================================================================================================
# Walking neuron states


def perturb_states(model, states, rng):
    """Random initial states: membranes etc. get noise, spike entries are 0, 1 or (a quarter of
    them) a fraction in (0, 1): a user may pass any state, and the planned loops, which store spikes
    as bool / int8, must use the exact initial state at t = 0 (a LIF's deferred reset reads it)."""

    def spikes(shape):
        binary = (rng.uniform(size=shape) < 0.5).astype(f32)
        return np.where(rng.uniform(size=shape) < 0.25, rng.uniform(0.05, 0.95, shape).astype(f32), binary)

    def walk(layer, state):
        if is_compound(layer):
            return [walk(sub, s) for sub, s in zip(layer.layers, state)]
        if is_neuron(layer):
            sp = spike_index(layer)
            return [jnp.asarray(spikes(s.shape)) if k == sp
                    else s + jnp.asarray(rng.normal(0.0, 0.3, s.shape).astype(f32)) for k, s in enumerate(state)]
        return jax.tree.map(lambda s: s + jnp.asarray(rng.normal(0.0, 0.3, s.shape).astype(f32)), state)

    return [walk(layer, s) for layer, s in zip(model.layers, states)]


def batch_data(x_shape, seed, batched, B=2):
    return data(((B,) if batched else ()) + tuple(x_shape), seed, hi=1.5)


# ================================================================================================
# Hypothesis strategies


neuron_specs = st.builds(
    NeuronSpec,
    kind=st.sampled_from(NEURONS),
    surrogate=st.sampled_from(tuple(SURROGATES)),
    threshold=st.sampled_from(("float", "scalar_array", "vector_array")),
    reset=st.sampled_from((None, "float", "array")),
    stop_reset_grad=st.booleans(),
)
spiking_specs = neuron_specs.filter(lambda s: s.kind in SPIKING)


@dataclasses.dataclass(frozen=True)
class Run:
    T: int
    burnin: int
    batched: bool
    perturb: bool
    seed: int


@st.composite
def runs(draw, min_T=6):
    T = draw(st.integers(min_T, min_T + 4))
    return Run(T, draw(st.sampled_from((0, 0, 1, 2, 0, 0))), draw(st.booleans()), draw(st.booleans()),
               draw(st.integers(0, 2**16)))


def fires_or_reject(rates):
    """Property tests compare only models that fire: a drawn model with a layer outside 2-98 % is
    rejected (``assume``; Hypothesis draws another, and fails with Unsatisfiable if none fires)."""
    ok = rates_ok(rates)
    event("compared (every spiking layer fires 2-98 %)" if ok else "rejected: a layer is silent or saturated")
    assume(ok)


def run_case(model, in_shape, run: Run):
    """Build states and data for ``run`` and check the planned path against the reference, on a model
    whose every spiking layer fires 2-98 % (:func:`fires_or_reject`)."""
    key = jax.random.PRNGKey(run.seed)
    k_init, k_call = jax.random.split(key)
    rng = np.random.default_rng(run.seed)
    states = model.init_state(in_shape, k_init)
    if run.perturb:
        states = perturb_states(model, states, rng)
    if isinstance(in_shape, list):
        x = [batch_data((run.T,) + tuple(s), run.seed + k, run.batched) for k, s in enumerate(in_shape)]
    else:
        x = batch_data((run.T,) + tuple(in_shape), run.seed, run.batched)
    note(f"{run}\n{snnkern.explain(model, in_shape)}")
    return check_equivalent(model, states, x, k_call, burnin=run.burnin, batched=run.batched, fire=fires_or_reject)


# ================================================================================================
# Property-based tests


@given(specs=st.lists(neuron_specs, min_size=1, max_size=4), widths=st.lists(st.integers(2, 6), min_size=4, max_size=4),
       layernorm=st.lists(st.booleans(), min_size=4, max_size=4), dropout=st.booleans(),
       neuron_first=st.booleans(), run=runs(min_T=8))
def test_random_chains(specs, widths, layernorm, dropout, neuron_first, run):
    """Sequential chains of depth 1-4 of Linear [-> LayerNorm] [-> Dropout] -> neuron; optionally the
    raw input goes straight into a neuron first."""
    rng = np.random.default_rng(run.seed + 1)
    keys = jax.random.split(jax.random.PRNGKey(run.seed + 1), 2 * len(specs) + 2)
    nin = 3
    layers = []
    if neuron_first:
        layers.append(make_neuron(NeuronSpec("SimpleIAF"), (nin,), rng))
    for d, spec in enumerate(specs):
        n = widths[d]
        layers.append(linear(nin, n, keys[2 * d]))
        if layernorm[d]:
            layers.append(eqx.nn.LayerNorm(n))
        if dropout and d == 0:
            layers.append(eqx.nn.Dropout(0.3))
        layers.append(make_neuron(spec, (n,), rng))
        nin = n
    run_case(snn.Sequential(*layers), (3,), run)


@given(specs=st.lists(neuron_specs, min_size=2, max_size=3), widths=st.lists(st.integers(2, 6), min_size=3, max_size=3),
       variant=st.sampled_from(("all-compound", "mixed", "tail-linear", "conv1d", "conv2d", "conv-compound")),
       layernorm=st.booleans(), dropout=st.booleans(), run=runs(min_T=7))
def test_random_compounds_and_convs(specs, widths, variant, layernorm, dropout, run):
    """CompoundLayer([Linear, (LayerNorm), (Dropout), neuron]) blocks, shape-changing compounds, a
    compound ending in a Linear, Conv1d/Conv2d -> neuron -> Flatten -> Linear -> neuron."""
    rng = np.random.default_rng(run.seed + 2)
    k = jax.random.split(jax.random.PRNGKey(run.seed + 2), 8)
    extra = lambda n: ([eqx.nn.LayerNorm(n)] if layernorm else []) + ([eqx.nn.Dropout(0.3)] if dropout else [])  # noqa: E731
    if variant.startswith("conv"):
        if variant == "conv2d":
            in_shape, conv = (2, 5, 5), drive(eqx.nn.Conv2d(2, 3, 3, key=k[0]))
            feat = (3, 3, 3)
        else:
            in_shape, conv = (2, 8), drive(eqx.nn.Conv1d(2, 3, 3, key=k[0]))
            feat = (3, 6)
        spec0 = dataclasses.replace(specs[0], threshold="float" if specs[0].threshold == "vector_array"
                                    else specs[0].threshold)
        n0 = make_neuron(spec0, feat, rng)
        head = [linear(int(np.prod(feat)), widths[0], k[1], gain=1.5), make_neuron(specs[1], (widths[0],), rng)]
        if variant == "conv-compound":
            layers = [snn.CompoundLayer([conv, n0, snn.Flatten()])] + head
        else:
            layers = [conv, n0, snn.Flatten()] + head
        run_case(snn.Sequential(*layers), in_shape, run)
        return
    nin, layers = 3, []
    for d, spec in enumerate(specs):
        n = widths[d]
        block = [linear(nin, n, k[d])] + extra(n) + [make_neuron(spec, (n,), rng)]
        if variant == "mixed" and d % 2 == 1:
            layers += block
        else:
            layers.append(snn.CompoundLayer(block))
        nin = n
    if variant == "tail-linear":   # the read value of a compound is its last (stateless) sub-layer's output
        layers[-1] = snn.CompoundLayer(layers[-1].layers + [linear(nin, 2, k[6])])
        layers.append(make_neuron(NeuronSpec("LIF"), (2,), rng))
    run_case(snn.Sequential(*layers), (3,), run)


@given(spec=neuron_specs, spec2=neuron_specs,
       variant=st.sampled_from(("rec-first", "rec-second", "rec-layernorm", "two-rec", "plain-self-loop")),
       run=runs(min_T=7))
def test_random_recurrent_feedback_none(spec, spec2, variant, run):
    """SequentialLocalFeedback(feedback_layers=None) with the recurrent compound
    CompoundLayer(Parallel([Linear(nin,n), Linear(n,n)]), neuron), in several positions; with a
    LayerNorm inside (not the recognised chain: a per-step cycle); a plain compound with a self-loop."""
    rng = np.random.default_rng(run.seed + 3)
    k = jax.random.split(jax.random.PRNGKey(run.seed + 3), 8)
    nin, n, m = 3, 4, 2
    if variant == "rec-first":
        layers = [rec_compound(nin, n, spec, k[0], rng), linear(n, m, k[1]), make_neuron(spec2, (m,), rng)]
    elif variant == "rec-second":
        layers = [linear(nin, n, k[0]), make_neuron(spec2, (n,), rng), rec_compound(n, n, spec, k[1], rng)]
    elif variant == "rec-layernorm":
        layers = [rec_compound(nin, n, spec, k[0], rng, layernorm=True), linear(n, m, k[1]),
                  make_neuron(spec2, (m,), rng)]
    elif variant == "two-rec":
        layers = [rec_compound(nin, n, spec, k[0], rng), rec_compound(n, m, spec2, k[1], rng)]
    else:   # CompoundLayer([Linear(n, n), neuron]) receives x_t + its own output_{t-1} (summed)
        layers = [linear(nin, n, k[0]), snn.CompoundLayer([linear(n, n, k[1], gain=1.0), make_neuron(spec, (n,), rng)])]
    model = snn.SequentialLocalFeedback(layers, feedback_layers=None)
    assert any(c.cyclic for c in snnkern.explain(model, (nin,)).components)
    run_case(model, (nin,), run)


@given(specs=st.lists(neuron_specs, min_size=3, max_size=3),
       edges=st.dictionaries(st.integers(0, 3), st.integers(1, 3), min_size=1, max_size=2), run=runs(min_T=7))
def test_random_feedback_dicts(specs, edges, run):
    """SequentialLocalFeedback([Linear, N, Linear, N, Linear, N], feedback_layers={k: l}): back edges
    (multi-layer cycles), self-loops and forward skip edges, all summed into same-shape inputs."""
    rng = np.random.default_rng(run.seed + 4)
    k = jax.random.split(jax.random.PRNGKey(run.seed + 4), 4)
    nin, n, m = 3, 4, 2
    layers = [linear(nin, n, k[0]), make_neuron(specs[0], (n,), rng), linear(n, n, k[1], gain=1.5),
              make_neuron(specs[1], (n,), rng), linear(n, m, k[2]), make_neuron(specs[2], (m,), rng)]
    model = snn.SequentialLocalFeedback(layers, feedback_layers=dict(edges))
    run_case(model, (nin,), run)


@given(specs=st.lists(neuron_specs, min_size=3, max_size=3),
       finals=st.lists(st.sampled_from((1, 2, 4, 5)), min_size=1, max_size=3, unique=True),
       variant=st.sampled_from(("back-edge", "two-inputs", "both", "plain")), run=runs(min_T=6))
def test_random_graphs_with_several_final_layers(specs, finals, variant, run):
    """StatefulModel + GraphStructure: a diamond (two Linears summed into one neuron), a compound at
    the end, several final_layer_ids in any order, optionally a back edge (a 2-layer cycle) and a
    second external input merged with a source."""
    back_edge, two_inputs = variant in ("back-edge", "both"), variant in ("two-inputs", "both")
    rng = np.random.default_rng(run.seed + 5)
    k = jax.random.split(jax.random.PRNGKey(run.seed + 5), 5)
    nin, n, m = 3, 4, 2
    layers = [linear(nin, n, k[0]), make_neuron(specs[0], (n,), rng), linear(n, n, k[1], gain=1.5),
              linear(n, n, k[2], gain=1.5), make_neuron(specs[1], (n,), rng),
              snn.CompoundLayer([linear(n, m, k[3]), make_neuron(specs[2], (m,), rng)])]
    conn = [[], [0], [1], [1], [2, 3], [4]]
    ilid = [[0], [], [], [], [], []]
    if back_edge:
        conn[2].append(4)
    if two_inputs:
        ilid[3] = [1]
    graph = snn.GraphStructure(6, input_layer_ids=ilid, final_layer_ids=finals, input_connectivity=conn)
    model = snn.StatefulModel(graph, layers)
    (_, outs, _), _ = run_case(model, [(nin,), (n,)] if two_inputs else (nin,), run)
    assert len(outs) == len(finals)


# ================================================================================================
# Every neuron type with every option on (deterministic; firing asserted)


@pytest.mark.parametrize("kind", NEURONS)
def test_each_neuron_kind_with_all_options(kind):
    """Linear -> N -> Linear -> N with a trainable per-neuron threshold, a trainable reset_val,
    stop_reset_grad=False and the sigmoid surrogate (options the neuron does not have are ignored)."""
    rng = np.random.default_rng(7)
    k = jax.random.split(jax.random.PRNGKey(7), 4)
    spec = NeuronSpec(kind, **ALL_OPTIONS)
    model = snn.Sequential(linear(3, 5, k[0]), make_neuron(spec, (5,), rng),
                           linear(5, 4, k[1]), make_neuron(spec, (4,), rng))
    states = model.init_state((3,), k[2])
    x = data((12, 3), seed=8, hi=1.5)
    # SimpleLI / SpikeCounter have no spikes: their outputs are the membrane / the input
    (_, _, g), flipped = check_equivalent(model, states, x, k[3], fire=assert_rates if kind in SPIKING else None)
    assert not flipped
    # the options really are trainable leaves whose gradient the planned path computes
    neuron_g = g[0].layers[1]
    for name in ("threshold", "reset_val", "leak", "decay_constants"):
        v = getattr(neuron_g, name, None)
        if isinstance(v, jax.Array):
            assert np.isfinite(np.asarray(v)).all()
    if kind in SPIKING:
        assert np.abs(np.asarray(g[0].layers[1].threshold)).sum() > 0


@pytest.mark.parametrize("surrogate, stop_reset_grad", [("superspike", True), ("superspike", False),
                                                         ("piecewise", False), ("sigmoid", True)])
def test_surrogates_and_reset_grad(surrogate, stop_reset_grad):
    rng = np.random.default_rng(11)
    k = jax.random.split(jax.random.PRNGKey(11), 4)
    spec = NeuronSpec("SimpleLIF", surrogate=surrogate, threshold="scalar_array", reset=None,
                      stop_reset_grad=stop_reset_grad)
    model = snn.Sequential(linear(3, 5, k[0]), make_neuron(spec, (5,), rng), linear(5, 3, k[1]),
                           make_neuron(dataclasses.replace(spec, kind="LIF"), (3,), rng))
    states = model.init_state((3,), k[2])
    assert_matches_reference(model, states, data((10, 3), seed=12, hi=1.5), k[3])


# ================================================================================================
# Hand-picked structures (deterministic; firing asserted)


def _case(model, in_shape, T=10, seed=0, burnin=0, batched=False, perturb=False):
    k = jax.random.split(jax.random.PRNGKey(100 + seed), 2)
    states = model.init_state(in_shape, k[0])
    if perturb:
        states = perturb_states(model, states, np.random.default_rng(seed))
    if isinstance(in_shape, list):
        x = [batch_data((T,) + tuple(s), seed + j, batched) for j, s in enumerate(in_shape)]
    else:
        x = batch_data((T,) + tuple(in_shape), seed, batched)
    return assert_matches_reference(model, states, x, k[1], burnin=burnin, batched=batched)


def test_deep_chain_with_layernorm_dropout_burnin_batched():
    rng = np.random.default_rng(1)
    k = jax.random.split(jax.random.PRNGKey(1), 5)
    model = snn.Sequential(linear(3, 6, k[0]), eqx.nn.LayerNorm(6), eqx.nn.Dropout(0.3),
                           make_neuron(NeuronSpec("LIF"), (6,), rng),
                           linear(6, 5, k[1]), make_neuron(NeuronSpec("AdaptiveLIF", reset="float"), (5,), rng),
                           linear(5, 3, k[3]), eqx.nn.LayerNorm(3), make_neuron(NeuronSpec("SigmaDelta"), (3,), rng))
    _case(model, (3,), T=16, seed=1, burnin=3, batched=True, perturb=True)


def test_conv2d_compound_then_readout():
    rng = np.random.default_rng(2)
    k = jax.random.split(jax.random.PRNGKey(2), 3)
    model = snn.Sequential(
        snn.CompoundLayer([drive(eqx.nn.Conv2d(2, 3, 3, key=k[0]), 1.5, 0.3),
                           make_neuron(NeuronSpec("SimpleLIF"), (3, 4, 4), rng), snn.Flatten()]),
        linear(48, 6, k[1], shift=1.2), make_neuron(NeuronSpec("LIFSoftReset"), (6,), rng),
        linear(6, 2, k[2]), snn.SimpleLI([0.8]))
    _case(model, (2, 6, 6), T=10, seed=2)


def test_conv1d_flat():
    rng = np.random.default_rng(3)
    k = jax.random.split(jax.random.PRNGKey(3), 3)
    model = snn.Sequential(drive(eqx.nn.Conv1d(2, 4, 3, key=k[0]), 2.0, 0.3), make_neuron(NeuronSpec("IAF"), (4, 6), rng),
                           snn.Flatten(), linear(24, 5, k[1], gain=1.5),
                           make_neuron(NeuronSpec("SimpleIAF", reset="array", stop_reset_grad=False), (5,), rng))
    _case(model, (2, 8), T=10, seed=3)


def test_recurrent_compound_slf():
    rng = np.random.default_rng(4)
    k = jax.random.split(jax.random.PRNGKey(4), 3)
    model = snn.SequentialLocalFeedback(
        [rec_compound(3, 6, NeuronSpec("LIF", threshold="vector_array", stop_reset_grad=False), k[0], rng),
         linear(6, 3, k[1]), make_neuron(NeuronSpec("SimpleLIF"), (3,), rng)],
        feedback_layers=None)
    plan = snnkern.explain(model, (3,))
    assert [c.kind for c in plan.components][0] == "recurrent-compound"
    _case(model, (3,), T=14, seed=4, batched=True, perturb=True)


def test_recurrent_compound_is_actually_recurrent():
    """Guard against a vacuous recurrence: zeroing the recurrent weight changes the result on both paths."""
    rng = np.random.default_rng(5)
    k = jax.random.split(jax.random.PRNGKey(5), 3)
    comp = rec_compound(3, 5, NeuronSpec("LIF"), k[0], rng)
    model = snn.SequentialLocalFeedback([comp], feedback_layers=None)
    (_, outs, _) = _case(model, (3,), T=12, seed=5)
    no_rec = eqx.tree_at(lambda m: m.layers[0].layers[0].layers[1].weight, model,
                         jnp.zeros_like(comp.layers[0].layers[1].weight))
    states = no_rec.init_state((3,), jax.random.split(jax.random.PRNGKey(105), 2)[0])
    x = data((12, 3), seed=5, hi=1.5)
    _, outs2, _ = assert_matches_reference(no_rec, states, x, jax.random.split(jax.random.PRNGKey(105), 2)[1])
    assert not trees_close(outs, outs2)


def test_multi_layer_cycle_via_feedback_dict():
    rng = np.random.default_rng(6)
    k = jax.random.split(jax.random.PRNGKey(6), 3)
    layers = [linear(3, 4, k[0]), make_neuron(NeuronSpec("LIF"), (4,), rng), linear(4, 4, k[1], gain=2.0),
              make_neuron(NeuronSpec("SimpleLIF", threshold="vector_array"), (4,), rng)]
    model = snn.SequentialLocalFeedback(layers, feedback_layers={3: 1})   # cycle 1 -> 2 -> 3 -> 1
    plan = snnkern.explain(model, (3,))
    cyc = [c for c in plan.components if c.kind == "cycle"]
    assert len(cyc) == 1 and cyc[0].layers == (1, 2, 3)
    _case(model, (3,), T=12, seed=6, burnin=2, perturb=True)


def test_several_final_layers_two_inputs():
    rng = np.random.default_rng(8)
    k = jax.random.split(jax.random.PRNGKey(8), 4)
    layers = [linear(3, 4, k[0]), make_neuron(NeuronSpec("LIF"), (4,), rng), linear(4, 4, k[1]),
              linear(4, 4, k[2]), make_neuron(NeuronSpec("IAF"), (4,), rng),
              snn.CompoundLayer([linear(4, 2, k[3]), make_neuron(NeuronSpec("SimpleLIF"), (2,), rng)])]
    graph = snn.GraphStructure(6, input_layer_ids=[[0], [], [], [1], [], []], final_layer_ids=[5, 1, 3],
                               input_connectivity=[[], [0], [1], [1], [2, 3], [4]])
    model = snn.StatefulModel(graph, layers)
    (_, outs, _) = _case(model, [(3,), (4,)], T=10, seed=8, batched=True)
    assert len(outs) == 3 and isinstance(outs[0], list) and len(outs[0]) == 2


def test_integer_input_forward():
    """Integer spike input straight into a neuron (the planned loop casts it; the reference promotes)."""
    k = jax.random.split(jax.random.PRNGKey(9), 3)
    model = snn.Sequential(snn.SimpleIAF(threshold=2.0), linear(3, 4, k[0]), snn.LIF([0.8, 0.7]))
    states = model.init_state((3,), k[1])
    x = jnp.asarray(np.random.default_rng(9).integers(0, 2, (10, 3)), jnp.int32)
    # the threshold of 2 makes the IAF integrate 0/1 spikes over ~3 steps; gradients: model and states
    assert_matches_reference(model, states, x, k[2])


def test_layer_reading_a_later_layer_topological_order():
    """Layer 0 reads layer 1 (a later layer in list order, no cycle): the plan runs 1 before 0."""
    rng = np.random.default_rng(12)
    k = jax.random.split(jax.random.PRNGKey(12), 2)
    graph = snn.GraphStructure(3, input_layer_ids=[[0], [0], []], final_layer_ids=[2, 0],
                               input_connectivity=[[1], [], [0]])
    model = snn.StatefulModel(graph, [make_neuron(NeuronSpec("LIF"), (3,), rng), linear(3, 3, k[0]),
                                      linear(3, 2, k[1])])
    assert [c.layers for c in snnkern.explain(model, (3,)).components] == [(1,), (0,), (2,)]
    _case(model, (3,), T=8, seed=12, perturb=True)


@pytest.mark.parametrize("first", ["Identity", "Flatten"])
def test_integer_input_into_stateless_first_layer(first):
    """Integer input (spike counts, events) into a stateless first layer whose initial state (what
    the next layer reads at t = 0) is a float. The reference keeps each state's dtype (SPEC §4: the
    state is ``[layer(zeros)]``, float32), so the final state stays float32 and the float initial
    value is read unchanged at t = 0."""
    k = jax.random.split(jax.random.PRNGKey(13), 3)
    layer0 = eqx.nn.Identity() if first == "Identity" else snn.Flatten()
    model = snn.Sequential(layer0, linear(3, 4, k[0]), snn.LIF([0.8, 0.7]))
    states = model.init_state((3,), k[1])
    states[0] = [jnp.asarray([0.7, -0.3, 1.2], jnp.float32)]
    x = jnp.asarray(np.random.default_rng(13).integers(0, 3, (8, 3)), jnp.int32)
    assert_matches_reference(model, states, x, k[2])


def test_forward_mode_autodiff_is_reference_only():
    """docs/kernels.md: forward-mode AD (jax.jvp / jacfwd / linearize) cannot go through the planned
    path's custom-VJP loops. The reference path supports it: its jvp equals the directional
    derivative <grad, v> that the planned path's reverse mode gives (GRAD tolerances); the planned
    path raises JAX's TypeError naming custom_vjp instead of a wrong number."""
    k = jax.random.split(jax.random.PRNGKey(14), 3)
    model = snn.Sequential(linear(3, 4, k[0]), snn.LIF([0.8, 0.7]))
    states = model.init_state((3,), k[1])
    x = data((6, 3), seed=14, hi=1.5)
    assert_fires(model, states, x, k[2])
    v = jnp.cos(jnp.arange(x.size, dtype=jnp.float32)).reshape(x.shape)
    loss = lambda: _loss_x(model, states, k[2])  # noqa: E731
    value, tangent = under("reference", jax.jit(lambda xx: jax.jvp(loss(), (xx,), (v,))), x)
    g = under("xla", jax.jit(jax.grad(loss())), x)
    np.testing.assert_allclose(float(tangent), float(jnp.vdot(g, v)), rtol=GRAD_RTOL, atol=GRAD_ATOL)
    assert abs(float(tangent)) > 1e-3
    with pytest.raises(TypeError, match="custom_vjp"):
        under("xla", jax.jit(lambda xx: jax.jvp(loss(), (xx,), (v,))), x)


def test_exact_initial_spike_state_where_nothing_reads_the_last_state():
    """Non-binary initial spike entries (perturb_states) reach a LIF's deferred reset at t = 0, and
    with ``stop_reset_grad=False`` its gradient. The planned loops store spikes as bool, so at t = 0
    they must use the exact initial state - visible only where the neuron's last state entry is not
    kept as a primal output: a neuron inside a compound (layer 1) and one whose output is neither
    read nor final (layer 3)."""
    rng = np.random.default_rng(15)
    k = jax.random.split(jax.random.PRNGKey(15), 4)
    spec = NeuronSpec("LIF", stop_reset_grad=False)
    layers = [linear(3, 4, k[0]), snn.CompoundLayer([linear(4, 4, k[1], gain=2.0), make_neuron(spec, (4,), rng)]),
              linear(4, 2, k[2], gain=2.0), make_neuron(dataclasses.replace(spec, kind="LIFSoftReset"), (4,), rng)]
    graph = snn.GraphStructure(4, input_layer_ids=[[0], [], [], []], final_layer_ids=[2],
                               input_connectivity=[[], [0], [1], [0]])
    model = snn.StatefulModel(graph, layers)
    states = perturb_states(model, model.init_state((3,), k[3]), rng)
    states[1][1][2] = jnp.asarray([0.3, 1.0, 0.0, 0.6])    # fractional initial spikes
    states[3][2] = jnp.asarray([0.7, 0.0, 0.45, 1.0])
    _, _, g = assert_matches_reference(model, states, data((10, 3), seed=15, hi=1.5), k[3])
    assert np.abs(np.asarray(g[1][3][2])).max() > 0, "the initial spike state of layer 3 gets a gradient"


def test_flip_diagnostic_itself():
    """The near-threshold exception in check_equivalent is only granted to real near-threshold flips."""
    model = snn.Sequential(eqx.nn.Linear(2, 3, key=jax.random.PRNGKey(0)), snn.LIF([0.8, 0.7], threshold=0.5))
    lin = [jnp.zeros(3)]
    ref = [lin, [jnp.asarray([0.5000001, 0.2, 0.1]), jnp.zeros(3), jnp.asarray([1.0, 0.0, 0.0])]]
    near = [lin, [jnp.asarray([0.4999999, 0.2, 0.1]), jnp.zeros(3), jnp.asarray([0.0, 0.0, 0.0])]]
    assert_near_threshold_flip(model, 3, ref, near, [1])
    far = [lin, [jnp.asarray([0.3, 0.2, 0.1]), jnp.zeros(3), jnp.asarray([0.0, 0.0, 0.0])]]
    with pytest.raises(AssertionError, match="away from the threshold"):
        assert_near_threshold_flip(model, 3, ref, far, [1])
    no_flip = [lin, [jnp.asarray([0.5000001, 0.25, 0.1]), jnp.zeros(3), jnp.asarray([1.0, 0.0, 0.0])]]
    with pytest.raises(AssertionError, match="no spike flipped"):
        assert_near_threshold_flip(model, 3, ref, no_flip, [1])
    with pytest.raises(AssertionError, match="no spike flipped"):
        assert_near_threshold_flip(model, 3, [[jnp.ones(3)]] + ref[1:], ref, [0])


# ================================================================================================
# Transforms: the planned path under jit / vmap / grad / filter_jit / checkpoint equals the reference


def _transform_models():
    rng = np.random.default_rng(20)
    k = jax.random.split(jax.random.PRNGKey(20), 6)
    chain = snn.Sequential(linear(3, 5, k[0]), eqx.nn.LayerNorm(5), make_neuron(NeuronSpec("LIF"), (5,), rng),
                           linear(5, 3, k[1]), make_neuron(NeuronSpec("SimpleLIF"), (3,), rng))
    rec = snn.SequentialLocalFeedback([rec_compound(3, 5, NeuronSpec("LIF"), k[2], rng), linear(5, 3, k[3]),
                                       make_neuron(NeuronSpec("SimpleLIF"), (3,), rng)], feedback_layers=None)
    cycle = snn.SequentialLocalFeedback([linear(3, 4, k[4]), make_neuron(NeuronSpec("SimpleLIF"), (4,), rng),
                                         linear(4, 4, k[5], gain=2.0), make_neuron(NeuronSpec("LIF"), (4,), rng)],
                                        feedback_layers={3: 2})
    return {"chain": chain, "recurrent": rec, "cycle": cycle}


TRANSFORM_MODELS = _transform_models()


@pytest.fixture(scope="module", params=sorted(TRANSFORM_MODELS))
def tcase(request):
    """(model, states, x, key) of one transform model; module-scoped: its firing is checked once for
    the six transform tests that use it."""
    model = TRANSFORM_MODELS[request.param]
    k = jax.random.split(jax.random.PRNGKey(21), 2)
    states = model.init_state((3,), k[0])
    x = data((10, 3), seed=21, hi=1.5)
    assert_fires(model, states, x, k[1])
    return model, states, x, k[1]


def _loss_x(model, states, key):
    def loss(x):
        finals, outs = model(states, x, key)
        return mixed_loss(finals, outs)
    return loss


def test_transform_jax_jit(tcase):
    model, states, x, key = tcase
    fresh = lambda: jax.jit(lambda s, xx: model(s, xx, key))  # noqa: E731
    ref = under("reference", fresh(), states, x)
    got = under("xla", fresh(), states, x)
    assert_trees_close(got, ref, OUT_ATOL, OUT_RTOL, "jax.jit")


def test_transform_jax_vmap(tcase):
    """jax.vmap over both the initial states and the input (the custom-VJP loops batched)."""
    model, states, x, key = tcase
    xb = jnp.stack([x, x[::-1] * 0.7, x + 0.2])
    sb = jax.tree.map(lambda s: jnp.stack([s, s + 0.1, s - 0.1]), states)
    fresh = lambda: jax.vmap(lambda s, xx: model(s, xx, key))  # noqa: E731
    assert_trees_close(under("xla", fresh(), sb, xb), under("reference", fresh(), sb, xb),
                       OUT_ATOL, OUT_RTOL, "jax.vmap over states and x")


def test_transform_jax_grad(tcase):
    model, states, x, key = tcase
    ref = under("reference", jax.jit(jax.grad(_loss_x(model, states, key))), x)
    got = under("xla", jax.jit(jax.grad(_loss_x(model, states, key))), x)
    assert np.abs(np.asarray(ref)).sum() > 0
    assert_trees_close(got, ref, GRAD_ATOL, GRAD_RTOL, "jax.grad wrt x")


def test_transform_filter_jit(tcase):
    """eqx.filter_jit of the model call, the model an argument (filter_jit(filter_grad) is what
    check_equivalent uses for every model above)."""
    model, states, x, key = tcase
    fj = lambda: eqx.filter_jit(lambda m, s, xx: m(s, xx, key))  # noqa: E731
    assert_trees_close(under("xla", fj(), model, states, x), under("reference", fj(), model, states, x),
                       OUT_ATOL, OUT_RTOL, "eqx.filter_jit")


def test_transform_eager_filter_grad():
    """Un-jitted eqx.filter_grad (op-by-op dispatch of the custom-VJP loops), on the recurrent model."""
    model = TRANSFORM_MODELS["recurrent"]
    k = jax.random.split(jax.random.PRNGKey(21), 2)
    states, x, key = model.init_state((3,), k[0]), data((10, 3), seed=21, hi=1.5), k[1]

    def loss(m, s, xx):
        finals, outs = m(s, xx, key)
        return mixed_loss(finals, outs)

    assert_trees_close(under("xla", eqx.filter_grad(loss), model, states, x),
                       under("reference", eqx.filter_grad(loss), model, states, x), GRAD_ATOL, GRAD_RTOL,
                       "eager eqx.filter_grad")


def test_transform_checkpoint(tcase):
    """jax.checkpoint (remat) of a loss calling the model, differentiated wrt the model's arrays and x."""
    model, states, x, key = tcase
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loss_p(p, xx):
        finals, outs = eqx.combine(p, static)(states, xx, key)
        return mixed_loss(finals, outs)

    fresh = lambda: jax.jit(jax.grad(jax.checkpoint(loss_p), argnums=(0, 1)))  # noqa: E731
    ref = under("reference", fresh(), params, x)
    got = under("xla", fresh(), params, x)
    assert_trees_close(got, ref, GRAD_ATOL, GRAD_RTOL, "jax.checkpoint")


def test_backend_is_read_at_trace_time(tcase):
    """A function traced under each backend takes that backend's path: only the planned one has the
    custom-VJP loops in its jaxpr. (Every comparison in this file uses fresh function objects, and
    ``under`` checks the path, so a trace cache that does not key on the backend cannot make a
    comparison vacuous.)"""
    model, states, x, key = tcase
    fresh = lambda: jax.make_jaxpr(lambda xx: model(states, xx, key))  # noqa: E731
    jx_ref = str(under("reference", fresh(), x))
    jx_pl = str(under("xla", fresh(), x))
    assert "custom_vjp" not in jx_ref
    assert "custom_vjp" in jx_pl
