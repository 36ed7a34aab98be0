"""The documented examples of SPEC.md §10 (and the drop-in names of §1).

Working examples: construct, init_state, run a T=5 input, check output shapes (and values where a
hand computation is cheap: 1e-5 absolute, float32 matmul rounding). The two examples marked as errors
must raise the §8.2 ValueError at construction or at init_state, naming the target layer and shapes.
"""
import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from snnkern import snn

import _np_reference as ref
from helpers import assert_rate, data, scale_linear

f32 = np.float32
T = 12   # the slow LIF of the examples (alpha 0.9) needs ~5 steps to reach its threshold


@pytest.fixture
def k():
    return jax.random.split(jax.random.PRNGKey(0), 4)


def x_in(seed=0, lo=0.0, hi=2.0):
    return data((T, 10), seed, lo, hi)


def init_fn(shape, key, *args, **kwargs):
    return jnp.zeros(shape)


# ---------------------------------------------------------------- §1 names

def test_drop_in_names():
    import snnkern as snnax
    import snnkern.functional.surrogate as sur
    import snnkern.utils.filter as flt
    import snnkern.utils.tree as tree

    names = ["StatefulModel", "GraphStructure", "default_forward_fn", "Sequential", "Parallel",
             "CompoundLayer", "SequentialLocalFeedback", "StatefulLayer", "RequiresStateLayer", "SimpleLIF",
             "LIF", "LIFSoftReset", "AdaptiveLIF", "SimpleIAF", "IAF", "SimpleLI", "SigmaDelta", "SpikeCounter",
             "Flatten", "SpikingMaxPool1d", "SpikingMaxPool2d"]
    for n in names:
        assert hasattr(snn, n), n
        assert getattr(snnax.snn, n) is getattr(snn, n)
    for n in ["Sequential", "Parallel", "CompoundLayer", "SequentialLocalFeedback"]:
        assert getattr(snn.composed, n) is getattr(snn, n)
    for n in ["superspike_surrogate", "sigmoid_surrogate", "piecewise_surrogate"]:
        assert callable(getattr(sur, n)) and getattr(snnax.functional.surrogate, n) is getattr(sur, n)
    assert callable(flt.filter_grad) and callable(flt.filter_value_and_grad)
    assert callable(tree.apply_to_tree_leaf)
    assert snnax.utils.filter.filter_grad is flt.filter_grad


# ---------------------------------------------------------------- working examples

def test_example_sequential_and_explicit_graph(k):
    layers = [eqx.nn.Linear(10, 20, key=k[0]), eqx.nn.LayerNorm(20), snn.LIF([0.9, 0.8])]
    ff = snn.Sequential(*layers)
    graph = snn.GraphStructure(num_layers=3, input_layer_ids=[[0], [], []], final_layer_ids=[2],
                               input_connectivity=[[], [0], [1]])
    ff2 = snn.StatefulModel(graph_structure=graph, layers=layers)
    x = x_in(lo=-3.0, hi=3.0)
    for model in (ff, ff2):   # that both give the same results, on a firing input: test_model.py
        states = model.init_state((10,), k[1])
        final, o = model(states, x, k[2])
        assert len(o) == 1 and o[0].shape == (T, 20)
        assert set(np.unique(np.asarray(o[0]))) <= {0.0, 1.0}


def test_example_parallel_of_simple_layers(k):
    lin = eqx.nn.Linear(10, 20, key=k[1])
    par = snn.Parallel(*[lin, snn.LIF([0.9, 0.8])])
    assert len(par.layers) == 2
    # as a model layer fed by two sources: x (10,) -> branch 0 (Linear), a Linear's (20,) output -> LIF
    src = scale_linear(eqx.nn.Linear(10, 20, key=k[2]), 3.0, 1.0)   # currents of ~1-3: the LIF fires
    g = snn.GraphStructure(3, [[0], [0], []], [[], [], [0, 1]])
    model = snn.StatefulModel(g, [eqx.nn.Identity(), src, par])
    states = model.init_state((10,), k[3])
    x = x_in(seed=1, lo=0.0, hi=3.0)
    _, outs = model(states, x, k[0])
    assert outs[0].shape == (T, 20)
    # expected: Linear(x[t-1]) (zeros first) + LIF spikes of src's output delayed one step (bias first)
    xs = np.asarray(x)
    u0 = np.concatenate([np.zeros((1, 10), f32), xs[:-1]])
    lin_part = u0 @ np.asarray(lin.weight).T + np.asarray(lin.bias)
    src_out = xs @ np.asarray(src.weight).T + np.asarray(src.bias)
    cur = np.concatenate([np.asarray(src.bias)[None], src_out[:-1]]).astype(f32)
    _, spikes, margin = ref.lif_trace([0.9, 0.8], 1.0, cur)
    assert margin > 1e-4
    assert_rate(spikes, "the Parallel's LIF branch")
    np.testing.assert_allclose(np.asarray(outs[0]), lin_part + spikes, atol=1e-5)


