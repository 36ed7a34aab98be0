"""NIR graph -> snnkern model (:func:`from_nir`). The mapping and its semantics: docs/nir.md."""
from __future__ import annotations

from collections import defaultdict
from typing import Dict, List, Optional, Tuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import snn
from . import _common as C
from .layers import Recurrent, Scale, Threshold

__all__ = ["from_nir"]

_EPS = 4 * float(np.finfo(np.float32).eps)   # "equal to 1" for r, w_in, r*dt stored as float32


def _arr(x, dtype=np.float64) -> np.ndarray:
    return np.asarray(x, dtype=dtype)


def _ints(x, n: int = 2) -> tuple:
    v = np.atleast_1d(np.asarray(x)).astype(int).tolist()
    return tuple(v * n if len(v) == 1 else v)


def _key():
    return jax.random.PRNGKey(0)


def _is_one(c) -> bool:
    return bool(np.all(np.abs(_arr(c) - 1.0) <= _EPS))


# ----------------------------------------------------------------------------------------------
# One node -> a chain of snnkern modules


class _Nodes:
    def __init__(self, nir, dt: float, spike_fn):
        self.nir, self.dt, self.spike_fn = nir, dt, spike_fn

    def sf(self, info):
        return self.spike_fn if self.spike_fn is not None else C.spike_fn_from(info.get("spike_fn"))

    def scale(self, c, shape, where) -> list:
        """``[Scale(c)]`` for an input gain ``c`` (r, w_in, dt*r) that is not 1, else ``[]``."""
        if _is_one(c):
            return []
        return [Scale(jnp.asarray(np.broadcast_to(_arr(c, np.float32), shape)))]

    def no_leak(self, node, where):
        if np.any(_arr(node.v_leak) != 0):
            raise C.NIRConversionError(f"cannot import {where}: v_leak != 0 (snnkern's neurons leak towards 0)")

    def hard_reset_to_zero(self, node, where, cls):
        if np.any(_arr(node.v_reset) != 0):
            raise C.NIRConversionError(
                f"cannot import {where}: v_reset != 0; snnkern's {cls} resets to 0 (its reset_val subtracts a "
                f"constant instead)")

    def threshold(self, node_thr, info):
        return C.value_in_form(C.threshold_from_nir(node_thr), info.get("threshold"))

    def modules(self, name: str, node) -> list:
        nir, dt = self.nir, self.dt
        cls = type(node).__name__
        where = f"NIR node {name!r} ({cls})"
        info = C.loads(node) or {}
        srg = dict(stop_reset_grad=bool(info.get("stop_reset_grad", True)))
        if isinstance(node, (nir.Affine, nir.Linear)):
            w = _arr(node.weight, np.float32)
            if w.ndim != 2:
                raise C.NIRConversionError(f"cannot import {where}: weight of shape {w.shape}; snnkern's Linear "
                                           f"needs a 2-d (out, in) weight")
            bias = isinstance(node, nir.Affine) and node.bias is not None
            lin = eqx.nn.Linear(w.shape[1], w.shape[0], use_bias=bias, key=_key())
            lin = eqx.tree_at(lambda m: m.weight, lin, jnp.asarray(w))
            if bias:
                lin = eqx.tree_at(lambda m: m.bias, lin, jnp.asarray(_arr(node.bias, np.float32).reshape(w.shape[0])))
            return [lin]
        if isinstance(node, nir.Conv2d):
            return [self.conv2d(node, where, info)]
        if isinstance(node, nir.Flatten):
            shape = node.input_type.get("input") if isinstance(node.input_type, dict) else None
            nd = len(shape) if shape is not None else None
            start, end = int(node.start_dim), int(node.end_dim)
            if nd is None or not (nd <= 1 or (start in (0, -nd) and end in (-1, nd - 1))):
                raise C.NIRConversionError(
                    f"cannot import {where}: start_dim={start}, end_dim={end} on input {shape} keeps several "
                    f"axes; snnkern's Flatten flattens a whole sample (start_dim=0, end_dim=-1)")
            return [snn.Flatten()]
        if isinstance(node, (nir.SumPool2d, nir.AvgPool2d)):
            kw = dict(kernel_size=_ints(node.kernel_size), stride=_ints(node.stride), padding=_ints(node.padding))
            if isinstance(node, nir.AvgPool2d):
                return [eqx.nn.AvgPool2d(**kw)]
            return [eqx.nn.Pool(init=0.0, operation=jax.lax.add, num_spatial_dims=2, **kw)]
        if isinstance(node, nir.Scale):
            return [Scale(jnp.asarray(C.value_in_form(_arr(node.scale, np.float32), info.get("scale"))))]
        if isinstance(node, nir.Threshold):
            return [Threshold(self.threshold(node.threshold, info), self.sf(info))]
        if isinstance(node, nir.LI):
            self.no_leak(node, where)
            a = C.tau_to_decay(node.tau, dt, where, "tau")
            return self.scale(node.r, a.shape, where) + [snn.SimpleLI(C.decay_array([a], info.get("decay")))]
        if isinstance(node, nir.LIF):
            self.no_leak(node, where)
            self.hard_reset_to_zero(node, where, "SimpleLIF")
            a = C.tau_to_decay(node.tau, dt, where, "tau")
            return self.scale(node.r, a.shape, where) + [snn.SimpleLIF(
                C.decay_array([a], info.get("decay")), spike_fn=self.sf(info),
                threshold=self.threshold(node.v_threshold, info), **srg)]
        if isinstance(node, nir.CubaLIF):
            self.no_leak(node, where)
            a = C.tau_to_decay(node.tau_mem, dt, where, "tau_mem")
            b = C.tau_to_decay(node.tau_syn, dt, where, "tau_syn")
            v_reset = _arr(node.v_reset, np.float32)
            form = info.get("reset")
            reset = None if (not np.any(v_reset != 0) and form in (None, "none")) else C.value_in_form(
                v_reset, None if form == "none" else form)
            gain = _arr(node.r) * _arr(node.w_in)   # r*i of a linear synapse = the synapse of r*w_in*I
            return self.scale(gain, a.shape, where) + [snn.LIF(
                C.decay_array([a, b], info.get("decay")), spike_fn=self.sf(info),
                threshold=self.threshold(node.v_threshold, info), reset_val=reset, **srg)]
        if isinstance(node, nir.IF):
            self.hard_reset_to_zero(node, where, "SimpleIAF")
            shape = _arr(node.v_threshold).shape
            leak_form = info.get("leak")
            leak = jnp.zeros(tuple(leak_form) if isinstance(leak_form, list) else (), jnp.float32)
            return self.scale(_arr(node.r) * dt, shape, where) + [snn.SimpleIAF(
                leak=leak, threshold=self.threshold(node.v_threshold, info), spike_fn=self.sf(info), **srg)]
        reasons = {"I": "an integrator without spikes has no snnkern layer",
                   "CubaLI": "its membrane reads the synaptic current of the previous step, which no snnkern "
                             "layer chain does without a spike",
                   "Conv1d": "snnkern.nir does not map Conv1d"}
        raise C.NIRConversionError(f"cannot import {where}: {reasons.get(cls, 'no snnkern layer for this node type')}")

    def conv2d(self, node, where, info):
        w = _arr(node.weight, np.float32)
        groups = int(np.asarray(node.groups))
        stride, dilation = _ints(node.stride), _ints(node.dilation)
        pad = node.padding
        if isinstance(pad, bytes):
            pad = pad.decode("utf8")
        if isinstance(pad, str):
            if pad == "same" and stride != (1, 1):
                raise C.NIRConversionError(f"cannot import {where}: padding 'same' with stride {stride}")
            padding = pad.upper()
        else:
            padding = _ints(pad)
        use_bias = bool(info.get("use_bias", True))
        conv = eqx.nn.Conv2d(w.shape[1] * groups, w.shape[0], w.shape[2:], stride=stride, padding=padding,
                             dilation=dilation, groups=groups, use_bias=use_bias, key=_key())
        conv = eqx.tree_at(lambda m: m.weight, conv, jnp.asarray(w))
        if use_bias:
            conv = eqx.tree_at(lambda m: m.bias, conv, jnp.asarray(_arr(node.bias, np.float32).reshape(-1, 1, 1)))
        return conv


