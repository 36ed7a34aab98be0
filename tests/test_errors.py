"""Error paths of SPEC.md §8.4 (and the merge errors of §8.2).

Each must be a ValueError/TypeError raised by snnkern itself (not an XLA trace error, IndexError or
silence), naming the layer (type, and index where the SPEC asks) and the shapes/values involved.
Patterns are deliberately loose: they check the facts a message must carry, not its wording.
"""
import re

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

from snnkern import snn


@pytest.fixture
def k():
    return jax.random.split(jax.random.PRNGKey(3), 4)


def _model(k):
    return snn.Sequential(eqx.nn.Linear(10, 20, key=k[0]), snn.LIF([0.9, 0.8]))


def _x(shape):
    return jnp.ones(shape, jnp.float32)


# ---------------------------------------------------------------- inputs at call time

def test_feature_shape_differs_from_init_state_stateful_first_layer(k):
    model = snn.Sequential(snn.SimpleLIF([0.9]), snn.SimpleLI([0.8]))
    states = model.init_state((10,), k[0])
    with pytest.raises(ValueError) as e:
        model(states, _x((5, 12)), k[1])
    msg = str(e.value)
    assert re.search(r"\(12,\)|\b12\b", msg) and re.search(r"\(10,\)|\b10\b", msg), msg
    assert "SimpleLIF" in msg, msg


def test_feature_shape_differs_from_first_linear(k):
    model = _model(k)
    states = model.init_state((10,), k[1])
    with pytest.raises(ValueError) as e:
        model(states, _x((5, 12)), k[2])
    msg = str(e.value)
    assert re.search(r"\b12\b", msg) and re.search(r"\b10\b", msg), msg
    assert "Linear" in msg, msg


def test_input_without_time_axis(k):
    model = _model(k)
    states = model.init_state((10,), k[1])
    with pytest.raises(ValueError, match=r"(?i)time|axis"):
        model(states, _x((10,)), k[2])


def test_input_without_time_axis_neuron_only_model(k):
    # x of shape (4, 3) could also be read as T=4 steps of (3,): accept a message that says the time
    # axis is missing, or one that names the state shapes (4, 3) vs the feature shape (3,)
    model = snn.Sequential(snn.LIF([0.9, 0.8]))
    states = model.init_state((4, 3), k[1])
    with pytest.raises(ValueError) as e:
        model(states, _x((4, 3)), k[2])
    msg = str(e.value)
    assert re.search(r"(?i)time|axis", msg) or ("(4, 3)" in msg and "(3,)" in msg and "LIF" in msg), msg


def test_burnin_not_smaller_than_T(k):
    model = _model(k)
    states = model.init_state((10,), k[1])
    for burnin in (5, 7):
        with pytest.raises(ValueError, match=r"(?i)burnin"):
            model(states, _x((5, 10)), k[2], burnin=burnin)
    model(states, _x((5, 10)), k[2], burnin=4)   # the largest valid burn-in


def test_missing_key(k):
    model = _model(k)
    states = model.init_state((10,), k[1])
    with pytest.raises(TypeError):
        model(states, _x((5, 10)))
    with pytest.raises((TypeError, ValueError), match=r"(?i)key"):
        model(states, _x((5, 10)), None)


# ---------------------------------------------------------------- init_state

def test_in_shape_does_not_fit_first_layer(k):
    model = _model(k)
    with pytest.raises(ValueError) as e:
        model.init_state((12,), k[1])
    msg = str(e.value)
    assert "Linear" in msg and re.search(r"\b12\b", msg) and re.search(r"\b10\b", msg), msg


def test_in_shape_does_not_fit_later_layer(k):
    with pytest.raises(ValueError) as e:
        model = snn.Sequential(eqx.nn.Linear(10, 30, key=k[0]), eqx.nn.LayerNorm(20), snn.LIF([0.9, 0.8]))
        model.init_state((10,), k[1])
    msg = str(e.value)
    assert "LayerNorm" in msg and re.search(r"\b30\b", msg), msg
    assert re.search(r"\b1\b", msg), f"should name layer index 1: {msg}"


# ---------------------------------------------------------------- graph structure (construction time)

@pytest.mark.parametrize("args,pattern", [
    ((3, [[0], [], []], [[], [5], [1]]), r"\b5\b"),                   # source id out of range
    ((3, [[0], [], []], [[], [-1], [1]]), r"-1"),                     # negative source id
    ((3, [[0], []], [[], [0], [1]]), r"input_layer_ids|\b2\b|\b3\b"),  # list of wrong length
    ((3, [[0], [], []], [[], [0]]), r"input_connectivity|\b2\b|\b3\b"),
    ((3, [[0], [], []], [[], [], [1]]), r"\b1\b"),                    # layer 1 receives nothing
    ((3, [[0], [], []], [7], [[], [0], [1]]), r"\b7\b"),              # final layer out of range
], ids=["id-out-of-range", "negative-id", "short-input_layer_ids", "short-connectivity", "no-input",
        "final-out-of-range"])
