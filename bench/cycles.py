"""Feedback cycles on the planned path vs the reference: fwd+bwd time and compiled temp memory.

``python -m bench.cycles [--T 500] [--B 16] [--N 128]``: the models
``SequentialLocalFeedback([Linear, LIF, Linear, LIF, Linear], feedback_layers=...)`` for
``{3: 2}``, ``{1: 1}``, ``{3: 1}``, vmapped over the batch like bench/models.py; the gradient of a
sum of the outputs wrt every weight; median of 5 timed calls after a warm-up.
"""
from __future__ import annotations

import argparse
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import snnkern
from snnkern import snn

SHAPES = ({3: 2}, {1: 1}, {3: 1})


def model(fb, N, key):
    k = jax.random.split(key, 3)
    layers = [eqx.nn.Linear(N, N, key=k[0]), snn.LIF([0.95, 0.9], threshold=0.1), eqx.nn.Linear(N, N, key=k[1]),
              snn.LIF([0.95, 0.9], threshold=0.1), eqx.nn.Linear(N, 10, key=k[2])]
    return snn.SequentialLocalFeedback(layers, feedback_layers=fb)


def measure(fb, backend, B, T, N, reps=5):
    key = jax.random.PRNGKey(0)
    m = model(fb, N, key)
    st = m.init_state((N,), key)
    x = jnp.asarray(np.random.default_rng(0).random((B, T, N)) < 0.3, jnp.float32)
    params, static = eqx.partition(m, eqx.is_inexact_array)

    def loss(p, xx):
        mm = eqx.combine(p, static)
        _, outs = jax.vmap(lambda xb: mm(st, xb, key))(xx)
        return sum(jnp.sum(o) for o in jax.tree.leaves(outs))

    with snnkern.backend(backend):
        f = jax.jit(jax.grad(loss))
        compiled = f.lower(params, x).compile()
    mem = compiled.memory_analysis()
    jax.block_until_ready(compiled(params, x))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(params, x))
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), int(mem.temp_size_in_bytes)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--B", type=int, default=16)
    ap.add_argument("--T", type=int, default=500)
    ap.add_argument("--N", type=int, default=128)
    ap.add_argument("--backend", default="xla")
    a = ap.parse_args()
    print(f"platform {jax.default_backend()}, B={a.B} T={a.T} N={a.N}, fwd+bwd")
    print(f"{'feedback':<10} {'ref ms':>9} {a.backend + ' ms':>9} {'ref temp MiB':>13} {a.backend + ' temp MiB':>14}")
    for fb in SHAPES:
        tr, mr = measure(fb, "reference", a.B, a.T, a.N)
        tp, mp = measure(fb, a.backend, a.B, a.T, a.N)
        print(f"{str(fb):<10} {tr * 1e3:9.1f} {tp * 1e3:9.1f} {mr / 2**20:13.2f} {mp / 2**20:14.2f}")


if __name__ == "__main__":
    main()
