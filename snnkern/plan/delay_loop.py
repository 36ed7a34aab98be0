"""A feedback cycle of affine stateless layers through one neuron, run as a delay-d recurrence
(:func:`~snnkern.kernels.delay_loop.delay_loop`) - docs/plans.md "How cycles run".

The cycle is ``neuron -> l_1 -> ... -> l_{d-1} -> neuron`` (d its length), each ``l_k`` an
``eqx.nn.Identity`` or (at most one) plain ``eqx.nn.Linear``, every layer summing its inputs. Every
edge is delayed one step, so with ``s`` the neuron's output

    y_k[t] = f_k(o_k[t] + y_{k-1}[t-1])   (y_0 = s, y_k[-1] = layer k's initial state)
    I[t]   = o_N[t] + y_{d-1}[t-1]

(``o`` a layer's inputs from outside the cycle). The maps are affine, so ``I[t] = c[t] + W s[t-d]``:
``c`` is the same pipeline run with ``s = 0`` (the initial states of the ``l_k`` included; a
Linear is one GEMM over all T·B rows), ``W`` the Linear's weight (the identity without one), and
``s[t-d]`` zero where the pipeline reaches an ``l_k``'s initial state instead (t < d-1). The loop
adds ``W s[t-d]``; each ``y_k`` is ``c``'s ``y_k`` plus the fed-back part ``L_k s[t-k]`` (``L_k`` =
W once the Linear is passed), which gives the layers' final states (and their sequences where
other layers read them).
"""
from __future__ import annotations

import functools as ft
import operator
from typing import List, Optional, Sequence, Tuple

import equinox as eqx
import jax.numpy as jnp

from snnkern.kernels.delay_loop import run_delay_loop

from .chains import span
from .protocol import is_neuron

__all__ = ["cycle_order", "delay_unsupported", "delay_where", "linear_position", "delay_seq"]

AFFINE = (eqx.nn.Linear, eqx.nn.Identity)


def cycle_order(struct, ids: Sequence[int], layers) -> Tuple[int, List[int]]:
    """``(neuron id, [l_1, ..., l_{d-1}])``: the cycle from the neuron on, ``l_1`` reading the
    neuron (the component is one cycle: every layer has exactly one source inside it)."""
    inside = set(ids)
    (nid,) = [i for i in ids if is_neuron(layers[i])]
    reader = {next(j for j in struct.input_connectivity[i] if j in inside): i for i in ids}
    chain, i = [], reader[nid]
    while i != nid:
        chain.append(i)
        i = reader[i]
    return nid, chain


def linear_position(chain: Sequence[int], layers) -> Optional[int]:
    """k (1-based) of the Linear ``l_k`` in the chain, or None."""
    return next((k for k, i in enumerate(chain, 1) if type(layers[i]) is eqx.nn.Linear), None)


def delay_unsupported(struct, ids, layers, neuron_in, neuron_read) -> Optional[str]:
    """None if the single-neuron cycle ``ids`` runs as a delay loop, else why not. ``neuron_in`` /
    ``neuron_read``: the avals of the neuron's merged input and of its output state."""
    nid, chain = cycle_order(struct, ids, layers)
    for i in chain:
        lay = layers[i]
        if type(lay) not in AFFINE:   # the exact classes: a subclass may have its own __call__
            return (f"layer {i} ({type(lay).__name__}) in the cycle is not affine (the delay loop takes a plain "
                    f"eqx.nn.Linear and eqx.nn.Identity)")
    lins = [i for i in chain if type(layers[i]) is eqx.nn.Linear]
    if len(lins) > 1:
        return f"{len(lins)} Linears in the cycle (layers {', '.join(map(str, lins))}); the delay loop takes one weight"
    if tuple(neuron_read.shape) != tuple(neuron_in.shape):
        return (f"the neuron's output {list(neuron_read.shape)} is not the shape of its input "
                f"{list(neuron_in.shape)}")
    if not jnp.issubdtype(neuron_read.dtype, jnp.inexact):
        return f"the neuron's output is {neuron_read.dtype}, not floating"
    if lins:
        lin, n = layers[lins[0]], tuple(neuron_read.shape)
        if lin.in_features == "scalar" or lin.out_features == "scalar" or n != (lin.in_features,) \
                or lin.in_features != lin.out_features:
            return (f"the Linear (layer {lins[0]}) is {lin.in_features}->{lin.out_features}, not a square map of "
                    f"the neuron's {list(n)} output")
    return None


