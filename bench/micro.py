"""GPU roofline figures (BENCH.md "What to time" 6): the device's measured copy bandwidth, the
achieved TFLOP/s of the model's GEMM shape, and the achieved GB/s of the neuron loop alone
(``Sequential(LIF)`` over a (B, T, N) current, per path). Run on GPU by default, on CPU with
``--micro`` (for testing the code)."""
from __future__ import annotations

from typing import Dict

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from snnkern import snn

from . import models
from .timing import compile_under, measure_interleaved

__all__ = ["copy_bandwidth", "gemm_rate", "neuron_loop_rates"]


def copy_bandwidth(n_bytes: int, **timing) -> float:
    """Bytes/s of ``y = x + 1`` over an ``n_bytes`` float32 array (read + write counted)."""
    x = jnp.ones((n_bytes // 4,), jnp.float32)
    f = jax.jit(lambda x: x + 1.0).lower(x).compile()
    st = measure_interleaved({"copy": lambda: f(x)}, **timing)["copy"]
    return 2.0 * x.size * 4 / st.median


def gemm_rate(M: int, K: int, N: int, **timing) -> float:
    """FLOP/s of one float32 (M, K) @ (K, N) product at JAX's default precision."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(1))
    a = jax.random.normal(k1, (M, K), jnp.float32)
    w = jax.random.normal(k2, (K, N), jnp.float32)
    f = jax.jit(jnp.matmul).lower(a, w).compile()
    st = measure_interleaved({"gemm": lambda: f(a, w)}, **timing)["gemm"]
    return 2.0 * M * K * N / st.median


def neuron_loop_rates(B: int, T: int, N: int, backends: Dict[str, str], **timing) -> Dict[str, float]:
    """Bytes/s of the LIF time loop alone, forward, per path (``{path: backend}``): the (B, T, N)
    input current read once and the spikes written once."""
    model = snn.Sequential(snn.LIF(models.DECAYS))
    rng = np.random.default_rng(0)
    cur = jax.device_put((rng.standard_normal((B, T, N)) * 2.0).astype(np.float32))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    key = jax.random.PRNGKey(0)

    def fwd(params, x):
        m = eqx.combine(params, static)
        states = m.init_state((N,), key)
        return eqx.filter_vmap(m, in_axes=(None, 0, None))(states, x, key)[1][-1]

    calls = {}
    for path, backend in backends.items():
        c = compile_under(backend, fwd, params, cur)
        calls[path] = (lambda c=c: c.fn(params, cur))
    st = measure_interleaved(calls, **timing)
    n_bytes = 2.0 * B * T * N * 4
    return {p: n_bytes / s.median for p, s in st.items()}
