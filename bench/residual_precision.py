"""Gradient error of the Pallas neuron-loop kernels per membrane residual precision.

``python -m bench.residual_precision`` runs, for every neuron type of tests/test_pallas.py, the
interpreted kernels (``kernels/pallas_neuron.py``, interpret mode: any host) with
``residual_dtype`` None (the state entries' own dtype: a float32 membrane), ``bfloat16`` and
``float16``, and compares ``value_and_grad`` of a loss mixing outputs, reads and final states with
autodiff of a plain ``lax.scan`` of the same step (``kernels.neuron_loop.scan_loop``). It prints a
Markdown table: per neuron and policy, the residual bytes per neuron-step and the largest relative
gradient error (max |diff| over a leaf / max |leaf|, max over the leaves) of ``d xs``, of the
parameter gradients and of ``d state0``. The documented run: docs/kernels.md, "Membrane residual
precision".
"""
from __future__ import annotations

import argparse
import platform
import time
from typing import Dict, List, Optional

import jax
import jax.numpy as jnp
import numpy as np

from snnkern import snn
from snnkern.functional.surrogate import piecewise_surrogate, sigmoid_surrogate, superspike_surrogate
from snnkern.kernels import neuron_loop as NL
from snnkern.kernels import pallas_neuron as PN
from snnkern.plan.seq import neuron_step as _neuron_step

__all__ = ["NEURONS", "POLICIES", "make_neuron", "setup", "measure", "markdown"]

NEURONS = ("LIF", "LIFSoftReset", "SimpleLIF", "AdaptiveLIF", "SimpleIAF", "IAF", "SimpleLI", "SigmaDelta",
           "SpikeCounter")
POLICIES = {"f32": None, "bf16": jnp.bfloat16, "f16": jnp.float16}


def make_neuron(kind: str, n: int):
    """The neurons of tests/test_pallas.py: trainable (per-neuron) thresholds / reset values where
    a neuron has them, several surrogates."""
    thr = jnp.linspace(0.4, 0.9, n)
    if kind == "LIF":
        return snn.LIF([0.9, 0.8], threshold=thr, spike_fn=superspike_surrogate(10.0))
    if kind == "LIFSoftReset":
        return snn.LIFSoftReset([0.85, 0.7], threshold=jnp.array(0.6), reset_val=jnp.array(0.5),
                                stop_reset_grad=False, spike_fn=sigmoid_surrogate(4.0))
    if kind == "SimpleLIF":
        return snn.SimpleLIF([0.8], threshold=0.5, reset_val=jnp.array(0.2), spike_fn=piecewise_surrogate(0.5))
    if kind == "AdaptiveLIF":
        return snn.AdaptiveLIF([0.9], threshold=thr, stop_reset_grad=False)
    if kind == "SimpleIAF":
        return snn.SimpleIAF(leak=0.05, threshold=jnp.array(0.8))
    if kind == "IAF":
        return snn.IAF([0.7], leak=jnp.full((n,), 0.02), threshold=0.6, reset_val=jnp.array(0.1))
    if kind == "SimpleLI":
        return snn.SimpleLI([0.8])
    if kind == "SigmaDelta":
        return snn.SigmaDelta([0.6, 0.7, 0.5], threshold=jnp.array(0.4))
    if kind == "SpikeCounter":
        return snn.SpikeCounter()
    raise ValueError(kind)


def setup(kind: str, n: int, T: int, B: int, seed: int = 0):
    """Neuron, params, a non-zero initial state (spike entries included) and (B, T, n) inputs."""
    layer = make_neuron(kind, n)
    k = jax.random.split(jax.random.PRNGKey(seed), 3)
    st = layer.init_state((n,), k[0])
    st = [s + 0.4 * jax.random.uniform(jax.random.fold_in(k[1], j), (n,)) for j, s in enumerate(st)]
    xs = 1.2 * jax.random.normal(k[2], (B, T, n)) + 0.3
    return layer, layer.params(), st, xs


def scan_autodiff(step, params, state0, xs, spike_idx=(), want_out=True, want_read=False, **_):
    """The reference: ``scan_loop`` of the step (plus the entering last state as ``reads``),
    differentiated by JAX's autodiff of ``lax.scan``."""
    def with_read(p, s, x):
        ns, out = step(p, s, x)
        return ns, (out, s[-1])

    sT, (outs, reads) = NL.scan_loop(with_read, params, state0, xs)
    return sT, (outs if want_out else None), (reads if want_read else None)


