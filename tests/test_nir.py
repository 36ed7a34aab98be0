"""NIR export and import (snnkern.nir): round trips, hand-built graphs against a plain-numpy
simulation of NIR's equations, the errors for what NIR cannot express, approximate=True."""
import collections
import re
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import snnkern
from snnkern import snn

nir = pytest.importorskip("nir")
from snnkern.nir import NIRConversionError, Recurrent, Scale, Threshold, from_nir, to_nir  # noqa: E402

T = 24
KEY = jax.random.PRNGKey(3)


# ----------------------------------------------------------------------------------------------
# A plain-numpy simulation of NIR graphs (forward Euler, docs/nir.md), independent of snnkern.nir


def _inline(graph, prefix=""):
    nodes, edges, io = {}, [], {}
    for name, node in graph.nodes.items():
        full = prefix + name
        if isinstance(node, nir.NIRGraph):
            n2, e2 = _inline(node, full + ".")
            i = [full + "." + k for k, v in node.nodes.items() if isinstance(v, nir.Input)][0]
            o = [full + "." + k for k, v in node.nodes.items() if isinstance(v, nir.Output)][0]
            io[full] = ([v for u, v in e2 if u == i], [u for u, v in e2 if v == o])
            nodes.update({k: v for k, v in n2.items() if k not in (i, o)})
            edges += [(u, v) for u, v in e2 if u != i and v != o]
        else:
            nodes[full] = node
    for u, v in graph.edges:
        edges += [(a, b) for a in io.get(prefix + u, ([], [prefix + u]))[1]
                  for b in io.get(prefix + v, ([prefix + v], []))[0]]
    return nodes, edges


NEURONS = (nir.LI, nir.LIF, nir.CubaLIF, nir.IF)


def nir_sim(graph, x, dt):
    """Outputs {name: (T, ...)} of ``graph`` for input ``x`` (T, ...), in float64."""
    nodes, edges = _inline(graph)
    ins = collections.defaultdict(list)
    for u, v in edges:
        ins[v].append(u)
    succ = collections.defaultdict(list)
    for u, v in edges:
        if not isinstance(nodes[u], nir.Delay):
            succ[u].append(v)

    def reaches(a, b):
        seen, todo = set(), [a]
        while todo:
            c = todo.pop()
            if c == b:
                return True
            if c not in seen:
                seen.add(c)
                todo += succ[c]
        return False

    # an edge out of a neuron on a cycle without a Delay carries the neuron's previous output
    cut = {(u, v) for u, v in edges if isinstance(nodes[u], NEURONS) and reaches(v, u)}
    state = {k: {"v": 0.0, "i": 0.0, "z": np.zeros(np.shape(n.tau if isinstance(n, nir.LI) else n.v_threshold))}
             for k, n in nodes.items() if isinstance(n, NEURONS)}
    buf = {k: collections.deque([np.zeros(np.shape(n.delay))] * int(round(float(np.max(n.delay)) / dt)))
           for k, n in nodes.items() if isinstance(n, nir.Delay)}
    outs = {k: [] for k, n in nodes.items() if isinstance(n, nir.Output)}
    (inp,) = [k for k, n in nodes.items() if isinstance(n, nir.Input)]
    for t in range(x.shape[0]):
        memo = {}

        def ev(k):
            if k in memo:
                return memo[k]
            n = nodes[k]
            if isinstance(n, nir.Input):
                memo[k] = np.asarray(x[t], np.float64)
                return memo[k]
            if isinstance(n, nir.Delay):
                memo[k] = buf[k][0] if buf[k] else sum(ev(u) for u in ins[k])
                return memo[k]
            memo[k] = None  # guards against an unbroken cycle
            I = sum((state[u]["z"] if (u, k) in cut else ev(u)) for u in ins[k])
            if isinstance(n, nir.Affine):
                y = np.asarray(n.weight) @ I + np.asarray(n.bias)
            elif isinstance(n, nir.Linear):
                y = np.asarray(n.weight) @ I
            elif isinstance(n, nir.Scale):
                y = np.asarray(n.scale) * I
            elif isinstance(n, nir.Threshold):
                y = (I > np.asarray(n.threshold)).astype(np.float64)
            elif isinstance(n, nir.Flatten):
                y = np.reshape(I, -1)
            elif isinstance(n, nir.Output):
                y = I
            else:
                s = state[k]
                if isinstance(n, nir.LI):
                    s["v"] = s["v"] + dt / n.tau * (n.v_leak - s["v"] + n.r * I)
                    y = s["v"]
                else:
                    if isinstance(n, nir.IF):
                        v = s["v"] + dt * n.r * I
                    elif isinstance(n, nir.LIF):
                        v = s["v"] + dt / n.tau * (n.v_leak - s["v"] + n.r * I)
                    else:   # CubaLIF: the membrane integrates the previous synaptic current
                        v = s["v"] + dt / n.tau_mem * (n.v_leak - s["v"] + n.r * s["i"])
                        s["i"] = s["i"] + dt / n.tau_syn * (-s["i"] + n.w_in * I)
                    z = (v > n.v_threshold).astype(np.float64)
                    s["v"] = np.where(z > 0, n.v_reset, v)
                    y = z
                s["z"] = y
            memo[k] = y
            return y

        for k in outs:
            outs[k].append(ev(k))
        for k in nodes:
            ev(k)
        for k in buf:
            if buf[k]:
                buf[k].popleft()
                buf[k].append(sum(ev(u) for u in ins[k]))
    return {k: np.stack(v) for k, v in outs.items()}


