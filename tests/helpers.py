"""What the test files share: one tree comparison, the numpy Linear, input data, firing rates, and
running a model on a path against the reference path.

Tolerances (stated once, used everywhere a planned path is compared with the reference):

- outputs and final states: atol 1e-5 + rtol 1e-5 (float32 rounding of one GEMM over all T steps
  vs T GEMVs, summed in another order);
- gradients: atol 1e-5 + rtol 1e-4 (the fused backward passes accumulate parameter gradients per
  neuron and reduce once, in another order);
- spikes are equal, except where a membrane lies within ``NEAR_THRESHOLD`` (1e-4) of the threshold
  (see :func:`check_equivalent`).

A comparison proves nothing if no neuron fires (all-zero spike trains are equal on every path), or
if every neuron fires at every step: :func:`assert_fires` asks for a firing rate in [2 %, 98 %] in
every spiking layer, measured on the reference path.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import snnkern
from snnkern import snn
from snnkern.plan.protocol import is_compound, is_neuron

f32 = np.float32


def _cpu_neuron_loop():
    """The neuron loop the planner runs on CPU: the native one where it is asked for (``SNNKERN_NATIVE=1``)
    and can be built (kernels/native), else the XLA loop."""
    import os

    from snnkern.kernels.native import native_unavailable
    from snnkern.plan import Impl
    on = os.environ.get("SNNKERN_NATIVE", "0").strip().lower() in ("1", "true", "yes", "on")
    return Impl.NATIVE if on and native_unavailable() is None else Impl.XLA


CPU_LOOP_IMPL = _cpu_neuron_loop()
CPU_LOOP = str(CPU_LOOP_IMPL)   # "native" or "xla", as explain() writes it

OUT_ATOL, OUT_RTOL = 1e-5, 1e-5
GRAD_ATOL, GRAD_RTOL = 1e-5, 1e-4
NEAR_THRESHOLD = 1e-4
RATE_LO, RATE_HI = 0.02, 0.98


# ================================================================================================
# The tree comparison


def _arrays(tree):
    """The array leaves of ``tree`` (non-array leaves, e.g. Python-float thresholds, become None)."""
    return eqx.filter(tree, eqx.is_array)


def _leaf_tol(want: np.ndarray, atol: float, rtol: float, rel_to: str):
    """``(atol, rtol)`` for np.allclose: elementwise ``atol + rtol |want|``, or (``rel_to="leaf"``)
    ``atol + rtol max |want|`` over the leaf (for sums whose small entries are pure rounding)."""
    if rel_to == "leaf":
        return atol + rtol * (float(np.max(np.abs(want))) if want.size else 0.0), 0.0
    if rel_to != "element":
        raise ValueError(f"rel_to must be 'element' or 'leaf', got {rel_to!r}")
    return atol, rtol


def _pairs(got, want, what):
    a, b = _arrays(got), _arrays(want)
    ta, tb = jax.tree.structure(a), jax.tree.structure(b)
    if ta != tb:
        raise AssertionError(f"{what}: tree structures differ:\n{ta}\nvs\n{tb}")
    for k, (u, v) in enumerate(zip(jax.tree.leaves(a), jax.tree.leaves(b))):
        yield k, u, v


def assert_trees_close(got, want, atol: float, rtol: float = 0.0, what: str = "", rel_to: str = "element",
                       check_dtype: bool = True):
    """Every array leaf of ``got`` equals ``want``'s within ``atol`` + ``rtol`` (see :func:`_leaf_tol`),
    with equal tree structure, shapes and (``check_dtype``) dtypes. NaN never matches."""
    for k, u, v in _pairs(got, want, what):
        assert u.shape == v.shape, f"{what}: leaf {k} shape {u.shape} vs {v.shape}"
        if check_dtype:
            assert u.dtype == v.dtype, f"{what}: leaf {k} dtype {u.dtype} vs {v.dtype}"
        u64, v64 = np.asarray(u, np.float64), np.asarray(v, np.float64)
        a, r = _leaf_tol(v64, atol, rtol, rel_to)
        np.testing.assert_allclose(u64, v64, atol=a, rtol=r, equal_nan=False, err_msg=f"{what}: leaf {k}")


def trees_close(got, want, atol: float = OUT_ATOL, rtol: float = OUT_RTOL, rel_to: str = "element") -> bool:
    """:func:`assert_trees_close` as a predicate (dtypes not compared)."""
    try:
        for _, u, v in _pairs(got, want, ""):
            if u.shape != v.shape:
                return False
            v64 = np.asarray(v, np.float64)
            a, r = _leaf_tol(v64, atol, rtol, rel_to)
            if not np.allclose(np.asarray(u, np.float64), v64, atol=a, rtol=r):
                return False
    except AssertionError:
        return False
    return True


GRAD_TOL = (GRAD_ATOL, GRAD_RTOL, "element")
# the Pallas recurrent kernel sums dW/dI over B x T terms in its own order: gradient entries that
# nearly cancel (0.018 in a leaf of magnitude 3) differ by ~1e-5, i.e. ~5e-6 of the leaf's scale
KERNEL_GRAD_TOL = (GRAD_ATOL, GRAD_RTOL, "leaf")


def assert_results_close(got, want, what: str = "", grad_tol=GRAD_TOL):
    """``(final_states, outputs, gradients)`` triples (:func:`run_path`) with the module's tolerances
    (``grad_tol``: ``(atol, rtol, rel_to)`` of the gradients)."""
    assert_trees_close(got[1], want[1], OUT_ATOL, OUT_RTOL, f"{what} outputs")
    assert_trees_close(got[0], want[0], OUT_ATOL, OUT_RTOL, f"{what} final states")
    if want[2] is not None or got[2] is not None:
        atol, rtol, rel_to = grad_tol
        assert_trees_close(got[2], want[2], atol, rtol, f"{what} gradients", rel_to=rel_to)


# ================================================================================================
# numpy Linear and input data


def np_linear(lin, x):
    """``eqx.nn.Linear`` in numpy float32: ``x @ W^T + b``."""
    y = np.asarray(x, f32) @ np.asarray(lin.weight, f32).T
    if lin.bias is not None:
        y = y + np.asarray(lin.bias, f32)
    return y.astype(f32)


def data(shape, seed: int = 0, lo: float = 0.0, hi: float = 1.0):
    """Uniform float32 input in [lo, hi), fixed by ``seed``. Positive currents of order 1 drive the
    tests' neurons (thresholds 0.3-1) across threshold within a few steps."""
    return jnp.asarray(np.random.default_rng(seed).uniform(lo, hi, tuple(shape)).astype(f32))


