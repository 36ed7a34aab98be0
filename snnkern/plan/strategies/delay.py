"""A feedback cycle of affine stateless layers through one neuron, run as a delay-d recurrence
(``kernels/delay_loop.py``) - docs/plans.md "How cycles run".

The cycle is ``neuron -> l_1 -> ... -> l_{d-1} -> neuron`` (d its length), each ``l_k`` an
``eqx.nn.Identity`` or (at most one) plain ``eqx.nn.Linear``, every layer summing its inputs. Every
edge is delayed one step, so with ``s`` the neuron's output

    y_k[t] = f_k(o_k[t] + y_{k-1}[t-1])   (y_0 = s, y_k[-1] = layer k's initial state)
    I[t]   = o_N[t] + y_{d-1}[t-1]

(``o`` a layer's inputs from outside the cycle). The maps are affine, so ``I[t] = c[t] + W s[t-d]``:
``c`` is the same pipeline run with ``s = 0`` (the initial states of the ``l_k`` included; a Linear is
one GEMM over all T·B rows), ``W`` the Linear's weight (the identity without one), and ``s[t-d]`` zero
where the pipeline reaches an ``l_k``'s initial state instead (t < d-1). The loop adds ``W s[t-d]``;
each ``y_k`` is ``c``'s ``y_k`` plus the fed-back part ``L_k s[t-k]`` (``L_k`` = W once the Linear is
passed), which gives the layers' final states (and their sequences where other layers read them).
"""
from __future__ import annotations

import functools as ft
import operator
from dataclasses import dataclass
from typing import ClassVar, List, Optional, Sequence, Tuple

import equinox as eqx
import jax.numpy as jnp

from ..impl import Impl
from ..protocol import is_neuron, is_stateful
from ..seq import float_input, neuron_step, shift, stateless_seq
from ..types import Step
from .base import CycleSite, CycleStrategy, Taken, span

__all__ = ["DelayLoop", "cycle_order"]

AFFINE = (eqx.nn.Linear, eqx.nn.Identity)


def cycle_order(struct, ids: Sequence[int], layers) -> Tuple[int, List[int]]:
    """``(neuron id, [l_1, ..., l_{d-1}])``: the cycle from the neuron on, ``l_1`` reading the neuron
    (the component is one cycle: every layer has exactly one source inside it)."""
    inside = set(ids)
    (nid,) = [i for i in ids if is_neuron(layers[i])]
    reader = {next(j for j in struct.input_connectivity[i] if j in inside): i for i in ids}
    chain, i = [], reader[nid]
    while i != nid:
        chain.append(i)
        i = reader[i]
    return nid, chain


def _delay(planner, ids) -> Optional[int]:
    """The delay d (the cycle's length) if the component is one cycle of stateless layers through a
    single neuron (``{3: 2}``: Linear(2) <- LIF(3), d = 2; ``{1: 1}``: d = 1), else None."""
    inside, layers = set(ids), [planner.layers[i] for i in ids]
    if sum(is_neuron(lay) for lay in layers) != 1 or sum(is_stateful(lay) for lay in layers) != 1:
        return None
    if any(sum(j in inside for j in planner.struct.input_connectivity[i]) != 1 for i in ids):
        return None
    return len(ids)


def _linear_at(chain: Sequence[int], layers) -> Optional[int]:
    """k (1-based) of the Linear ``l_k`` in the chain, or None."""
    return next((k for k, i in enumerate(chain, 1) if type(layers[i]) is eqx.nn.Linear), None)


def _unsupported(chain, layers, neuron_in, neuron_read) -> Optional[str]:
    """None if the single-neuron cycle runs as a delay loop, else why not."""
    for i in chain:
        if type(layers[i]) not in AFFINE:   # the exact classes: a subclass may have its own __call__
            return (f"layer {i} ({type(layers[i]).__name__}) in the cycle is not affine (the delay loop takes a "
                    f"plain eqx.nn.Linear and eqx.nn.Identity)")
    lins = [i for i in chain if type(layers[i]) is eqx.nn.Linear]
    if len(lins) > 1:
        return f"{len(lins)} Linears in the cycle (layers {', '.join(map(str, lins))}); the delay loop takes one weight"
    n = tuple(neuron_read.shape)
    if n != tuple(neuron_in.shape):
        return f"the neuron's output {list(n)} is not the shape of its input {list(neuron_in.shape)}"
    if not jnp.issubdtype(neuron_read.dtype, jnp.inexact):
        return f"the neuron's output is {neuron_read.dtype}, not floating"
    if lins:
        lin = layers[lins[0]]
        if "scalar" in (lin.in_features, lin.out_features) or n != (lin.in_features,) \
                or lin.in_features != lin.out_features:
            return (f"the Linear (layer {lins[0]}) is {lin.in_features}->{lin.out_features}, not a square map of "
                    f"the neuron's {list(n)} output")
    return None


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


