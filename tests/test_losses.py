"""snnkern.losses: hand-computed values, gradient checks, vmap over a batch, errors.

Gradient checks (``jax.test_util.check_grads``, float32): finite differences with eps = 1e-3 against
the autodiff gradient, atol = rtol = 1e-2 (float32 rounding of a central difference of a loss of
order 1 is ~1e-4 / 1e-3 = 1e-1 relative at worst in one entry, ~1e-3 typically; 1e-2 is the usual
float32 tolerance of check_grads and still catches a wrong gradient, which is off by O(1)).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from snnkern import losses

TOL = dict(eps=1e-3, atol=1e-2, rtol=1e-2)
REL = 1e-5   # hand-computed values (float64) vs float32 losses: a few float32 ulps of log-sum-exp


def _spikes():
    return jnp.array([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])   # counts [3, 1, 2]


def test_rate_cross_entropy_hand_case():
    s = _spikes()
    want = np.log(np.exp(3) + np.exp(1) + np.exp(2)) - np.array([3.0, 1.0, 2.0])
    for label in range(3):
        assert float(losses.rate_cross_entropy(s, jnp.int32(label))) == pytest.approx(want[label], rel=REL)
    assert float(losses.rate_cross_entropy(s.astype(bool), 0)) == pytest.approx(want[0], rel=REL)   # bool spikes
    half = np.log(np.exp(1.5) + np.exp(0.5) + np.exp(1.0)) - 1.5
    assert float(losses.rate_cross_entropy(s, 0, scale=0.5)) == pytest.approx(half, rel=REL)


def test_count_mse_hand_case():
    s = _spikes()
    assert float(losses.count_mse(s, jnp.array([3.0, 0.0, 0.0]))) == pytest.approx((0 + 1 + 4) / 3)
    assert float(losses.count_mse(s, 2)) == pytest.approx((1 + 1 + 0) / 3)          # a scalar target


def test_max_membrane_cross_entropy_hand_case():
    mem = jnp.array([[5.0, 0.0], [0.1, 0.2], [0.3, -0.1]])
    want = np.log(np.exp(5.0) + np.exp(0.2)) - 5.0
    assert float(losses.max_membrane_cross_entropy(mem, 0)) == pytest.approx(want, rel=REL)
    # start=1 skips the first step: logits [0.3, 0.2]
    want1 = np.log(np.exp(0.3) + np.exp(0.2)) - 0.2
    assert float(losses.max_membrane_cross_entropy(mem, 1, start=1)) == pytest.approx(want1, rel=REL)
    # the mean over the steps from start: logits [1.8, 0.0367] (start 0), [0.2, 0.05] (start 1)
    m0 = np.array([5.4 / 3, 0.1 / 3])
    want_mean = np.log(np.exp(m0).sum()) - m0[1]
    assert float(losses.mean_membrane_cross_entropy(mem, 1)) == pytest.approx(want_mean, rel=REL)
    want_mean1 = np.log(np.exp(0.2) + np.exp(0.05)) - 0.2
    assert float(losses.mean_membrane_cross_entropy(mem, 0, start=1)) == pytest.approx(want_mean1, rel=REL)


def test_gradients():
    s = jax.random.uniform(jax.random.PRNGKey(1), (6, 4))          # float spikes (a surrogate carries these)
    # distinct values, well separated, so eps never moves the arg max of a column
    mem = jnp.array([[0.1, 0.9, -0.3, 0.5], [0.6, 0.2, 0.4, -0.2], [0.3, 0.0, 0.8, 1.2]])
    for f, a in ((lambda x: losses.rate_cross_entropy(x, 2), s),
                 (lambda x: losses.count_mse(x, jnp.array([1.0, 2.0, 0.5, 3.0])), s),
                 (lambda m: losses.max_membrane_cross_entropy(m, 1), mem),
                 (lambda m: losses.mean_membrane_cross_entropy(m, 3, start=1), mem)):
        check_grads(jax.jit(f), (a,), order=1, modes=["fwd", "rev"], **TOL)   # jitted: the many evaluations are fast
    # the gradient reaches only each class's maximal step
    g = np.asarray(jax.grad(lambda m: losses.max_membrane_cross_entropy(m, 1))(mem))
    assert (np.count_nonzero(g, axis=0) == 1).all() and g[0, 1] < 0 and g[1, 0] > 0


def test_vmap_batch_and_jit():
    s = jax.random.bernoulli(jax.random.PRNGKey(2), 0.4, (5, 7, 3)).astype(jnp.float32)   # (B, T, C)
    y = jnp.array([0, 1, 2, 1, 0])
    for f, args in ((losses.rate_cross_entropy, (s, y)), (losses.count_mse, (s, jnp.ones((5, 3)))),
                    (losses.max_membrane_cross_entropy, (s, y)), (losses.mean_membrane_cross_entropy, (s, y))):
        batched = jax.jit(jax.vmap(f))(*args)
        assert batched.shape == (5,)
        np.testing.assert_allclose(np.asarray(batched), [float(f(*(a[b] for a in args))) for b in range(5)],
                                   rtol=1e-6)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: losses.rate_cross_entropy(jnp.ones((2, 4, 3)), jnp.zeros(2, jnp.int32)), ValueError,
     r"\(T, classes\).*got shape \(2, 4, 3\).*jax.vmap\(rate_cross_entropy\)"),
    (lambda: losses.rate_cross_entropy(jnp.ones(4), 0), ValueError, r"shape \(4,\)"),
    (lambda: losses.rate_cross_entropy(jnp.ones((4, 3)), 1.0), TypeError, "labels must be an integer class index"),
    (lambda: losses.rate_cross_entropy(jnp.ones((4, 3)), jnp.float32(1)), TypeError, "float32"),
    (lambda: losses.rate_cross_entropy(jnp.ones((4, 3)), jnp.array([0, 1, 0])), ValueError, "one-hot"),
    (lambda: losses.rate_cross_entropy(jnp.ones((3, 4)), 5), ValueError, r"out of range 0..3.*class axis last"),
    (lambda: losses.count_mse(jnp.ones((4, 3)), jnp.ones(4)), ValueError,
     r"target_counts must be a scalar or have shape \(3,\).*got shape \(4,\)"),
    (lambda: losses.count_mse(np.array([["a"]]), 1.0), TypeError, "spikes must"),
    (lambda: losses.max_membrane_cross_entropy(jnp.ones((4, 3), bool), 0), TypeError, "rate_cross_entropy"),
    (lambda: losses.max_membrane_cross_entropy(jnp.ones((4, 3)), 0, start=4), ValueError, "start must be"),
    (lambda: losses.max_membrane_cross_entropy(jnp.ones((4, 3), jnp.int32), 0), TypeError, "float dtype"),
    (lambda: losses.mean_membrane_cross_entropy(jnp.ones((4, 3), bool), 0), TypeError, "mean_membrane.*bool"),
    (lambda: losses.mean_membrane_cross_entropy(jnp.ones((4, 3)), jnp.array([1, 2])), ValueError, "scalar"),
])
def test_errors_name_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_labels_checked_only_when_concrete():
    """Under jit the label's value is unknown: no range check, no error (shape and dtype still checked)."""
    f = jax.jit(lambda s, y: losses.rate_cross_entropy(s, y))
    assert np.isfinite(float(f(_spikes(), jnp.int32(1))))
    with pytest.raises(TypeError, match="integer class index"):
        f(_spikes(), jnp.float32(1))