def scale_linear(layer, gain: float = 1.0, shift: float = 0.0):
    """A Linear/Conv with its weight times ``gain`` and ``shift`` added to its bias: the default
    init (uniform +-1/sqrt(fan_in)) gives currents too small to reach a threshold of 0.3-1."""
    layer = eqx.tree_at(lambda l: l.weight, layer, layer.weight * gain)
    if getattr(layer, "bias", None) is not None:
        layer = eqx.tree_at(lambda l: l.bias, layer, layer.bias + shift)
    return layer


# ================================================================================================
# Neurons inside a model, and their firing rates


def iter_neurons(layer, state):
    """(neuron, its state) for every neuron in ``layer`` (recursing into compounds / Parallels)."""
    if is_compound(layer):
        for sub, st_ in zip(layer.layers, state):
            yield from iter_neurons(sub, st_)
    elif isinstance(layer, snn.Parallel) and layer.has_state:
        for sub, st_ in zip(layer.layers, state[0]):
            yield from iter_neurons(sub, st_)
    elif is_neuron(layer):
        yield layer, state


def spike_index(neuron) -> Optional[int]:
    ids = [k for k, n in enumerate(neuron.state_names) if n in getattr(neuron, "spike_states", ())]
    return ids[0] if ids else None


def membrane_index(neuron) -> int:
    names = neuron.state_names
    return names.index("i_mem") if "i_mem" in names else names.index("mem")


def _recording_scan(f, init, xs):
    def body(c, xt):
        ns, o = f(c, xt)
        return ns, (o, ns)

    return jax.lax.scan(body, init, xs)


def _recording(model):
    """``model`` with a ``loop_fn`` that also returns every step's states: the reference algorithm
    (a custom loop_fn always takes the reference path), which returns ``(finals, (outs, traj))``."""
    return snn.StatefulModel(model.graph_structure, model.layers, forward_fn=model.forward_fn,
                             loop_fn=_recording_scan)


def rates_of(model, traj):
    """``[(where, rate)]`` per spiking neuron from a recorded trajectory (:func:`_recording`)."""
    rates = []
    for i, layer in enumerate(model.layers):
        for neuron, s in iter_neurons(layer, traj[i]):
            sp = spike_index(neuron)
            if sp is not None:
                rates.append((f"layer {i} {type(neuron).__name__}", float(np.mean(np.asarray(s[sp])))))
    return rates