# ----------------------------------------------------------------------------------------------
# Graph flattening (subgraphs inlined)


def flatten_graph(nir, graph, prefix: str = "") -> Tuple[Dict[str, object], List[Tuple[str, str]]]:
    """Nodes and edges with every subgraph ``S`` inlined as ``S.<node>`` (its Input/Output removed)."""
    nodes, edges, ports = {}, [], {}
    for name, node in graph.nodes.items():
        full = prefix + name
        if not isinstance(node, nir.NIRGraph):
            nodes[full] = node
            continue
        inner, iedges = flatten_graph(nir, node, full + ".")
        ins = [full + "." + k for k, v in node.nodes.items() if isinstance(v, nir.Input)]
        outs = [full + "." + k for k, v in node.nodes.items() if isinstance(v, nir.Output)]
        if len(ins) != 1 or len(outs) != 1:
            raise C.NIRConversionError(f"cannot import subgraph {full!r}: it has {len(ins)} Input and {len(outs)} "
                                       f"Output nodes; snnkern.nir inlines subgraphs with one of each")
        if (ins[0], outs[0]) in iedges:
            raise C.NIRConversionError(f"cannot import subgraph {full!r}: its Input feeds its Output directly")
        ports[full] = ([v for u, v in iedges if u == ins[0]], [u for u, v in iedges if v == outs[0]])
        nodes.update({k: v for k, v in inner.items() if k not in (ins[0], outs[0])})
        edges += [(u, v) for u, v in iedges if u != ins[0] and v != outs[0]]

    def resolve(name, side):
        if name in ports:
            return ports[name][side]
        head = name.rsplit(".", 1)[0]
        if name not in nodes and head in ports:   # an edge naming a subgraph's own Input/Output
            return ports[head][side]
        if name not in nodes:
            raise C.NIRConversionError(f"cannot import: edge endpoint {name!r} is not a node of the graph")
        return [name]

    for u, v in graph.edges:
        edges += [(a, b) for a in resolve(prefix + u, 1) for b in resolve(prefix + v, 0)]
    return nodes, edges


