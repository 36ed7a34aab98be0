"""Run a :class:`~snnkern.plan.planner.Plan` layer-major.

Component by component, in topological order, each over the whole sequence. A layer reads its
source's output *shifted by one step* (the source's initial output first) and the external input of
the current step, exactly the reference semantics of SPEC §3, so results equal the time-major
reference path to float rounding.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jrand

from snnkern.kernels import dispatch
from snnkern.kernels import neuron_loop as loops

from .planner import Plan
from .protocol import call_layer, is_compound, is_neuron, is_stateful, layer_output, merge_inputs, read_from_out

__all__ = ["run_plan"]


def _keep_dtypes(new, old):
    return jax.tree.map(lambda n, o: n.astype(o.dtype) if hasattr(o, "dtype") else n, new, old)


def _shift(seq, first):
    """``[first, seq[0], ..., seq[T-2]]``: what a consumer reads one step later."""
    # the reference carries each state in its initial dtype (an int input read through a float state)
    return jnp.concatenate([first[None], seq[:-1].astype(first.dtype)], axis=0)


def _float_input(x):
    return x if jnp.issubdtype(x.dtype, jnp.inexact) else x.astype(jnp.float32)


def _neuron_step(layer):
    """The layer's step with its arrays stripped (it must read parameters only from ``params``),
    keeping the carry dtypes stable."""
    stripped = eqx.filter(layer, eqx.is_array, inverse=True)

    def step(p, s, x):
        ns, out = stripped.step(p, s, x)
        return _keep_dtypes(ns, s), out

    return step


def _spike_idx(layer):
    """State entries that hold spikes (exactly 0/1: stored as bool). Only for the recognised
    Heaviside surrogates: a custom ``spike_fn`` may not be binary."""
    if not hasattr(getattr(layer, "spike_fn", None), "surrogate"):
        return ()
    names = getattr(layer, "state_names", ())
    return tuple(k for k, n in enumerate(names) if n in getattr(layer, "spike_states", ()))


def stateless_seq(layer, inp, key):
    """A stateless layer applied at every step at once (one batched call; the same key each step).

    A vector ``eqx.nn.Linear`` is one matmul over the last axis, which keeps whatever layout the
    sequence has (time-major under ``vmap``): no transposes between GEMMs and time loops."""
    if (isinstance(layer, eqx.nn.Linear) and layer.in_features != "scalar" and layer.out_features != "scalar"
            and not isinstance(inp, (list, tuple))):
        out = jnp.einsum("...i,oi->...o", inp, layer.weight)
        return out + layer.bias if layer.bias is not None else out
    return jax.vmap(lambda x: layer(x, key=key))(inp)


def run_layer_seq(layer, state, inp, key, backend: str):
    """One layer over the whole sequence: ``(final_state, out_seq)`` (compounds: list of outs)."""
    if not is_stateful(layer):
        out = stateless_seq(layer, inp, key)
        return [out[-1]], out
    if is_compound(layer):
        keys = jrand.split(key, len(layer.layers))
        h, states, outs = inp, [], []
        for sub, st, k in zip(layer.layers, state, keys):
            fs, h = run_layer_seq(sub, st, h, k, backend)
            states.append(fs)
            outs.append(h)
        return states, outs
    if is_neuron(layer):
        sT, out, _ = dispatch.neuron_loop_fn(backend)(_neuron_step(layer), layer.params(), list(state), _float_input(inp),
                                       _spike_idx(layer))
        return sT, out
    return _generic_scan([layer], [state], lambda t_inp, carry: [t_inp], inp, [key], emit_read=False)


def _generic_scan(layers, states, inputs_of, xs, keys, emit_read=True):
    """A per-step loop over ``layers`` (a component): ``inputs_of(step_xs, carry)`` gives each
    layer's merged input. Returns ``(final_states, outs)`` for one layer, else with reads."""

    def body(carry, xt):
        merged = inputs_of(xt, carry)
        new, outs = [], []
        for layer, st, inp, k in zip(layers, carry, merged, keys):
            ns, out = call_layer(layer, st, inp, k)
            new.append(_keep_dtypes(ns, st))
            outs.append(out)
        reads = [layer_output(l, s) for l, s in zip(layers, new)] if emit_read else None
        return new, (outs, reads)

    final, (outs, reads) = jax.lax.scan(body, list(states), xs)
    if not emit_read:
        return final[0], outs[0]
    return final, outs, reads


