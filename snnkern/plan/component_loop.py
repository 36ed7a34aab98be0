"""A cycle of layers that no fused kernel recognises, run as one loop of the component
(:func:`~snnkern.kernels.component_loop.component_loop`: the states stored compactly, each step
recomputed in the backward pass) - docs/plans.md "How cycles run".

Every edge is delayed one step, so within a step each layer of the component reads the others'
outputs of the previous step (the carry) and its outside inputs of this step; those arrive as
whole sequences (external inputs, and the shifted outputs of components that ran before).
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp

from snnkern.kernels.common import params_broadcast
from snnkern.kernels.component_loop import component_loop

from .protocol import call_layer, is_compound, is_neuron, is_stateful, keep_dtypes, layer_output, merge_inputs

__all__ = ["component_seq", "component_loop_unsupported", "binary_entries", "Lagged"]


class Lagged(NamedTuple):
    """An outside source's output as a consumer reads it, one step late: ``first`` at step 0, then
    ``seq[t - 1]`` (the loop indexes ``seq`` itself: no shifted copy)."""

    seq: jax.Array
    first: jax.Array


def _float(x):
    return x if jnp.issubdtype(x.dtype, jnp.inexact) else x.astype(jnp.float32)


def binary_entries(layer, state):
    """``state``'s structure with True at the entries that are exactly 0/1 (neurons' spike entries,
    also inside compounds), False elsewhere."""
    if is_neuron(layer):
        idx = set(layer.binary_state_entries())
        return [k in idx for k in range(len(state))]
    if is_compound(layer):
        return [binary_entries(sub, st) for sub, st in zip(layer.layers, state)]
    return jax.tree.map(lambda _: False, state)


def component_loop_unsupported(names: Sequence[str], states, outs) -> Optional[str]:
    """None if the component loop takes these layers (``states`` and per-step ``outs``: one per
    layer, arrays or avals), else why not (the loop differentiates every state and output entry)."""
    for name, st, out in zip(names, states, outs):
        for what, tree in (("state", st), ("output", out)):
            bad = [f"{jnp.result_type(a)}{list(jnp.shape(a))}" for a in jax.tree.leaves(tree)
                   if not jnp.issubdtype(jnp.result_type(a), jnp.inexact)]
            if bad:
                return f"{name} has a non-floating {what} entry ({', '.join(bad)}), which a custom VJP cannot carry"
    return None


def _per_neuron(layer, state):
    """``(arrays, rest)``: a neuron's parameters split into its inexact arrays, broadcast to the
    shape of its state, and the rest (Python floats) - or None if ``layer`` is not a neuron (a
    compound is not) or a parameter does not broadcast against its state."""
    if not is_neuron(layer) or is_compound(layer):
        return None
    shape = jnp.shape(jax.tree.leaves(state)[0])
    arrays, rest = eqx.partition(layer.params(), eqx.is_inexact_array)
    if not jax.tree.leaves(arrays) or not params_broadcast(arrays, shape):
        return None
    return jax.tree.map(lambda a: jnp.broadcast_to(a, shape), arrays), rest


def component_seq(ids: Sequence[int], layers: list, states: list, outside: List[list], keys: list, struct,
                  final: set):
    """Run the component ``ids`` (its ``layers`` and ``states``) over the sequence. ``outside[k]``:
    layer k's inputs in merge order (external inputs, then sources), for each one from outside the
    component a (T, ...) sequence read at step t or a :class:`Lagged` source output, and None for
    each source inside it. Returns per layer
    ``(final_state, out_seq or None, read_seq or None)``: outputs for the final layers, read
    sequences (unshifted) for the layers a later component reads."""
    pos = {i: k for k, i in enumerate(ids)}
    inside = set(ids)
    read_later = {j for c, srcs in enumerate(struct.input_connectivity) if c not in inside for j in srcs}
    want_out = [i in final for i in ids]
    want_read = [i in read_later for i in ids]
    # where each merged input comes from: ("x", n) / ("l", n) the n-th outside sequence read now /
    # lagged, ("c", k) layer k's read
    wiring, xs, lags, firsts = [], [], [], []
    for k, i in enumerate(ids):
        srcs = [None] * len(struct.input_layer_ids[i]) + list(struct.input_connectivity[i])
        wires, seqs, lag, first = [], [], [], []
        for v, j in zip(outside[k], srcs):
            if v is None:
                wires.append(("c", pos[j]))
            elif isinstance(v, Lagged):
                # the read sequence in the source's state dtype (the reference carries it so)
                wires.append(("l", len(lag)))
                lag.append(_float(v.seq.astype(v.first.dtype)))
                first.append(_float(v.first))
            else:
                wires.append(("x", len(seqs)))
                seqs.append(_float(v))
        wiring.append(wires)
        xs.append(seqs)
        lags.append(lag)
        firsts.append(first)
    # a neuron whose parameters broadcast against its state runs its step on them per neuron (per
    # row of the batch): their gradient is then elementwise in the loop, summed once after it
    rows = [_per_neuron(layer, st) for layer, st in zip(layers, states)]
    dyn, static = eqx.partition([None if r is not None else layer for layer, r in zip(layers, rows)],
                                eqx.is_inexact_array)
    skeletons = [eqx.filter(layer, eqx.is_array, inverse=True) if r is not None else None
                 for layer, r in zip(layers, rows)]
    binary = [binary_entries(layer, st) for layer, st in zip(layers, states)]
    # a stateless layer fed only by stateful layers of the component (and outside inputs): its
    # state (its previous output) is recomputed in the backward pass instead of being stored
    derived = [not is_stateful(layer) and all(is_stateful(layers[n]) for src, n in wires if src == "c")
               for layer, wires in zip(layers, wiring)]

    def step(d, s, xt):
        d, p_rows = d
        mods = eqx.combine(d, static)
        now, lag = xt
        new, outs, reads = [], [], []
        for k, layer in enumerate(mods):
            vals = [now[k][n] if src == "x" else lag[k][n] if src == "l" else layer_output(layers[n], s[n])
                    for src, n in wiring[k]]
            if rows[k] is not None:
                ns, out = skeletons[k].step(eqx.combine(p_rows[k], rows[k][1]), s[k],
                                            merge_inputs(layers[k], vals))
            else:
                ns, out = call_layer(layer, s[k], merge_inputs(layer, vals), keys[k])
            ns = keep_dtypes(ns, s[k])
            new.append(ns)
            outs.append(out if want_out[k] else None)
            # the read entering the step: the shifted sequence a later component reads, with no copy
            reads.append(layer_output(layer, s[k]) if want_read[k] else None)
        return new, (outs, reads)

    p_rows = [r[0] if r is not None else None for r in rows]
    finals, (outs, reads) = component_loop(step, dyn, list(states), xs, binary, derived, lagged=(lags, firsts),
                                           dyn_rows=p_rows)
    return finals, outs, reads
