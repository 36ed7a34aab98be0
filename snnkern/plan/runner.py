"""Run a :class:`~snnkern.plan.types.Plan` layer-major.

Component by component, in topological order, each over the whole sequence. A layer reads its
source's output *shifted by one step* (the source's initial output first) and the external input of
the current step - the time semantics of docs/semantics.md - so results equal the time-major
reference path to float rounding. Every loop runs the spec the plan holds for it.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import jax
import jax.numpy as jnp
import jax.random as jrand

from snnkern.kernels import dispatch

from .planner import chain_step, float_input, neuron_step
from .protocol import (call_layer, is_compound, is_neuron, is_stateful, keep_dtypes, layer_output, merge_inputs,
                       read_from_out)
from .chains import is_vector_linear
from .component_loop import Lagged, component_seq
from .delay_loop import delay_seq
from .types import Component, Kind, Path, Plan

__all__ = ["run_plan", "stateless_seq"]



def _shift(seq, first):
    """``[first, seq[0], ..., seq[T-2]]``: what a consumer reads one step later."""
    # the reference carries each state in its initial dtype (an int input read through a float state)
    return jnp.concatenate([first[None], seq[:-1].astype(first.dtype)], axis=0)


def gemm_seq(inp, weight):
    """``inp @ weight^T`` over the last axis: one GEMM over all rows, in the sequence's layout."""
    return jnp.einsum("...i,oi->...o", inp, weight)


def stateless_seq(layer, inp, key):
    """A stateless layer applied at every step at once (one batched call; the same key each step).

    A vector ``eqx.nn.Linear`` is one matmul over the last axis, which keeps whatever layout the
    sequence has (time-major under ``vmap``): no transposes between GEMMs and time loops."""
    if is_vector_linear(layer) and not isinstance(inp, (list, tuple)):
        out = gemm_seq(inp, layer.weight)
        return out + layer.bias if layer.bias is not None else out
    return jax.vmap(lambda x: layer(x, key=key))(inp)


def _layer_seq(comp: Component, address, layer, state, inp, key):
    """One layer over the whole sequence: ``(final_state, out_seq)`` (compounds: list of outs)."""
    if not is_stateful(layer):
        out = stateless_seq(layer, inp, key)
        return [out[-1]], out
    if is_compound(layer):
        keys = jrand.split(key, len(layer.layers))
        h, states, outs = inp, [], []
        for m, (sub, st, k) in enumerate(zip(layer.layers, state, keys)):
            fs, h = _layer_seq(comp, address + (m,), sub, st, h, k)
            states.append(fs)
            outs.append(h)
        return states, outs
    if is_neuron(layer):
        sT, out, _ = dispatch.run_neuron_loop(comp.spec_at(address), neuron_step(layer), layer.params(), list(state),
                                              float_input(inp))
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
            new.append(keep_dtypes(ns, st))
            outs.append(out)
        reads = [layer_output(lay, s) for lay, s in zip(layers, new)] if emit_read else None
        return new, (outs, reads)

    final, (outs, reads) = jax.lax.scan(body, list(states), xs)
    if not emit_read:
        return final[0], outs[0]
    return final, outs, reads


