"""snnkern.encode: rate, latency and delta coding (hand-computed cases, statistics, jit/vmap, errors)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from snnkern import encode

KEY = jax.random.PRNGKey(0)


# ------------------------------------------------------------------------------------------------
# rate


def test_rate_hand_cases_shape_dtype():
    s = encode.rate(jnp.array([[0.0, 1.0, 2.0], [-1.0, 1.0, 0.0]]), 7, KEY)
    assert s.shape == (7, 2, 3) and s.dtype == jnp.bool_
    # probability 0 never fires, 1 always; values outside [0, 1] are clipped
    np.testing.assert_array_equal(np.asarray(s[:, 0]), np.tile([False, True, True], (7, 1)))
    np.testing.assert_array_equal(np.asarray(s[:, 1]), np.tile([False, True, False], (7, 1)))
    assert encode.rate(jnp.float32(0.5), 3, KEY).shape == (3,)                  # a scalar: (T,)
    assert not np.asarray(encode.rate(jnp.array([0.5]), 50, KEY, gain=0.0)).any()   # gain scales p


def test_rate_mean_within_three_standard_errors():
    """Each entry's spike frequency over T = 4000 Bernoulli draws is within 3 standard errors
    sqrt(p (1 - p) / T) of p (fixed key: deterministic; at 3 sigma a miss has probability 0.3 %)."""
    p = jnp.linspace(0.05, 0.95, 10)
    T = 4000
    freq = np.asarray(encode.rate(p, T, jax.random.PRNGKey(7)), np.float64).mean(axis=0)
    se = np.sqrt(np.asarray(p) * (1 - np.asarray(p)) / T)
    np.testing.assert_array_less(np.abs(freq - np.asarray(p)), 3 * se)


def test_rate_jit_vmap_and_keys():
    x = jnp.array([[0.2, 0.7, 0.5], [0.9, 0.1, 0.4]])
    keys = jax.random.split(KEY, 2)
    batched = jax.jit(jax.vmap(lambda xx, k: encode.rate(xx, 5, k)))(x, keys)
    assert batched.shape == (2, 5, 3)
    for b in range(2):
        np.testing.assert_array_equal(np.asarray(batched[b]), np.asarray(encode.rate(x[b], 5, keys[b])))
    assert not np.array_equal(np.asarray(encode.rate(x, 50, keys[0])), np.asarray(encode.rate(x, 50, keys[1])))
    np.testing.assert_array_equal(np.asarray(encode.rate(x, 5, jax.random.key(3))).shape, (5, 2, 3))  # typed key


# ------------------------------------------------------------------------------------------------
# latency


def test_latency_hand_case():
    s = np.asarray(encode.latency(jnp.array([1.0, 0.5, 0.0, 0.25]), 9))
    assert s.shape == (9, 4) and s.dtype == np.bool_
    # t = round((1 - x) * (window - 1)), window = T = 9: x=1 -> 0, 0.5 -> 4, 0.25 -> 6; x = 0 never fires
    assert np.argwhere(s).tolist() == [[0, 0], [4, 1], [6, 3]]
    w = np.asarray(encode.latency(jnp.array([1.0, 0.5, 0.01]), 8, window=5))
    assert np.argwhere(w).tolist() == [[0, 0], [2, 1], [4, 2]] and not w[5:].any()   # the last T - window steps free
    th = np.asarray(encode.latency(jnp.array([0.3, 0.2, 0.6]), 6, threshold=0.3))    # <= threshold: no spike
    assert th.sum(axis=0).tolist() == [0, 0, 1]


def test_latency_monotone_in_x():
    x = jnp.linspace(0.01, 1.0, 200)
    s = np.asarray(encode.latency(x, 32, window=24))
    assert (s.sum(axis=0) == 1).all()                             # one spike per positive entry
    t = s.argmax(axis=0)
    assert (np.diff(t) <= 0).all() and t[0] == 23 and t[-1] == 0   # larger x, earlier (non-increasing)


def test_latency_jit_vmap():
    x = jnp.array([[0.9, 0.3], [0.1, 0.6]])
    out = jax.jit(jax.vmap(lambda xx: encode.latency(xx, 6)))(x)
    assert out.shape == (2, 6, 2)
    np.testing.assert_array_equal(np.asarray(out), np.stack([np.asarray(encode.latency(r, 6)) for r in x]))


# ------------------------------------------------------------------------------------------------
# delta


def test_delta_hand_case():
    x = jnp.array([0.0, 0.5, 0.2, 0.2, 1.0, 0.9])
    s = encode.delta(x, 0.25)                 # d = [0, .5, -.3, 0, .8, -.1]
    assert s.dtype == jnp.int8 and s.tolist() == [0, 1, -1, 0, 1, 0]
    two = encode.delta(x, 0.25, signed=False)
    assert two.shape == (6, 2) and two.dtype == jnp.bool_
    assert np.asarray(two[:, 0]).tolist() == [False, False, True, False, False, False]   # off: decreases
    assert np.asarray(two[:, 1]).tolist() == [False, True, False, False, True, False]    # on: increases
    # the first step compares with `initial` (default 0)
    assert encode.delta(x + 1.0, 0.25).tolist()[0] == 1
    assert encode.delta(x + 1.0, 0.25, initial=1.0).tolist()[0] == 0
    # exactly the threshold is not "more than" it
    assert encode.delta(jnp.array([0.0, 0.25]), 0.25).tolist() == [0, 0]


def test_delta_multichannel_jit_vmap():
    x = jnp.array([[[0.0, 1.0], [1.0, 1.0], [1.0, 0.0]]])        # (B=1, T=3, 2 channels)
    out = jax.jit(jax.vmap(lambda xx: encode.delta(xx, 0.5, signed=False, initial=xx[0])))(x)
    assert out.shape == (1, 3, 2, 2)
    want = np.zeros((3, 2, 2), bool)
    want[1, 1, 0] = True       # channel 0 rises at t=1 (on)
    want[2, 0, 1] = True       # channel 1 falls at t=2 (off)
    np.testing.assert_array_equal(np.asarray(out[0]), want)
    assert encode.delta(x[0], 0.5).tolist() == [[0, 1], [1, 0], [0, -1]]
    thr = encode.delta(x[0], jnp.array([0.5, 2.0]))              # a per-channel threshold: channel 1 never
    assert thr.tolist() == [[0, 0], [1, 0], [0, 0]]


# ------------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("call, exc, match", [
    (lambda: encode.rate(jnp.ones(3), -2, KEY), ValueError, "T must be >= 1, got -2"),
    (lambda: encode.rate(jnp.ones(3), 4.0, KEY), TypeError, "T must be a positive int"),
    (lambda: encode.rate(jnp.ones(3), 4, 0), TypeError, "key must be a PRNG key"),
    (lambda: encode.rate(jnp.ones(3), 4, jnp.ones(3)), TypeError, r"shape \(3,\)"),
    (lambda: encode.rate(np.array(["a"]), 4, KEY), TypeError, "x must"),
    (lambda: encode.rate([0.1, 0.2], 4, KEY), TypeError, "x must be an array"),
    (lambda: encode.latency(jnp.ones(3), 0), ValueError, "T must be >= 1, got 0"),
    (lambda: encode.latency(jnp.ones(3), 4, window=5), ValueError, "window must be <= T=4"),
    (lambda: encode.delta(jnp.float32(1.0)), ValueError, r"x must have at least 1 dimension.*shape \(\)"),
    (lambda: encode.delta(jnp.ones(4), -0.1), ValueError, "threshold must be >= 0"),
    (lambda: encode.delta(jnp.ones((4, 3)), initial=jnp.ones(2)), ValueError, r"initial of shape \(2,\)"),
])
def test_errors_name_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