def test_example_parallel_of_compounds(k):
    # the Linears x3 with a +1 bias (the default init gives currents of ~0.3): the LIFs fire
    c1 = snn.CompoundLayer([scale_linear(eqx.nn.Linear(10, 20, key=k[2]), 3.0, 1.0), snn.LIF([0.9, 0.8])])
    c2 = snn.CompoundLayer([scale_linear(eqx.nn.Linear(10, 20, key=k[3]), 3.0, 1.0), snn.LIF([0.9, 0.8])])
    par2 = snn.Parallel(*[c1, c2])
    assert len(par2.layers) == 2
    g = snn.GraphStructure(3, [[0], [0], []], [[], [], [0, 1]])
    model = snn.StatefulModel(g, [eqx.nn.Identity(), eqx.nn.Lambda(lambda v: 2.0 * v), par2])
    states = model.init_state((10,), k[0])
    x = x_in(seed=2, lo=0.0, hi=4.0)
    _, outs = model(states, x, k[1])
    assert outs[0].shape == (T, 20)
    xs = np.asarray(x)
    u = np.concatenate([np.zeros((1, 10), f32), xs[:-1]])
    expected = 0
    for c, scale in ((c1, 1.0), (c2, 2.0)):
        lin = c.layers[0]
        h = ((scale * u) @ np.asarray(lin.weight).T + np.asarray(lin.bias)).astype(f32)
        _, spikes, margin = ref.lif_trace([0.9, 0.8], 1.0, h)
        assert margin > 1e-4
        assert_rate(spikes, f"compound {scale}")
        expected = expected + spikes
    np.testing.assert_allclose(np.asarray(outs[0]), expected, atol=1e-6)


def test_example_compound_with_positional_init_fn(k):
    comp = snn.CompoundLayer([eqx.nn.Linear(10, 20, key=k[0]), eqx.nn.LayerNorm(20), snn.LIF([0.9, 0.8])],
                             init_fn)
    assert len(comp.layers) == 3
    model = snn.Sequential(comp)
    states = model.init_state((10,), k[1])
    _, outs = model(states, x_in(seed=3, lo=-3.0, hi=3.0), k[2])
    sub = outs[0]
    assert isinstance(sub, list) and len(sub) == 3
    assert [s.shape for s in sub] == [(T, 20)] * 3
    # the LayerNorm output is normalised at every step (mean 0 over features)
    np.testing.assert_allclose(np.asarray(sub[1]).mean(-1), 0.0, atol=1e-5)


def test_example_working_recurrent_form(k):
    comp = snn.CompoundLayer([snn.Parallel([eqx.nn.Linear(10, 20, key=k[0]), eqx.nn.Linear(20, 20, key=k[1])]),
                              eqx.nn.LayerNorm(20), snn.LIF([0.9, 0.8])])
    rec = snn.SequentialLocalFeedback([comp, snn.LIF([0.9, 0.8])], feedback_layers=None)
    assert rec.graph_structure.input_connectivity == ((0,), (0,))
    states = rec.init_state((10,), k[2])
    final, outs = rec(states, x_in(seed=4, lo=-3.0, hi=3.0), k[3])
    assert outs[0].shape == (T, 20)
    assert set(np.unique(np.asarray(outs[0]))) <= {0.0, 1.0}
    assert jax.tree.structure(final) == jax.tree.structure(states)


# ---------------------------------------------------------------- the two error examples (§8.2)

def _check_merge_message(msg, target):
    assert target in msg, f"message should name the target layer type {target!r}: {msg}"
    assert re.search(r"\(10,\)", msg), f"message should give the (10,) shape: {msg}"
    assert re.search(r"\(20,\)", msg), f"message should give the (20,) shape: {msg}"
    assert re.search(r"CompoundLayer|Parallel", msg), f"message should say how to fix it: {msg}"
    assert re.search(r"\b0\b", msg), f"message should name the target layer index 0: {msg}"


def test_example_feedback_dict_into_linear_raises(k):
    with pytest.raises(ValueError) as e:
        m = snn.SequentialLocalFeedback([eqx.nn.Linear(10, 20, key=k[0]), eqx.nn.LayerNorm(20),
                                         snn.LIF([0.9, 0.8])], feedback_layers={1: 0})
        m.init_state((10,), k[1])
    _check_merge_message(str(e.value), "Linear")


def test_example_feedback_none_into_plain_compound_raises(k):
    with pytest.raises(ValueError) as e:
        comp = snn.CompoundLayer([eqx.nn.Linear(10, 20, key=k[0]), eqx.nn.LayerNorm(20), snn.LIF([0.9, 0.8])])
        rec = snn.SequentialLocalFeedback([comp, snn.LIF([0.9, 0.8])], feedback_layers=None)
        rec.init_state((10,), k[1])
    _check_merge_message(str(e.value), "CompoundLayer")