# ----------------------------------------------------------------------------------------------
# Helpers


def spikes_in(n=8, p=0.5, key=KEY):
    return (jax.random.uniform(key, (T, n)) < p).astype(jnp.float32)


def roundtrip(model, in_shape, tmp_path, dt=1.0):
    path = tmp_path / "model.nir"
    nir.write(path, to_nir(model, in_shape, dt))
    return from_nir(nir.read(path), dt)


def _probe(model):
    """The same layers and graph, with every layer final (its outputs show every spike)."""
    g = model.graph_structure
    return snn.StatefulModel(snn.GraphStructure(g.num_layers, input_layer_ids=g.input_layer_ids,
                                                final_layer_ids=list(range(g.num_layers)),
                                                input_connectivity=g.input_connectivity), model.layers)


@eqx.filter_jit
def _loss_and_grad(model, states, x):
    def f(m):
        final, outs = _probe(m)(states, x, KEY)
        leaves = jax.tree.leaves((final, outs))
        w = [jnp.cos(jnp.arange(a.size, dtype=jnp.float32)).reshape(a.shape) for a in leaves]
        return sum(jnp.sum(a * b) for a, b in zip(leaves, w)), (final, outs)

    (_, (final, outs)), grads = eqx.filter_value_and_grad(f, has_aux=True)(model)
    return final, outs, eqx.filter(grads, eqx.is_array)


def run(model, in_shape, x):
    """(final states, outputs of every layer, gradients of a loss of both). One jitted function
    for all models: a model and its round-tripped copy share the compilation."""
    return _loss_and_grad(model, model.init_state(in_shape, KEY), x)


def spike_rates(model, outs):
    """Firing rate of every spiking (sub-)layer, from the outputs of every layer."""
    rates = []

    def visit(layer, out):
        if isinstance(layer, snn.CompoundLayer):
            for sub, o in zip(layer.layers, out):
                visit(sub, o)
        elif isinstance(layer, Recurrent):
            visit(layer.layers[-1], out)
        elif getattr(layer, "spike_states", ()):
            rates.append(float(jnp.mean(out)))

    for layer, out in zip(model.layers, outs):
        visit(layer, out)
    return rates