def delay_where(ids, layers, chain, nid, delay: int) -> str:
    """The plan's description of the step, e.g. ``layers 2-3: Linear -> LIF: a recurrence through
    one neuron, delay 2: GEMM over T·B rows + fused delay-2 loop (xla)``."""
    kinds = " -> ".join(type(layers[i]).__name__ for i in chain + [nid])
    gemm = "GEMM over T·B rows + " if linear_position(chain, layers) else ""
    return f"{span(ids)}: {kinds}: a recurrence through one neuron, delay {delay}: {gemm}fused delay-{delay} loop (xla)"


def _sum(vals):
    vals = [v for v in vals if v is not None]
    return ft.reduce(operator.add, vals) if vals else None


def _delayed(reads, k: int):
    """``s[t-k]`` for t = 0..T-1 from ``reads[t] = s[t-1]`` (zeros before ``s[-1]``)."""
    T = reads.shape[0]
    if k == 1:
        return reads
    body = reads[:max(T - k + 1, 0)]
    return jnp.concatenate([jnp.zeros((T - body.shape[0],) + reads.shape[1:], reads.dtype), body], axis=0)


def delay_seq(run, comp, stateless_seq, shift, float_input, neuron_step) -> None:
    """Run the delay-loop component ``comp`` of the planned call ``run`` (the runner's ``_Run``):
    sets the final states, outputs and reads of its layers. The runner's helpers are passed in."""
    ids, struct, layers, states = comp.layers, run.struct, run.layers, run.states
    spec = comp.spec_at(tuple(ids))
    nid, chain = cycle_order(struct, ids, layers)
    neuron = layers[nid]
    inside = set(ids)
    read_later = {j for c, srcs in enumerate(struct.input_connectivity) if c not in inside for j in srcs}
    final = set(struct.final_layer_ids)

    def outside(i):
        return _sum([None if v is None else float_input(v) for v in run.inputs_from_outside(i, ids)])

    s_init = run.init_read[nid]
    T = int(run.xs[0].shape[0])
    # c: the cycle's pipeline with the neuron's output s = 0 (the layers' initial states kept)
    yc, prev = {}, None
    for i in chain:
        inp = _sum([outside(i), None if prev is None else shift(yc[prev], run.init_read[prev])])
        if inp is None:   # l_1 reads only the neuron: f(0) at every step
            inp = jnp.zeros((1,) + s_init.shape, s_init.dtype)
            yc[i] = jnp.broadcast_to(stateless_seq(layers[i], inp, run.keys[i]), (T,) + s_init.shape)
        else:
            yc[i] = stateless_seq(layers[i], inp, run.keys[i])
        prev = i
    c = _sum([outside(nid), None if prev is None else shift(yc[prev], run.init_read[prev])])
    if c is None:
        c = jnp.zeros((T,) + s_init.shape, s_init.dtype)
    m = linear_position(chain, layers)
    w = None if m is None else layers[chain[m - 1]].weight
    sT, outs, reads = run_delay_loop(spec, neuron_step(neuron), neuron.params(), list(states[nid]), c, w)
    run.finals[nid], run.shifted[nid] = sT, reads
    if spec.want_out:
        run.outs[nid] = outs
    # each l_k: c's y_k plus the fed-back part L_k s[t-k]
    for k, i in enumerate(chain, 1):
        def fed(v, k=k):
            return v if m is None or m > k else v @ w.T
        last = reads[T - k] if T >= k else jnp.zeros_like(s_init)
        run.finals[i] = [yc[i][-1] + fed(last.astype(yc[i].dtype))]
        if i in final or i in read_later:
            y = yc[i] + fed(_delayed(reads, k).astype(yc[i].dtype))
            if i in final:
                run.outs[i] = y
            if i in read_later:
                run.reads[i] = y
