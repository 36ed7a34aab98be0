"""Surrogate spike functions (SPEC.md §6): forward is heaviside(x, 1); tangents follow the formulas.

Tolerance for gradients: 1e-6 absolute (float32 evaluation of simple closed forms).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from snnkern.functional.surrogate import piecewise_surrogate, sigmoid_surrogate, superspike_surrogate

XS = np.array([-2.0, -0.5, -0.3, -1e-7, 0.0, 1e-7, 0.25, 0.5, 0.49, 3.0], np.float32)


def _sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def superspike_ref(x, beta):
    return 1.0 / (1.0 + beta * np.abs(x))


def piecewise_ref(x, beta):
    return np.where((x > -beta) & (x < beta), 1.0, 0.0)


def sigmoid_ref(x, beta):
    s = _sig(beta * x)
    return beta * s * (1.0 - s)


FACTORIES = [
    (superspike_surrogate, superspike_ref, 10.0),
    (superspike_surrogate, superspike_ref, 2.5),
    (piecewise_surrogate, piecewise_ref, 0.5),
    (piecewise_surrogate, piecewise_ref, 0.3),
    (sigmoid_surrogate, sigmoid_ref, 1.0),
    (sigmoid_surrogate, sigmoid_ref, 4.0),
]
IDS = ["superspike10", "superspike2.5", "piecewise.5", "piecewise.3", "sigmoid1", "sigmoid4"]


@pytest.mark.parametrize("factory,ref,beta", FACTORIES, ids=IDS)
def test_forward_is_heaviside_with_one_at_zero(factory, ref, beta):
    f = factory(beta)
    y = np.asarray(f(jnp.asarray(XS)))
    np.testing.assert_array_equal(y, (XS >= 0).astype(np.float32))
    assert float(f(jnp.float32(0.0))) == 1.0
    assert y.dtype == np.float32


@pytest.mark.parametrize("factory,ref,beta", FACTORIES, ids=IDS)
def test_gradient_matches_formula(factory, ref, beta):
    f = factory(beta)
    g = np.array([float(jax.grad(f)(jnp.float32(x))) for x in XS])
    np.testing.assert_allclose(g, ref(XS.astype(np.float64), beta), atol=1e-6)


@pytest.mark.parametrize("factory,ref,beta", FACTORIES, ids=IDS)
def test_tangent_scales_with_x_dot(factory, ref, beta):
    f = factory(beta)
    x = jnp.asarray(XS)
    y, t = jax.jvp(f, (x,), (jnp.full_like(x, 3.0),))
    np.testing.assert_array_equal(np.asarray(y), (XS >= 0).astype(np.float32))
    np.testing.assert_allclose(np.asarray(t), 3.0 * ref(XS.astype(np.float64), beta), atol=3e-6)


def test_default_betas():
    x = jnp.float32(0.2)
    np.testing.assert_allclose(float(jax.grad(superspike_surrogate())(x)), 1 / (1 + 10 * 0.2), atol=1e-6)
    assert float(jax.grad(piecewise_surrogate())(jnp.float32(0.45))) == 1.0   # beta .5
    assert float(jax.grad(piecewise_surrogate())(jnp.float32(0.55))) == 0.0
    np.testing.assert_allclose(float(jax.grad(sigmoid_surrogate())(x)), sigmoid_ref(0.2, 1.0), atol=1e-6)


def test_superspike_is_not_squared():
    # 1/(1+beta|x|), not 1/(1+beta|x|)^2: at x=.1, beta=10 -> .5 (squared would be .25)
    np.testing.assert_allclose(float(jax.grad(superspike_surrogate(10.0))(jnp.float32(0.1))), 0.5, atol=1e-6)


def test_piecewise_bounds_are_open():
    f = piecewise_surrogate(0.5)
    assert float(jax.grad(f)(jnp.float32(0.5))) == 0.0
    assert float(jax.grad(f)(jnp.float32(-0.5))) == 0.0
    assert float(jax.grad(f)(jnp.float32(0.4999))) == 1.0


def test_sigmoid_surrogate_is_differentiable_through_a_loss():
    # snnax's sigmoid surrogate raises when differentiated; snnkern's must work, also under jit/vmap
    f = sigmoid_surrogate(2.0)
    w = jnp.array([0.3, -0.7, 1.1])

    def loss(w):
        return jnp.sum(f(w * 2.0 - 1.0) * jnp.arange(1.0, 4.0))

    g = np.asarray(jax.jit(jax.grad(loss))(w))
    z = np.asarray(w) * 2.0 - 1.0
    np.testing.assert_allclose(g, 2.0 * np.arange(1.0, 4.0) * sigmoid_ref(z, 2.0), atol=1e-6)


@pytest.mark.parametrize("factory,ref,beta", FACTORIES, ids=IDS)
def test_jit_and_vmap(factory, ref, beta):
    f = factory(beta)
    x = jnp.asarray(XS)
    np.testing.assert_array_equal(np.asarray(jax.jit(f)(x)), np.asarray(f(x)))
    np.testing.assert_array_equal(np.asarray(jax.vmap(f)(x)), np.asarray(f(x)))
    g_vmap = np.asarray(jax.jit(jax.vmap(jax.grad(f)))(x))
    np.testing.assert_allclose(g_vmap, ref(XS.astype(np.float64), beta), atol=1e-6)
    # 2-D input under vmap of grad-of-sum
    x2 = jnp.stack([x, -x])
    g2 = np.asarray(jax.vmap(jax.grad(lambda r: f(r).sum()))(x2))
    np.testing.assert_allclose(g2, ref(np.asarray(x2, np.float64), beta), atol=1e-6)