def assert_same(a, b, what, rtol=1e-6, atol=1e-6):
    (pa, la), (pb, lb) = [zip(*jax.tree_util.tree_flatten_with_path(t)[0]) for t in (a, b)]
    assert pa == pb, what   # the same leaves at the same places (static fields such as surrogates aside)
    for u, v in zip(la, lb):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol, err_msg=what)


def check_roundtrip(model, in_shape, x, tmp_path, dt=1.0):
    back, shape = roundtrip(model, in_shape, tmp_path, dt)
    assert shape == tuple(in_shape)
    assert type(back) is type(model) and back.graph_structure == model.graph_structure
    for mode in (None, "reference"):
        with (snnkern.backend(mode) if mode else _null()):
            ref, got = run(model, in_shape, x), run(back, in_shape, x)
        rates = spike_rates(model, ref[1])
        assert rates and all(0.02 <= r <= 0.98 for r in rates), rates
        for part, a, b in zip(("final states", "outputs", "gradients"), ref, got):
            assert_same(a, b, f"{part} ({mode or 'planned'} path)")
    return back


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def hot(n_in, n_out, key, gain=4.0):
    """A Linear with mostly positive weights, so that the neurons after it spike."""
    lin = eqx.nn.Linear(n_in, n_out, key=key)
    return eqx.tree_at(lambda l: l.weight, lin, gain * (jnp.abs(lin.weight) - 0.05))


def keys(n):
    return jax.random.split(jax.random.PRNGKey(11), n)


# ----------------------------------------------------------------------------------------------
# Round trips: to_nir -> nir.write -> nir.read -> from_nir


def test_roundtrip_feedforward_lif_li(tmp_path):
    k = keys(3)
    model = snn.Sequential(hot(8, 16, k[0]), snn.LIF([0.9, 0.8]), eqx.nn.Linear(16, 4, key=k[1]), snn.SimpleLI([0.9]))
    back = check_roundtrip(model, (8,), spikes_in(), tmp_path, dt=1e-3)
    assert float(back.layers[1].threshold) == 1.0 and isinstance(back.layers[1].threshold, float)


def test_roundtrip_neuron_parameter_forms(tmp_path):
    """Per-neuron decays, trainable thresholds, reset_val, SimpleLIF, SimpleIAF, a piecewise surrogate."""
    k = keys(4)
    n = 12
    lif = snn.LIF(jnp.stack([jnp.linspace(0.6, 0.95, n), jnp.full((n,), 0.7)]), threshold=jnp.full((n,), 0.8),
                  reset_val=0.1, spike_fn=snnkern.functional.surrogate.piecewise_surrogate(0.4))
    slif = snn.SimpleLIF([0.85], threshold=jnp.asarray(0.5), stop_reset_grad=False)
    iaf = snn.SimpleIAF(threshold=2.0)
    model = snn.Sequential(hot(8, n, k[0]), lif, hot(n, n, k[1], 3.0), slif, hot(n, 6, k[2], 3.0), iaf)
    back = check_roundtrip(model, (8,), spikes_in(p=0.6), tmp_path)
    assert back.layers[1].decay_constants.shape == (2, n) and back.layers[1].threshold.shape == (n,)
    assert back.layers[1].spike_fn.surrogate == ("piecewise", 0.4) and back.layers[1].reset_val == pytest.approx(0.1)
    assert back.layers[3].stop_reset_grad is False and back.layers[3].threshold.shape == ()


