"""Make a model's execution plan, with its shapes (docs/plans.md).

Because every edge is delayed by one step, a model can run layer-major: the strongly connected
components of the layer graph run one after another in topological order, each over the whole
sequence. :func:`make_plan` decides every path here, once, from the layers and the abstract
inputs (shapes, dtypes, the platform being traced for): every eligibility rule of every loop is
asked before anything is traced, and every fallback is a field of the plan.
"""
from __future__ import annotations

import functools as ft
import operator
from typing import List, Optional, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp

from snnkern.kernels import dispatch
from snnkern.kernels.delay_loop import plan_delay_loop

from .chains import chains, is_vector_linear
from .component_loop import component_loop_unsupported
from .delay_loop import cycle_order, delay_unsupported, delay_where
from .graph import components
from .protocol import (call_layer, is_compound, is_neuron, is_stateful, keep_dtypes, layer_output, merge_inputs,
                       takes_input_list)
from .types import Component, Kind, Path, Plan, PlanPath, Step

__all__ = ["make_plan", "recurrent_pattern", "neuron_step", "chain_step", "float_input", "recorded_plans",
           "PER_STEP_LAYERS"]

_KEY = jax.random.PRNGKey(0)   # stateless layers' output shapes do not depend on the key


def _name(i, layer) -> str:
    return f"layer {i} ({type(layer).__name__})"


def _aval(x):
    return jax.ShapeDtypeStruct(tuple(jnp.shape(x)), jnp.result_type(x))


def float_input(x):
    """A neuron loop's input in a floating dtype (integer spikes are read as float32)."""
    return x if jnp.issubdtype(x.dtype, jnp.inexact) else x.astype(jnp.float32)


def _float_aval(x):
    return jax.ShapeDtypeStruct(x.shape, x.dtype if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.float32)



def neuron_step(layer):
    """The neuron's step with its arrays stripped (it must read parameters only from ``params``),
    keeping the carry dtypes stable."""
    stripped = eqx.filter(layer, eqx.is_array, inverse=True)

    def step(p, s, x):
        ns, out = stripped.step(p, s, x)
        return keep_dtypes(ns, s), out

    return step


PER_STEP_LAYERS = (eqx.nn.LayerNorm, eqx.nn.Identity, eqx.nn.Lambda, eqx.nn.Dropout)


def recurrent_pattern(layer, n_inputs: int, self_pos: int) -> Optional[str]:
    """None if ``layer`` (with a self-edge arriving as input ``self_pos`` of ``n_inputs``) is a
    recognised recurrent chain ``CompoundLayer([Parallel([..., Linear_rec]), per-step layers...,
    neuron])`` (per-step layers: LayerNorm, Identity, Lambda, Dropout), else why not."""
    if not is_compound(layer):
        return f"a {type(layer).__name__} in a cycle is not a recognised recurrent chain"
    subs = layer.layers
    mids = subs[1:-1]
    if (len(subs) < 2 or not takes_input_list(subs[0]) or is_compound(subs[0]) or not is_neuron(subs[-1])
            or not all(type(m) in PER_STEP_LAYERS for m in mids)):
        kinds = ", ".join(type(s).__name__ for s in subs)
        return (f"CompoundLayer([{kinds}]) is not CompoundLayer([Parallel([...]), per-step layers "
                f"(LayerNorm, Identity, Lambda, Dropout)..., neuron]); it runs as a per-step loop")
    branches = subs[0].layers
    if any(is_stateful(b) for b in branches):
        return "a Parallel branch is stateful"
    if self_pos != n_inputs - 1 or len(branches) != n_inputs:
        return "the self-edge does not arrive at the last Parallel branch"
    if n_inputs < 2:
        return "the recurrent compound has no feed-forward branch"
    rec = branches[-1]
    if type(rec) is not eqx.nn.Linear or rec.in_features == "scalar" or rec.out_features == "scalar":
        return f"the recurrent branch is a {type(rec).__name__}, not a vector eqx.nn.Linear"
    if rec.in_features != rec.out_features:
        return f"the recurrent Linear is {rec.in_features}->{rec.out_features}, not square"
    return None


