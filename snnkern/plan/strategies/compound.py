"""A ``CompoundLayer`` outside any cycle: its sub-layers chained within a step, each run over the
whole sequence by its own strategy, in order (a Linear -> neuron compound is a GEMM then a neuron loop)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Tuple

import jax.random as jrand

from ..protocol import is_compound, read_from_out
from ..types import Step
from .base import LayerSite, LayerStrategy, Taken

__all__ = ["Compound"]


@dataclass(frozen=True)
class Compound(LayerStrategy):
    """The sub-layers' steps (``parts``), run one after another over the whole sequence."""

    parts: Tuple[Step, ...]

    kind: ClassVar[str] = "compound"

    @classmethod
    def take(cls, site: LayerSite) -> Taken:
        if not is_compound(site.layer):
            return None
        parts, x, subs = [], site.x, site.layer.layers
        for m, (sub, st) in enumerate(zip(subs, site.state)):
            sub_site = LayerSite(site.planner, f"{site.where} sub {m} ({type(sub).__name__})", site.address + (m,),
                                 sub, st, x)
            parts.append(site.planner.plan_layer(sub_site))
            if m + 1 < len(subs):       # the next sub-layer's input
                x = read_from_out(sub, sub_site.out)
        return Step(site.where, cls(tuple(parts)), site.address)

    def run(self, layer, state, inp, key):
        keys = jrand.split(key, len(layer.layers))
        h, states, outs = inp, [], []
        for part, sub, st, k in zip(self.parts, layer.layers, state, keys):
            fs, h, _ = part.spec.run(sub, st, h, k)
            states.append(fs)
            outs.append(h)
        return states, outs, None

    def describe(self) -> str:
        return " + ".join(p.describe() for p in self.parts)