def topology(nir, nodes, edges, dt: float):
    """What must match for a graph to be the one snnkern would write for a model."""
    kinds = {k: type(v).__name__ for k, v in nodes.items()}
    delays = {k: round(float(np.max(_arr(v.delay))) / dt, 6) for k, v in nodes.items() if isinstance(v, nir.Delay)}
    return kinds, sorted(set(edges)), delays


# ----------------------------------------------------------------------------------------------
# The generic import


class _Importer:
    def __init__(self, nir, nodes, edges, dt, spike_fn):
        self.nir, self.nodes, self.edges, self.dt = nir, nodes, edges, dt
        self.conv = _Nodes(nir, dt, spike_fn)

    def err(self, msg):
        raise C.NIRConversionError(f"cannot import the NIR graph: {msg}")

    def steps(self, name, node) -> int:
        d = _arr(node.delay)
        k = d / self.dt
        r = np.round(k)
        if d.size == 0 or not np.all(r == r.flat[0]) or not np.allclose(k, r, rtol=1e-6, atol=1e-9) or r.flat[0] < 0:
            self.err(f"Delay node {name!r}: delay {np.unique(d)} is not one whole number of steps of dt = {self.dt:g}")
        return int(r.flat[0])

    def build(self):
        nir = self.nir
        nodes = self.nodes
        inputs = [k for k, v in nodes.items() if isinstance(v, nir.Input)]
        outputs = sorted(k for k, v in nodes.items() if isinstance(v, nir.Output))
        if len(inputs) != 1:
            self.err(f"it has {len(inputs)} Input nodes ({inputs}); snnkern.nir imports graphs with one")
        if not outputs:
            self.err("it has no Output node")
        inp = inputs[0]
        in_shape = tuple(int(s) for s in np.atleast_1d(nodes[inp].input_type["input"]))
        delay_steps = {k: self.steps(k, v) for k, v in nodes.items() if isinstance(v, nir.Delay)}
        compute = [k for k, v in nodes.items() if not isinstance(v, (nir.Input, nir.Output, nir.Delay))]
        mods = {k: self.conv.modules(k, nodes[k]) for k in compute}
        neuron = {k: isinstance(nodes[k], (nir.LI, nir.LIF, nir.CubaLIF, nir.IF)) for k in compute}

        ins_of = defaultdict(list)
        for u, v in self.edges:
            ins_of[v].append(u)

        def resolve(u, k, seen):
            if u not in delay_steps:
                return [(u, k)]
            if u in seen:
                self.err(f"Delay nodes {sorted(seen)} form a cycle of delays only")
            if not ins_of[u]:
                self.err(f"Delay node {u!r} has no input")
            return [r for x in ins_of[u] for r in resolve(x, k + delay_steps[u], seen | {u})]

        W = [(s, v, k) for u, v in self.edges if v not in delay_steps for s, k in resolve(u, 0, frozenset())]
        self.W = self.contract_cycles(W, compute, mods, neuron)
        compute = [k for k in compute if k in mods]
        return self.assemble(inp, in_shape, outputs, compute, mods)

    def contract_cycles(self, W, compute, mods, neuron):
        """Each cycle without a Delay -> a Recurrent on its neuron (docs/nir.md)."""
        idx = {k: n for n, k in enumerate(compute)}
        succ = [[] for _ in compute]
        for u, v, k in W:
            if k == 0 and u in idx and v in idx:
                succ[idx[u]].append(idx[v])
        comp = C.scc(len(compute), succ)
        groups = defaultdict(list)
        for k, c in zip(compute, comp):
            groups[c].append(k)
        for members in groups.values():
            cyc = set(members)
            if len(members) == 1 and not any(u == v == members[0] and k == 0 for u, v, k in W):
                continue
            neurons = [m for m in members if neuron[m]]
            if len(neurons) != 1:
                what = "no neuron" if not neurons else f"{len(neurons)} neurons ({sorted(neurons)})"
                self.err(f"the cycle through {sorted(members)} has {what} and no Delay node: its timing is undefined "
                         f"(snnkern reads a cycle without a Delay through its one neuron, one step later); add a "
                         f"Delay node to it")
            n = neurons[0]
            path, cur = [], n
            while True:
                nxt = [v for u, v, k in W if u == cur and k == 0 and v in cyc]
                if len(nxt) != 1:
                    self.err(f"the cycle through {sorted(members)} is not a single loop (node {cur!r} feeds "
                             f"{len(nxt)} of its nodes)")
                cur = nxt[0]
                if cur == n:
                    break
                path.append(cur)
            if len(path) + 1 != len(members):
                self.err(f"the cycle through {sorted(members)} is not a single loop")
            for p in path:
                ins = [e for e in W if e[1] == p]
                outs = [e for e in W if e[0] == p]
                if len(ins) != 1 or len(outs) != 1:
                    self.err(f"node {p!r} is on the feedback loop of {n!r} but also has other inputs or outputs; "
                             f"snnkern's Recurrent needs a feedback path of its own")
            mods[n] = [Recurrent(mods[n], [m for p in path for m in mods[p]])]
            for p in path:
                del mods[p]
            W = [e for e in W if not (e[0] in cyc and e[1] in cyc and e[2] == 0)]
        return W

    def assemble(self, inp, in_shape, outputs, compute, mods):
        W = self.W
        find, preds0, succ0, outer, in_items, regions = self.regions(compute)
        rank = self.reachability(inp, compute)
        layers, ilid, conn = [], [], []
        info = {}   # region id -> (layer index, tail)
        pending = []
        delayed_src = {u for u, _, k in W if k >= 1}
        for rid, members in sorted(regions.items(), key=lambda kv: min(rank[m] for m in kv[1])):
            chain, par, tail, ports = self.region(members, preds0, succ0, outer, in_items, mods, inp)
            subs = ([par] if par is not None else []) + chain
            if tail in delayed_src and not isinstance(subs[-1], snn.StatefulLayer):
                # a stateless layer exposes layer(0) (a bias) at t = 0, a NIR Delay 0: a trailing Identity
                # sub-layer exposes 0 and passes the value on within the step
                subs.append(eqx.nn.Identity())
            module = subs[0] if len(subs) == 1 else snn.CompoundLayer(subs)
            info[rid] = (len(layers), tail)
            layers.append(module)
            ilid.append([])
            conn.append([])
            pending.append(ports)

        def source_layer(u, k, reader):
            """The layer whose output, read through one model edge, is ``u`` delayed by ``k`` steps."""
            if u == inp:
                first = len(layers)
                layers.append(eqx.nn.Identity())
                ilid.append([0])
                conn.append([])
                prev, k = first, k - 1
            else:
                lid, tail = info[find(u)]
                if tail != u:
                    self.err(f"node {u!r} is read with a delay by {reader!r} but feeds {succ0[u]} within the step; "
                             f"a delayed edge can only leave the last node of a chain")
                prev, k = lid, k - 1
            for _ in range(k):
                layers.append(eqx.nn.Identity())
                ilid.append([])
                conn.append([prev])
                prev = len(layers) - 1
            return prev

        for (rid, members), ports in zip(sorted(regions.items(), key=lambda kv: min(rank[m] for m in kv[1])), pending):
            lid = info[rid][0]
            for u, k in ports:
                if u == inp and k == 0:
                    ilid[lid].append(0)
                else:
                    conn[lid].append(source_layer(u, k, members[0]))
        final = []
        for o in outputs:
            ins = [(u, k) for u, v, k in W if v == o]
            if len(ins) != 1:
                self.err(f"Output node {o!r} has {len(ins)} inputs; give it one")
            u, k = ins[0]
            if u == inp or k > 0:
                final.append(source_layer(u, k + 1, o))
            else:
                lid, tail = info[find(u)]
                if tail != u:
                    self.err(f"node {u!r} feeds Output {o!r} and {succ0[u]} within the step; only the last node "
                             f"of a chain can be an output")
                final.append(lid)
        return self.model(layers, ilid, conn, final), in_shape

    def regions(self, compute):
        """The compute nodes joined by 0-delay edges (each region becomes one layer, a chain within a
        step): ``(find, preds0, succ0, outer, in_items, regions)``."""
        W = self.W
        cset = set(compute)
        parent = {k: k for k in compute}

        def find(k):
            while parent[k] != k:
                parent[k] = parent[parent[k]]
                k = parent[k]
            return k

        preds0, succ0, outer = defaultdict(list), defaultdict(list), defaultdict(list)
        in_items = defaultdict(list)      # node -> its inputs in edge order: ("p", pred) | ("o", (src, k))
        for u, v, k in W:
            if v not in cset:
                continue
            if k == 0 and u in cset:
                preds0[v].append(u)
                succ0[u].append(v)
                in_items[v].append(("p", u))
                parent[find(u)] = find(v)
            else:
                outer[v].append((u, k))
                in_items[v].append(("o", (u, k)))
        for k in compute:
            if len(succ0[k]) > 1:
                self.err(f"node {k!r} feeds {succ0[k]} within the same step; snnkern chains layers within a "
                         f"step (a CompoundLayer), so a node can feed only one node without a Delay")
        regions = defaultdict(list)
        for k in compute:
            regions[find(k)].append(k)
        return find, preds0, succ0, outer, in_items, regions

    @staticmethod
    def model(layers, ilid, conn, final):
        """The model of ``layers`` wired by ``ilid`` / ``conn`` / ``final``, sources listed before
        consumers (``init_state`` walks the list; back edges only on cycles); a chain is a Sequential."""
        n = len(layers)
        order, done = [], set()
        while len(order) < n:
            ready = [i for i in range(n) if i not in done and all(j in done or j == i for j in conn[i])]
            i = min(ready) if ready else min(i for i in range(n) if i not in done)
            order.append(i)
            done.add(i)
        new = {old: k for k, old in enumerate(order)}
        layers = [layers[i] for i in order]
        ilid = [ilid[i] for i in order]
        conn = [[new[j] for j in conn[i]] for i in order]
        final = [new[f] for f in final]
        if (ilid == [[0]] + [[]] * (n - 1) and conn == [[]] + [[i] for i in range(n - 1)] and final == [n - 1]):
            return snn.Sequential(*layers)
        graph = snn.GraphStructure(n, input_layer_ids=ilid, final_layer_ids=final, input_connectivity=conn)
        return snn.StatefulModel(graph, layers)

    def reachability(self, inp, compute) -> Dict[str, int]:
        succ = defaultdict(list)
        for u, v, _ in self.W:
            succ[u].append(v)
        rank, queue = {inp: 0}, [inp]
        while queue:
            u = queue.pop(0)
            for v in succ[u]:
                if v not in rank:
                    rank[v] = len(rank)
                    queue.append(v)
        missing = [k for k in compute if k not in rank]
        if missing:
            self.err(f"nodes {missing} are not reachable from the Input")
        return rank

    def region(self, members, preds0, succ0, outer, in_items, mods, inp):
        """A chain of nodes without delays: ``(sub-layers, Parallel or None, tail, inputs [(src, k)])``."""
        tails = [m for m in members if not succ0[m]]
        if len(tails) != 1:
            self.err(f"nodes {sorted(members)} do not form a chain")
        tail = tails[0]
        path, cur = [tail], tail
        while len(preds0[cur]) == 1 and not outer[cur]:
            cur = preds0[cur][0]
            path.insert(0, cur)
        chain = [m for p in path for m in mods[p]]
        covered = set(path)
        if not preds0[cur]:
            ports = list(outer[cur])
            if not ports:
                self.err(f"node {cur!r} receives nothing")
            return chain, None, tail, ports
        branches = []     # (input (src, k), modules)
        for kind, item in in_items[cur]:
            if kind == "o":
                branches.append((item, []))
                continue
            bpath, c = [item], item
            while len(preds0[c]) == 1 and not outer[c]:
                c = preds0[c][0]
                bpath.insert(0, c)
            if preds0[c] or len(outer[c]) != 1:
                self.err(f"node {c!r} merges several inputs inside a branch of {cur!r}; snnkern merges the "
                         f"inputs of a layer in one place (a Parallel)")
            covered |= set(bpath)
            branches.append((outer[c][0], [m for p in bpath for m in mods[p]]))
        if covered != set(members):
            self.err(f"nodes {sorted(set(members) - covered)} do not fit one chain")
        branches.sort(key=lambda b: b[0][0] != inp or b[0][1] != 0)   # external inputs first (snnkern's order)
        ports = [b[0] for b in branches]
        if all(not b[1] for b in branches):
            return chain, None, tail, ports
        par = snn.Parallel([(b[1][0] if len(b[1]) == 1 else snn.CompoundLayer(b[1])) if b[1]
                            else eqx.nn.Identity() for b in branches])
        return chain, par, tail, ports


