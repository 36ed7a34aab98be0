"""snnkern model -> NIR graph (:func:`to_nir`). The mapping and its semantics: docs/nir.md."""
from __future__ import annotations

import json
from typing import Dict, List, Optional, Tuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import __version__
from .. import snn
from ..plan.protocol import is_stateful, layer_output
from ..plan.wiring import sources
from . import _common as C
from .layers import Recurrent, Scale, Threshold

__all__ = ["to_nir"]

_PASS_THROUGH = (eqx.nn.Identity, snn.SpikeCounter)   # output == input: no NIR node


class _Pass:
    """A pass-through placeholder, contracted away before the graph is built."""


_stateful = is_stateful      # the engine's own layer rules (snnkern.plan.protocol)
_exposure = layer_output     # what other layers read from a layer (docs/semantics.md "Time")


def _out_shape(layer, shape) -> tuple:
    if _stateful(layer):
        return tuple(shape)
    out = jax.eval_shape(lambda x: layer(x, key=jax.random.PRNGKey(0)), jax.ShapeDtypeStruct(tuple(shape), jnp.float32))
    return tuple(out.shape)


def _pairs(padding, what: str) -> Optional[np.ndarray]:
    """Symmetric (lo, hi) padding pairs as NIR's (pad_h, pad_w), else None."""
    if isinstance(padding, str):
        return None
    pads = [tuple(int(v) for v in p) for p in padding]
    if any(lo != hi for lo, hi in pads):
        return None
    return np.array([lo for lo, _ in pads], dtype=np.int64)


