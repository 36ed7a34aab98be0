"""The registered strategies, in the order the planner asks them (docs/architecture.md).

:data:`LAYER` runs one layer outside any cycle, :data:`CYCLE` a component with a cycle; the first
strategy that takes a site runs it. A new strategy is one module (a frozen dataclass subclassing
:class:`LayerStrategy` or :class:`CycleStrategy`) plus one entry here, or :func:`register` /
:func:`registered` at run time.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, List, Optional, Type

from .base import CycleSite, CycleStrategy, LayerSite, LayerStrategy, Strategy
from .component_loop import ComponentLoop
from .compound import Compound
from .delay import DelayLoop
from .neuron_loop import NeuronLoop
from .recurrent import RecurrentLoop
from .scan import AutodiffScan, ComponentScan
from .stateless import Batched, Gemm

__all__ = ["LAYER", "CYCLE", "register", "unregister", "registered", "Strategy", "LayerStrategy", "CycleStrategy",
           "LayerSite", "CycleSite", "Batched", "Gemm", "Compound", "NeuronLoop", "AutodiffScan", "RecurrentLoop",
           "DelayLoop", "ComponentLoop", "ComponentScan"]

LAYER: List[Type[LayerStrategy]] = [Compound, Gemm, Batched, NeuronLoop, AutodiffScan]
CYCLE: List[Type[CycleStrategy]] = [RecurrentLoop, DelayLoop, ComponentLoop, ComponentScan]


def _table(strategy: Type[Strategy]) -> list:
    if issubclass(strategy, LayerStrategy):
        return LAYER
    if issubclass(strategy, CycleStrategy):
        return CYCLE
    raise TypeError(f"{strategy.__name__} is neither a LayerStrategy nor a CycleStrategy")


def register(strategy: Type[Strategy], before: Optional[Type[Strategy]] = None) -> None:
    """Ask ``strategy`` before ``before`` (default: before the fallbacks at the end of its table)."""
    table = _table(strategy)
    if strategy in table:
        raise ValueError(f"{strategy.__name__} is registered already")
    if before is None:
        at = next((k for k, s in enumerate(table) if s.is_fallback), len(table))
    else:
        at = table.index(before)
    table.insert(at, strategy)


def unregister(strategy: Type[Strategy]) -> None:
    _table(strategy).remove(strategy)


@contextlib.contextmanager
def registered(strategy: Type[Strategy], before: Optional[Type[Strategy]] = None) -> Iterator[None]:
    """``strategy`` registered inside the block (tests, experiments). Plans are made at trace time:
    trace inside the block."""
    register(strategy, before)
    try:
        yield
    finally:
        unregister(strategy)
