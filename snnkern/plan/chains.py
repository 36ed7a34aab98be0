"""The plan's chains: the runs of layers that execute together, one line each in explain()
(docs/plans.md "Reading a plan"), built from the steps' specs (no text is parsed).

- ``layers 0-1: Linear -> LIF chain: GEMM over T·B rows + fused neuron loop (xla)``: stateless layers
  feeding one neuron, each read only by the next one (also inside one ``CompoundLayer``);
- a cycle, as its strategy says it (:meth:`~snnkern.plan.strategies.CycleStrategy.chain_line`):
  ``layer 1: recurrent chain Parallel([Linear, Linear_rec]) -> LayerNorm -> LIFSoftReset: GEMM over
  T·B rows + fused recurrent loop (xla)``, ``layers 2-3: Linear -> LIF: a recurrence through one
  neuron, delay 2: GEMM over T·B rows + fused delay-2 loop (xla)``, ``layers 1-3: cycle of LIF, Linear,
  LIF: component loop (custom VJP) - a fallback, see above``.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

from .protocol import is_compound, is_neuron
from .strategies import Batched, Compound, NeuronLoop
from .strategies.base import fallback_mark, span
from .types import Component, Step

__all__ = ["chains"]


def _part(layer, step: Step) -> str:
    return step.spec.summary(layer) + fallback_mark(step)


def _feed_forward(struct, c: Component, comp_of, readers, taken) -> List[int]:
    """The run of stateless layers that only this neuron reads, ending in it."""
    (i,) = c.layers
    run, j = [i], i
    while not struct.input_layer_ids[j] and len(struct.input_connectivity[j]) == 1:
        p = struct.input_connectivity[j][0]
        if not isinstance(comp_of[p].step.spec, Batched) or readers[p] != [j] or p in taken or p == j:
            break
        run.insert(0, p)
        j = p
    return run


def chains(struct, layers: Sequence, comps: Sequence[Component]) -> Tuple[str, ...]:
    """One line per chain, in component order (see the module docstring)."""
    comp_of = {i: c for c in comps for i in c.layers}
    readers: List[List[int]] = [[] for _ in layers]
    for i, srcs in enumerate(struct.input_connectivity):
        for j in srcs:
            readers[j].append(i)
    out, taken = [], set()
    for c in comps:
        spec = c.step.spec
        if c.cyclic:
            out.append(spec.chain_line(c.step, layers))
        elif isinstance(spec, NeuronLoop):
            run = _feed_forward(struct, c, comp_of, readers, taken)
            if len(run) > 1:
                taken.update(run)
                names = " -> ".join(type(layers[k]).__name__ for k in run)
                parts = [_part(layers[k], comp_of[k].step) for k in run]
                out.append(f"{span(run)}: {names} chain: {' + '.join(parts)}")
        elif isinstance(spec, Compound):
            subs = layers[c.layers[0]].layers
            if any(is_neuron(s) for s in subs) and not any(is_compound(s) for s in subs):
                names = " -> ".join(type(s).__name__ for s in subs)
                parts = [_part(s, st) for s, st in zip(subs, spec.parts)]
                out.append(f"{span(c.layers)}: {names} chain (a CompoundLayer): {' + '.join(parts)}")
    return tuple(out)
