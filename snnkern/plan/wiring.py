"""The graph's wiring, written once: what a layer receives at a step, in merge order.

docs/semantics.md "Several inputs": the external inputs of ``input_layer_ids[i]`` first, then the
sources of ``input_connectivity[i]`` in the listed order. Every place that feeds a layer (the
reference step, ``init_state``, the planner, the runner, the cycle loops) asks :func:`sources` or
:func:`gather`, so the order cannot drift between paths.
"""
from __future__ import annotations

from typing import Callable, List, NamedTuple, TypeVar

__all__ = ["Source", "sources", "gather"]

V = TypeVar("V")


class Source(NamedTuple):
    """One input of a layer: external input ``index`` (``external``) or the output of layer ``index``."""

    external: bool
    index: int


def sources(struct, i: int) -> List[Source]:
    """Layer ``i``'s inputs in merge order: external inputs first, then source layers."""
    return ([Source(True, e) for e in struct.input_layer_ids[i]]
            + [Source(False, j) for j in struct.input_connectivity[i]])


def gather(struct, i: int, external: Callable[[int], V], layer: Callable[[int], V]) -> List[V]:
    """``[external(e) for each external input] + [layer(j) for each source layer]`` of layer ``i``."""
    return [external(s.index) if s.external else layer(s.index) for s in sources(struct, i)]
