"""Graph analysis: strongly connected components of the layer graph, in topological order."""
from __future__ import annotations

from typing import List, Sequence, Tuple

__all__ = ["components"]


def components(num_layers: int, input_connectivity: Sequence[Sequence[int]]) -> List[Tuple[Tuple[int, ...], bool]]:
    """SCCs of the graph with edges ``j -> i`` for ``j in input_connectivity[i]``.

    Returns ``[(layer ids sorted, cyclic), ...]`` in a topological order of the condensation
    (sources before consumers; ties broken by the smallest layer id, so plain chains keep list
    order). ``cyclic`` is True for a component of several layers or a layer with a self-edge.
    """
    succ = [[] for _ in range(num_layers)]
    for i, srcs in enumerate(input_connectivity):
        for j in srcs:
            succ[j].append(i)

    # Tarjan, iterative (deep chains must not hit the recursion limit)
    index, low, on_stack, stack, comp_of = {}, {}, set(), [], [-1] * num_layers
    comps: List[List[int]] = []
    counter = 0
    for root in range(num_layers):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            v, pos = work.pop()
            if pos == 0:
                index[v] = low[v] = counter
                counter += 1
                stack.append(v)
                on_stack.add(v)
            if pos < len(succ[v]):
                work.append((v, pos + 1))
                w = succ[v][pos]
                if w not in index:
                    work.append((w, 0))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp_of[w] = len(comps)
                    comp.append(w)
                    if w == v:
                        break
                comps.append(sorted(comp))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])

    # Kahn on the condensation, smallest layer id first
    n = len(comps)
    deps = [set() for _ in range(n)]
    for i, srcs in enumerate(input_connectivity):
        for j in srcs:
            if comp_of[j] != comp_of[i]:
                deps[comp_of[i]].add(comp_of[j])
    done, order = set(), []
    while len(order) < n:
        ready = [c for c in range(n) if c not in done and deps[c] <= done]
        c = min(ready, key=lambda c: comps[c][0])
        done.add(c)
        order.append(c)
    out = []
    for c in order:
        ids = tuple(comps[c])
        cyclic = len(ids) > 1 or any(i in input_connectivity[i] for i in ids)
        out.append((ids, cyclic))
    return out