class _Run:
    """The sequences of one planned call: reads (unshifted), their shifted copies, outputs."""

    def __init__(self, model, states, xs, key):
        self.struct, self.layers, self.states, self.xs = model.graph_structure, model.layers, states, xs
        n = self.struct.num_layers
        self.keys = jrand.split(key, n)
        self.init_read = [layer_output(self.layers[j], states[j]) for j in range(n)]
        self.reads: Dict[int, jax.Array] = {}
        self.shifted: Dict[int, jax.Array] = {}
        self.outs: Dict[int, object] = {}
        self.finals: List[Optional[object]] = [None] * n

    def read_shifted(self, j):
        if j not in self.shifted:
            self.shifted[j] = _shift(self.reads[j], self.init_read[j])
        return self.shifted[j]

    def inputs_from_outside(self, i, comp_ids, lagged=False):
        """Sequences of layer i's inputs; None for sources inside its own component. ``lagged``: a
        source with no shifted copy yet as a :class:`Lagged` (its reads, read one step late)."""
        seqs = [self.xs[e] for e in self.struct.input_layer_ids[i]]
        for j in self.struct.input_connectivity[i]:
            if j in comp_ids:
                seqs.append(None)
            elif lagged and j not in self.shifted:
                seqs.append(Lagged(self.reads[j], self.init_read[j]))
            else:
                seqs.append(self.read_shifted(j))
        return seqs

    def neuron(self, comp: Component):
        # the loop emits the shifted read sequence itself: no shifted copy of the spikes
        (i,) = comp.layers
        layer = self.layers[i]
        inp = merge_inputs(layer, self.inputs_from_outside(i, comp.layers))
        self.finals[i], self.outs[i], rd = dispatch.run_neuron_loop(
            comp.spec_at((i,)), neuron_step(layer), layer.params(), list(self.states[i]), float_input(inp))
        if rd is not None:
            self.shifted[i] = rd

    def layer(self, comp: Component):
        (i,) = comp.layers
        layer = self.layers[i]
        inp = merge_inputs(layer, self.inputs_from_outside(i, comp.layers))
        self.finals[i], out = _layer_seq(comp, (i,), layer, self.states[i], inp, self.keys[i])
        self.outs[i], self.reads[i] = out, read_from_out(layer, out)

    def recurrent(self, comp: Component):
        """``CompoundLayer([Parallel([br_0, ..., Linear_rec]), per-step layers..., neuron])`` with a
        self-edge: the feed-forward branches as GEMMs over all steps, then one loop."""
        (i,) = comp.layers
        layer = self.layers[i]
        par, mids = layer.layers[0], layer.layers[1:-1]
        spec = comp.spec_at((i,))
        sub_keys = jrand.split(self.keys[i], len(layer.layers))
        branch_keys = jrand.split(sub_keys[0], len(par.layers))
        # the Linear branches' biases join the recurrent bias, added inside the loop's step: the
        # hoisted GEMMs then write their product only (no second (T, n) array with the bias added)
        ff, bias = None, par.layers[-1].bias
        for b, seq, k in zip(par.layers[:-1], self.inputs_from_outside(i, comp.layers)[:-1], branch_keys):
            if is_vector_linear(b) and b.bias is not None and not isinstance(seq, (list, tuple)):
                o = gemm_seq(seq, b.weight)
                bias = b.bias if bias is None else bias + b.bias
            else:
                o = stateless_seq(b, seq, k)
            ff = o if ff is None else ff + o
        rec = par.layers[-1]
        step, params = chain_step(layer, self.keys[i])
        sT, out, cur, reads = dispatch.run_recurrent_loop(spec, step, params, list(self.states[i][-1]),
                                                          float_input(ff), rec.weight, bias)
        # the compound reads as its neuron: reads = the shifted neuron output (state[-1] entering each
        # step). A non-final compound keeps only the last current (its Parallel's state); the per-step
        # layers' outputs are recomputed from the currents (stateless: the same values as in the loop)
        h, mid_outs = cur, []
        for m, k in zip(mids, sub_keys[1:-1]):
            h = stateless_seq(m, h, k)
            mid_outs.append(h)
        self.finals[i] = [[cur[-1]]] + [[o[-1]] for o in mid_outs] + [sT]
        self.shifted[i] = reads
        self.outs[i] = [cur, *mid_outs, out] if spec.want_out else None

    def cycle(self, comp: Component):
        """A strongly connected component: one loop of every layer in it, each reading the others'
        outputs of the previous step from the carry and its outside inputs (external inputs,
        shifted outside sources: whole sequences) at the current step."""
        ids, struct, layers = comp.layers, self.struct, self.layers
        pos = {i: k for k, i in enumerate(ids)}
        if comp.steps[0].path is Path.DELAY_LOOP:
            return delay_seq(self, comp, stateless_seq, _shift, float_input, neuron_step)
        if comp.steps[0].path is not Path.COMPONENT_LOOP:
            outside = {i: self.inputs_from_outside(i, ids) for i in ids}
            def inputs_of(xt, carry):
                merged = []
                for i in ids:
                    it = iter(xt[i])
                    vals = [next(it) for _ in struct.input_layer_ids[i]]
                    for j in struct.input_connectivity[i]:
                        v = next(it)
                        vals.append(layer_output(layers[j], carry[pos[j]]) if v is None else v)
                    merged.append(merge_inputs(layers[i], vals))
                return merged

            f, o, r = _generic_scan([layers[i] for i in ids], [self.states[i] for i in ids], inputs_of, outside,
                                    [self.keys[i] for i in ids])
            for k, i in enumerate(ids):
                self.finals[i], self.outs[i], self.reads[i] = f[k], o[k], r[k]
            return
        outside = {i: self.inputs_from_outside(i, ids, lagged=True) for i in ids}
        f, o, r = component_seq(ids, [layers[i] for i in ids], [self.states[i] for i in ids],
                                [outside[i] for i in ids], [self.keys[i] for i in ids], struct,
                                set(struct.final_layer_ids))
        for k, i in enumerate(ids):
            self.finals[i], self.outs[i] = f[k], o[k]
            if r[k] is not None:
                self.shifted[i] = r[k]


