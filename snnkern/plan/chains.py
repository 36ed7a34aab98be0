"""The plan's chains: the runs of layers that execute together, one line each in explain()
(docs/plans.md "Reading a plan").

- ``layers 0-1: Linear -> LIF chain: GEMM over T·B rows + fused neuron loop (xla)``: stateless
  layers feeding one neuron, each read only by the next one;
- ``layer 1: recurrent chain Parallel([Linear, Linear_rec]) -> LayerNorm -> LIFSoftReset: GEMM over
  T·B rows + fused recurrent loop (pallas, ...)``: a recurrent compound;
- cycles with what runs them: ``layers 2-3: Linear -> LIF: a recurrence through one neuron, delay 2:
  GEMM over T·B rows + fused delay-2 loop (xla)``, ``layers 1-3: cycle of LIF, Linear, LIF: component
  loop (custom VJP)``.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import equinox as eqx

from .protocol import is_compound, is_neuron, is_stateful
from .types import Component, Kind, Path, Step

__all__ = ["chains", "is_vector_linear", "span"]


def is_vector_linear(layer) -> bool:
    """A plain ``eqx.nn.Linear`` on vectors: one GEMM over all rows of a sequence."""
    return (type(layer) is eqx.nn.Linear and layer.in_features != "scalar"
            and layer.out_features != "scalar")


def span(ids: Sequence[int]) -> str:
    """``layer 3``, ``layers 2-4`` (consecutive) or ``layers 1, 3``."""
    ids = sorted(ids)
    if len(ids) == 1:
        return f"layer {ids[0]}"
    if ids == list(range(ids[0], ids[-1] + 1)):
        return f"layers {ids[0]}-{ids[-1]}"
    return "layers " + ", ".join(str(i) for i in ids)


def _loop(step: Step) -> str:
    what = {Path.NEURON_LOOP: "fused neuron loop", Path.RECURRENT_LOOP: "fused recurrent loop"}.get(step.path)
    if what is None:
        return str(step.path)
    text = f"{what} ({step.spec.describe()})" if step.spec is not None else what
    return text + (" - a fallback, see above" if step.reason else "")


def _stateless(layer, step: Step) -> str:
    return "GEMM over T·B rows" if step.path is Path.GEMM else f"{type(layer).__name__} over all T·B rows"


def _recurrent(i: int, layer, comp: Component) -> str:
    par, mids = layer.layers[0], layer.layers[1:]
    branches = [type(b).__name__ for b in par.layers]
    branches[-1] += "_rec"
    names = " -> ".join([f"Parallel([{', '.join(branches)}])"] + [type(m).__name__ for m in mids])
    loop = next(s for s in comp.steps if s.path is Path.RECURRENT_LOOP)
    return f"{span([i])}: recurrent chain {names}: GEMM over T·B rows + {_loop(loop)}"


def chains(struct, layers: Sequence, comps: Sequence[Component]) -> Tuple[str, ...]:
    """One line per chain, in component order (see the module docstring)."""
    comp_of = {i: c for c in comps for i in c.layers}
    readers: List[List[int]] = [[] for _ in layers]
    for i, srcs in enumerate(struct.input_connectivity):
        for j in srcs:
            readers[j].append(i)
    out = []
    taken = set()
    for c in comps:
        if c.kind is Kind.RECURRENT:
            out.append(_recurrent(c.layers[0], layers[c.layers[0]], c))
        elif c.cyclic and c.steps[-1].path is Path.DELAY_LOOP:
            out.append(c.steps[-1].where)      # already the chain's line (plan/delay_loop.py)
        elif c.cyclic:
            main = c.steps[-1]
            what = main.where.split(": ", 1)[1] if ": " in main.where else ""
            names = ", ".join(type(layers[i]).__name__ for i in c.layers)
            fb = " - a fallback, see above" if main.reason else ""
            out.append(f"{span(c.layers)}: cycle of {names}{f' ({what})' if what else ''}: {main.describe()}{fb}")
        elif c.kind is Kind.NEURON:
            (i,) = c.layers
            run = [i]
            j = i
            # walk back over stateless layers that only this chain reads
            while not struct.input_layer_ids[j] and len(struct.input_connectivity[j]) == 1:
                p = struct.input_connectivity[j][0]
                cp = comp_of[p]
                if cp.kind is not Kind.STATELESS or readers[p] != [j] or p in taken or p == j:
                    break
                run.insert(0, p)
                j = p
            if len(run) == 1:
                continue
            taken.update(run)
            names = " -> ".join(type(layers[k]).__name__ for k in run)
            parts = [_stateless(layers[k], comp_of[k].steps[0]) for k in run[:-1]] + [_loop(c.steps[-1])]
            out.append(f"{span(run)}: {names} chain: {' + '.join(parts)}")
        elif c.kind is Kind.COMPOUND:
            (i,) = c.layers
            subs = layers[i].layers
            if any(is_neuron(s) for s in subs) and not any(is_compound(s) for s in subs):
                names = " -> ".join(type(s).__name__ for s in subs)
                parts = [_stateless(s, st) if not is_stateful(s) else _loop(st) for s, st in zip(subs, c.steps)]
                out.append(f"{span([i])}: {names} chain (a CompoundLayer): {' + '.join(parts)}")
    return tuple(out)