def firing_rates(model, states, x, key, batched: bool = False):
    """``[(where, rate)]``: the fraction of (sample, step, neuron) entries that spiked, per spiking
    neuron, on the reference path."""
    def run(m, s, xx):
        return jax.vmap(lambda xb: m(s, xb, key))(xx) if batched else m(s, xx, key)

    with snnkern.strict(False):   # the recording loop_fn takes the reference path on purpose
        _, (_, traj) = eqx.filter_jit(run)(_recording(model), states, x)
    return rates_of(model, traj)


def rates_ok(rates, lo: float = RATE_LO, hi: float = RATE_HI) -> bool:
    return bool(rates) and all(lo <= r <= hi for _, r in rates)


def assert_rates(rates, lo: float = RATE_LO, hi: float = RATE_HI):
    """Every spiking neuron fires at a rate in [lo, hi] (``rates`` from :func:`firing_rates`)."""
    assert rates, "test setup: the model has no spiking neuron"
    for where, r in rates:
        assert lo <= r <= hi, f"test setup: {where} has firing rate {r:.4f}, want [{lo}, {hi}] (vacuous comparison)"
    return rates


def assert_rate(spikes, what: str, lo: float = RATE_LO, hi: float = RATE_HI) -> float:
    """The mean of a spike array lies in [lo, hi]."""
    r = float(np.mean(np.asarray(spikes, np.float64)))
    assert lo <= r <= hi, f"test setup: {what} has firing rate {r:.4f}, want [{lo}, {hi}] (the comparison would be vacuous)"
    return r


def assert_fires(model, states, x, key, batched: bool = False, lo: float = RATE_LO, hi: float = RATE_HI):
    """Every spiking neuron of ``model`` fires at a rate in [lo, hi] on this input (reference path)."""
    return assert_rates(firing_rates(model, states, x, key, batched), lo, hi)


# ================================================================================================
# Running a model on one path


def _weights(leaf, k):
    """Fixed, sign-changing weights so the loss sees every entry of every leaf differently."""
    return jnp.sin(jnp.arange(leaf.size, dtype=jnp.float32) * 1.37 + 0.61 * k + 0.3).reshape(leaf.shape)


def mixed_loss(finals, outs):
    """A loss mixing every output and every final-state entry (integer leaves are not differentiable)."""
    leaves = [l for l in jax.tree.leaves(outs) + jax.tree.leaves(finals) if jnp.issubdtype(l.dtype, jnp.inexact)]
    return sum(jnp.sum(_weights(l, k) * l) for k, l in enumerate(leaves))


def call(model, states, x, key, burnin: int = 0, batched: bool = False):
    """``model(states, x, key, burnin)``; ``batched``: x has a leading batch axis (vmapped, states shared)."""
    if batched:
        return eqx.filter_vmap(lambda s, xx: model(s, xx, key, burnin=burnin), in_axes=(None, 0))(states, x)
    return model(states, x, key, burnin=burnin)


@contextlib.contextmanager
def planned_runs():
    """Counts the calls of the layer-major plan runner made while tracing inside the block.

    A jit/trace cache hit would silently reuse the other path's trace and a comparison would pass
    vacuously; :func:`under` uses this spy to prove that each run really took the path it asked for.
    (It patches ``snnkern.snn.architecture.run_plan``, the name ``StatefulModel.__call__`` calls.)"""
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


def under(backend: str, f, *args):
    """``f(*args)`` with ``backend`` active, asserting that the planned runner ran iff it should.
    ``f`` must be a fresh function object (not traced before)."""
    with snnkern.backend(backend), planned_runs() as calls:
        out = f(*args)
    if backend == "reference":
        assert not calls, "the reference backend ran the planned path"
    else:
        assert calls, f"backend {backend!r} did not trace the planned path (a cached trace was reused?)"
    return out