_RUN = {Kind.NEURON: _Run.neuron, Kind.STATELESS: _Run.layer, Kind.COMPOUND: _Run.layer, Kind.STATEFUL: _Run.layer,
        Kind.RECURRENT: _Run.recurrent, Kind.CYCLE: _Run.cycle}


def run_plan(plan: Plan, model, states, xs: List[jax.Array], key):
    """Run ``model`` over ``xs`` (one (T, ...) array per external input) along ``plan``; with
    ``plan.checkpoint_every`` = K, in chunks of K steps whose forward the backward recomputes."""
    K = plan.checkpoint_every
    T = int(xs[0].shape[0])
    if K is None or K >= T:
        return _run_whole(plan, model, states, xs, key)
    return _run_checkpointed(plan, model, states, xs, key, K, T)


def _run_checkpointed(plan: Plan, model, states, xs, key, K: int, T: int):
    """Time checkpointing: a scan over T // K chunks (then the remainder), each chunk run layer-major
    under ``jax.checkpoint``. The states at chunk boundaries are the scan's carry (all autodiff keeps
    of it); a chunk's residuals exist only while its backward runs. A chunk continues exactly where
    the last one stopped: each layer's state holds what its consumers read next (its last output).
    Each chunk is sliced from the inputs inside the loop (no chunked copy of them)."""
    n, r = divmod(T, K)

    @jax.checkpoint     # the slice inside: a residual of the chunk would be a stacked copy of the inputs
    def body(st, i):
        return _run_whole(plan, model, st, [jax.lax.dynamic_slice_in_dim(x, i * K, K, axis=0) for x in xs], key)

    st, outs = jax.lax.scan(body, states, jnp.arange(n))
    outs = jax.tree.map(lambda o: o.reshape((n * K,) + o.shape[2:]), outs)
    if r:   # the last, shorter chunk (its input slice is only r steps)
        rest = jax.checkpoint(lambda s, xc: _run_whole(plan, model, s, xc, key))
        st, last = rest(st, [x[n * K:] for x in xs])
        outs = jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=0), outs, last)
    return st, outs


def _run_whole(plan: Plan, model, states, xs, key):
    run = _Run(model, states, xs, key)
    for comp in plan.components:
        _RUN[comp.kind](run, comp)
    return keep_dtypes(run.finals, list(states)), [run.outs[j] for j in run.struct.final_layer_ids]
