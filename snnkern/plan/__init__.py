"""Execution planning: graph -> components -> paths (SPEC §9). Never imports a backend directly,
only ``snnkern.kernels`` (dispatch and loops)."""
from .planner import Component, Plan, Step, explain, make_plan
from .runner import run_plan

__all__ = ["Plan", "Component", "Step", "make_plan", "explain", "run_plan"]