def _per_row(module, h):
    """A per-step layer of an (n,) vector applied to every row of ``h`` (..., n)."""
    if h.ndim == 1:
        return module(h)
    return jax.vmap(module)(h.reshape(-1, h.shape[-1])).reshape(h.shape)


def _dropout_active(m) -> bool:
    """A Dropout that drops (training mode, p > 0): it needs its key."""
    return isinstance(m, eqx.nn.Dropout) and not m.inference and not (isinstance(m.p, (int, float)) and m.p == 0)


def chain_step(layer, key=None):
    """``(step, params)`` of a recurrent chain's loop: the per-step layers between the Parallel
    and the neuron applied to the current ``I_t``, then the neuron's step. ``params`` holds the
    neuron's parameters and the per-step layers' arrays (LayerNorm's weight and bias; a Dropout in
    training mode: its mask, drawn once from the compound's key like the reference does at every
    step - docs/semantics.md "Keys" - so the same mask every step). ``key``: the compound's key
    (None when planning: only the mask's shape matters then)."""
    neuron, mids = layer.layers[-1], list(layer.layers[1:-1])
    nstep = neuron_step(neuron)
    if not mids:
        return nstep, neuron.params()
    skeletons = [eqx.filter(m, eqx.is_array, inverse=True) for m in mids]
    sub_keys = jax.random.split(_KEY if key is None else key, len(layer.layers))[1:-1]
    width = layer.layers[0].layers[-1].out_features

    def arrays_of(m, k):
        if _dropout_active(m):
            # eqx.nn.Dropout's own draw for an (n,) input
            return {"mask": jax.random.bernoulli(k, 1.0 - jax.lax.stop_gradient(m.p), (width,)).astype(jnp.float32)}
        return eqx.filter(m, eqx.is_array)

    def step(p, s, x):
        h = x
        for arrays, skeleton in zip(p["per_step"], skeletons):
            if _dropout_active(skeleton):
                q = 1 - jax.lax.stop_gradient(skeleton.p)
                h = jnp.where(arrays["mask"] > 0, h / q, 0)
            else:
                h = _per_row(eqx.combine(arrays, skeleton), h)
        return nstep(p["neuron"], s, h)

    return step, {"neuron": neuron.params(), "per_step": [arrays_of(m, k) for m, k in zip(mids, sub_keys)]}


