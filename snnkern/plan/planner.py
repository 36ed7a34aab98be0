"""Make a model's execution plan, with its shapes (docs/plans.md).

Because every edge is delayed by one step, a model can run layer-major: the strongly connected
components of the layer graph run one after another in topological order, each over the whole
sequence. :func:`make_plan` decides every path here, once, from the layers and the abstract inputs
(shapes, dtypes, the platform being traced for, resolved once): it asks the registered strategies
(``snnkern.plan.strategies``) in order for each component, and every fallback is a field of the plan.
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence

import jax

from snnkern import settings
from snnkern.kernels.platform import tracing_platform

from . import strategies
from .chains import chains
from .checkpoint import checkpoint_asked, checkpoint_every
from .graph import components
from .impl import fallback
from .protocol import layer_output, merge_inputs
from .seq import aval
from .types import Component, Plan, Step
from .wiring import gather

__all__ = ["make_plan", "recorded_plans"]


def _name(i, layer) -> str:
    return f"layer {i} ({type(layer).__name__})"


def choose(table, site) -> Step:
    """The step of the first strategy in ``table`` that takes ``site``. A fallback strategy's step
    carries the reasons of those that did not take it (logged; strict mode raises)."""
    declined = []
    for strategy in table:
        got = strategy.take(site)
        if got is None:
            continue
        if isinstance(got, str):
            declined.append(got)
            continue
        if strategy.is_fallback:
            why = "; ".join(declined + ([got.reason] if got.reason else []))
            got = dataclasses.replace(got, reason=fallback(got.where, strategy.name, why))
        return got
    raise RuntimeError(f"no registered strategy takes {site.where}")


class _Planner:
    """The abstract values a plan is made from: every layer's per-step inputs and reads."""

    def __init__(self, struct, layers, xs, states, platform: str):
        self.struct, self.layers, self.states, self.platform = struct, layers, states, platform
        self.T = int(xs[0].shape[0])
        self.x_step = [jax.ShapeDtypeStruct(tuple(x.shape[1:]), x.dtype) for x in xs]
        # what consumers read: the source's state[-1], in its dtype (the runner keeps it)
        self.reads = [aval(layer_output(layers[j], states[j])) for j in range(struct.num_layers)]
        self.consumed = {j for srcs in struct.input_connectivity for j in srcs}
        self.final = set(struct.final_layer_ids)
        self._merged = {}

    def inputs(self, i) -> list:
        """Layer ``i``'s per-step inputs in merge order (avals)."""
        return gather(self.struct, i, lambda e: self.x_step[e], lambda j: self.reads[j])

    def merged(self, i):
        """Layer ``i``'s merged per-step input (an aval; a list for a Parallel)."""
        if i not in self._merged:
            layer = self.layers[i]
            self._merged[i] = jax.eval_shape(lambda *v: merge_inputs(layer, list(v)), *self.inputs(i))
        return self._merged[i]

    def seq(self, step_aval):
        return jax.ShapeDtypeStruct((self.T,) + tuple(step_aval.shape), step_aval.dtype)

    def plan_layer(self, site) -> Step:
        return choose(strategies.LAYER, site)

    def component(self, ids, cyclic: bool) -> Component:
        if cyclic:
            names = ", ".join(_name(i, self.layers[i]) for i in ids)
            return Component(tuple(ids), True, choose(strategies.CYCLE, strategies.CycleSite(self, tuple(ids), names)))
        (i,) = ids
        layer = self.layers[i]
        site = strategies.LayerSite(self, _name(i, layer), (i,), layer, self.states[i], self.merged(i),
                                    want_out=i in self.final, want_read=i in self.consumed, top=True)
        return Component((i,), False, self.plan_layer(site))


def make_plan(struct, layers: Sequence, xs: Sequence, states: Sequence, *,
              reference_reason: Optional[str] = None, arrays: Sequence = ()) -> Plan:
    """The plan for a model of ``layers`` over ``struct``, for one sample: ``xs`` the external inputs
    ``(T, *in_shape)`` and ``states`` the layer states (arrays or ``jax.ShapeDtypeStruct`` s; only
    shapes and dtypes are read), under the current settings (read now, at trace time).
    ``reference_reason``: why the model must take the reference path (a custom forward_fn).
    ``arrays``: the call's inputs (values or tracers), whose shardings may name the device compiled
    for (:func:`~snnkern.kernels.platform.tracing_platform`)."""
    requested = settings.current_backend()
    platform = tracing_platform(*arrays)
    if requested == "reference" or reference_reason is not None:
        notes = ("time checkpointing applies to the planned path only; the reference path runs unchanged",) \
            if checkpoint_asked() else ()
        reason = None if requested == "reference" else fallback("model", "reference", reference_reason)
        plan = Plan(True, reason=reason, backend=requested, platform=platform, notes=notes)
    else:
        planner = _Planner(struct, list(layers), list(xs), list(states), platform)
        comps = tuple(planner.component(ids, cyclic) for ids, cyclic in components(struct.num_layers,
                                                                                   struct.input_connectivity))
        every, note = checkpoint_every(int(xs[0].shape[0]), platform)
        plan = Plan(False, comps, backend=requested, platform=platform, checkpoint_every=every,
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