def loss_of(fn, layer, **kw):
    """jit(value_and_grad) w.r.t. (params, state0, xs) of a loss mixing outputs, reads and final
    states of ``fn`` vmapped over the batch (the loss of tests/test_pallas.py)."""
    step, sidx = _neuron_step(layer), layer.binary_state_entries()
    run = jax.vmap(lambda p, s, x: fn(step, p, s, x, sidx, want_out=True, want_read=True,
                                      out_is_last_state=True, **kw), in_axes=(None, None, 0))

    def loss(params, st, xs):
        sT, outs, reads = run(params, st, xs)
        w = jnp.cos(jnp.arange(xs.shape[1], dtype=jnp.float32))[None, :, None]
        val = sum(jnp.sum(jnp.sin(s.astype(jnp.float32) * (j + 1))) for j, s in enumerate(sT))
        val = val + jnp.sum(outs.astype(jnp.float32) * w)
        return val + 0.5 * jnp.sum(reads.astype(jnp.float32) * w[:, ::-1]), (sT, outs, reads)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


def rel_err(got, ref) -> float:
    """max over leaves of (max |got - ref| over the leaf) / (max |ref| over the leaf); NaN if
    there are no leaves (a neuron without trainable parameters)."""
    worst = float("nan")
    for u, v in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
        u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
        diff, scale = float(np.max(np.abs(u - v), initial=0.0)), float(np.max(np.abs(v), initial=0.0))
        r = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
        worst = r if np.isnan(worst) else max(worst, r)
    return worst


def residual_bytes(layer, st, residual_dtype, x_dtype=jnp.float32):
    """(state residual bytes, input bytes) per neuron and step under a policy."""
    dts = PN.residual_dtypes([s.dtype for s in st], layer.binary_state_entries(), residual_dtype)
    return sum(jnp.dtype(d).itemsize for d in dts), jnp.dtype(x_dtype).itemsize


def measure(kinds=NEURONS, policies: Optional[Dict[str, object]] = None, T=64, B=4, N=256,
            block_n: Optional[int] = 128) -> List[dict]:
    """One row per (neuron, policy): bytes and relative gradient errors vs autodiff of the scan."""
    policies = POLICIES if policies is None else policies
    rows = []
    for kind in kinds:
        layer, params, st, xs = setup(kind, N, T, B)
        (_, aux_ref), (gp_ref, gs_ref, gx_ref) = loss_of(scan_autodiff, layer)(params, st, xs)
        spikes = float(jnp.mean(aux_ref[1])) if layer.binary_state_entries() else float("nan")
        for name, rdt in policies.items():
            (_, aux), (gp, gs, gx) = loss_of(PN.neuron_loop, layer, interpret=True, block_n=block_n,
                                              residual_dtype=rdt)(params, st, xs)
            fwd = max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)), initial=0.0))
                      for a, b in zip(jax.tree.leaves(aux), jax.tree.leaves(aux_ref)))
            sb, xb = residual_bytes(layer, st, rdt)
            rows.append(dict(neuron=kind, policy=name, state_bytes=sb, x_bytes=xb, spike_rate=spikes,
                             fwd_diff=fwd, dx=rel_err(gx, gx_ref), dparams=rel_err(gp, gp_ref),
                             dstate0=rel_err(gs, gs_ref)))
    return rows


def _fmt(v: float) -> str:
    if np.isnan(v):
        return "-"
    return "0" if v == 0 else f"{v:.1e}"


def markdown(rows: List[dict]) -> str:
    lines = ["| neuron | membrane residual | residual bytes / neuron-step (state + x) | rel err d xs "
             "| rel err d params | rel err d state0 | forward max diff |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['neuron']} | {r['policy']} | {r['state_bytes']} + {r['x_bytes']} "
                     f"| {_fmt(r['dx'])} | {_fmt(r['dparams'])} | {_fmt(r['dstate0'])} | {_fmt(r['fwd_diff'])} |")
    pols = list(dict.fromkeys(r["policy"] for r in rows))
    lines += ["", "| membrane residual | worst rel err d xs | worst rel err d params | worst rel err d state0 |",
              "|---|---|---|---|"]
    for p in pols:
        sel = [r for r in rows if r["policy"] == p]
        worst = {k: np.nanmax([r[k] for r in sel]) if any(not np.isnan(r[k]) for r in sel) else float("nan")
                 for k in ("dx", "dparams", "dstate0")}
        lines.append(f"| {p} | {_fmt(worst['dx'])} | {_fmt(worst['dparams'])} | {_fmt(worst['dstate0'])} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.residual_precision", description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=64)
    ap.add_argument("--B", type=int, default=4)
    ap.add_argument("--N", type=int, default=256)
    ap.add_argument("--block-n", type=int, default=128, help="neurons per kernel tile (power of 2)")
    ap.add_argument("--neurons", nargs="+", default=list(NEURONS), choices=NEURONS)
    ap.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows = measure(a.neurons, {p: POLICIES[p] for p in a.policies}, T=a.T, B=a.B, N=a.N, block_n=a.block_n)
    print(f"T={a.T} B={a.B} N={a.N} block_n={a.block_n}, float32 inputs, interpret mode; "
          f"jax {jax.__version__}, {jax.default_backend()} ({platform.machine()}, {len(jax.devices())} device(s)); "
          f"vs autodiff of lax.scan; {time.perf_counter() - t0:.0f} s\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