def test_roundtrip_conv_pool_flatten_compound(tmp_path):
    k = keys(3)
    conv = eqx.nn.Conv2d(2, 4, 3, padding=1, key=k[0])
    conv = eqx.tree_at(lambda c: c.weight, conv, 3 * jnp.abs(conv.weight))
    layer = snn.CompoundLayer(conv, snn.LIF([0.8, 0.7]), eqx.nn.Pool(0.0, jax.lax.add, 2, 2, 2),
                              eqx.nn.AvgPool2d(1, 1), snn.Flatten(), eqx.nn.Linear(16, 5, key=k[1]),
                              Scale(jnp.full((5,), 1.5, jnp.float32)), Threshold(0.2))
    model = snn.Sequential(layer, eqx.nn.Linear(5, 3, key=k[2]), snn.SimpleLI([0.9]))
    x = (jax.random.uniform(KEY, (T, 2, 4, 4)) < 0.5).astype(jnp.float32)
    check_roundtrip(model, (2, 4, 4), x, tmp_path)


def test_roundtrip_recurrent_compound_is_a_subgraph(tmp_path):
    """The demo's "rec" model: a self-edge on CompoundLayer(Parallel([ff, rec]), LIF)."""
    from snnkern.demo import build_model
    model = build_model(8, 16, 4, "rec", key=jax.random.PRNGKey(1))
    model = eqx.tree_at(lambda m: m.layers[0].layers[0].layers[0].weight, model,
                        hot(8, 16, jax.random.PRNGKey(1)).weight)
    g = to_nir(model, (8,))
    sub = g.nodes["l0"]
    assert isinstance(sub, nir.NIRGraph) and isinstance(sub.nodes["delay"], nir.Delay)
    assert ("0.1", "1") in sub.edges and isinstance(sub.nodes["1"], nir.CubaLIF)
    check_roundtrip(model, (8,), spikes_in(p=0.4), tmp_path)


def test_roundtrip_feedback_edges(tmp_path):
    """SequentialLocalFeedback with a back edge over three layers and a self-edge on a neuron."""
    k = keys(3)
    model = snn.SequentialLocalFeedback(
        hot(8, 12, k[0], 6.0), snn.SimpleLIF([0.8]), snn.CompoundLayer(hot(12, 8, k[1]), snn.LIF([0.8, 0.6])),
        snn.SimpleLIF([0.7], threshold=0.3), feedback_layers={2: 0, 3: 3})
    g = to_nir(model, (8,))
    assert sum(isinstance(v, nir.Delay) for v in g.nodes.values()) == 5
    check_roundtrip(model, (8,), spikes_in(), tmp_path)


def test_roundtrip_recurrent_layer_pass_through_and_delays(tmp_path):
    """snnkern.nir.Recurrent (a cycle without Delay), Identity / SpikeCounter (longer Delays)."""
    k = keys(4)
    layer = snn.CompoundLayer(hot(8, 12, k[0]), Recurrent([snn.LIF([0.9, 0.7])], [eqx.nn.Linear(12, 12, key=k[1])]),
                              eqx.nn.Linear(12, 4, key=k[2]), snn.SimpleLI([0.8]))
    model = snn.Sequential(eqx.nn.Identity(), layer, snn.SpikeCounter(), eqx.nn.Identity(), snn.SimpleLI([0.7]))
    g = to_nir(model, (8,))
    delays = sorted(float(np.max(v.delay)) for v in g.nodes.values() if isinstance(v, nir.Delay))
    assert delays == [1.0, 3.0]   # edge 0->1; SpikeCounter and Identity fold into one Delay of 3 steps
    check_roundtrip(model, (8,), spikes_in(), tmp_path)


# ----------------------------------------------------------------------------------------------
# Exported graphs follow NIR's equations (checked by the numpy simulation)