def run_plan(plan: Plan, model, states, xs: List[jax.Array], key):
    """Run ``model`` over ``xs`` (one (T, ...) array per external input) along ``plan``."""
    struct, layers = model.graph_structure, model.layers
    n = struct.num_layers
    keys = jrand.split(key, n)
    init_read = [layer_output(layers[j], states[j]) for j in range(n)]
    consumed = {j for srcs in struct.input_connectivity for j in srcs}
    final = set(struct.final_layer_ids)
    reads: Dict[int, jax.Array] = {}      # read values, unshifted
    shifted: Dict[int, jax.Array] = {}    # read values as consumers see them (one step later)
    outs: Dict[int, object] = {}
    finals: List[Optional[object]] = [None] * n

    def read_shifted(j):
        if j not in shifted:
            shifted[j] = _shift(reads[j], init_read[j])
        return shifted[j]

    def inputs_from_outside(i, comp_ids):
        """Sequences of layer i's inputs; None for sources inside its own component."""
        seqs = [xs[e] for e in struct.input_layer_ids[i]]
        for j in struct.input_connectivity[i]:
            seqs.append(None if j in comp_ids else read_shifted(j))
        return seqs

    for comp in plan.components:
        ids = comp.layers
        if not comp.cyclic and comp.kind == "neuron":
            # the loop emits the shifted read sequence itself: no shifted copy of the spikes
            (i,) = ids
            inp = merge_inputs(layers[i], inputs_from_outside(i, ids))
            finals[i], outs[i], rd = dispatch.neuron_loop_fn(comp.backend)(
                _neuron_step(layers[i]), layers[i].params(), list(states[i]), _float_input(inp),
                _spike_idx(layers[i]), want_out=i in final, want_read=i in consumed,
                out_is_last_state=getattr(layers[i], "output_is_last_state", False))
            if rd is not None:
                shifted[i] = rd
        elif not comp.cyclic:
            (i,) = ids
            inp = merge_inputs(layers[i], inputs_from_outside(i, ids))
            finals[i], out = run_layer_seq(layers[i], states[i], inp, keys[i], comp.backend)
            outs[i], reads[i] = out, read_from_out(layers[i], out)
        elif comp.kind == "recurrent-compound":
            (i,) = ids
            finals[i], outs[i], shifted[i] = _run_recurrent(layers[i], states[i], inputs_from_outside(i, ids)[:-1],
                                                            keys[i], i in final, comp.backend)
        else:
            outside = {i: inputs_from_outside(i, ids) for i in ids}
            pos = {i: k for k, i in enumerate(ids)}

            def inputs_of(xt, carry, ids=ids, pos=pos):
                merged = []
                for i in ids:
                    it = iter(xt[i])
                    vals = [next(it) for _ in struct.input_layer_ids[i]]
                    for j in struct.input_connectivity[i]:
                        v = next(it)
                        vals.append(layer_output(layers[j], carry[pos[j]]) if v is None else v)
                    merged.append(merge_inputs(layers[i], vals))
                return merged

            f, o, r = _generic_scan([layers[i] for i in ids], [states[i] for i in ids], inputs_of, outside,
                                    [keys[i] for i in ids])
            for k, i in enumerate(ids):
                finals[i], outs[i], reads[i] = f[k], o[k], r[k]
    return _keep_dtypes(finals, list(states)), [outs[j] for j in struct.final_layer_ids]


def _run_recurrent(layer, state, outside_seqs, key, want_out: bool, backend: str = "xla"):
    """``CompoundLayer([Parallel([br_0, ..., Linear_rec]), neuron])`` with a self-edge."""
    par, neuron = layer.layers
    k_par, k_neuron = jrand.split(key, 2)
    branch_keys = jrand.split(k_par, len(par.layers))
    ff = None
    for b, seq, k in zip(par.layers[:-1], outside_seqs, branch_keys):
        o = stateless_seq(b, seq, k)
        ff = o if ff is None else ff + o
    rec = par.layers[-1]
    sT, out, cur, reads = loops.recurrent_loop(_neuron_step(neuron), neuron.params(), list(state[1]),
                                               _float_input(ff), rec.weight, rec.bias, _spike_idx(neuron),
                                               want_out=want_out, impl=dispatch.recurrent_impl(backend),
                                               want_cur=want_out)   # else only the last current (the state)
    # the compound reads as its neuron: reads = the shifted neuron output, state[-1] entering each step
    return [[cur[-1]], sT], ([cur, out] if want_out else None), reads
