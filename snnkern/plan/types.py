"""The plan's types: what runs each component of a model, and why (docs/plans.md).

A :class:`Plan` holds no arrays; it is made once per trace from the model and its abstract inputs
(:func:`~snnkern.plan.planner.make_plan`), the runner executes exactly it, and ``snnkern.explain``
returns the same value. What runs a step is its ``spec``: a frozen value whose type is the strategy
(``snnkern.plan.strategies``) and whose fields are that strategy's decisions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, List, Optional, Tuple

from .impl import Impl

__all__ = ["Step", "Component", "Plan", "Impl"]


@dataclass(frozen=True)
class Step:
    """How one layer (or sub-layer, or cycle) runs over the sequence.

    ``spec``: the strategy that runs it, with its decisions; ``address``: the layer index, then
    sub-layer indices inside compounds (a cycle: its layer ids); ``reason``: why this is not the path
    asked for (None if it is)."""

    where: str
    spec: Any
    address: Tuple[int, ...] = ()
    reason: Optional[str] = None

    @property
    def impl(self) -> Optional[Impl]:
        """The implementation of a fused loop (None for other strategies)."""
        return getattr(self.spec, "impl", None)

    def describe(self) -> str:
        return self.spec.describe()

    def leaves(self) -> Iterator["Step"]:
        """This step, or the steps it is made of (a compound's sub-layers)."""
        parts = getattr(self.spec, "parts", None)
        if parts is None:
            yield self
        else:
            for p in parts:
                yield from p.leaves()


@dataclass(frozen=True)
class Component:
    """A strongly connected component of the layer graph (``cyclic``: it has a cycle), run by ``step``."""

    layers: Tuple[int, ...]
    cyclic: bool
    step: Step

    @property
    def kind(self) -> str:
        """What the component is, as its strategy names it (``neuron``, ``cycle``, ...)."""
        return self.step.spec.kind

    @property
    def steps(self) -> Tuple[Step, ...]:
        return tuple(self.step.leaves())

    @property
    def loop(self) -> Optional[Step]:
        """The component's (first) fused loop step, if it has one."""
        return next((s for s in self.steps if getattr(s.spec, "is_loop", False)), None)


@dataclass(frozen=True)
class Plan:
    """``reference``: the time-major ``lax.scan`` of ``default_forward_fn`` runs (``reason`` says why
    when it was not asked for); else the components run layer-major, in this order."""

    reference: bool
    components: Tuple[Component, ...] = ()
    reason: Optional[str] = None             # why the reference path runs
    backend: str = "auto"                    # the backend asked for
    platform: str = ""                       # the platform it was planned for
    notes: Tuple[str, ...] = field(default=())
    checkpoint_every: Optional[int] = None   # time checkpointing: chunks of this many steps (None: off)
    chains: Tuple[str, ...] = ()             # the runs of layers that execute together, one line each

    @property
    def path(self) -> str:
        """``"reference"`` or ``"planned"``."""
        return "reference" if self.reference else "planned"

    @property
    def fallbacks(self) -> List[str]:
        out = [self.reason] if self.reason else []
        return out + [f"{s.where}: {s.reason}" for s in self.steps if s.reason]

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
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)

    __repr__ = __str__
