"""snnkern.utils (SPEC.md §1): filter_grad / filter_value_and_grad with a filter_spec, apply_to_tree_leaf.

Gradient values are compared with Equinox's own filter_grad on the same loss: 1e-6 absolute
(same computation, possibly different fusion).
"""
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from snnkern import snn
from snnkern.utils.filter import filter_grad, filter_value_and_grad
from snnkern.utils.tree import apply_to_tree_leaf

from helpers import data


@pytest.fixture
def setup():
    k = jax.random.split(jax.random.PRNGKey(11), 6)
    # positive, larger weights so that both spiking layers fire within 10 steps
    pos = lambda lin: eqx.tree_at(lambda l: l.weight, lin, 2.0 * jnp.abs(lin.weight))
    model = snn.Sequential(
        pos(eqx.nn.Linear(3, 4, key=k[0])),
        snn.LIF([0.7, 0.6], threshold=jnp.array(0.6)),
        pos(eqx.nn.Linear(4, 2, key=k[1])),
        snn.CompoundLayer(eqx.nn.Identity(), snn.SimpleLIF([0.7], threshold=jnp.array(0.4))),
    )
    states = model.init_state((3,), k[2])
    x = data((10, 3), seed=0, hi=3.0)
    return model, states, x, k[3]


def loss(model, states, x, key):
    _, outs = model(states, x, key)
    return jnp.sum(outs[0][-1]) + 0.1 * jnp.sum(outs[0][0] ** 2)


def _threshold_spec(model):
    spec = jax.tree.map(lambda _: False, model)
    return eqx.tree_at(lambda m: (m.layers[1].threshold, m.layers[3].layers[1].threshold), spec,
                       replace=(True, True))


def _grad_leaves(tree):
    return [l for l in jax.tree.leaves(tree) if l is not None]


def test_filter_grad_default_equals_equinox(setup):
    model, states, x, key = setup
    g = filter_grad(loss)(model, states, x, key)
    g_eqx = eqx.filter_grad(loss)(model, states, x, key)
    assert jax.tree.structure(g) == jax.tree.structure(g_eqx)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_eqx)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_filter_grad_pytree_spec_only_thresholds(setup):
    model, states, x, key = setup
    g = filter_grad(loss, filter_spec=_threshold_spec(model))(model, states, x, key)
    full = eqx.filter_grad(loss)(model, states, x, key)
    assert g.layers[0].weight is None and g.layers[0].bias is None
    assert g.layers[1].decay_constants is None
    assert g.layers[2].weight is None
    assert g.layers[3].layers[1].decay_constants is None
    leaves = _grad_leaves(g)
    assert len(leaves) == 2
    np.testing.assert_allclose(np.asarray(g.layers[1].threshold), np.asarray(full.layers[1].threshold), atol=1e-6)
    np.testing.assert_allclose(np.asarray(g.layers[3].layers[1].threshold),
                               np.asarray(full.layers[3].layers[1].threshold), atol=1e-6)
    assert float(jnp.abs(g.layers[1].threshold)) > 0, "test setup: threshold gradient should be non-zero"


def test_filter_grad_callable_spec(setup):
    model, states, x, key = setup
    scalar_only = lambda leaf: eqx.is_inexact_array(leaf) and leaf.ndim == 0   # the two thresholds
    g = filter_grad(loss, filter_spec=scalar_only)(model, states, x, key)
    assert len(_grad_leaves(g)) == 2
    assert g.layers[1].threshold is not None and g.layers[0].weight is None


def test_filter_grad_as_decorator(setup):
    model, states, x, key = setup

    @filter_grad(filter_spec=_threshold_spec(model))
    def f(m, s, x, k):
        return loss(m, s, x, k)

    g = f(model, states, x, key)
    assert len(_grad_leaves(g)) == 2


def test_filter_value_and_grad(setup):
    model, states, x, key = setup
    val, g = filter_value_and_grad(loss, filter_spec=_threshold_spec(model))(model, states, x, key)
    np.testing.assert_allclose(float(val), float(loss(model, states, x, key)), atol=1e-6)
    assert len(_grad_leaves(g)) == 2
    # has_aux
    (val2, aux), g2 = filter_value_and_grad(lambda m, s, x, k: (loss(m, s, x, k), 7.0), has_aux=True,
                                            filter_spec=_threshold_spec(model))(model, states, x, key)
    assert aux == 7.0
    np.testing.assert_allclose(float(val2), float(val), atol=1e-6)
    for a, b in zip(_grad_leaves(g), _grad_leaves(g2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_filter_grad_under_jit(setup):
    model, states, x, key = setup
    spec = _threshold_spec(model)
    g = filter_grad(loss, filter_spec=spec)(model, states, x, key)
    gj = eqx.filter_jit(filter_grad(loss, filter_spec=spec))(model, states, x, key)
    for a, b in zip(_grad_leaves(g), _grad_leaves(gj)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


# ---------------------------------------------------------------- apply_to_tree_leaf

def test_apply_to_tree_leaf_replaces_every_threshold(setup):
    model, states, x, key = setup
    new = apply_to_tree_leaf(model, "threshold", lambda _: jnp.array(5.0))
    assert float(new.layers[1].threshold) == 5.0
    assert float(new.layers[3].layers[1].threshold) == 5.0
    # nothing else changed
    for a, b in zip(jax.tree.leaves(eqx.filter(new, lambda l: eqx.is_array(l) and l.ndim > 0)),
                    jax.tree.leaves(eqx.filter(model, lambda l: eqx.is_array(l) and l.ndim > 0))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the original is untouched (pure)
    np.testing.assert_allclose(float(model.layers[1].threshold), 0.6, atol=1e-7)
    # a huge threshold silences the spiking output
    _, outs = new(states, x, key)
    assert float(jnp.sum(outs[0][-1])) == 0.0
    _, outs_old = model(states, x, key)
    assert float(jnp.sum(outs_old[0][-1])) > 0.0


def test_apply_to_tree_leaf_function_of_value_and_float_thresholds():
    model = snn.Sequential(snn.LIF([0.9, 0.8], threshold=1.5), eqx.nn.Identity(), snn.SimpleIAF(threshold=0.5))
    new = apply_to_tree_leaf(model, "threshold", lambda t: t * 2)
    assert float(new.layers[0].threshold) == 3.0
    assert float(new.layers[2].threshold) == 1.0


def test_apply_to_tree_leaf_decay_constants():
    model = snn.Sequential(snn.LIF([0.9, 0.8]), snn.SimpleLIF([0.7]))
    new = apply_to_tree_leaf(model, "decay_constants", lambda d: jnp.clip(d - 0.1, 0.0, 1.0))
    np.testing.assert_allclose(np.asarray(new.layers[0].decay_constants), [0.8, 0.7], atol=1e-6)
    np.testing.assert_allclose(np.asarray(new.layers[1].decay_constants), [0.6], atol=1e-6)
