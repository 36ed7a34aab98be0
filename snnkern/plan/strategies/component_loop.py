"""A cycle of layers that no fused kernel recognises, run as one loop of the component
(``kernels/component_loop.py``: the states stored compactly, each step recomputed in the backward
pass) - docs/plans.md "How cycles run".

Every edge is delayed one step, so within a step each layer of the component reads the others'
outputs of the previous step (the carry) and its outside inputs of this step; those arrive as whole
sequences (external inputs, and the outputs of components that ran before, read one step late).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple, Optional, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp

from snnkern.kernels.common import params_broadcast

from ..protocol import call_layer, is_compound, is_neuron, is_stateful, keep_dtypes, layer_output, merge_inputs
from ..seq import float_input
from ..types import Step
from ..wiring import sources
from .base import KEY, CycleSite, CycleStrategy, Taken

__all__ = ["ComponentLoop", "Lagged", "binary_entries"]


class Lagged(NamedTuple):
    """An outside source's output as a consumer reads it, one step late: ``first`` at step 0, then
    ``seq[t - 1]`` (the loop indexes ``seq`` itself: no shifted copy)."""

    seq: jax.Array
    first: jax.Array


def binary_entries(layer, state):
    """``state``'s structure with True at the entries that are exactly 0/1 (neurons' spike entries,
    also inside compounds), False elsewhere."""
    if is_neuron(layer):
        idx = set(layer.binary_state_entries())
        return [k in idx for k in range(len(state))]
    if is_compound(layer):
        return [binary_entries(sub, st) for sub, st in zip(layer.layers, state)]
    return jax.tree.map(lambda _: False, state)


def _unsupported(names: Sequence[str], states, outs) -> Optional[str]:
    """None if the component loop takes these layers, else why not (it differentiates every state and
    output entry)."""
    for name, st, out in zip(names, states, outs):
        for what, tree in (("state", st), ("output", out)):
            bad = [f"{jnp.result_type(a)}{list(jnp.shape(a))}" for a in jax.tree.leaves(tree)
                   if not jnp.issubdtype(jnp.result_type(a), jnp.inexact)]
            if bad:
                return f"{name} has a non-floating {what} entry ({', '.join(bad)}), which a custom VJP cannot carry"
    return None


def _per_neuron(layer, state):
    """``(arrays, rest)``: a neuron's parameters split into its inexact arrays, broadcast to the shape
    of its state, and the rest (Python floats) - or None if ``layer`` is not a neuron (a compound is
    not) or a parameter does not broadcast against its state."""
    if not is_neuron(layer) or is_compound(layer):
        return None
    shape = jnp.shape(jax.tree.leaves(state)[0])
    arrays, rest = eqx.partition(layer.params(), eqx.is_inexact_array)
    if not jax.tree.leaves(arrays) or not params_broadcast(arrays, shape):
        return None
    return jax.tree.map(lambda a: jnp.broadcast_to(a, shape), arrays), rest


def _wire(struct, ids, outside):
    """Where each layer's merged inputs come from: ``("x", n)`` / ``("l", n)`` the n-th outside sequence
    read now / lagged, ``("c", k)`` the k-th layer's read; and those sequences."""
    pos = {i: k for k, i in enumerate(ids)}
    wiring, xs, lags, firsts = [], [], [], []
    for k, i in enumerate(ids):
        wires, seqs, lag, first = [], [], [], []
        for v, src in zip(outside[k], sources(struct, i)):
            if v is None:
                wires.append(("c", pos[src.index]))
            elif isinstance(v, Lagged):
                # the read sequence in the source's state dtype (the reference carries it so)
                wires.append(("l", len(lag)))
                lag.append(float_input(v.seq.astype(v.first.dtype)))
                first.append(float_input(v.first))
            else:
                wires.append(("x", len(seqs)))
                seqs.append(float_input(v))
        wiring.append(wires)
        xs.append(seqs)
        lags.append(lag)
        firsts.append(first)
    return wiring, xs, (lags, firsts)


@dataclass(frozen=True)
class ComponentLoop(CycleStrategy):
    """One loop of every layer in the component, with a hand-written backward pass."""

    name: ClassVar[str] = "component loop"
    is_fallback: ClassVar[bool] = True

    @classmethod
    def take(cls, site: CycleSite) -> Taken:
        planner = site.planner
        names = [f"layer {i} ({type(planner.layers[i]).__name__})" for i in site.ids]
        outs = [jax.eval_shape(lambda s, v, lay=planner.layers[i]: call_layer(lay, s, v, KEY)[1], planner.states[i],
                               planner.merged(i)) for i in site.ids]
        why = _unsupported(names, [planner.states[i] for i in site.ids], outs)
        if why is not None:
            return why
        return Step(site.where, cls(), tuple(site.ids), "no fused kernel")

    def run_component(self, run, ids) -> None:
        f, o, r = _component_seq(ids, run)
        for k, i in enumerate(ids):
            run.finals[i], run.outs[i] = f[k], o[k]
            if r[k] is not None:
                run.shifted[i] = r[k]

    def describe(self) -> str:
        return "component loop (custom VJP)"


def _component_seq(ids, run):
    """Run the component ``ids`` over the sequence: per layer ``(final_state, out_seq or None, read_seq
    or None)`` - outputs for the final layers, the shifted read sequences for the layers a later
    component reads."""
    from snnkern.kernels.component_loop import component_loop
    struct, inside = run.struct, set(ids)
    layers, states, keys = [run.layers[i] for i in ids], [run.states[i] for i in ids], [run.keys[i] for i in ids]
    read_later = {j for c, srcs in enumerate(struct.input_connectivity) if c not in inside for j in srcs}
    want_out = [i in set(struct.final_layer_ids) for i in ids]
    want_read = [i in read_later for i in ids]
    wiring, xs, lagged = _wire(struct, ids, [run.outside(i, ids, lagged=True) for i in ids])
    # a neuron whose parameters broadcast against its state runs its step on them per neuron (per row of
    # the batch): their gradient is then elementwise in the loop, summed once after it
    rows = [_per_neuron(layer, st) for layer, st in zip(layers, states)]
    dyn, static = eqx.partition([None if r is not None else layer for layer, r in zip(layers, rows)],
                                eqx.is_inexact_array)
    skeletons = [eqx.filter(layer, eqx.is_array, inverse=True) if r is not None else None
                 for layer, r in zip(layers, rows)]
    # a stateless layer fed only by stateful layers of the component (and outside inputs): its state
    # (its previous output) is recomputed in the backward pass instead of being stored
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
                ns, out = skeletons[k].step(eqx.combine(p_rows[k], rows[k][1]), s[k], merge_inputs(layers[k], vals))
            else:
                ns, out = call_layer(layer, s[k], merge_inputs(layer, vals), keys[k])
            new.append(keep_dtypes(ns, s[k]))
            outs.append(out if want_out[k] else None)
            # the read entering the step: the shifted sequence a later component reads, with no copy
            reads.append(layer_output(layer, s[k]) if want_read[k] else None)
        return new, (outs, reads)

    p_rows = [r[0] if r is not None else None for r in rows]
    binary = [binary_entries(layer, st) for layer, st in zip(layers, states)]
    finals, (outs, reads) = component_loop(step, dyn, list(states), xs, binary, derived, lagged=lagged,
                                           dyn_rows=p_rows)
    return finals, outs, reads