class _Planner:
    """The abstract values a plan is made from: per-step inputs of every layer."""

    def __init__(self, struct, layers, xs, states, platform: str):
        self.struct, self.layers, self.states, self.platform = struct, layers, states, platform
        self.T = int(xs[0].shape[0])
        self.x_step = [jax.ShapeDtypeStruct(tuple(x.shape[1:]), x.dtype) for x in xs]
        # what consumers read: the source's state[-1], in its dtype (the runner keeps it)
        self.reads = [_aval(layer_output(layers[j], states[j])) for j in range(struct.num_layers)]
        self.consumed = {j for srcs in struct.input_connectivity for j in srcs}
        self.final = set(struct.final_layer_ids)

    def input_values(self, i) -> list:
        return ([self.x_step[e] for e in self.struct.input_layer_ids[i]]
                + [self.reads[j] for j in self.struct.input_connectivity[i]])

    def merged_input(self, i):
        layer = self.layers[i]
        return jax.eval_shape(lambda *v: merge_inputs(layer, list(v)), *self.input_values(i))

    def seq(self, step_aval):
        return jax.ShapeDtypeStruct((self.T,) + tuple(step_aval.shape), step_aval.dtype)

    # -- one layer outside any cycle -------------------------------------------------------------

    def layer_component(self, i) -> Component:
        layer = self.layers[i]
        kind = (Kind.COMPOUND if is_compound(layer) else Kind.NEURON if is_neuron(layer)
                else Kind.STATEFUL if is_stateful(layer) else Kind.STATELESS)
        steps, _ = self.layer_steps(_name(i, layer), (i,), layer, self.states[i], self.merged_input(i),
                                    want_out=i in self.final, want_read=i in self.consumed, top=True)
        return Component((i,), False, kind, steps)

    def layer_steps(self, where, address, layer, state, x, want_out=True, want_read=False, top=False):
        """Steps of ``layer`` run over the whole sequence, and its per-step output aval."""
        if is_compound(layer):
            steps = ()
            for m, sub in enumerate(layer.layers):
                s, x = self.layer_steps(f"{where} sub {m} ({type(sub).__name__})", address + (m,), sub, state[m], x)
                steps += s
            return steps, x
        out = jax.eval_shape(lambda s, v: call_layer(layer, s, v, _KEY)[1], state, x)
        if not is_stateful(layer):
            gemm = is_vector_linear(layer) and not isinstance(x, (list, tuple))
            return (Step(where, Path.GEMM if gemm else Path.BATCHED, address),), out
        if is_neuron(layer):
            spec, reason = dispatch.plan_neuron_loop(
                where, neuron_step(layer), layer.params(), state, self.seq(_float_aval(x)),
                spike_idx=layer.binary_state_entries(), want_out=want_out or not top,
                want_read=want_read and top, out_is_last_state=top and layer.output_is_last_state,
                platform=self.platform)
            return (Step(where, Path.NEURON_LOOP, address, spec, reason),), out
        reason = dispatch.fallback(where, "scan (autodiff)", f"{type(layer).__name__} has no step function to fuse")
        return (Step(where, Path.SCAN, address, reason=reason),), out

    # -- cycles ------------------------------------------------------------------------------------

    def cycle_component(self, ids) -> Component:
        struct, layers = self.struct, self.layers
        why = "a cycle through several layers runs as one per-step loop"
        if len(ids) == 1:
            (i,) = ids
            srcs = list(struct.input_connectivity[i])
            n_in = len(struct.input_layer_ids[i]) + len(srcs)
            self_pos = len(struct.input_layer_ids[i]) + srcs.index(i)
            why = recurrent_pattern(layers[i], n_in, self_pos) if srcs.count(i) == 1 else "several self-edges"
            if why is None:
                return self.recurrent_component(i)
        names = ", ".join(_name(i, layers[i]) for i in ids)
        outs = [jax.eval_shape(lambda s, v, lay=layers[i]: call_layer(lay, s, v, _KEY)[1], self.states[i],
                               self.merged_input(i)) for i in ids]
        unsupported = component_loop_unsupported([_name(i, layers[i]) for i in ids], [self.states[i] for i in ids],
                                                 outs)
        if unsupported is not None:
            reason = dispatch.fallback(names, "scan", f"{why}; {unsupported}")
            return Component(tuple(ids), True, Kind.CYCLE,
                             (Step(names, Path.COMPONENT_SCAN, tuple(ids), reason=reason),))
        delay = self.delay_through_one_neuron(ids)
        if delay is not None:
            # a recurrence of the neuron with a delay: the delay loop where the cycle is affine
            nid, chain = cycle_order(struct, ids, layers)
            why = delay_unsupported(struct, ids, layers, self.merged_input(nid), self.reads[nid])
            if why is None:
                spec = plan_delay_loop(delay, layers[nid].binary_state_entries(), want_out=nid in self.final)
                return Component(tuple(ids), True, Kind.CYCLE, (
                    Step(delay_where(ids, layers, chain, nid, delay), Path.DELAY_LOOP, tuple(ids), spec),))
            where = f"{names}: a recurrence through one neuron, delay {delay}"
            reason = dispatch.fallback(where, "component loop", why)
            return Component(tuple(ids), True, Kind.CYCLE, (Step(where, Path.COMPONENT_LOOP, tuple(ids),
                                                                 reason=reason),))
        reason = dispatch.fallback(names, "component loop", f"{why} (no fused kernel)")
        return Component(tuple(ids), True, Kind.CYCLE, (Step(names, Path.COMPONENT_LOOP, tuple(ids), reason=reason),))

    def delay_through_one_neuron(self, ids) -> Optional[int]:
        """The delay d (the cycle's length) if the component is one cycle of stateless layers
        through a single neuron (``{3: 2}``: Linear(2) <- LIF(3), d = 2; ``{1: 1}``: d = 1), else None."""
        inside = set(ids)
        layers = [self.layers[i] for i in ids]
        neurons = [lay for lay in layers if is_neuron(lay) and not is_compound(lay)]
        if len(neurons) != 1 or sum(is_stateful(lay) for lay in layers) != 1:
            return None
        if any(sum(j in inside for j in self.struct.input_connectivity[i]) != 1 for i in ids):
            return None
        return len(ids)

    def recurrent_component(self, i) -> Component:
        layer = self.layers[i]
        par, neuron = layer.layers[0], layer.layers[-1]
        where = _name(i, layer)
        outside = self.input_values(i)[:-1]
        ff = jax.eval_shape(lambda *v: ft.reduce(operator.add, [b(x, key=_KEY) for b, x in zip(par.layers[:-1], v)]),
                            *outside)
        rec = par.layers[-1]
        want = i in self.final
        step, params = chain_step(layer)
        spec, reason = dispatch.plan_recurrent_loop(
            where + " recurrence + neuron", step, params, self.states[i][-1], self.seq(_float_aval(ff)), rec.weight,
            rec.bias, spike_idx=neuron.binary_state_entries(), want_out=want, want_cur=want, platform=self.platform,
            per_step=tuple(type(m).__name__ for m in layer.layers[1:-1]))
        names = " -> ".join(type(m).__name__ for m in layer.layers[1:])
        return Component((i,), True, Kind.RECURRENT, (
            Step(where + " feed-forward branches", Path.GEMM, (i, 0)),
            Step(f"{where} recurrence -> {names}", Path.RECURRENT_LOOP, (i,), spec, reason)))


