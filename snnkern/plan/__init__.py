"""Execution planning: graph -> components -> strategies (docs/plans.md, docs/architecture.md).
Imports only ``snnkern.kernels`` and ``snnkern.settings``; ``snnkern.snn`` builds on it, never the
other way round."""
from . import strategies
from .impl import Impl
from .planner import make_plan, recorded_plans
from .runner import run_plan
from .types import Component, Plan, Step

__all__ = ["Plan", "Component", "Step", "Impl", "make_plan", "recorded_plans", "run_plan", "strategies"]
