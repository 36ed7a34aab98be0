"""Execution plans (SPEC §9): which path runs each component of a model, and why.

Because every edge is delayed by one step, a model can run layer-major: the strongly connected
components of the layer graph run one after another in topological order, each over the whole
sequence. The plan is a pure function of the model's structure, its layer types and the backend;
it holds no arrays. :func:`explain` renders it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import equinox as eqx
import jax

from snnkern.kernels import dispatch

from .graph import components
from .protocol import is_compound, is_neuron, is_stateful, takes_input_list

__all__ = ["Step", "Component", "Plan", "make_plan", "explain", "recurrent_pattern"]


@dataclass(frozen=True)
class Step:
    """How one layer (or sub-layer) runs over the sequence."""

    where: str          # "layer 2 (LIF)" or "layer 0 (CompoundLayer) sub 1 (LIF)"
    path: str           # batched | xla-neuron-loop | pallas-neuron-loop | scan | ...
    reason: Optional[str] = None


@dataclass(frozen=True)
class Component:
    layers: Tuple[int, ...]
    cyclic: bool
    kind: str           # stateless | neuron | compound | recurrent-compound | cycle | stateful
    steps: Tuple[Step, ...]
    backend: str = "xla"


@dataclass(frozen=True)
class Plan:
    path: str                               # "planned" or "reference"
    components: Tuple[Component, ...] = ()
    reason: Optional[str] = None             # why the reference path runs
    backend: str = "auto"
    notes: Tuple[str, ...] = field(default=())
    platform: str = ""                       # what it was planned for (an abstract device's, or the default)

    @property
    def fallbacks(self) -> List[str]:
        out = [self.reason] if self.reason else []
        for c in self.components:
            out += [f"{s.where}: {s.reason}" for s in c.steps if s.reason]
        return out

    def __str__(self) -> str:
        lines = [f"snnkern plan: {self.path} path (backend requested: {self.backend}, "
                 f"platform: {self.platform or jax.default_backend()})"]
        if self.reason:
            lines.append(f"  reason: {self.reason}")
        for n, c in enumerate(self.components):
            ids = ",".join(str(i) for i in c.layers)
            lines.append(f"  component {n}: layers [{ids}] {c.kind}{' (cycle)' if c.cyclic else ''}")
            for s in c.steps:
                extra = f"  <- fallback: {s.reason}" if s.reason else ""
                lines.append(f"    {s.where:<44} {s.path}{extra}")
        for note in self.notes:
            lines.append(f"  note: {note}")
        return "\n".join(lines)

    __repr__ = __str__


def _name(i, layer) -> str:
    return f"layer {i} ({type(layer).__name__})"


def recurrent_pattern(layer, n_inputs: int, self_pos: int) -> Optional[str]:
    """None if ``layer`` (with a self-edge arriving as input ``self_pos`` of ``n_inputs``) is the
    recognised recurrent chain ``CompoundLayer([Parallel([..., Linear_rec]), neuron])``, else why not."""
    if not is_compound(layer):
        return f"a {type(layer).__name__} in a cycle is not a recognised recurrent chain"
    subs = layer.layers
    if len(subs) != 2 or not takes_input_list(subs[0]) or not is_neuron(subs[1]):
        kinds = ", ".join(type(s).__name__ for s in subs)
        return (f"CompoundLayer([{kinds}]) is not CompoundLayer([Parallel([...]), neuron]); "
                f"it runs as a per-step loop")
    branches = subs[0].layers
    if any(is_stateful(b) for b in branches):
        return "a Parallel branch is stateful"
    if self_pos != n_inputs - 1 or len(branches) != n_inputs:
        return "the self-edge does not arrive at the last Parallel branch"
    rec = branches[-1]
    if not isinstance(rec, eqx.nn.Linear) or rec.in_features == "scalar" or rec.out_features == "scalar":
        return f"the recurrent branch is a {type(rec).__name__}, not a vector Linear"
    if rec.in_features != rec.out_features:
        return f"the recurrent Linear is {rec.in_features}->{rec.out_features}, not square"
    return None


_NEURON_LOOP = "-neuron-loop (custom VJP)"


def _layer_steps(where: str, layer) -> Tuple[Step, ...]:
    """Steps of a layer run over the whole sequence (not part of a cycle)."""
    if is_compound(layer):
        return sum((_layer_steps(f"{where} sub {m} ({type(s).__name__})", s) for m, s in enumerate(layer.layers)), ())
    if not is_stateful(layer):
        return (Step(where, "batched over T (one call)"),)
    if is_neuron(layer):
        choice = dispatch.choose_neuron_backend(where)
        return (Step(where, f"{choice.path}{_NEURON_LOOP}", choice.reason),)
    reason = dispatch.fallback(where, "scan (autodiff)", f"{type(layer).__name__} has no step function to fuse").reason
    return (Step(where, "scan (autodiff)", reason),)


def make_plan(model) -> Plan:
    """The plan for ``model`` under the current backend settings (read now, at trace time)."""
    requested = dispatch.current_backend()
    if requested == "reference":
        return Plan("reference", reason=None, backend=requested, platform=dispatch.tracing_platform())
    custom = model.custom_loop_reason()
    if custom is not None:
        return Plan("reference", reason=dispatch.fallback("model", "reference", custom).reason, backend=requested,
                    platform=dispatch.tracing_platform())

    struct, layers = model.graph_structure, model.layers
    comps = []
    for ids, cyclic in components(struct.num_layers, struct.input_connectivity):
        if not cyclic:
            (i,) = ids
            layer = layers[i]
            kind = ("compound" if is_compound(layer) else "neuron" if is_neuron(layer)
                    else "stateful" if is_stateful(layer) else "stateless")
            steps = _layer_steps(_name(i, layer), layer)
            chosen = [s.path[:-len(_NEURON_LOOP)] for s in steps if s.path.endswith(_NEURON_LOOP)]
            comps.append(Component(ids, False, kind, steps, backend=chosen[0] if chosen else "xla"))
            continue
        why = "a cycle through several layers runs as one per-step loop"
        if len(ids) == 1:
            (i,) = ids
            n_in = len(struct.input_layer_ids[i]) + len(struct.input_connectivity[i])
            srcs = list(struct.input_connectivity[i])
            self_pos = len(struct.input_layer_ids[i]) + srcs.index(i)
            why = recurrent_pattern(layers[i], n_in, self_pos) if srcs.count(i) == 1 else "several self-edges"
            if why is None:
                where = _name(i, layers[i])
                choice = dispatch.choose_recurrent_backend(where, n=layers[i].layers[0].layers[-1].in_features)
                comps.append(Component(ids, True, "recurrent-compound", (
                    Step(where + " feed-forward branches", "batched over T (one GEMM)"),
                    Step(where + " recurrence + neuron", f"{choice.path}-recurrent-loop (custom VJP)",
                         choice.reason)), backend=choice.path))
                continue
        names = ", ".join(_name(i, layers[i]) for i in ids)
        reason = dispatch.fallback(names, "scan", why).reason
        comps.append(Component(ids, True, "cycle", (Step(names, "scan of the component (autodiff)", reason),)))
    return Plan("planned", tuple(comps), backend=requested, platform=dispatch.tracing_platform())


def explain(model, in_shape=None) -> Plan:
    """The execution plan of ``model``: components, the path of each, and every fallback reason.

    ``in_shape`` (optional) is checked against the model (the same errors as ``init_state``).
    Printing the result shows a table; ``plan.fallbacks`` lists the reasons.
    """
    if in_shape is not None:
        jax.eval_shape(lambda: model.init_state(in_shape, jax.random.PRNGKey(0)))
    plan = make_plan(model)
    return plan