def run_path(backend: str, model, states, x, key, burnin: int = 0, batched: bool = False, grads: bool = True,
             record: bool = False):
    """``(final_states, outputs, gradients)`` traced under ``backend``; the gradients of
    :func:`mixed_loss` are taken wrt every inexact array leaf of the model, the initial states and
    the input (None when ``grads`` is False). A fresh jitted function per call: the backend is read
    at trace time and eqx.filter_jit caches per function object.

    ``record`` (reference only): the same computation with every step's states recorded, and a
    fourth result, the firing rates (:func:`rates_of`) of the steps after the burn-in."""
    assert not record or backend == "reference", "only the reference path can record its trajectory"
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def run(p, s, xx):
        m = eqx.combine(p, static)
        if not record:
            finals, outs = call(m, s, xx, key, burnin, batched)
            return finals, outs, None
        finals, (outs, traj) = call(_recording(m), s, xx, key, burnin, batched)
        return finals, outs, traj

    def loss(diff):
        finals, outs, traj = run(*diff)
        return mixed_loss(finals, outs), (finals, outs, traj)

    with snnkern.strict(False) if record else contextlib.nullcontext():   # recording: the reference on purpose
        if grads:
            g, (finals, outs, traj) = under(backend, eqx.filter_jit(eqx.filter_grad(loss, has_aux=True)),
                                            (params, states, x))
        else:
            g = None
            finals, outs, traj = under(backend, eqx.filter_jit(run), params, states, x)
    if record:
        return finals, outs, g, rates_of(model, traj)
    return finals, outs, g


def _take_steps(x, n, batched):
    """The first ``n`` time steps of ``x`` (an array or a list of arrays; time axis 0, or 1 if batched)."""
    ax = 1 if batched else 0
    return jax.tree.map(lambda a: jax.lax.slice_in_dim(a, 0, n, axis=ax), x)


def _time_len(x, batched):
    return jax.tree.leaves(x)[0].shape[1 if batched else 0]


def first_divergence(model, states, x, key, batched, backend: str = "xla"):
    """Smallest step t at which the final states of the two paths, run on ``x[:t+1]``, differ.

    Returns ``(t, ref_states, planned_states, differing layer ids)`` or None. Burn-in only
    stop-gradients, so the forward values are those of a run without it."""
    for t in range(_time_len(x, batched)):
        xt = _take_steps(x, t + 1, batched)
        ref, _, _ = run_path("reference", model, states, xt, key, 0, batched, grads=False)
        pl, _, _ = run_path(backend, model, states, xt, key, 0, batched, grads=False)
        bad = [i for i in range(len(model.layers)) if not trees_close(ref[i], pl[i])]
        if bad:
            return t, ref, pl, bad
    return None


def assert_near_threshold_flip(model, t, ref, pl, bad):
    """At the first differing step every differing layer must contain a spike flip whose membrane
    is within NEAR_THRESHOLD of the threshold. The membrane is read on the path where that neuron did
    *not* fire: its stored membrane is then the pre-reset value the spike was decided on, for every
    neuron model (LIF/LIFSoftReset store it pre-reset anyway; the others subtract the reset only after
    a spike); states before t agree, so it equals the other path's pre-reset membrane to rounding."""
    for i in bad:
        layer = model.layers[i]
        for (neuron, rs), (_, ps) in zip(iter_neurons(layer, ref[i]), iter_neurons(layer, pl[i])):
            sp = spike_index(neuron)
            if sp is None:
                continue
            r_spk, p_spk = np.asarray(rs[sp]), np.asarray(ps[sp])
            flips = r_spk != p_spk
            if not flips.any():
                continue
            m = membrane_index(neuron)
            pre = np.where(r_spk == 0, np.asarray(rs[m]), np.asarray(ps[m]))   # the non-firing side
            thr = np.broadcast_to(np.asarray(neuron.threshold), pre.shape)
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


def _event(msg):
    """A Hypothesis statistics event (``--hypothesis-show-statistics``); nothing outside a test."""
    from hypothesis import event
    from hypothesis.errors import InvalidArgument
    try:
        event(msg)
    except InvalidArgument:
        pass


