"""Feedback cycles on the planned path vs the reference: fwd+bwd time and compiled temp memory.

``python -m bench.cycles [--T 500] [--B 16] [--N 128] [--no-checkpoint]``: the models
``SequentialLocalFeedback([Linear, LIF, Linear, LIF, Linear], feedback_layers=...)`` for
``{3: 2}``, ``{1: 1}``, ``{3: 1}``, and ``custom {4: 2}``: ``[Linear, LIF, Linear, Integrator, LIF,
Linear]`` with a custom stateful layer (``v <- 0.8 v + tanh(x)``, no step function) in the cycle,
vmapped over the batch like bench/models.py; the gradient of a
sum of the outputs wrt every weight; min and median of 7 timed calls after a warm-up, the two paths'
calls alternating. ``--no-checkpoint``: under ``snnkern.time_checkpoint(None)`` (on CPU the planned
path checkpoints time by default from T = 500).
"""
from __future__ import annotations

import argparse
import contextlib
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import snnkern
from snnkern import snn
from snnkern.plan.protocol import AbstractStatefulLayer

SHAPES = ({3: 2}, {1: 1}, {3: 1}, "custom {4: 2}")


class Integrator(AbstractStatefulLayer):
    """A custom stateful layer (not a neuron: no step function to fuse): v <- 0.8 v + tanh(x)."""

    def init_state(self, shape, key=None, *args, **kwargs):
        return [jnp.zeros(shape)]

    def __call__(self, state, synaptic_input, *, key=None):
        v = 0.8 * state[0] + jnp.tanh(synaptic_input)
        return [v], v


def model(fb, N, key):
    k = jax.random.split(key, 3)
    custom = isinstance(fb, str)
    layers = [eqx.nn.Linear(N, N, key=k[0]), snn.LIF([0.95, 0.9], threshold=0.1), eqx.nn.Linear(N, N, key=k[1]),
              *([Integrator()] if custom else []), snn.LIF([0.95, 0.9], threshold=0.1),
              eqx.nn.Linear(N, 10, key=k[2])]
    return snn.SequentialLocalFeedback(layers, feedback_layers={4: 2} if custom else fb)


def compiled(fb, backend, B, T, N, checkpoint="default"):
    """``(call, temp bytes)``: the compiled fwd+bwd of the model ``fb`` under ``backend``."""
    key = jax.random.PRNGKey(0)
    m = model(fb, N, key)
    st = m.init_state((N,), key)
    x = jnp.asarray(np.random.default_rng(0).random((B, T, N)) < 0.3, jnp.float32)
    params, static = eqx.partition(m, eqx.is_inexact_array)

    def loss(p, xx):
        mm = eqx.combine(p, static)
        _, outs = jax.vmap(lambda xb: mm(st, xb, key))(xx)
        return sum(jnp.sum(o) for o in jax.tree.leaves(outs))

    with snnkern.backend(backend), (snnkern.time_checkpoint(None) if checkpoint == "none" else contextlib.nullcontext()):
        c = jax.jit(jax.grad(loss)).lower(params, x).compile()
    jax.block_until_ready(c(params, x))
    return (lambda: jax.block_until_ready(c(params, x))), int(c.memory_analysis().temp_size_in_bytes)


def measure(fb, backends, B, T, N, reps=7, checkpoint="default"):
    """Per backend ``(min s, median s, temp bytes)``; the backends' calls alternate (host load)."""
    fns = {b: compiled(fb, b, B, T, N, checkpoint) for b in backends}
    times = {b: [] for b in backends}
    for _ in range(reps):
        for b, (call, _) in fns.items():
            t0 = time.perf_counter()
            call()
            times[b].append(time.perf_counter() - t0)
    return {b: (min(times[b]), float(np.median(times[b])), fns[b][1]) for b in backends}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--B", type=int, default=16)
    ap.add_argument("--T", type=int, default=500)
    ap.add_argument("--N", type=int, default=128)
    ap.add_argument("--backend", default="xla")
    ap.add_argument("--no-checkpoint", action="store_true", help="time_checkpoint(None) on the planned path")
    a = ap.parse_args()
    ck = "none" if a.no_checkpoint else "default"
    print(f"platform {jax.default_backend()}, B={a.B} T={a.T} N={a.N}, fwd+bwd, time checkpointing {ck}")
    print(f"{'feedback':<14} {'ref ms min/med':>15} {a.backend + ' ms min/med':>15} {'ref temp MiB':>13} "
          f"{a.backend + ' temp MiB':>14}")
    for fb in SHAPES:
        r = measure(fb, ("reference", a.backend), a.B, a.T, a.N, checkpoint=ck)
        (r0, r1, rm), (p0, p1, pm) = r["reference"], r[a.backend]
        print(f"{str(fb):<14} {r0 * 1e3:7.1f}/{r1 * 1e3:7.1f} {p0 * 1e3:7.1f}/{p1 * 1e3:7.1f} {rm / 2**20:13.2f} "
              f"{pm / 2**20:14.2f}")


if __name__ == "__main__":
    main()