def test_invalid_graph_raises_at_construction(args, pattern):
    layers = [eqx.nn.Identity(), eqx.nn.Identity(), eqx.nn.Identity()]
    with pytest.raises(ValueError, match=pattern):
        g = snn.GraphStructure(*args)
        snn.StatefulModel(g, layers)


def test_graph_layer_count_mismatch_raises_at_construction():
    g = snn.GraphStructure(3, [[0], [], []], [[], [0], [1]])
    with pytest.raises(ValueError, match=r"\b3\b"):
        snn.StatefulModel(g, [eqx.nn.Identity(), eqx.nn.Identity()])


# ---------------------------------------------------------------- neurons

@pytest.mark.parametrize("ctor", [lambda: snn.LIF(0.9), lambda: snn.LIF([0.9]), lambda: snn.IAF([]),
                                  lambda: snn.SigmaDelta([0.9])],
                         ids=["LIF(0.9)", "LIF([0.9])", "IAF([])", "SigmaDelta([0.9])"])
def test_wrong_number_of_decay_constants(ctor):
    with pytest.raises(ValueError, match=r"LIF|IAF|SigmaDelta"):
        ctor()


# ---------------------------------------------------------------- states that do not belong

def test_states_from_another_model(k):
    a = snn.Sequential(eqx.nn.Linear(10, 20, key=k[0]), snn.LIF([0.9, 0.8]))
    b = snn.Sequential(eqx.nn.Linear(10, 20, key=k[0]), snn.SimpleLIF([0.9]))
    states_a = a.init_state((10,), k[1])
    with pytest.raises(ValueError) as e:
        b(states_a, _x((5, 10)), k[2])
    assert "SimpleLIF" in str(e.value) or re.search(r"\b1\b", str(e.value)), str(e.value)


def test_states_with_missing_layer(k):
    model = _model(k)
    states = model.init_state((10,), k[1])
    with pytest.raises(ValueError):
        model(states[:1], _x((5, 10)), k[2])


def test_states_for_another_in_shape(k):
    model = snn.Sequential(eqx.nn.Lambda(lambda v: v * 2.0), snn.LIF([0.9, 0.8]))
    states = model.init_state((6,), k[1])
    with pytest.raises(ValueError) as e:
        model(states, _x((5, 8)), k[2])
    msg = str(e.value)
    assert re.search(r"\b6\b", msg) and re.search(r"\b8\b", msg), msg


# ---------------------------------------------------------------- non-module layers

@pytest.mark.parametrize("build", [
    lambda k: snn.Sequential(eqx.nn.Linear(3, 4, key=k[0]), "not a layer"),
    lambda k: snn.Sequential(eqx.nn.Linear(3, 4, key=k[0]), lambda v: v),
    lambda k: snn.Sequential([eqx.nn.Linear(3, 4, key=k[0]), 3.0]),
    lambda k: snn.StatefulModel(snn.GraphStructure(2, [[0], []], [[], [0]]), [eqx.nn.Identity(), object()]),
    lambda k: snn.CompoundLayer(eqx.nn.Linear(3, 4, key=k[0]), "nope"),
    lambda k: snn.Parallel([eqx.nn.Linear(3, 4, key=k[0]), 42]),
], ids=["str", "function", "float-in-list", "StatefulModel-object", "CompoundLayer", "Parallel"])
def test_non_module_layer_raises_at_construction(build, k):
    with pytest.raises((TypeError, ValueError)):
        build(k)


# ---------------------------------------------------------------- inputs that cannot be merged (§8.2)

def test_sources_with_different_shapes_into_summing_layer(k):
    g = snn.GraphStructure(3, [[0], [0], []], [[], [], [0, 1]])
    with pytest.raises(ValueError) as e:
        model = snn.StatefulModel(g, [eqx.nn.Linear(3, 4, key=k[0]), eqx.nn.Linear(3, 6, key=k[1]),
                                      snn.LIF([0.9, 0.8])])
        model.init_state((3,), k[2])
    msg = str(e.value)
    assert "LIF" in msg and re.search(r"\(4,\)", msg) and re.search(r"\(6,\)", msg), msg
    assert re.search(r"CompoundLayer|Parallel", msg), msg


def test_parallel_with_wrong_number_of_inputs(k):
    with pytest.raises(ValueError, match=r"Parallel"):
        model = snn.Sequential(snn.Parallel(eqx.nn.Linear(3, 4, key=k[0]), eqx.nn.Linear(4, 4, key=k[1])))
        model.init_state((3,), k[2])


def test_errors_are_not_raised_for_valid_models(k):
    # guard against over-eager checks: the same shapes, correctly wired, work
    g = snn.GraphStructure(3, [[0], [0], []], [[], [], [0, 1]])
    model = snn.StatefulModel(g, [eqx.nn.Linear(3, 4, key=k[0]), eqx.nn.Linear(3, 4, key=k[1]),
                                  snn.LIF([0.9, 0.8])])
    states = model.init_state((3,), k[2])
    _, outs = model(states, _x((4, 3)), k[3])
    assert outs[0].shape == (4, 4)
