"""What every strategy is: a frozen spec that says whether it takes a site, runs it and describes it.

A **strategy** is one way to run part of a model over the whole sequence (docs/architecture.md). It is
a frozen dataclass: its type says *what* runs, its fields are the decisions the planner made for one
site (implementation, tiling, outputs wanted), so the plan holds no arrays and no prose to parse.

- ``take(site)`` (a classmethod): a :class:`~snnkern.plan.types.Step` holding the spec when it takes
  the site, the reason (a string) when it could but does not, None when the site is not its kind.
- ``run(...)``: the spec and the arrays -> the outputs.
- ``describe()`` (the explain() line) and ``summary(layer)`` (its part of a chain line).

Two kinds of site: a :class:`LayerSite` (one layer or sub-layer outside any cycle) and a
:class:`CycleSite` (a strongly connected component with a cycle). The planner asks the registered
strategies of the site's kind in order (``snnkern.plan.strategies.LAYER`` / ``CYCLE``); the first that
takes it runs it. A strategy with ``is_fallback`` runs what no fused path takes: taking it is logged
with the reasons of the strategies before it (strict mode raises instead).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, ClassVar, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp

from ..protocol import call_layer, is_stateful, read_from_out
from ..seq import aval
from ..types import Step

__all__ = ["Strategy", "LayerStrategy", "CycleStrategy", "LayerSite", "CycleSite", "Taken", "KEY", "span",
           "fallback_mark"]

KEY = jax.random.PRNGKey(0)   # planning traces layers for their shapes only, which no key changes
_DEFAULT_FLOAT = jnp.zeros(()).dtype   # what init_state feeds a layer (zeros of the input shape)

Taken = Union[Step, str, None]


@dataclass(frozen=True)
class LayerSite:
    """One layer (or a compound's sub-layer) outside any cycle, with its abstract per-step input.

    ``planner``: the planner (``T``, ``platform``; :meth:`plan_layer` for sub-sites); ``state``: the
    layer's state (avals); ``x``: its merged per-step input (a list for a Parallel); ``want_out`` /
    ``want_read``: its output sequence is needed / a later component reads it; ``top``: a whole
    component (not inside a compound)."""

    planner: Any
    where: str
    address: Tuple[int, ...]
    layer: Any
    state: Any
    x: Any
    want_out: bool = True
    want_read: bool = False
    top: bool = False

    @functools.cached_property
    def out(self):
        """The per-step output aval: the layer traced abstractly, once per site. A stateless layer's
        state is its output for its initial (float) input (docs/semantics.md "States"): for a float
        input of that shape it is the output aval, and the layer is not traced again."""
        floats = jax.tree.leaves(self.x) + jax.tree.leaves(self.state)
        if not is_stateful(self.layer) and all(jnp.result_type(a) == _DEFAULT_FLOAT for a in floats):
            return aval(self.state[0])
        return jax.eval_shape(lambda s, v: call_layer(self.layer, s, v, KEY)[1], self.state, self.x)


@dataclass(frozen=True)
class CycleSite:
    """A strongly connected component with a cycle: layers ``ids`` of ``planner`` (whose ``struct``,
    ``layers``, ``states``, ``inputs(i)``, ``reads``, ``final`` and ``consumed`` describe the graph)."""

    planner: Any
    ids: Tuple[int, ...]
    where: str


class Strategy:
    """Base of every strategy (see the module docstring)."""

    kind: ClassVar[str] = ""           # what a component it runs is, in explain()
    name: ClassVar[str] = ""           # the path's name in fallback messages
    is_fallback: ClassVar[bool] = False
    is_loop: ClassVar[bool] = False    # a fused time loop with a hand-written backward pass

    @classmethod
    def take(cls, site) -> Taken:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def summary(self, layer=None) -> str:
        """This step's part of a chain line in explain() (default: its description)."""
        return self.describe()


class LayerStrategy(Strategy):
    """Runs one layer over the whole sequence."""

    @classmethod
    def take(cls, site: LayerSite) -> Taken:
        raise NotImplementedError

    def run(self, layer, state, inp, key) -> Tuple[Any, Any, Optional[Any]]:
        """``(final_state, out_seq, reads)``: ``reads`` the one-step-shifted read sequence when the
        strategy emits it itself (None: the runner shifts the output)."""
        raise NotImplementedError

    def run_component(self, run, ids) -> None:
        """Run the one-layer component ``ids`` of the planned call ``run`` (the runner's state)."""
        (i,) = ids
        layer = run.layers[i]
        final, out, reads = self.run(layer, run.states[i], run.merged_outside(i, ids), run.keys[i])
        run.finals[i], run.outs[i] = final, out
        if reads is not None:
            run.shifted[i] = reads
        else:
            run.reads[i] = read_from_out(layer, out)


class CycleStrategy(Strategy):
    """Runs a component with a cycle over the whole sequence."""

    kind: ClassVar[str] = "cycle"

    @classmethod
    def take(cls, site: CycleSite) -> Taken:
        raise NotImplementedError

    def run_component(self, run, ids) -> None:
        raise NotImplementedError

    def chain_line(self, step: Step, layers) -> str:
        """This cycle's line among explain()'s chains (``step``: the one that holds this spec)."""
        names = ", ".join(type(layers[i]).__name__ for i in step.address)
        return f"{span(step.address)}: cycle of {names}: {self.summary()}{fallback_mark(step)}"


def span(ids: Sequence[int]) -> str:
    """``layer 3``, ``layers 2-4`` (consecutive) or ``layers 1, 3``."""
    ids = sorted(ids)
    if len(ids) == 1:
        return f"layer {ids[0]}"
    if ids == list(range(ids[0], ids[-1] + 1)):
        return f"layers {ids[0]}-{ids[-1]}"
    return "layers " + ", ".join(str(i) for i in ids)


def fallback_mark(step: Step) -> str:
    """What a chain line adds for a step that fell back (the component table has the reason)."""
    return " - a fallback, see above" if step.reason else ""

