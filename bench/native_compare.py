"""The native CPU loop against numba and the XLA scan, one LIF loop, in one process (docs/kernels.md
"Native CPU loops"). numba is for comparison only (not a dependency of snnkern).

    python -m bench.native_compare [--T 500 --B 16 --N 256 --reps 7]

Measures, alternating the implementations in every repeat (the machine is shared: only ratios in
one process mean anything): the forward loop's GB/s (bytes read + written / median time), the
forward + backward (``jax.grad``) time of the FFI and XLA loops, the per-call overhead (T = 1,
one neuron), first-call compile times (a fresh cache folder), and the loops under ``vmap``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np

os.environ.setdefault("SNNKERN_CACHE_DIR", tempfile.mkdtemp(prefix="snnkern_bench_"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from snnkern import snn  # noqa: E402
from snnkern.kernels.native import native_neuron_loop  # noqa: E402
from snnkern.kernels.neuron_loop import neuron_loop  # noqa: E402
from snnkern.plan.seq import neuron_step  # noqa: E402

ALPHA, BETA, TH = 0.9, 0.8, 1.0


def numba_loop():
    """LIF's forward (snn.LIF's step, reset_val None) as a numba loop over (T, N) float32 arrays:
    neurons outer (parallel over the cores), time inner. Returns the jitted function."""
    import numba

    blk = 64

    @numba.njit(parallel=True, fastmath=False, cache=False)
    def lif(xs, mem0, syn0, spk0, a, b, th):
        T, N = xs.shape
        outs = np.empty_like(xs)
        mem_t, syn_t, spk_t = np.empty_like(mem0), np.empty_like(syn0), np.empty_like(spk0)
        one, zero = np.float32(1.0), np.float32(0.0)
        for q in numba.prange((N + blk - 1) // blk):   # the FFI kernel's order: a block over all T
            n0 = q * blk
            n1 = min(N, n0 + blk)
            mem, syn, spk = mem0[n0:n1].copy(), syn0[n0:n1].copy(), spk0[n0:n1].copy()
            for t in range(T):
                for i in range(n1 - n0):
                    m = mem[i] - mem[i] * spk[i]
                    m = a * m + (one - a) * syn[i]
                    syn[i] = b * syn[i] + (one - b) * xs[t, n0 + i]
                    spk[i] = one if m - th >= zero else zero
                    mem[i] = m
                    outs[t, n0 + i] = spk[i]
            mem_t[n0:n1], syn_t[n0:n1], spk_t[n0:n1] = mem, syn, spk
        return outs, mem_t, syn_t, spk_t

    return lif


def setup(T, B, N):
    layer = snn.LIF([ALPHA, BETA], threshold=TH)
    xs = (1.5 * jax.random.normal(jax.random.PRNGKey(0), (T, B, N)) + 1.2).astype(jnp.float32)
    s0 = [jnp.zeros((B, N), jnp.float32)] * 3
    return neuron_step(layer), layer.params(), s0, xs


def jax_fns(step, params, lif_nb):
    flags = dict(want_out=True, want_read=False, out_is_last_state=True)

    def fwd(loop):
        return jax.jit(lambda s0, xs: loop(step, params, s0, xs, (2,), **flags))

    def fwd_bwd(loop):
        def loss(s0, xs):
            sT, outs, _ = loop(step, params, s0, xs, (2,), **flags)
            return jnp.sum(outs * xs) + jnp.sum(sT[0])
        return jax.jit(jax.grad(loss, argnums=(0, 1)))

    def callback(s0, xs):
        shp = jax.ShapeDtypeStruct(xs.shape, xs.dtype)
        st = jax.ShapeDtypeStruct(xs.shape[-2:], xs.dtype)

        def host(x, m, s, k):
            x = np.asarray(x)
            T = x.shape[-3]
            flat = np.ascontiguousarray(np.moveaxis(x, -3, 0).reshape(T, -1))
            o, m1, s1, k1 = lif_nb(flat, np.asarray(m).ravel(), np.asarray(s).ravel(), np.asarray(k).ravel(),
                                   np.float32(ALPHA), np.float32(BETA), np.float32(TH))
            lead = x.shape[:-3]
            o = np.moveaxis(o.reshape((T,) + lead + x.shape[-2:]), 0, -3)
            return o, *(a.reshape(lead + x.shape[-2:]) for a in (m1, s1, k1))

        return jax.pure_callback(host, (shp, st, st, st), xs, *s0, vmap_method="broadcast_all")

    return {"xla": fwd(neuron_loop), "ffi": fwd(native_neuron_loop), "numba-cb": jax.jit(callback)}, \
        {"xla": fwd_bwd(neuron_loop), "ffi": fwd_bwd(native_neuron_loop)}


def timed(f, *args):
    t0, c0 = time.perf_counter(), time.process_time()
    jax.block_until_ready(f(*args))
    return time.perf_counter() - t0, time.process_time() - c0


def alternate(fns, args, reps):
    """Median wall and CPU seconds per implementation, alternating them in every repeat."""
    for f in fns.values():
        jax.block_until_ready(f(*args))
    walls = {k: [] for k in fns}
    cpus = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            w, c = timed(f, *args)
            walls[k].append(w)
            cpus[k].append(c)
    return {k: (statistics.median(walls[k]), statistics.median(cpus[k])) for k in fns}


def first_calls(step, params, s0, xs):
    """First-call times: the native runtime + kernel compile (fresh cache), a cache hit in-process
    is not a first call; numba's njit compile."""
    import snnkern.kernels.native.build as nb
    t0 = time.perf_counter()
    nb.native_unavailable()                     # the shared FFI runtime (once per machine)
    t_rt = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(native_neuron_loop(step, params, s0, xs[:2], (2,)))
    t_kernel = time.perf_counter() - t0
    t0 = time.perf_counter()
    lif = numba_loop()
    a = np.zeros((2, 4), np.float32)
    lif(a, a[0], a[0], a[0], np.float32(ALPHA), np.float32(BETA), np.float32(TH))
    t_nb = time.perf_counter() - t0
    return {"native runtime (once)": t_rt, "native kernel (per neuron)": t_kernel, "numba njit": t_nb}, lif


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=500)
    ap.add_argument("--B", type=int, default=16)
    ap.add_argument("--N", type=int, default=256)
    ap.add_argument("--reps", type=int, default=7)
    a = ap.parse_args()
    print("load average", os.getloadavg(), "cpus", os.cpu_count())
    step, params, s0, xs = setup(a.T, a.B, a.N)
    firsts, lif = first_calls(step, params, s0, xs)
    for k, v in firsts.items():
        print(f"first call  {k:28s} {v:7.2f} s")
    fwd, fwd_bwd = jax_fns(step, params, lif)
    flat = np.asarray(xs).reshape(a.T, -1)
    z = np.zeros(flat.shape[1], np.float32)
    bare = {"numba-bare": lambda *_: lif(flat, z, z, z, np.float32(ALPHA), np.float32(BETA), np.float32(TH))}
    nbytes = 2 * xs.size * 4 + 6 * s0[0].size * 4   # inputs read, outputs written, the state in and out
    res = alternate({**fwd, **bare}, (s0, xs), a.reps)
    for k, (w, c) in res.items():
        print(f"forward     {k:12s} {w * 1e3:8.2f} ms  cpu {c * 1e3:8.2f} ms  {nbytes / w / 1e9:6.2f} GB/s  "
              f"x{res['xla'][0] / w:5.2f} vs xla")
    res = alternate(fwd_bwd, (s0, xs), a.reps)
    for k, (w, c) in res.items():
        print(f"fwd+bwd     {k:12s} {w * 1e3:8.2f} ms  cpu {c * 1e3:8.2f} ms  x{res['xla'][0] / w:5.2f} vs xla")
    step1, params1, s01, xs1 = setup(1, 1, 1)
    small, _ = jax_fns(step1, params1, lif)
    res = alternate(small, (s01, xs1), 50)
    for k, (w, _c) in res.items():
        print(f"overhead    {k:12s} {w * 1e6:8.1f} us per call (T=1, one neuron)")
    xb = jnp.stack([xs[:, :2]] * 8)
    sb = [jnp.stack([s[:2]] * 8) for s in s0]
    vm = {k: jax.jit(jax.vmap(f)) for k, f in fwd.items()}
    res = alternate(vm, (sb, xb), a.reps)
    for k, (w, _c) in res.items():
        print(f"vmap(8)     {k:12s} {w * 1e3:8.2f} ms  x{res['xla'][0] / w:5.2f} vs xla")


if __name__ == "__main__":
    main()