@dataclass(frozen=True)
class DelayLoop(CycleStrategy):
    """A neuron fed back its own output ``delay`` steps late (``I_t = c_t + W s_{t-delay}``). XLA on
    every platform: the Pallas recurrent kernel is not extended to delays."""

    delay: int = 1
    spike_idx: Tuple[int, ...] = ()
    want_out: bool = True
    has_weight: bool = False
    impl: Impl = Impl.XLA

    is_loop: ClassVar[bool] = True

    @classmethod
    def take(cls, site: CycleSite) -> Taken:
        planner, ids = site.planner, site.ids
        delay = _delay(planner, ids)
        if delay is None:
            return None
        nid, chain = cycle_order(planner.struct, ids, planner.layers)
        why = _unsupported(chain, planner.layers, planner.merged(nid), planner.reads[nid])
        if why is not None:
            return f"a recurrence through one neuron, delay {delay}, but {why}"
        layers = planner.layers
        spec = cls(delay, tuple(sorted(set(layers[nid].binary_state_entries()))), nid in planner.final,
                   _linear_at(chain, layers) is not None)
        kinds = " -> ".join(type(layers[i]).__name__ for i in chain + [nid])
        return Step(f"{span(ids)}: {kinds}: a recurrence through one neuron, delay {delay}", spec, tuple(ids))

    def run_component(self, run, ids) -> None:
        from snnkern.kernels.delay_loop import delay_loop
        struct, layers = run.struct, run.layers
        nid, chain = cycle_order(struct, ids, layers)
        c, yc = _hoisted(run, ids, nid, chain)
        m = _linear_at(chain, layers)
        w = None if m is None else layers[chain[m - 1]].weight
        neuron = layers[nid]
        sT, outs, reads = delay_loop(neuron_step(neuron), neuron.params(), list(run.states[nid]), c, w, self.delay,
                                     self.spike_idx, want_out=self.want_out)
        run.finals[nid], run.shifted[nid] = sT, reads
        if self.want_out:
            run.outs[nid] = outs
        _fed_back(run, ids, chain, yc, reads, m, w)

    def detail(self) -> str:
        return f"{self.impl}, delay {self.delay}"

    def describe(self) -> str:
        return f"delay loop (custom VJP) [{self.detail()}]"

    def summary(self, layer=None) -> str:
        gemm = "GEMM over T·B rows + " if self.has_weight else ""
        return f"{gemm}fused delay-{self.delay} loop ({self.impl})"

    def chain_line(self, step, layers) -> str:
        return f"{step.where}: {self.summary()}"   # the step says which layers, in cycle order


def _hoisted(run, ids, nid, chain):
    """``(c, yc)``: the neuron's current without the fed-back part, and each cycle layer's sequence
    with the neuron's output taken as zero (their initial states kept)."""
    layers = run.layers
    s_init = run.init_read[nid]
    T = int(run.xs[0].shape[0])

    def outside(i):
        return _sum([None if v is None else float_input(v) for v in run.outside(i, ids)])

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
    return (jnp.zeros((T,) + s_init.shape, s_init.dtype) if c is None else c), yc


def _fed_back(run, ids, chain, yc, reads, m, w) -> None:
    """Each ``l_k``: ``c``'s ``y_k`` plus the fed-back part ``L_k s[t-k]``: its final state, and its
    sequence where it is a final layer or a later component reads it."""
    inside, struct = set(ids), run.struct
    read_later = {j for c, srcs in enumerate(struct.input_connectivity) if c not in inside for j in srcs}
    final, T = set(struct.final_layer_ids), reads.shape[0]
    for k, i in enumerate(chain, 1):
        def fed(v, k=k):
            return v if m is None or m > k else v @ w.T
        last = reads[T - k] if T >= k else jnp.zeros_like(reads[0])
        run.finals[i] = [yc[i][-1] + fed(last.astype(yc[i].dtype))]
        if i in final or i in read_later:
            y = yc[i] + fed(_delayed(reads, k).astype(yc[i].dtype))
            if i in final:
                run.outs[i] = y
            if i in read_later:
                run.reads[i] = y