@pytest.mark.parametrize("kind", ["ff", "rec"])
def test_exported_demo_model_matches_numpy_simulation(kind):
    from snnkern.demo import build_model
    model = build_model(8, 16, 4, kind, key=jax.random.PRNGKey(2), input_gain=3.0)
    x = spikes_in(p=0.4)
    _, outs = model(model.init_state((8,), KEY), x, KEY)
    graph = to_nir(model, (8,), dt=1e-3)
    sim = nir_sim(graph, np.asarray(x), 1e-3)["output"]
    np.testing.assert_allclose(sim, np.asarray(outs[0]), rtol=1e-4, atol=1e-5)
    # imported by its NIR structure alone (no snnkern metadata): other layers, the same outputs
    del graph.metadata["snnkern"]
    generic, _ = from_nir(graph, 1e-3)
    assert [type(l) for l in generic.layers] != [type(l) for l in model.layers]
    got = generic(generic.init_state((8,), KEY), x, KEY)[1][0]
    np.testing.assert_allclose(np.asarray(got[-1] if isinstance(got, list) else got), np.asarray(outs[0]),
                               rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Hand-built NIR graphs, imported and checked against the numpy simulation


def _cuba(n, tau_mem, tau_syn, thr=1.0, r=1.0, w_in=1.0):
    f = lambda v: np.full(n, v, np.float32)  # noqa: E731
    return nir.CubaLIF(tau_mem=f(tau_mem), tau_syn=f(tau_syn), r=f(r), v_leak=f(0), v_threshold=f(thr),
                       v_reset=f(0), w_in=f(w_in))


def _li(n, tau, r=1.0):
    return nir.LI(tau=np.full(n, tau, np.float32), r=np.full(n, r, np.float32), v_leak=np.zeros(n, np.float32))


def _weights(shape, scale, seed):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype(np.float32)


def _check_import(graph, x, dt, tmp_path, n_spiking):
    path = tmp_path / "hand.nir"
    nir.write(path, graph)
    model, in_shape = from_nir(nir.read(path), dt)
    assert in_shape == tuple(x.shape[1:])
    got = model(model.init_state(in_shape, KEY), jnp.asarray(x), KEY)[1][0]
    got = got[-1] if isinstance(got, list) else got
    want = nir_sim(graph, x, dt)["output"]
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)
    rates = spike_rates(model, _probe(model)(model.init_state(in_shape, KEY), jnp.asarray(x), KEY)[1])
    assert len(rates) == n_spiking and all(0.02 <= r <= 0.98 for r in rates), rates
    return model


@pytest.mark.parametrize("recurrent", [False, True])
def test_import_affine_cubalif_li_readout(recurrent, tmp_path):
    n, dt = 12, 1.0
    nodes = {"input": nir.Input(input_type=np.array([8])),
             "fc": nir.Affine(weight=_weights((n, 8), 1.2, 0), bias=_weights((n,), 0.2, 1)),
             "lif": _cuba(n, 5.0, 2.5, thr=0.5),
             "out": nir.Affine(weight=_weights((3, n), 0.5, 2), bias=_weights((3,), 0.1, 3)),
             "li": _li(3, 4.0), "output": nir.Output(output_type=np.array([3]))}
    edges = [("input", "fc"), ("fc", "lif"), ("lif", "out"), ("out", "li"), ("li", "output")]
    if recurrent:   # as snnTorch writes RSynaptic: a subgraph with the recurrent weights, no Delay
        sub = nir.NIRGraph(nodes={"input": nir.Input(input_type=np.array([n])), "lif": nodes.pop("lif"),
                                  "w_rec": nir.Affine(weight=_weights((n, n), 0.4, 4), bias=_weights((n,), 0.1, 5)),
                                  "output": nir.Output(output_type=np.array([n]))},
                           edges=[("input", "lif"), ("lif", "w_rec"), ("w_rec", "lif"), ("lif", "output")])
        nodes["rsyn"] = sub
        edges = [("input", "fc"), ("fc", "rsyn"), ("rsyn", "out"), ("out", "li"), ("li", "output")]
    graph = nir.NIRGraph(nodes=nodes, edges=edges)
    x = np.asarray(spikes_in(p=0.5))
    model = _check_import(graph, x, dt, tmp_path, n_spiking=1)
    # no delay between NIR nodes: one chain within the step
    assert len(model.layers) == 1 and isinstance(model.layers[0], snn.CompoundLayer)
    assert isinstance(model.layers[0].layers[1], Recurrent if recurrent else snn.LIF)


