"""Execution planning: graph -> components -> paths (docs/plans.md). Imports only
``snnkern.kernels`` (dispatch, specs); ``snnkern.snn`` builds on it, never the other way round."""
from .planner import make_plan, recorded_plans
from .runner import run_plan
from .types import Component, Impl, Kind, Path, Plan, PlanPath, Step

__all__ = ["Plan", "PlanPath", "Component", "Step", "Kind", "Path", "Impl", "make_plan", "recorded_plans",
           "run_plan"]