def make_plan(struct, layers: Sequence, xs: Sequence, states: Sequence, *,
              reference_reason: Optional[str] = None, arrays: Sequence = ()) -> Plan:
    """The plan for a model of ``layers`` over ``struct``, for one sample: ``xs`` the external
    inputs ``(T, *in_shape)`` and ``states`` the layer states (arrays or ``jax.ShapeDtypeStruct`` s;
    only shapes and dtypes are read), under the current backend settings (read now, at trace time).
    ``reference_reason``: why the model must take the reference path (a custom forward_fn).
    ``arrays``: the call's inputs (values or tracers), whose shardings may name the device compiled
    for (:func:`~snnkern.kernels.platform.tracing_platform`)."""
    requested = dispatch.current_backend()
    platform = dispatch.tracing_platform(*arrays)
    if requested == "reference" or reference_reason is not None:
        notes = ("time checkpointing applies to the planned path only; the reference path runs unchanged",) \
            if dispatch.checkpoint_asked() else ()
        reason = None if requested == "reference" else dispatch.fallback("model", "reference", reference_reason)
        plan = Plan(PlanPath.REFERENCE, reason=reason, backend=requested, platform=platform, notes=notes)
    else:
        planner = _Planner(struct, list(layers), list(xs), list(states), platform)
        comps = tuple(planner.cycle_component(ids) if cyclic else planner.layer_component(ids[0])
                      for ids, cyclic in components(struct.num_layers, struct.input_connectivity))
        every, note = dispatch.checkpoint_every(int(xs[0].shape[0]), platform)
        plan = Plan(PlanPath.PLANNED, comps, backend=requested, platform=platform, checkpoint_every=every,
                    notes=(note,) if note else (), chains=chains(struct, layers, comps))
    for rec in _recorders:
        rec.append(plan)
    return plan


# -- what the traced calls planned (tests compare it with explain()) ----------------------------

_recorders: List[list] = []


class recorded_plans:
    """``with recorded_plans() as plans:`` collects every plan made inside the block (one per
    traced model call), in order."""

    def __enter__(self) -> List[Plan]:
        self._plans: List[Plan] = []
        _recorders.append(self._plans)
        return self._plans

    def __exit__(self, *exc) -> None:
        _recorders.remove(self._plans)

