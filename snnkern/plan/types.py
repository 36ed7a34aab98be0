"""The plan's types: what runs each component of a model, and why (docs/plans.md).

A :class:`Plan` holds no arrays; it is made once per trace from the model and its abstract inputs
(:func:`~snnkern.plan.planner.make_plan`), the runner executes exactly it, and
``snnkern.explain`` returns the same value.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import List, Optional, Tuple, Union

from snnkern.kernels.spec import DelayLoopSpec, Impl, NeuronLoopSpec, RecurrentLoopSpec

__all__ = ["Kind", "Path", "PlanPath", "Step", "Component", "Plan", "Impl", "LoopSpec"]

LoopSpec = Union[NeuronLoopSpec, RecurrentLoopSpec, DelayLoopSpec]


class PlanPath(str, enum.Enum):
    PLANNED = "planned"          # layer-major, component by component
    REFERENCE = "reference"      # the time-major lax.scan of default_forward_fn (or a custom forward_fn)

    def __str__(self) -> str:
        return self.value


class Kind(str, enum.Enum):
    """What a component is."""

    STATELESS = "stateless"              # one stateless layer
    NEURON = "neuron"                    # one neuron
    COMPOUND = "compound"                # a CompoundLayer outside any cycle
    STATEFUL = "stateful"                # another stateful layer outside any cycle
    RECURRENT = "recurrent-compound"     # CompoundLayer([Parallel([..., Linear_rec]), neuron]) with a self-edge
    CYCLE = "cycle"                      # any other strongly connected component

    def __str__(self) -> str:
        return self.value


class Path(str, enum.Enum):
    """How one step of a component runs over the whole sequence."""

    BATCHED = "batched over T (one call)"
    GEMM = "one GEMM over all T·B rows"
    NEURON_LOOP = "neuron loop (custom VJP)"
    RECURRENT_LOOP = "recurrent loop (custom VJP)"
    SCAN = "scan (autodiff)"
    COMPONENT_SCAN = "scan of the component (autodiff)"
    COMPONENT_LOOP = "component loop (custom VJP)"
    DELAY_LOOP = "delay loop (custom VJP)"          # a cycle of affine layers through one neuron

    @property
    def is_loop(self) -> bool:
        """A fused time loop with a hand-written backward pass."""
        return self in (Path.NEURON_LOOP, Path.RECURRENT_LOOP, Path.DELAY_LOOP)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Step:
    """How one layer (or sub-layer, or part of a layer) runs over the sequence.

    ``address``: the layer index, then sub-layer indices inside compounds; ``spec``: the loop's
    frozen spec for loop paths (the runner hands it to the loop unchanged); ``reason``: why this is
    not the path asked for (None if it is)."""

    where: str
    path: Path
    address: Tuple[int, ...] = ()
    spec: Optional[LoopSpec] = None
    reason: Optional[str] = None

    @property
    def impl(self) -> Optional[Impl]:
        return None if self.spec is None else self.spec.impl

    def describe(self) -> str:
        return f"{self.path}" + (f" [{self.spec.describe()}]" if self.spec is not None else "")


@dataclass(frozen=True)
class Component:
    """A strongly connected component of the layer graph (``cyclic``: it has a cycle)."""

    layers: Tuple[int, ...]
    cyclic: bool
    kind: Kind
    steps: Tuple[Step, ...]

    def spec_at(self, address: Tuple[int, ...]) -> Optional[LoopSpec]:
        for s in self.steps:
            if s.address == address and s.spec is not None:
                return s.spec
        return None

    @property
    def loop(self) -> Optional[Step]:
        """The component's (first) fused loop step, if it has one."""
        return next((s for s in self.steps if s.path.is_loop), None)


@dataclass(frozen=True)
class Plan:
    path: PlanPath
    components: Tuple[Component, ...] = ()
    reason: Optional[str] = None             # why the reference path runs
    backend: str = "auto"                    # the backend asked for
    platform: str = ""                       # the platform it was planned for
    notes: Tuple[str, ...] = field(default=())
    checkpoint_every: Optional[int] = None   # time checkpointing: chunks of this many steps (None: off)
    chains: Tuple[str, ...] = ()             # the runs of layers that execute together, one line each

    @property
    def fallbacks(self) -> List[str]:
        out = [self.reason] if self.reason else []
        for c in self.components:
            out += [f"{s.where}: {s.reason}" for s in c.steps if s.reason]
        return out

    @property
    def steps(self) -> List[Step]:
        return [s for c in self.components for s in c.steps]

    def __str__(self) -> str:
        lines = [f"snnkern plan: {self.path} path (backend requested: {self.backend}, platform: {self.platform})"]
        if self.reason:
            lines.append(f"  reason: {self.reason}")
        for n, c in enumerate(self.components):
            ids = ",".join(str(i) for i in c.layers)
            lines.append(f"  component {n}: layers [{ids}] {c.kind}{' (cycle)' if c.cyclic else ''}")
            for s in c.steps:
                extra = f"  <- fallback: {s.reason}" if s.reason else ""
                lines.append(f"    {s.where:<44} {s.describe()}{extra}")
        if self.chains:
            lines.append("  chains:")
            lines += [f"    {c}" for c in self.chains]
        for note in self.notes:
            lines.append(f"  note: {note}")
        return "\n".join(lines)

    __repr__ = __str__
