"""The dense-GEMM floor of a training step: only its matrix products, timed in one program.

``python -m bench.gemm_floor [--tiers cpu,cpu-rec,cpu-recmlp]`` builds each tier's model, lists
the GEMMs any engine must run for forward + backward with dense weights - every ``Linear`` as one
GEMM over all T·B rows (forward ``x W^T``, backward ``dW = g^T x`` and ``dX = g W`` where the input
is not the external one) and every recurrent weight as one (B, n) x (n, n) product per step in a
sequential loop, forward and backward (its ``dW`` one GEMM over all rows) - and times exactly those
products in one compiled program, alternating with the reference training step and the default
planned one (backend ``auto``, time checkpointing as the platform default). ``ref / gemms`` is
then the largest speed-up over the reference that a dense engine can reach with zero cost outside
its GEMMs (no neuron updates, no memory traffic besides the products).
"""
from __future__ import annotations

import argparse
from typing import List, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from . import models, timing
from .tiers import parse_tiers

__all__ = ["gemm_plan", "gemm_program", "main"]

Gemm = Tuple[str, int, int, bool]     # ("hoisted" | "step", in, out, needs dX)


def gemm_plan(spec: models.ModelSpec) -> List[Gemm]:
    """The dense products of a training step of ``spec``'s model, in layer order."""
    n_in, n, n_out = spec.N_in, spec.N, spec.N_out
    if spec.kind == "ff":
        return [("hoisted", n_in, n, False), ("hoisted", n, n, True)]
    if spec.kind == "rec":
        return [("hoisted", n_in, n, False), ("step", n, n, True), ("hoisted", n, n_out, True)]
    if spec.kind == "recmlp":
        return [("hoisted", n_in, n, False), ("step", n, n, True), ("hoisted", n, n, True), ("step", n, n, True),
                ("hoisted", n, n_out, True)]
    raise ValueError(f"no GEMM list for model kind {spec.kind!r} (ff | rec | recmlp)")


def gemm_program(gemms: List[Gemm], B: int, T: int, seed: int = 0):
    """``(f, args)``: ``f(*args)`` runs every product of ``gemms`` once, forward and backward, and
    returns a scalar that depends on all of them (so none is dropped)."""
    ks = jax.random.split(jax.random.PRNGKey(seed), 2 * len(gemms) + 1)
    ws = [jax.random.normal(ks[2 * k], (o, i), jnp.float32) / np.sqrt(i) for k, (_, i, o, _) in enumerate(gemms)]
    x = jax.random.normal(ks[-1], (B * T, gemms[0][1]), jnp.float32)

    def step_loop(w, xs, transpose):
        # one (B, n) x (n, n) product per step, each step's input depending on the last product
        def body(c, xt):
            y = c @ (w if transpose else w.T)
            return 0.5 * y + xt, y
        _, ys = jax.lax.scan(body, jnp.zeros((B, w.shape[0]), w.dtype), xs.reshape(T, B, -1))
        return ys.reshape(B * T, -1)

    def f(ws, x):
        acts, h = [], x
        for (kind, _, _, _), w in zip(gemms, ws):             # forward
            acts.append(h)
            h = step_loop(w, h, False) if kind == "step" else h @ w.T
        total, g = jnp.sum(h), jnp.ones_like(h)
        for (kind, _, _, dx), w, a in reversed(list(zip(gemms, ws, acts))):   # backward
            total = total + jnp.sum(g.T @ a)                  # dW: one GEMM over all rows
            if dx:
                g = step_loop(w, g, True) if kind == "step" else g @ w
        return total

    return f, (ws, x)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiers", default="cpu,cpu-rec,cpu-recmlp")
    a = ap.parse_args(argv)
    print(f"platform {jax.default_backend()}: dense GEMMs of a training step vs the reference step "
          "(median ms, one process, alternating)")
    print(f"{'tier':<12} {'T':>5} {'B':>4} {'N':>5} {'gemms ms':>9} {'ref ms':>8} {'plan ms':>8} {'ref/gemms':>10} "
          f"{'ref/plan':>9}")
    for tier in parse_tiers(a.tiers):
        for N in tier.Ns:
            for T in tier.Ts:
                spec = models.build(tier.model, N, N_in=tier.n_in or None)
                f, args = gemm_program(gemm_plan(spec), tier.B, T)
                gemms = timing.compile_under("xla", f, *args).fn
                x = jnp.asarray(models.make_input(tier.B, T, spec.N_in, spec.in_shape))
                params, _, vg = models.make_fns(spec, spec.model)
                ref = timing.compile_under("reference", vg, params, x).fn
                plan = timing.compile_under("auto", vg, params, x).fn
                st = timing.measure_interleaved({"gemms": lambda: gemms(*args), "ref": lambda: ref(params, x),
                                                 "plan": lambda: plan(params, x)})
                g, r, p = (st[k].median * 1e3 for k in ("gemms", "ref", "plan"))
                print(f"{tier.name:<12} {T:>5} {tier.B:>4} {N:>5} {g:>9.1f} {r:>8.1f} {p:>8.1f} {r / g:>9.2f}x "
                      f"{r / p:>8.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