def test_import_delays_if_scale_threshold(tmp_path):
    n, dt = 10, 0.5
    f = lambda v: np.full(n, v, np.float32)  # noqa: E731
    nodes = {"input": nir.Input(input_type=np.array([6])),
             "fc": nir.Linear(weight=_weights((n, 6), 1.0, 6)),
             "delay": nir.Delay(delay=f(2 * dt)),
             "if": nir.IF(r=f(1.0 / dt), v_threshold=f(1.0)),
             "scale": nir.Scale(scale=f(0.7)),
             "lif": nir.LIF(tau=f(4 * dt), r=f(2.0), v_leak=f(0), v_threshold=f(0.3), v_reset=f(0)),
             "thr": nir.Threshold(threshold=f(0.5)),
             "output": nir.Output(output_type=np.array([n]))}
    edges = [("input", "fc"), ("fc", "delay"), ("delay", "if"), ("if", "scale"), ("scale", "lif"),
             ("lif", "thr"), ("thr", "output")]
    x = np.asarray(spikes_in(n=6, p=0.6))
    model = _check_import(nir.NIRGraph(nodes=nodes, edges=edges), x, dt, tmp_path, n_spiking=2)
    assert any(isinstance(l, eqx.nn.Identity) for l in model.layers)   # the 2-step Delay: 2 model edges


@pytest.mark.parametrize("style", ["snntorch", "norse", "spyx"])
def test_import_peer_conventions(style, tmp_path):
    """A LIF layer as each peer writes it (dt, r, w_in conventions, docs/nir.md), read literally."""
    n, beta = 10, 0.9
    dt = {"snntorch": 1e-4, "norse": 1e-3, "spyx": 1.0}[style]
    tau = dt / (1 - beta)
    r = {"snntorch": tau / dt, "norse": 1.0, "spyx": beta}[style]
    f = lambda v: np.full(n, v, np.float32)  # noqa: E731
    graph = nir.NIRGraph.from_list(nir.Affine(weight=_weights((n, 6), 4.0 / r, 7), bias=f(0.0)),
                                   nir.LIF(tau=f(tau), r=f(r), v_leak=f(0), v_threshold=f(1.0), v_reset=f(0)))
    x = np.asarray(spikes_in(n=6, p=0.5))
    model = _check_import(graph, x, dt, tmp_path, n_spiking=1)
    if style == "snntorch":   # r = tau/dt: the input enters unscaled, mem = beta*mem + I
        scale = model.layers[0].layers[1]
        np.testing.assert_allclose(np.asarray(scale.scale) * (1 - beta), 1.0, rtol=1e-5)


