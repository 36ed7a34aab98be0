"""The planned path equals the reference path (SPEC §9; DESIGN "How a call runs").

Every model here is run twice, traced once under ``snnkern.backend("reference")`` (the time-major
``lax.scan`` of ``default_forward_fn``) and once under ``snnkern.backend("xla")`` (the layer-major plan:
batched stateless layers, custom-VJP neuron loops, recurrent loops, per-step scans of cycles). Both
runs must agree on

- the outputs and the final states (atol 1e-5 + rtol 1e-5: float32 rounding of a GEMM over all T
  steps vs T GEMVs sums in a different order),
- the gradients of a loss that mixes every output and every final-state entry, with respect to every
  inexact array leaf of the model, the initial states and the input (rtol 1e-4, atol 1e-5: the fused
  backward passes accumulate parameter gradients per neuron and reduce once, in another order).

Spikes must be equal. The one allowed exception: a membrane that lies within float32 rounding of the
threshold may fire on one path and not on the other. When the two runs disagree, ``check_equivalent``
replays growing prefixes of the input on both paths to find the first step t at which any state
differs, and asserts that the difference is such a flip: the first neuron (in sub-layer order) whose
spikes differ at t has, at every flipped position, a membrane within 1e-4 of its threshold. The
membrane is read on the path where that neuron did *not* fire: its stored membrane is then the
pre-reset value the spike was decided on, for every neuron model (LIF/LIFSoftReset store it pre-reset
anyway; the others subtract the reset only after a spike); states before t agree, so it equals the
reference's pre-reset membrane to rounding. After a legitimate flip the trajectories diverge
(cascade), so only the outputs before t are compared, and final states and gradients are skipped.
A difference without a near-threshold flip fails.

The property-based tests draw random models (neuron types and options, depths, LayerNorm, Dropout,
convolutions, compounds, recurrent compounds, feedback cycles, several final layers, burn-in, batching,
random initial states) with a fixed example budget (derandomized, so runs are reproducible). The
hand-picked deterministic cases also assert that neurons actually fire, so that the comparison is not
vacuous.
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
                     assert_near_threshold_flip, assert_rates, assert_trees_close, check_equivalent, data, firing_rates,
                     is_neuron, iter_neurons, mixed_loss, rates_ok, scale_linear, spike_index, trees_close, under)

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


# Running a model on one path


def _weights(leaf, k):
    """Fixed, sign-changing weights so the loss sees every entry of every leaf differently."""
    return jnp.sin(jnp.arange(leaf.size, dtype=jnp.float32) * 1.37 + 0.61 * k + 0.3).reshape(leaf.shape)


def mixed_loss(finals, outs):
    leaves = jax.tree.leaves(outs) + jax.tree.leaves(finals)
    return sum(jnp.sum(_weights(l, k) * l) for k, l in enumerate(leaves))


def call(model, states, x, key, burnin=0, batched=False):
    """``model(states, x, key, burnin)``; ``batched``: x has a leading batch axis (SPEC §2 form)."""
    if batched:
        return eqx.filter_vmap(lambda s, xx: model(s, xx, key, burnin=burnin), in_axes=(None, 0))(states, x)
    return model(states, x, key, burnin=burnin)


@contextlib.contextmanager
def planned_runs():
    """Counts the calls of the layer-major plan runner made while tracing inside the block.

    A jit/trace cache hit would silently reuse the other path's trace and the comparison would pass
    vacuously (the ``backend(...)`` block is part of JAX's jit key only where snnkern can register a
    JAX config state; ``SNNKERN_BACKEND`` never is); ``under`` uses this spy to prove that each run
    really took the path it asked for. (It patches ``snnkern.snn.architecture.run_plan``,
    the name ``StatefulModel.__call__`` calls.)"""
    import snnkern.snn.architecture as arch

    orig, calls = arch.run_plan, []

    def spy(*args, **kwargs):
        calls.append(1)
        return orig(*args, **kwargs)

    arch.run_plan = spy
    try:
        yield calls
    finally:
        arch.run_plan = orig


def under(backend, f, *args):
    """``f(*args)`` with ``backend`` active, asserting that the planned runner ran iff it should.
    ``f`` must be a fresh function object (not traced before)."""
    with snnkern.backend(backend), planned_runs() as calls:
        out = f(*args)
    if backend == "reference":
        assert not calls, "the reference backend ran the planned path"
    else:
        assert calls, f"backend {backend!r} did not trace the planned path (a cached trace was reused?)"
    return out


def run_path(backend, model, states, x, key, burnin=0, batched=False, grads=True):
    """Outputs, final states and gradients (wrt model, states and x), traced under ``backend``.

    A fresh jitted function per call: the backend is read at trace time and eqx.filter_jit caches
    per function object (``under`` checks that the requested path was traced)."""

    def loss(diff):
        m, s, xx = diff
        finals, outs = call(m, s, xx, key, burnin, batched)
        return mixed_loss(finals, outs), (finals, outs)

    if not grads:
        finals, outs = under(backend, eqx.filter_jit(lambda m, s, xx: call(m, s, xx, key, burnin, batched)),
                             model, states, x)
        return finals, outs, None
    g, (finals, outs) = under(backend, eqx.filter_jit(eqx.filter_grad(loss, has_aux=True)), (model, states, x))
    return finals, outs, g


def _np(a):
    return np.asarray(a)


def _close(a, b, atol=OUT_ATOL, rtol=OUT_RTOL) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    if jax.tree.structure(a) != jax.tree.structure(b) or len(la) != len(lb):
        return False
    return all(_np(u).shape == _np(v).shape and np.allclose(_np(u), _np(v), atol=atol, rtol=rtol)
               for u, v in zip(la, lb))


def assert_trees_close(got, want, atol, rtol, what):
    assert jax.tree.structure(got) == jax.tree.structure(want), (
        f"{what}: tree structures differ:\n{jax.tree.structure(got)}\nvs\n{jax.tree.structure(want)}")
    for k, (u, v) in enumerate(zip(jax.tree.leaves(got), jax.tree.leaves(want))):
        u, v = _np(u), _np(v)
        assert u.shape == v.shape, f"{what}: leaf {k} shape {u.shape} vs {v.shape}"
        assert u.dtype == v.dtype, f"{what}: leaf {k} dtype {u.dtype} vs {v.dtype}"
        np.testing.assert_allclose(u, v, atol=atol, rtol=rtol, err_msg=f"{what}: leaf {k}")


def _take_steps(x, n, batched):
    """The first ``n`` time steps of ``x`` (an array or a list of arrays; time axis 0, or 1 if batched)."""
    ax = 1 if batched else 0
    return jax.tree.map(lambda a: jax.lax.slice_in_dim(a, 0, n, axis=ax), x)


def _time_len(x, batched):
    return jax.tree.leaves(x)[0].shape[1 if batched else 0]


def first_divergence(model, states, x, key, batched):
    """Smallest step t at which the final states of the two paths, run on ``x[:t+1]``, differ.

    Returns ``(t, ref_states, planned_states, differing layer ids)`` or None. Burn-in only
    stop-gradients, so the forward values are those of a run without it."""
    for t in range(_time_len(x, batched)):
        xt = _take_steps(x, t + 1, batched)
        ref, _, _ = run_path("reference", model, states, xt, key, 0, batched, grads=False)
        pl, _, _ = run_path("xla", model, states, xt, key, 0, batched, grads=False)
        bad = [i for i in range(len(model.layers)) if not _close(ref[i], pl[i])]
        if bad:
            return t, ref, pl, bad
    return None


def assert_near_threshold_flip(model, t, ref, pl, bad):
    """At the first differing step every differing layer must contain a spike flip whose membrane
    is within NEAR_THRESHOLD of the threshold (see the module docstring)."""
    for i in bad:
        layer = model.layers[i]
        for (neuron, rs), (_, ps) in zip(iter_neurons(layer, ref[i]), iter_neurons(layer, pl[i])):
            sp = spike_index(neuron)
            if sp is None:
                continue
            r_spk, p_spk = _np(rs[sp]), _np(ps[sp])
            flips = r_spk != p_spk
            if not flips.any():
                continue
            m = membrane_index(neuron)
            pre = np.where(r_spk == 0, _np(rs[m]), _np(ps[m]))   # the non-firing side: pre-reset membrane
            thr = np.broadcast_to(_np(neuron.threshold), pre.shape)
            gap = np.abs(pre - thr)[flips]
            assert gap.max() < NEAR_THRESHOLD, (
                f"step {t}, layer {i} ({type(layer).__name__}): spikes of {type(neuron).__name__} differ "
                f"between reference and planned path at membranes {gap.max():.3g} away from the "
                f"threshold (allowed: {NEAR_THRESHOLD}); reference spikes {r_spk[flips]}, planned {p_spk[flips]}")
            break   # later sub-layers of this compound see a different input in the same step
        else:
            raise AssertionError(
                f"step {t}: the state of layer {i} ({type(layer).__name__}) differs between the reference "
                f"and the planned path although no spike flipped:\nreference {ref[i]}\nplanned   {pl[i]}")


def check_equivalent(model, states, x, key, burnin=0, batched=False, grads=True):
    """Assert the planned path equals the reference (see the module docstring). Returns the
    reference ``(finals, outs, grads)`` and whether a legitimate near-threshold flip happened."""
    with snnkern.backend("xla"):
        one = jax.tree.map(lambda a: a[0], x) if batched else x      # explain() takes one sample
        assert snnkern.explain(model, one).path == "planned"
    r_f, r_o, r_g = run_path("reference", model, states, x, key, burnin, batched, grads)
    p_f, p_o, p_g = run_path("xla", model, states, x, key, burnin, batched, grads)
    if _close(r_o, p_o) and _close(r_f, p_f):
        assert_trees_close(p_o, r_o, OUT_ATOL, OUT_RTOL, "outputs")
        assert_trees_close(p_f, r_f, OUT_ATOL, OUT_RTOL, "final states")
        if grads:
            assert_trees_close(p_g, r_g, GRAD_ATOL, GRAD_RTOL, "gradients (model, states, x)")
        return (r_f, r_o, r_g), False
    div = first_divergence(model, states, x, key, batched)
    assert div is not None, "outputs/final states differ but no prefix run shows a differing state"
    t, ref, pl, bad = div
    assert_near_threshold_flip(model, t, ref, pl, bad)
    event("legitimate near-threshold spike flip (later steps not compared)")
    n_out = max(t - burnin, 0)
    tax = 1 if batched else 0
    cut = lambda o: jax.tree.map(lambda a: jax.lax.slice_in_dim(a, 0, n_out, axis=tax), o)  # noqa: E731
    assert_trees_close(cut(p_o), cut(r_o), OUT_ATOL, OUT_RTOL, f"outputs before the flip at step {t}")
    return (r_f, r_o, r_g), True


# ------------------------------------------------------------------------------------------------
# Firing rates (so that a comparison of all-zero spike trains cannot pass vacuously)


def _recording_scan(f, init, xs):
    def body(c, xt):
        ns, o = f(c, xt)
        return ns, (o, ns)

    return jax.lax.scan(body, init, xs)


def firing_rates(model, states, x, key, batched=False):
    """Fraction of (step, neuron) entries that spiked, per spiking neuron, on the reference path
    (the reference algorithm run with a ``loop_fn`` that also records every step's states)."""
    rec = snn.StatefulModel(model.graph_structure, model.layers, loop_fn=_recording_scan)
    run = (lambda m, s, xx: jax.vmap(lambda xb: m(s, xb, key))(xx)) if batched else (lambda m, s, xx: m(s, xx, key))
    _, (_, traj) = eqx.filter_jit(run)(rec, states, x)
    rates = []
    for i, layer in enumerate(model.layers):
        for neuron, s in iter_neurons(layer, traj[i]):
            sp = spike_index(neuron)
            if sp is not None:
                rates.append((f"layer {i} {type(neuron).__name__}", float(np.mean(_np(s[sp])))))
    return rates


def assert_fires(model, states, x, key, batched=False, lo=0.02, hi=0.98):
    rates = firing_rates(model, states, x, key, batched)
    assert rates, "test setup: the model has no spiking neuron"
    for where, r in rates:
        assert lo <= r <= hi, f"test setup: {where} has firing rate {r:.3f}, want a non-trivial rate"
    return rates


def record_firing(model, finals, outs):
    """Hypothesis statistics (``--hypothesis-show-statistics``): whether any spiking neuron fired, seen
    in the outputs and the final spike states (cheap; the hand-picked cases assert real rates)."""
    spikes = []
    for i, layer in enumerate(model.layers):
        for neuron, s in iter_neurons(layer, finals[i]):
            if spike_index(neuron) is not None:
                spikes.append(_np(s[spike_index(neuron)]))
    if spikes:
        fired = any(a.any() for a in spikes) or any(
            set(np.unique(_np(o))) == {0.0, 1.0} for o in jax.tree.leaves(outs))
        event("some neuron fired" if fired else "no neuron fired (outputs / final spike states)")


def data(shape, seed, lo=0.0, hi=1.5):
    return jnp.asarray(np.random.default_rng(seed).uniform(lo, hi, shape).astype(f32))


=======
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


@pytest.fixture(params=sorted(TRANSFORM_MODELS))
def tcase(request):
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