def check_equivalent(model, states, x, key, burnin: int = 0, batched: bool = False, grads: bool = True,
                     backend: str = "xla", fire=assert_rates, grad_tol=GRAD_TOL):
    """Assert that ``backend``'s planned path equals the reference: outputs, final states and
    (``grads``) gradients wrt model, states and input. Returns the reference ``(finals, outs, grads)``
    and whether a legitimate near-threshold flip happened.

    When the runs disagree, growing prefixes of the input are replayed on both paths to find the
    first step t at which any state differs, and the difference must be a near-threshold flip
    (:func:`assert_near_threshold_flip`). After a legitimate flip the trajectories diverge (cascade),
    so only the outputs before t are compared, and final states and gradients are skipped (the
    caller decides whether a flip is acceptable: hand-picked cases assert that none happened).

    ``fire(rates)`` is called with the reference run's firing rates (:func:`rates_of`) before the
    planned path runs: by default :func:`assert_rates` (2-98 % in every spiking layer); None for a
    model without spiking neurons."""
    with snnkern.backend(backend):
        one = jax.tree.map(lambda a: a[0], x) if batched else x      # explain() takes one sample
        assert snnkern.explain(model, one).path == "planned"
    r_f, r_o, r_g, rates = run_path("reference", model, states, x, key, burnin, batched, grads, record=True)
    if fire is not None:
        fire(rates)
    p_f, p_o, p_g = run_path(backend, model, states, x, key, burnin, batched, grads)
    if trees_close(r_o, p_o) and trees_close(r_f, p_f):
        assert_results_close((p_f, p_o, p_g), (r_f, r_o, r_g), f"{backend} vs reference:", grad_tol)
        return (r_f, r_o, r_g), False
    div = first_divergence(model, states, x, key, batched, backend)
    assert div is not None, "outputs/final states differ but no prefix run shows a differing state"
    t, ref, pl, bad = div
    assert_near_threshold_flip(model, t, ref, pl, bad)
    _event("legitimate near-threshold spike flip (later steps not compared)")
    n_out = max(t - burnin, 0)
    tax = 1 if batched else 0
    cut = lambda o: jax.tree.map(lambda a: jax.lax.slice_in_dim(a, 0, n_out, axis=tax), o)  # noqa: E731
    assert_trees_close(cut(p_o), cut(r_o), OUT_ATOL, OUT_RTOL, f"outputs before the flip at step {t}")
    return (r_f, r_o, r_g), True


def assert_matches_reference(model, states, x, key, burnin: int = 0, batched: bool = False,
                             backend: str = "xla", grad_tol=GRAD_TOL):
    """The standard path comparison: every spiking layer fires in [2 %, 98 %] on this input, and
    ``backend`` gives the reference's outputs, final states and gradients, with no spike flip (a
    deterministic case that hits a near-threshold tie should pick another seed). Returns the
    reference ``(finals, outs, grads)``."""
    res, flipped = check_equivalent(model, states, x, key, burnin=burnin, batched=batched, backend=backend,
                                    grad_tol=grad_tol)
    assert not flipped, "a hand-picked case hit a near-threshold spike flip: pick another seed"
    return res


# ================================================================================================
# Spike trains of a loop compared elementwise, near-threshold flips allowed (compiled kernels)


def pre_spike_gap(step, params, s_in, x, m_idx):
    """``membrane - threshold`` each step decided its spike on: ``step`` replayed from the entering
    states ``s_in`` (entries (..., n)) on the inputs ``x`` with an unreachable threshold, so that no
    reset is applied and the membrane entry ``m_idx`` is the pre-reset value."""
    no_fire = dict(params, threshold=jnp.asarray(1e30, jnp.float32))
    ns, _ = step(no_fire, list(s_in), x)
    return ns[m_idx] - jnp.asarray(params["threshold"], jnp.float32)


def flip_columns(got_spk, ref_spk, gap, coupled: bool = False, near: float = NEAR_THRESHOLD):
    """Spike trains ``(B, T, n)`` of a path and of the reference, with the reference's pre-spike
    ``gap`` (:func:`pre_spike_gap`). Every first difference must be a near-threshold flip
    (``|gap| < near``); after it the trajectory diverges. Returns the boolean mask of what diverged:
    ``(B, n)`` columns (independent neurons), or ``(B,)`` samples (``coupled``: a recurrent layer,
    where one flip changes every neuron of its sample from the next step on)."""
    got, ref, gap = np.asarray(got_spk) != 0, np.asarray(ref_spk) != 0, np.abs(np.asarray(gap, np.float64))
    diff = got != ref                                   # (B, T, n)
    B, T = diff.shape[:2]
    if coupled:
        per_t = diff.reshape(B, T, -1).any(-1)          # (B, T)
        hit = per_t.any(1)
        for b in np.nonzero(hit)[0]:
            t0 = int(np.argmax(per_t[b]))
            g = gap[b, t0][diff[b, t0]]
            assert g.max() < near, (f"sample {b}, step {t0}: spikes differ from the reference at membranes "
                                    f"{g.max():.3g} from the threshold (allowed {near})")
        return hit
    hit = diff.any(1)                                   # (B, n)
    t0 = np.argmax(diff, axis=1)                        # first differing step per column
    g = np.take_along_axis(gap, t0[:, None], axis=1)[:, 0]
    assert (g[hit] < near).all(), (f"spikes differ from the reference at membranes up to {g[hit].max():.3g} "
                                   f"from the threshold (allowed {near})")
    return hit