def test_import_time_constant_needs_the_right_dt():
    graph = nir.NIRGraph.from_list(_li(4, 0.01))       # Norse: tau in seconds, for dt = 1e-3
    with pytest.raises(NIRConversionError, match=r"tau = 0.01 with dt = 1 .*below 0.5.*dt"):
        from_nir(graph, 1.0)
    model, _ = from_nir(graph, 1e-3)
    np.testing.assert_allclose(float(model.layers[0].decay_constants[0]), 0.9, rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# What NIR cannot express: an error naming the layer and the reason (or approximate=True)

E = jax.random.PRNGKey(0)
UNSUPPORTED = [
    (snn.IAF([0.8]), "layer 1 (IAF)", "current-based"),
    (snn.LIFSoftReset([0.9, 0.8]), "layer 1 (LIFSoftReset)", "soft reset"),
    (snn.AdaptiveLIF([0.9]), "layer 1 (AdaptiveLIF)", "adaptive"),
    (snn.SigmaDelta([0.9, 0.9, 0.9]), "layer 1 (SigmaDelta)", "sigma-delta"),
    (eqx.nn.Dropout(0.5), "layer 1 (Dropout)", "random"),
    (eqx.nn.LayerNorm(12), "layer 1 (LayerNorm)", "normalisation"),
    (snn.SimpleLIF([0.9], reset_val=0.5), "layer 1 (SimpleLIF)", "subtract"),
    (snn.SimpleIAF(leak=0.1), "layer 1 (SimpleIAF)", "leak"),
    (snn.SimpleLIF([0.9], init_fn=lambda s, k: jnp.ones(s)), "layer 1 (SimpleLIF)", "initial state"),
    (snn.CompoundLayer(snn.LIF([0.9, 0.8]), eqx.nn.Linear(12, 12, key=E)), "layer 1 (CompoundLayer)", "t = 0"),
]


@pytest.mark.parametrize("layer,where,reason", UNSUPPORTED, ids=[w for _, w, _ in UNSUPPORTED])
def test_export_refuses_what_nir_cannot_express(layer, where, reason):
    model = snn.Sequential(eqx.nn.Linear(8, 12, key=E), layer, eqx.nn.Linear(12, 4, key=E), snn.SimpleLIF([0.9]))
    with pytest.raises(NIRConversionError, match=re.escape(where) + ".*" + reason):
        to_nir(model, (8,))


def test_export_refuses_pools_without_nir_node():
    for pool, name in ((snn.SpikingMaxPool2d(2, 2), "SpikingMaxPool2d"), (eqx.nn.MaxPool2d(2, 2), "MaxPool2d"),
                       (snn.SpikingMaxPool1d(2, 2), "SpikingMaxPool1d")):
        model = snn.Sequential(snn.CompoundLayer(pool, snn.Flatten()), snn.SimpleLIF([0.9]))
        shape = (2, 4) if name.endswith("1d") else (2, 4, 4)
        with pytest.raises(NIRConversionError, match=rf"layer 0 \(CompoundLayer\) sub-layer 0 \({name}\).*max pool"):
            to_nir(model, shape)


def test_export_refuses_custom_forward_and_bias_conflicts():
    model = snn.Sequential(eqx.nn.Linear(8, 4, key=E), snn.SimpleLIF([0.9]), forward_fn=lambda *a: a)
    with pytest.raises(NIRConversionError, match="custom forward_fn"):
        to_nir(model, (8,))
    g = snn.GraphStructure(3, input_layer_ids=[[0], [], []], final_layer_ids=[0, 2], input_connectivity=[[], [0], [1]])
    model = snn.StatefulModel(g, [eqx.nn.Linear(8, 4, key=E), snn.SimpleLIF([0.9]), snn.SimpleLIF([0.9])])
    with pytest.raises(NIRConversionError, match=r"layer 0 \(Linear\).*final layer"):
        to_nir(model, (8,))


def test_approximate_records_every_approximation(tmp_path):
    k = keys(2)
    model = snn.Sequential(eqx.nn.Linear(8, 12, key=k[0]), snn.LIFSoftReset([0.9, 0.8]), eqx.nn.Dropout(0.2),
                           eqx.nn.Linear(12, 4, key=k[1]), snn.AdaptiveLIF([0.9]))
    path = tmp_path / "approx.nir"
    nir.write(path, to_nir(model, (8,), approximate=True))
    g = nir.read(path)
    approx = g.metadata["approximations"]
    assert set(approx) == {"edges", "layer 1 (LIFSoftReset)", "layer 2 (Dropout)", "layer 4 (AdaptiveLIF)"}
    assert "reset to 0" in approx["layer 1 (LIFSoftReset)"] and "adaptation" in approx["layer 4 (AdaptiveLIF)"]
    assert not any(isinstance(v, nir.Delay) for v in g.nodes.values())   # the edge delays were dropped
    back, _ = from_nir(g)        # follows the NIR graph: one chain, no delays
    assert len(back.layers) == 1 and isinstance(back.layers[0].layers[1], snn.LIF)


def test_approximate_spiking_max_pool_is_exact_for_spikes():
    pool = snn.Sequential(snn.CompoundLayer(snn.SpikingMaxPool2d(2, 2, threshold=0.5), snn.Flatten()))
    x = (jax.random.uniform(KEY, (T, 1, 4, 4)) < 0.3).astype(jnp.float32)
    g = to_nir(pool, (1, 4, 4), approximate=True)
    assert "exact for 0/1 inputs" in g.metadata["approximations"]["layer 0 (CompoundLayer) sub-layer 0 (SpikingMaxPool2d)"]
    want = pool(pool.init_state((1, 4, 4), KEY), x, KEY)[1][0][-1]
    back, _ = from_nir(g)
    got = back(back.init_state((1, 4, 4), KEY), x, KEY)[1][0]
    np.testing.assert_array_equal(np.asarray(got[-1] if isinstance(got, list) else got), np.asarray(want))


def _graph(*nodes_edges):
    nodes, edges = nodes_edges
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)