# ----------------------------------------------------------------------------------------------
# Graphs written by snnkern: the original layer structure


class _Mismatch(Exception):
    pass


def _rebuild(nir, structure, nodes, conv: _Nodes):
    def build(tree):
        kind = tree.get("k")
        if kind == "leaf":
            names = tree.get("n", [])
            if not names:
                cls = {"Identity": eqx.nn.Identity, "SpikeCounter": snn.SpikeCounter}.get(tree.get("cls"))
                if cls is None:
                    raise _Mismatch
                return cls()
            if len(names) != 1 or names[0] not in nodes:
                raise _Mismatch
            mods = conv.modules(names[0], nodes[names[0]])
            if len(mods) != 1:
                raise _Mismatch
            return mods[0]
        if kind == "compound":
            return snn.CompoundLayer([build(t) for t in tree["subs"]])
        if kind == "parallel":
            return snn.Parallel([build(t) for t in tree["subs"]])
        if kind == "recurrent":
            return Recurrent([build(t) for t in tree["body"]], [build(t) for t in tree["fb"]])
        raise _Mismatch

    layers = [build(t) for t in structure["layers"]]
    n, ilid, final, conn = structure["graph"]
    graph = snn.GraphStructure(n, input_layer_ids=ilid, final_layer_ids=final, input_connectivity=conn)
    kind = structure.get("model")
    model = None
    if kind == "Sequential":
        model = snn.Sequential(*layers)
    elif kind == "SequentialLocalFeedback":
        fb = {}
        for i, c in enumerate(conn):
            ff = [i - 1] if i > 0 else []
            if list(c[:len(ff)]) != ff:
                break
            for k in c[len(ff):]:
                fb[k] = i
        else:
            model = snn.SequentialLocalFeedback(*layers, feedback_layers=fb)
    if model is None or model.graph_structure != graph:
        model = snn.StatefulModel(graph, layers)
    return model, tuple(structure["in_shape"])