class _Exporter:
    def __init__(self, nir, model, in_shape, dt: float, approximate: bool):
        self.nir, self.model, self.dt, self.approximate = nir, model, dt, approximate
        self.in_shape = in_shape
        self.nodes: Dict[str, object] = {}
        self.edges: List[Tuple[str, str]] = []
        self.approx: Dict[str, str] = {}

    # -- errors and approximations ------------------------------------------------------------

    def refuse(self, where: str, reason: str, approximation: Optional[str] = None) -> None:
        """Raise, unless ``approximate=True`` and an approximation exists (then record it)."""
        if approximation is not None and self.approximate:
            self.approx[where] = f"{reason}; {approximation}"
            return
        hint = (f"; pass approximate=True to export it anyway ({approximation})" if approximation
                else "; no NIR node approximates it")
        raise C.NIRConversionError(f"cannot export {where} to NIR: {reason}{hint}")

    def check_zero_state(self, state, where: str) -> None:
        if state is not None and any(bool(np.any(np.asarray(a) != 0)) for a in jax.tree.leaves(state)):
            self.refuse(where, "its initial state (from init_fn) is not zero and NIR nodes have no initial "
                               "state", "the NIR node starts from 0")

    # -- leaves --------------------------------------------------------------------------------

    def add(self, name: str, node) -> str:
        self.nodes[name] = node
        return name

    def meta(self, info: dict) -> dict:
        return C.dumps(info)

    def neuron_common(self, layer, info: dict) -> dict:
        info.update(threshold=C.form_of(layer.threshold), spike_fn=C.spike_fn_name(layer.spike_fn),
                    stop_reset_grad=bool(getattr(layer, "stop_reset_grad", True)))
        return info

    def leaf(self, name: str, layer, shape: tuple, state, where: str):
        """NIR node(s) of one layer: ``(entry, exit, out_shape, n_stateful_nodes, tree)``."""
        nir, S = self.nir, tuple(shape)
        cls = type(layer).__name__
        tree = {"k": "leaf", "cls": cls, "n": [name]}
        info = {"class": cls}
        if isinstance(layer, _PASS_THROUGH) or isinstance(layer, eqx.nn.Dropout):
            if isinstance(layer, eqx.nn.Dropout):
                self.refuse(where, "NIR has no random node", "exported as the identity (its inference-mode behaviour)")
            self.add(name, _Pass())
            return name, name, S, 0, dict(tree, n=[])
        if isinstance(layer, eqx.nn.Linear):
            if layer.in_features == "scalar" or layer.out_features == "scalar":
                self.refuse(where, "a Linear with scalar features has no NIR Affine (it needs a weight matrix)")
            w = C.f32(layer.weight)
            node = (nir.Affine(weight=w, bias=C.f32(layer.bias), metadata=self.meta(info)) if layer.bias is not None
                    else nir.Linear(weight=w, metadata=self.meta(info)))
            self.add(name, node)
            return name, name, (int(layer.out_features),), 0, tree
        if type(layer) is eqx.nn.Conv2d:
            return self.conv2d(name, layer, S, where, info, tree)
        if isinstance(layer, snn.Flatten):
            self.add(name, nir.Flatten(input_type=np.array(S), start_dim=0, end_dim=-1, metadata=self.meta(info)))
            return name, name, (int(np.prod(S)),), 0, tree
        if type(layer) in (eqx.nn.AvgPool2d, eqx.nn.Pool):
            return self.pool(name, layer, S, where, info, tree)
        if isinstance(layer, snn.SpikingMaxPool2d):
            return self.spiking_max_pool(name, layer, S, where, info, tree)
        if isinstance(layer, Scale):
            self.add(name, nir.Scale(scale=np.array(np.broadcast_to(C.f32(layer.scale), S)), metadata=self.meta(
                dict(info, scale=C.form_of(layer.scale)))))
            return name, name, S, 0, tree
        if isinstance(layer, Threshold):
            info.update(threshold=C.form_of(layer.threshold), spike_fn=C.spike_fn_name(layer.spike_fn))
            self.add(name, nir.Threshold(threshold=C.threshold_to_nir(layer.threshold, S), metadata=self.meta(info)))
            return name, name, S, 0, tree
        if isinstance(layer, (snn.SimpleLI, snn.SimpleLIF, snn.LIF, snn.AdaptiveLIF, snn.SimpleIAF)):
            return self.neuron(name, layer, S, state, where, info, tree)
        reasons = {
            "IAF": "NIR has no current-based IF (CubaLIF's membrane always leaks; IAF's integrates without leak)",
            "SigmaDelta": "NIR has no sigma-delta neuron",
            "LayerNorm": "NIR has no normalisation node",
            "SpikingMaxPool1d": "NIR has no (1-d) max pooling",
            "MaxPool2d": "NIR has no max pooling", "MaxPool1d": "NIR has no max pooling",
        }
        self.refuse(where, reasons.get(cls, f"there is no NIR node for a {cls}"))

    def neuron(self, name, layer, S, state, where, info, tree):
        """The NIR node of a neuron with a NIR counterpart (LI, LIF, CubaLIF, IF)."""
        nir, dt, cls = self.nir, self.dt, type(layer).__name__
        zeros, ones = np.zeros(S, np.float32), np.ones(S, np.float32)
        self.check_zero_state(state, where)
        info["decay"] = C.form_of(getattr(layer, "decay_constants", None))
        if isinstance(layer, snn.SimpleLI):
            node = nir.LI(tau=C.decay_to_tau(layer.decay_constants[0], dt, S), r=ones, v_leak=zeros,
                          metadata=self.meta(info))
            self.add(name, node)
            return name, name, S, 1, tree
        if isinstance(layer, (snn.SimpleLIF, snn.AdaptiveLIF)):
            if isinstance(layer, snn.AdaptiveLIF):
                self.refuse(where, "NIR has no adaptive LIF", "exported as a LIF without its adaptation current")
            if layer.reset_val is not None:
                self.refuse(where, f"reset_val={layer.reset_val!r} makes {cls} subtract a constant at a spike, and "
                                   f"NIR's LIF resets to v_reset", "exported with a reset to 0")
            self.neuron_common(layer, info)
            node = nir.LIF(tau=C.decay_to_tau(layer.decay_constants[0], dt, S), r=ones, v_leak=zeros,
                           v_threshold=C.threshold_to_nir(layer.threshold, S), v_reset=zeros, metadata=self.meta(info))
            self.add(name, node)
            return name, name, S, 1, tree
        if isinstance(layer, snn.LIF):
            soft = isinstance(layer, snn.LIFSoftReset)
            v_reset = zeros
            if soft:
                self.refuse(where, "LIFSoftReset subtracts at a spike (a soft reset) and NIR's CubaLIF resets to "
                                   "v_reset", "exported with a reset to 0")
            elif layer.reset_val is not None:
                v_reset = np.array(np.broadcast_to(C.f32(layer.reset_val), S), dtype=np.float32)
            self.neuron_common(layer, info)
            info["reset"] = C.form_of(None if soft else layer.reset_val)
            node = nir.CubaLIF(tau_mem=C.decay_to_tau(layer.decay_constants[0], dt, S),
                               tau_syn=C.decay_to_tau(layer.decay_constants[1], dt, S), r=ones, v_leak=zeros,
                               v_threshold=C.threshold_to_nir(layer.threshold, S), v_reset=v_reset, w_in=ones,
                               metadata=self.meta(info))
            self.add(name, node)
            return name, name, S, 1, tree
        if isinstance(layer, snn.SimpleIAF):
            if bool(np.any(C.f32(layer.leak) != 0)):
                self.refuse(where, "its leak is not zero and NIR's IF has no leak term", "exported without the leak")
            if layer.reset_val is not None:
                self.refuse(where, f"reset_val={layer.reset_val!r} makes SimpleIAF subtract a constant at a spike, "
                                   f"and NIR's IF resets to v_reset", "exported with a reset to 0")
            self.neuron_common(layer, info)
            info["leak"] = C.form_of(layer.leak)
            node = nir.IF(r=np.full(S, 1.0 / dt, np.float32), v_threshold=C.threshold_to_nir(layer.threshold, S),
                          v_reset=zeros, metadata=self.meta(info))
            self.add(name, node)
            return name, name, S, 1, tree

    def conv2d(self, name, layer, S, where, info, tree):
        if layer.padding_mode != "ZEROS":
            self.refuse(where, f"padding_mode={layer.padding_mode!r}: NIR's Conv2d pads with zeros")
        pad = layer.padding
        if isinstance(pad, str) and pad in ("SAME", "SAME_LOWER") and all(int(s) == 1 for s in layer.stride):
            total = [int(d) * (int(k) - 1) for d, k in zip(layer.dilation, layer.kernel_size)]
            pad = tuple((t // 2, t - t // 2) if layer.padding == "SAME" else (t - t // 2, t // 2) for t in total)
        padding = "valid" if pad == "VALID" else _pairs(pad, "padding")
        if padding is None:
            self.refuse(where, f"padding {layer.padding!r} is not symmetric; NIR's Conv2d pads both sides equally")
        info["use_bias"] = layer.bias is not None
        bias = C.f32(layer.bias).reshape(-1) if layer.bias is not None else np.zeros(layer.out_channels, np.float32)
        node = self.nir.Conv2d(input_shape=tuple(int(s) for s in S[1:]), weight=C.f32(layer.weight),
                               stride=tuple(int(s) for s in layer.stride), padding=padding,
                               dilation=tuple(int(d) for d in layer.dilation), groups=int(layer.groups), bias=bias,
                               metadata=self.meta(info))
        self.add(name, node)
        return name, name, _out_shape(layer, S), 0, tree

    def _pool_params(self, pool, where):
        if pool.num_spatial_dims != 2 or pool.use_ceil:
            self.refuse(where, "NIR pools are 2-d without ceil mode")
        pad = _pairs(pool.padding, "padding")
        if pad is None:
            self.refuse(where, f"padding {pool.padding!r} is not symmetric")
        return dict(kernel_size=np.array(pool.kernel_size, np.int64), stride=np.array(pool.stride, np.int64), padding=pad)

    def pool(self, name, layer, S, where, info, tree):
        if type(layer) is eqx.nn.Pool and not (layer.operation is jax.lax.add and float(layer.init) == 0.0):
            self.refuse(where, "only a sum Pool (init=0, operation=lax.add) is NIR's SumPool2d")
        kw = self._pool_params(layer, where)
        cls = self.nir.AvgPool2d if type(layer) is eqx.nn.AvgPool2d else self.nir.SumPool2d
        self.add(name, cls(**kw, metadata=self.meta(info)))
        return name, name, _out_shape(layer, S), 0, tree

    def spiking_max_pool(self, name, layer, S, where, info, tree):
        self.refuse(where, "NIR has no max pooling", "exported as SumPool2d + Threshold, which is exact for 0/1 "
                                                     "inputs and 0 < threshold <= 1")
        kw = self._pool_params(layer.pool, where)
        out = _out_shape(layer, S)
        self.add(name, self.nir.SumPool2d(**kw, metadata=self.meta(info)))
        self.add(name + ".thr", self.nir.Threshold(threshold=C.threshold_to_nir(layer.threshold, out)))
        self.edges.append((name, name + ".thr"))
        return name, name + ".thr", out, 0, dict(tree, n=[name, name + ".thr"])

    # -- chains ----------------------------------------------------------------------------------

    def chain(self, prefix: str, subs, shape, states, where: str, sep: str = ""):
        """Sub-layers chained within the step: ``(ports, exit, out_shape, n_stateful, trees)``;
        a leading Parallel gives one port per branch."""
        ports, prev, n_stateful, trees = None, None, 0, []
        for m, sub in enumerate(subs):
            name, w = f"{prefix}.{sep}{m}", f"{where} sub-layer {m} ({type(sub).__name__})"
            st = None if states is None else states[m]
            if isinstance(sub, snn.Parallel):
                if m != 0:
                    self.refuse(w, "a Parallel that is not the first sub-layer of its CompoundLayer (it needs a "
                                   "list of inputs)")
                branch_ports, shapes, tr = [], [], []
                for b, br in enumerate(sub.layers):
                    bst = st[0][b] if (st is not None and is_stateful(sub)) else None
                    bw = f"{w} branch {b} ({type(br).__name__})"
                    p, e, s, k, t = self.part(f"{name}.{b}", br, shape[b], bst, bw)
                    branch_ports.append(p[0])
                    self.edges.append((e, name))
                    shapes.append(s)
                    n_stateful += k
                    tr.append(t)
                self.add(name, _Pass())
                ports, prev, shape = branch_ports, name, jnp.broadcast_shapes(*shapes)
                trees.append({"k": "parallel", "subs": tr})
                continue
            p, e, shape, k, t = self.part(name, sub, shape, st, w)
            if prev is None:
                ports = p
            else:
                self.edges.append((prev, p[0]))
            prev, n_stateful = e, n_stateful + k
            trees.append(t)
        return ports, prev, tuple(shape), n_stateful, trees

    def part(self, name, layer, shape, state, where):
        """One (sub-)layer: a leaf, a nested CompoundLayer or a Recurrent."""
        if isinstance(layer, snn.CompoundLayer):
            if isinstance(layer.layers[0], snn.Parallel):
                self.refuse(where, "a CompoundLayer starting with a Parallel inside another layer")
            p, e, s, k, trees = self.chain(name, layer.layers, shape, state, where)
            return p, e, s, k, {"k": "compound", "subs": trees}
        if isinstance(layer, Recurrent):
            return self.recurrent(name, layer, shape, state, where)
        if isinstance(layer, (snn.Parallel, snn.StatefulModel)):
            self.refuse(where, f"a {type(layer).__name__} can only be the first sub-layer of a CompoundLayer")
        entry, exit_, s, k, tree = self.leaf(name, layer, shape, state, where)
        return [entry], exit_, s, k, tree

    def recurrent(self, name, layer, shape, state, where):
        body_states = None if state is None else state[0]
        ports, exit_, s, k, body = self.chain(name, layer.layers, shape, body_states, where, sep="b")
        last = layer.layers[-1]
        if k != 1 or not _stateful(last):
            self.refuse(where, "a Recurrent exports as a NIR cycle without a Delay node, which needs exactly one "
                               "neuron, as its last layer")
        prev, fb = exit_, []
        for m, sub in enumerate(layer.feedback):
            p, e, _, _, t = self.part(f"{name}.f{m}", sub, s, None, f"{where} feedback {m} ({type(sub).__name__})")
            self.edges.append((prev, p[0]))
            prev = e
            fb.append(t)
        self.edges.append((prev, ports[0]))
        return ports, exit_, s, k, {"k": "recurrent", "body": body, "fb": fb}

    # -- the model -------------------------------------------------------------------------------

    def build(self):
        nir, model, dt = self.nir, self.model, self.dt
        struct, layers = model.graph_structure, model.layers
        n = struct.num_layers
        states = model.init_state(self.in_shape, jax.random.PRNGKey(0))
        expo = [np.asarray(_exposure(layers[j], states[j])) for j in range(n)]
        srcs = [[("x" if s.external else "l", s.index) for s in sources(struct, i)] for i in range(n)]
        frags, trees = self.fragments(layers, states, srcs, expo)

        succ = [[] for _ in range(n)]
        for i in range(n):
            for j in struct.input_connectivity[i]:
                succ[j].append(i)
        comp = C.scc(n, succ)
        lag = self.lags(struct, layers, expo, succ)
        for i in range(n):
            ports = frags[i][0]
            for p, (kind, j) in enumerate(srcs[i]):
                port = ports[p] if len(ports) > 1 else ports[0]
                if kind == "x":
                    src, shape, k = "input", self.in_shape, lag[i]
                    base = f"d_in_{i}"
                else:
                    src, shape = frags[j][1], tuple(expo[j].shape)
                    cyclic = comp[i] == comp[j]
                    base = f"l{i}.delay" if (i == j and self.rec_subgraph(i, layers[i], srcs[i])) else f"d{j}_{i}"
                    if not self.approximate:
                        k = lag[i] + 1 - lag[j]
                    elif not cyclic:
                        k = 0
                        self.approx.setdefault("edges", "the one-step delay of every feed-forward edge between "
                                                        "layers was dropped (the NIR graph runs them within one "
                                                        "step, so its outputs lead snnkern's)")
                    elif i == j and frags[i][2] == 1 and _stateful_exit(layers[i]):
                        k = 0   # a cycle through its neuron without a Delay: the same one-step delay (docs/nir.md)
                    else:
                        k = 1
                    if k and np.any(expo[j] != 0):
                        self.refuse(f"layer {j} ({type(layers[j]).__name__})",
                                    "its output at t = 0 (before any input) is not zero, and a NIR Delay starts at 0",
                                    "the delayed edge reads 0 at t = 0")
                if k == 0:
                    self.edges.append((src, port))
                    continue
                name, c = base, 1
                while name in self.nodes:
                    name, c = f"{base}_{c}", c + 1
                self.add(name, nir.Delay(delay=np.full(shape, k * dt, np.float64)))
                self.edges += [(src, name), (name, port)]
        outs = list(struct.final_layer_ids)
        self.add("input", nir.Input(input_type=np.array(self.in_shape)))
        for m, f in enumerate(outs):
            oname = "output" if len(outs) == 1 else f"output{m}"
            self.add(oname, nir.Output(output_type=np.array(expo[f].shape)))
            self.edges.append((frags[f][1], oname))
        self.contract()
        self.merge_delays()
        for i, layer in enumerate(layers):
            if self.rec_subgraph(i, layer, srcs[i]):
                self.group(f"l{i}", f"l{i}.0.0")
        if len(set(self.edges)) != len(self.edges):
            raise C.NIRConversionError("cannot export to NIR: the model sends the same value twice into one layer "
                                       "(NIR edges are unique)")
        return nir.NIRGraph(nodes=dict(self.nodes), edges=list(self.edges), metadata=self.metadata(trees),
                            type_check=True)

    def fragments(self, layers, states, srcs, expo):
        """Each layer's NIR nodes: ``([(ports, exit, n_stateful)], [structure tree])``."""
        frags, trees = [], []
        for i, layer in enumerate(layers):
            where = f"layer {i} ({type(layer).__name__})"
            shapes = [self.in_shape if kind == "x" else tuple(expo[j].shape) for kind, j in srcs[i]]
            if isinstance(layer, snn.CompoundLayer):
                head_par = isinstance(layer.layers[0], snn.Parallel)
                ports, exit_, _, k, tr = self.chain(f"l{i}", layer.layers, shapes if head_par else shapes[0],
                                                    states[i], where)
                tree = {"k": "compound", "subs": tr}
            else:
                ports, exit_, _, k, tree = self.part(f"l{i}", layer, shapes[0], states[i], where)
            frags.append((ports, exit_, k))
            trees.append(tree)
        return frags, trees

    def metadata(self, trees) -> dict:
        """The graph's metadata: what was written, how, and the model's structure (for the import)."""
        model, dt = self.model, self.dt
        struct, n = model.graph_structure, model.graph_structure.num_layers
        structure = {"model": type(model).__name__, "in_shape": list(self.in_shape), "layers": trees,
                     "graph": [n, [list(v) for v in struct.input_layer_ids], list(struct.final_layer_ids),
                               [list(v) for v in struct.input_connectivity]]}
        meta = {"written_by": f"snnkern {__version__}", "dt": dt, "discretisation": C.SCHEME, "time": C.TIME,
                "approximate": bool(self.approximate),
                "thresholds": "snnkern fires at v >= threshold; written as v_threshold = the float32 just below it, "
                              "so NIR's v > v_threshold fires at the same float32 values"}
        if self.approx:
            meta["approximations"] = dict(self.approx)
        meta[C.META_KEY] = json.dumps({"structure": structure, "dt": dt, "approximate": bool(self.approximate)})
        return meta

    def rec_subgraph(self, i, layer, srcs) -> bool:
        """A recurrent compound ``CompoundLayer(Parallel([ff, rec]), ...)`` with its self-edge at the
        recurrent branch and one other input: written as a NIR subgraph (as snnTorch and spyx do)."""
        return (isinstance(layer, snn.CompoundLayer) and isinstance(layer.layers[0], snn.Parallel)
                and len(layer.layers) > 1 and len(layer.layers[0].layers) == 2 and len(srcs) == 2
                and srcs[1] == ("l", i) and srcs[0] != ("l", i))

    def lags(self, struct, layers, expo, succ) -> List[int]:
        """How many steps late each layer's NIR node runs. A NIR Delay starts at 0, but snnkern's
        stateless layers expose ``layer(0)`` (e.g. a bias) at t = 0: their delays are moved in
        front of them (docs/nir.md), so they run late and start from their initial output."""
        n = len(layers)
        lag: Dict[int, int] = {}
        if self.approximate:
            return [0] * n
        final = set(struct.final_layer_ids)

        def of(j, seen=()):
            if j in lag:
                return lag[j]
            where = f"layer {j} ({type(layers[j]).__name__})"
            if not succ[j] or not np.any(expo[j] != 0):
                lag[j] = 0
                return 0
            if _stateful(layers[j]):
                self.refuse(where, "its output at t = 0 (before any input) is not zero (a CompoundLayer ending with "
                                   "a layer with a bias?), and a NIR Delay starts at 0",
                            "the delayed edges read 0 at t = 0")
                lag[j] = 0
                return 0
            if j in seen:
                raise C.NIRConversionError(f"cannot export {where} to NIR: it is on a cycle of stateless layers and "
                                           f"its output at t = 0 is not zero (a bias?), which a NIR Delay (starting "
                                           f"at 0) cannot give")
            if j in final:
                raise C.NIRConversionError(
                    f"cannot export {where} to NIR: its output at t = 0 is not zero (a bias?), it is a final layer "
                    f"and it feeds other layers through delayed edges; NIR cannot give both (make it a sub-layer of "
                    f"a CompoundLayer, or give it no bias)")
            consumer_lags = {of(i, seen + (j,)) for i in succ[j]}
            if len(consumer_lags) != 1:
                raise C.NIRConversionError(
                    f"cannot export {where} to NIR: its output at t = 0 is not zero (a bias?) and it feeds layers "
                    f"{sorted(set(succ[j]))} along paths of different delays; a NIR Delay starts at 0")
            lag[j] = consumer_lags.pop() + 1
            return lag[j]

        return [of(j) for j in range(n)]

    # -- graph surgery -------------------------------------------------------------------------

    def contract(self) -> None:
        for name in [k for k, v in self.nodes.items() if isinstance(v, _Pass)]:
            ins = [u for u, v in self.edges if v == name]
            outs = [w for u, w in self.edges if u == name]
            self.edges = [e for e in self.edges if name not in e] + [(u, w) for u in ins for w in outs]
            del self.nodes[name]

    def merge_delays(self) -> None:
        nir = self.nir
        changed = True
        while changed:
            changed = False
            for name, node in list(self.nodes.items()):
                if not isinstance(node, nir.Delay):
                    continue
                outs = [w for u, w in self.edges if u == name]
                if len(outs) != 1 or not isinstance(self.nodes.get(outs[0]), nir.Delay):
                    continue
                nxt = outs[0]
                if [u for u, v in self.edges if v == nxt] != [name]:
                    continue
                self.nodes[nxt] = nir.Delay(delay=np.asarray(self.nodes[nxt].delay) + np.asarray(node.delay))
                self.edges = [(u, nxt) if v == name else (u, v) for u, v in self.edges if u != name]
                del self.nodes[name]
                changed = True
                break

    def group(self, sub: str, outside_prefix: str) -> None:
        """Move the nodes ``sub.*`` (except ``outside_prefix*``) into a subgraph named ``sub``."""
        nir = self.nir
        inner = [k for k in self.nodes if k.startswith(sub + ".") and not
                 (k == outside_prefix or k.startswith(outside_prefix + "."))]
        inside = set(inner)
        e_in = [(u, v) for u, v in self.edges if u not in inside and v in inside]
        e_out = [(u, v) for u, v in self.edges if u in inside and v not in inside]
        targets, sources = {v for _, v in e_in}, {u for u, _ in e_out}
        if len(targets) != 1 or len(sources) != 1:
            return   # not a one-in one-out block: leave it flat
        (target,), (source,) = targets, sources
        strip = lambda k: k[len(sub) + 1:]  # noqa: E731
        in_type = self.nodes[target].input_type["input"]
        out_type = self.nodes[source].output_type["output"]
        nodes = {strip(k): self.nodes[k] for k in inner}
        nodes["input"] = nir.Input(input_type=np.array(in_type))
        nodes["output"] = nir.Output(output_type=np.array(out_type))
        edges = [(strip(u), strip(v)) for u, v in self.edges if u in inside and v in inside]
        edges += [("input", strip(target)), (strip(source), "output")]
        graph = nir.NIRGraph(nodes=nodes, edges=edges, metadata={}, type_check=True)
        for k in inner:
            del self.nodes[k]
        self.nodes[sub] = graph
        self.edges = ([(u, sub) for u, _ in e_in] + [(sub, v) for _, v in e_out]
                      + [(u, v) for u, v in self.edges if u not in inside and v not in inside])


def _stateful_exit(layer) -> bool:
    """The layer's output is a neuron's (its last sub-layer is stateful)."""
    while isinstance(layer, snn.CompoundLayer):
        layer = layer.layers[-1]
    return _stateful(layer)


def to_nir(model, in_shape, dt: float = 1.0, *, approximate: bool = False):
    """Export an snnkern model to a ``nir.NIRGraph``.

    ``in_shape``: the shape of one input sample (no time or batch axis), as for ``init_state``.
    ``dt``: the step length; time constants are written as ``tau = dt/(1 - decay)`` (forward Euler)
    and every snnkern edge delay as a NIR ``Delay`` of ``dt``. What NIR cannot express exactly
    raises :class:`NIRConversionError` naming the layer and the reason; ``approximate=True``
    exports such layers approximately instead (and drops the edge delays) and records each
    approximation in ``graph.metadata["approximations"]``. See docs/nir.md.
    """
    nir = C.require_nir()
    if not isinstance(model, snn.StatefulModel):
        raise TypeError(f"to_nir needs an snnkern StatefulModel (Sequential, ...), got {type(model).__name__}")
    custom = model.reference_reason()
    if custom is not None:
        raise C.NIRConversionError(f"cannot export the model to NIR: {custom} (its time semantics are unknown)")
    if isinstance(in_shape, int):
        in_shape = (in_shape,)
    if not (isinstance(in_shape, (tuple, list)) and all(isinstance(s, int) for s in in_shape)):
        raise TypeError(f"in_shape must be one input shape, e.g. (64,), got {in_shape!r} (NIR export supports "
                        f"models with one external input)")
    if model.graph_structure.num_inputs != 1:
        raise C.NIRConversionError(f"cannot export the model to NIR: it reads {model.graph_structure.num_inputs} "
                                   f"external inputs; snnkern.nir supports one")
    dt = float(dt)
    if not (np.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a positive number, got {dt!r}")
    return _Exporter(nir, model, tuple(int(s) for s in in_shape), dt, approximate).build()
