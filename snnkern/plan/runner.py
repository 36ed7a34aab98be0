"""Run a :class:`~snnkern.plan.types.Plan` layer-major.

Component by component, in topological order, each over the whole sequence, by the strategy its step
holds (``step.spec.run_component``). A layer reads its source's output *shifted by one step* (the
source's initial output first) and the external input of the current step - the time semantics of
docs/semantics.md - so results equal the time-major reference path to float rounding.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import jax
import jax.numpy as jnp
import jax.random as jrand

from .protocol import keep_dtypes, layer_output, merge_inputs
from .seq import shift
from .strategies.component_loop import Lagged
from .types import Plan
from .wiring import gather

__all__ = ["run_plan", "Run"]


class Run:
    """The sequences of one planned call, which the strategies read and write: ``reads[j]`` layer j's
    read sequence (unshifted), ``shifted[j]`` the same one step late (what a consumer reads),
    ``outs[j]`` its output sequence, ``finals[j]`` its final state."""

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
            self.shifted[j] = shift(self.reads[j], self.init_read[j])
        return self.shifted[j]

    def outside(self, i, ids, lagged: bool = False) -> list:
        """Layer i's input sequences in merge order; None for sources inside its component ``ids``.
        ``lagged``: a source with no shifted copy yet as a :class:`Lagged` (read one step late)."""
        def source(j):
            if j in ids:
                return None
            if lagged and j not in self.shifted:
                return Lagged(self.reads[j], self.init_read[j])
            return self.read_shifted(j)

        return gather(self.struct, i, lambda e: self.xs[e], source)

    def merged_outside(self, i, ids):
        """Layer i's merged input sequence (its component has no other layer)."""
        return merge_inputs(self.layers[i], self.outside(i, ids))


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
    run = Run(model, states, xs, key)
    for comp in plan.components:
        comp.step.spec.run_component(run, comp.layers)
    return keep_dtypes(run.finals, list(states)), [run.outs[j] for j in run.struct.final_layer_ids]