def from_nir(graph, dt: Optional[float] = None, *, spike_fn=None):
    """Import a ``nir.NIRGraph`` as an snnkern model: ``(model, in_shape)``.

    The model follows NIR's equations under forward Euler with step ``dt`` (docs/nir.md): nodes
    joined without a ``Delay`` run within one step (a ``CompoundLayer`` chain), a ``Delay`` of k
    steps becomes k model edges, a cycle without a ``Delay`` a :class:`Recurrent`. ``dt=None``:
    the ``dt`` recorded by :func:`to_nir`, else 1.0. A graph written by ``to_nir`` (exactly, and
    unchanged in structure) comes back with its original layer structure and state layout.
    ``spike_fn`` sets the surrogate of every spiking layer (default: the one recorded, else
    snnkern's default). Unsupported nodes raise :class:`NIRConversionError` naming the node.
    """
    nir = C.require_nir()
    if not isinstance(graph, nir.NIRGraph):
        raise TypeError(f"from_nir needs a nir.NIRGraph (e.g. nir.read(path)), got {type(graph).__name__}")
    meta = C.loads(graph) or {}
    if dt is None:
        dt = float(meta.get("dt", 1.0))
    dt = float(dt)
    if not (np.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a positive number, got {dt!r}")
    nodes, edges = flatten_graph(nir, graph)
    structure = meta.get("structure")
    if isinstance(structure, dict) and not meta.get("approximate", True):
        try:
            model, in_shape = _rebuild(nir, structure, nodes, _Nodes(nir, dt, spike_fn))
            from .export import to_nir
            again = flatten_graph(nir, to_nir(model, in_shape, dt))
            if topology(nir, *again, dt) == topology(nir, nodes, edges, dt):
                return model, in_shape
        except (_Mismatch, KeyError, TypeError, ValueError, IndexError):
            pass   # changed since snnkern wrote it: import it like any other graph
    return _Importer(nir, nodes, edges, dt, spike_fn).build()