def test_import_errors_name_the_node():
    f = lambda v, n=4: np.full(n, v, np.float32)  # noqa: E731
    i, o = nir.Input(input_type=np.array([4])), nir.Output(output_type=np.array([4]))
    cases = [
        (nir.NIRGraph.from_list(nir.I(r=f(1))), r"'i' \(I\)"),
        (nir.NIRGraph.from_list(nir.CubaLI(tau_syn=f(2), tau_mem=f(2), r=f(1), v_leak=f(0))), r"'cubali' \(CubaLI\)"),
        (nir.NIRGraph.from_list(nir.LI(tau=f(2), r=f(1), v_leak=f(0.5))), "v_leak"),
        (nir.NIRGraph.from_list(nir.LIF(tau=f(2), r=f(1), v_leak=f(0), v_threshold=f(1), v_reset=f(0.2))), "v_reset"),
        (nir.NIRGraph.from_list(nir.Delay(delay=f(0.5)), nir.LI(tau=f(2), r=f(1), v_leak=f(0))), "whole number"),
        (_graph({"input": i, "a": nir.Linear(weight=np.eye(4, dtype=np.float32)), "output": o},
                [("input", "a"), ("a", "a"), ("a", "output")]), "no neuron"),
        (_graph({"input": i, "a": _li(4, 2.0), "b": _li(4, 2.0), "c": _li(4, 2.0), "output": o},
                [("input", "a"), ("a", "b"), ("a", "c"), ("b", "output"), ("c", "output")]), "within the same step"),
    ]
    for graph, match in cases:
        with pytest.raises(NIRConversionError, match=match):
            from_nir(graph, 1.0)


# ----------------------------------------------------------------------------------------------
# Packaging and docs


def test_missing_nir_gives_install_hint(monkeypatch):
    import ast
    import pathlib
    for path in (pathlib.Path(snnkern.__file__).parent / "nir").glob("*.py"):   # nir is imported lazily only
        for stmt in ast.parse(path.read_text()).body:
            names = ([a.name for a in stmt.names] if isinstance(stmt, ast.Import)
                     else [stmt.module or ""] if isinstance(stmt, ast.ImportFrom) and stmt.level == 0 else [])
            assert not any(n == "nir" or n.startswith("nir.") for n in names), (path.name, names)
    monkeypatch.setitem(sys.modules, "nir", None)
    with pytest.raises(ImportError, match=re.escape('pip install "snnkern[nir]"')):
        to_nir(snn.Sequential(snn.SimpleLI([0.9])), (3,))


def test_doc_example_runs(tmp_path, monkeypatch):
    import pathlib
    text = (pathlib.Path(__file__).parents[1] / "docs" / "nir.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    env = {}
    exec(compile(code, "docs/nir.md", "exec"), env)
    assert env["acc_nir"] == env["acc"]
