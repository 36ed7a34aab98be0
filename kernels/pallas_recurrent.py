"""Fused Pallas kernels for the recurrent compound ``CompoundLayer([Parallel([..., Linear_rec]), neuron])``.

The batched, time-major drop-in for :func:`snnkern.kernels.neuron_loop.recurrent_batched` (what
:func:`~snnkern.kernels.neuron_loop.recurrent_loop` runs under ``vmap``): same arguments, same
``(final_state, outs, I, reads)`` result, same gradients, but each direction is **one**
``pallas_call`` whose time loop contains the recurrent product:

- forward, per step t and tile of ``bB`` samples x all ``n`` neurons:
  ``r = state[-1]``; ``I_t = ff_t + (r @ W^T + b)`` (a (bB, n) x (n, n) dot on chip);
  ``state, out = step(params, state, I_t)``. It writes ``I_t``, ``reads[t] = r``, ``outs[t]`` and the
  residuals (the entering state without its last entry, spike entries as int8: the last entry is
  ``reads``, a primal output).
- backward, reverse time: the step's VJP at the stored point gives ``dI_t`` (plus the cotangent of
  ``I_t`` itself); the recurrent cotangent ``dI_t @ W`` is added to ``d state[-1]``; ``dI_t`` is
  written out. After the kernel: ``d ff = dI``, ``dW_rec = sum_{t,b} dI_t r_{t-1}^T`` and ``db``
  as one GEMM / one sum over time and batch (the big matmuls stay outside the loop).

The recurrence couples every neuron, so a tile spans **all** ``n`` neurons (padded to ``n_pad``)
and the grid runs over batch tiles (and, on TPU, sequential time chunks, the state carried in the
resident final-state block as in :mod:`.pallas_neuron`). ``W^T`` is one whole block: it is loaded
once before the time loop when it is small (``n_pad^2 x itemsize <= RESIDENT_W_BYTES``: kept in
registers / shared memory), else read from its ref at every step (GPU: an L2-resident global
array; TPU: VMEM). Size limit: ``n_pad <= MAX_N`` (1024); larger recurrent layers run the XLA
loop (a cuBLAS / MXU GEMM per step), with a logged reason.

Tiles: GPU (Triton) ``bB`` a power of 2 >= 16 and ``n_pad = next_pow2(n) >= 16`` (``tl.dot`` needs
power-of-2 dims >= 16); TPU (Mosaic) ``bB`` a multiple of 8, ``n_pad`` a multiple of 128, time in
chunks of ``block_t``; ``any`` (a CPU host lowering for both) ``bB = 16``, ``n_pad = max(128,
next_pow2(n))``, all T. Padded samples and neurons get zero inputs and zero weights, so they never
reach a real neuron; padded time steps are masked.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from .neuron_loop import _current, params_broadcast, recurrent_batched as xla_recurrent_batched
from .pallas_neuron import eligible as neuron_eligible
from .pallas_neuron import (_carry_start, _keep_valid, _next_pow2, _reduce_to, _step_and_emit, _store,
                            target_platform)

__all__ = ["recurrent_batched", "rec_tiling", "RecTiling", "eligible", "size_reason", "MAX_N", "GPU_MAX_N",
           "RESIDENT_W_BYTES"]

MAX_N = 1024
# GPU (Triton): W^T is one block in shared memory (224 KiB per block on an H100/H200), so float32 W of
# 256+ padded neurons (256 KiB) does not compile (RESOURCE_EXHAUSTED); docs/kernels.md, "GPU resources"
GPU_MAX_N = 128
RESIDENT_W_BYTES = {"gpu": 64 * 1024, "tpu": 8 * 1024 * 1024, "any": 64 * 1024}
_DEFAULT_BLOCK_B = {"gpu": 16, "tpu": 128, "any": 16}
_DEFAULT_BLOCK_T_TPU = 64


def _round_up(a: int, m: int) -> int:
    return -(-int(a) // m) * m


@dataclasses.dataclass(frozen=True)
class RecTiling:
    """``bB`` samples per tile of ``B_pad``; ``n_pad`` neurons; ``tc`` steps per chunk of ``T_pad``."""

    target: str
    T: int
    B: int
    n: int
    bB: int
    B_pad: int
    n_pad: int
    tc: int
    T_pad: int

    @property
    def n_tiles(self) -> int:
        return self.B_pad // self.bB

    @property
    def n_chunks(self) -> int:
        return self.T_pad // self.tc


def rec_tiling(T: int, B: int, n: int, target: str, block_b: Optional[int] = None,
               block_t: Optional[int] = None) -> RecTiling:
    """The tiling of a (T, B, n) recurrent problem for ``target`` (``gpu`` | ``tpu`` | ``any``)."""
    if target not in _DEFAULT_BLOCK_B:
        raise ValueError(f"unknown tiling target {target!r}")
    if target == "tpu":
        n_pad = _round_up(n, 128)
        bB = _DEFAULT_BLOCK_B[target] if block_b is None else int(block_b)
        if bB <= 0 or bB % 8:
            raise ValueError(f"block_b on TPU must be a positive multiple of 8, got {block_b}")
        bB = min(bB, _round_up(B, 8))
        tc = min(T, _DEFAULT_BLOCK_T_TPU if block_t is None else int(block_t))
        if tc <= 0:
            raise ValueError(f"block_t must be positive, got {block_t}")
    else:
        n_pad = max(16, _next_pow2(n)) if target == "gpu" else max(128, _next_pow2(n))
        bB = _DEFAULT_BLOCK_B[target] if block_b is None else int(block_b)
        if bB < 16 or bB & (bB - 1):
            raise ValueError(f"block_b must be a power of 2 >= 16 (a Triton dot operand), got {block_b}")
        if target == "gpu":
            bB = min(bB, max(16, _next_pow2(B)))
        if block_t not in (None, T):
            raise ValueError(f"block_t is only supported for TPU tilings (target {target!r})")
        tc = T
    return RecTiling(target, T, B, n, bB, _round_up(B, bB), n_pad, tc, _round_up(T, tc))


def eligible(T: int, n: int, dtype, platform: Optional[str] = None) -> Optional[str]:
    """None if a recurrent loop of ``n`` neurons over ``T`` steps with ``dtype`` inputs can run as
    Pallas kernels on ``platform`` (``cpu`` = interpret mode only), else why not."""
    # the neuron-loop kernels' rules (T, dtype, platform), then the size of W_rec
    return neuron_eligible((T, n), dtype, platform) or size_reason(n, platform)


def size_reason(n: int, platform: Optional[str] = None) -> Optional[str]:
    """None if a recurrent layer of ``n`` neurons fits the kernels' size limit, else why not
    (the planner checks it up front: ``n`` is known from the recurrent Linear)."""
    plat = (platform or jax.default_backend()).lower()
    n_pad = _round_up(n, 128) if plat == "tpu" else _next_pow2(n)
    if plat in ("gpu", "cuda", "rocm") and n_pad > GPU_MAX_N:
        return (f"the recurrent layer has {n} neurons (padded {n_pad}) > {GPU_MAX_N}: W_rec does not fit on chip "
                f"(GPU shared memory); the XLA loop runs one GEMM per step instead")
    if n_pad > MAX_N:
        return (f"the recurrent layer has {n} neurons (padded {n_pad}) > {MAX_N}: W_rec does not fit on chip "
                f"next to the state tiles; the XLA loop runs one GEMM per step instead")
    return None


def _compiler_params(tl: RecTiling, interpret: bool):
    if interpret:
        return None
    if tl.target == "gpu":
        from jax.experimental.pallas import triton as plgpu
        # n_pad // 8 warps (4..16): the resident W^T takes n_pad^2 / (32 * num_warps) <= 32 registers per
        # thread; with 4 warps at n_pad = 128 it took 128 and the backward kernel spilled (docs/kernels.md,
        # "GPU resources")
        return plgpu.CompilerParams(num_warps=min(16, max(4, tl.n_pad // 8)), num_stages=1)
    if tl.target == "tpu":
        from jax.experimental.pallas import tpu as pltpu
        return pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary"))
    return None


def _specs(tl: RecTiling, reverse: bool = False):
    nc = tl.n_chunks
    rows = pl.BlockSpec((tl.bB, tl.n_pad), lambda i, c: (i, 0))
    if reverse:
        seq = pl.BlockSpec((tl.tc, tl.bB, tl.n_pad), lambda i, c: (nc - 1 - c, i, 0))
    else:
        seq = pl.BlockSpec((tl.tc, tl.bB, tl.n_pad), lambda i, c: (c, i, 0))
    whole = pl.BlockSpec((tl.n_pad, tl.n_pad), lambda i, c: (0, 0))
    vec = pl.BlockSpec((1, tl.n_pad), lambda i, c: (0, 0))
    return rows, seq, whole, vec


# layout helpers ------------------------------------------------------------------------------

def _pad_rows(a, tl: RecTiling):
    """(B, n) -> (B_pad, n_pad), zeros."""
    return jnp.pad(a, [(0, tl.B_pad - a.shape[0]), (0, tl.n_pad - a.shape[1])])


def _pad_seq(a, tl: RecTiling):
    """(T, B, n) -> (T_pad, B_pad, n_pad), zeros."""
    return jnp.pad(a, [(0, tl.T_pad - a.shape[0]), (0, tl.B_pad - a.shape[1]), (0, tl.n_pad - a.shape[2])])


def _pad_vec(a, tl: RecTiling, fill_first: bool):
    """A per-neuron vector (n,) -> (1, n_pad); parameters padded with their first value (pad
    neurons stay in a realistic range), biases with zeros."""
    pad = tl.n_pad - a.shape[0]
    if pad:
        tail = jnp.broadcast_to(a[:1], (pad,)) if fill_first else jnp.zeros((pad,), a.dtype)
        a = jnp.concatenate([a, tail])
    return a.reshape(1, tl.n_pad)


def recurrent_batched(step, dyn, static, w, b, state0: list, ff: jax.Array, spike_idx: Sequence[int] = (),
                      want_out: bool = True, want_cur: bool = True, *, interpret: bool = False, block_b: Optional[int] = None,
                      block_t: Optional[int] = None, platform: Optional[str] = None, precision=None):
    """The recurrent loop as fused Pallas kernels: ``state0`` entries (B, n), ``ff`` (B, T, n)
    (batch-major, the contract of :func:`~snnkern.kernels.neuron_loop.recurrent_batched`; the
    kernels work time-major, so sequences are transposed on the way in and out),
    ``w`` (n, n) as ``eqx.nn.Linear.weight`` (out x in), ``b`` (n,) or None.

    Returns ``(final_state, outs or None, I or None, reads)`` (sequences (B, T, n); ``I`` only if
    ``want_cur``, it is a residual either way); custom VJP w.r.t. the
    array leaves of ``dyn``, ``w``, ``b``, ``state0`` and ``ff``. ``interpret``: the Pallas
    interpreter (CPU tests); ``block_b``: samples per tile; ``block_t``: steps per time chunk
    (TPU, or interpret with the TPU layout); ``platform``: the layout family (see
    :func:`.pallas_neuron.target_platform`); ``precision``: of the in-loop dot (``None``: the
    platform default; pass ``jax.lax.Precision.HIGHEST`` for exact float32 on GPU).
    A loop the kernels cannot take runs :func:`~snnkern.kernels.neuron_loop.recurrent_batched`
    (identical results), with the reason logged (a ``FallbackError`` in strict mode).
    """
    spike_idx = tuple(sorted(set(int(k) for k in spike_idx)))
    state0 = list(state0)
    B, T, n = (int(d) for d in ff.shape)
    plat = "cpu" if interpret else {"gpu": "gpu", "tpu": "tpu"}.get(target_platform(platform), "cpu")
    why = eligible(T, n, ff.dtype, plat)
    if why is None and not params_broadcast(dyn, (n,)):
        why = "a neuron parameter does not broadcast against the (n,) neuron shape"
    if why is None and any(tuple(s.shape) != (B, n) for s in state0):
        why = "a state entry's shape differs from (batch, neurons)"
    if why is None and tuple(w.shape) != (n, n):
        why = f"W_rec has shape {tuple(w.shape)}, not ({n}, {n})"

    leaves, treedef = jax.tree.flatten(dyn)

    def combine(vals):
        return eqx.combine(jax.tree.unflatten(treedef, list(vals)), static)

    if why is None:
        cur_aval = jax.eval_shape(lambda r, x: _current(w, b, r, x), state0[-1], ff[:, 0])
        out_aval = jax.eval_shape(lambda d, s, x: step(combine(d), s, x), leaves,
                                  [jax.ShapeDtypeStruct((n,), s.dtype) for s in state0],
                                  jax.ShapeDtypeStruct((n,), cur_aval.dtype))[1]
        if tuple(out_aval.shape) != (n,):
            why = f"the step's output shape {tuple(out_aval.shape)} is not the neuron shape ({n},)"
    if why is not None:
        from .dispatch import fallback
        fallback("pallas recurrent loop", "xla", why)
        return xla_recurrent_batched(step, dyn, static, w, b, state0, ff, spike_idx, want_out, want_cur)

    if interpret and platform is None:
        target = "tpu" if block_t is not None else "gpu"
    else:
        target = target_platform(platform)
    tl = rec_tiling(T, B, n, target, block_b, block_t)
    n_s = len(state0)
    s_dtypes = [s.dtype for s in state0]
    cur_dtype, out_dtype = cur_aval.dtype, out_aval.dtype
    dot_dtype = jnp.result_type(s_dtypes[-1], w.dtype)
    res_dtypes = [jnp.int8 if k in spike_idx else s_dtypes[k] for k in range(n_s - 1)]
    has_bias = b is not None
    resident = tl.n_pad * tl.n_pad * jnp.dtype(dot_dtype).itemsize <= RESIDENT_W_BYTES[tl.target]
    cfg = dict(tl=tl, step=step, combine=combine, n_p=len(leaves), n_s=n_s, s_dtypes=s_dtypes, cur_dtype=cur_dtype,
               out_dtype=out_dtype, dot_dtype=dot_dtype, res_dtypes=res_dtypes, has_bias=has_bias,
               resident=resident, want_out=want_out, interpret=interpret, precision=precision)
    fwd_cfg = dict(cfg, want_cur=want_cur)

    def tiles_in(d, w_, b_, s0, x):
        p_t = [_pad_vec(jnp.broadcast_to(a, (n,)), tl, True) for a in d]
        extra = [_pad_vec(b_, tl, False)] if has_bias else []
        wt = jnp.pad(w_.T.astype(dot_dtype), [(0, tl.n_pad - n)] * 2)
        return p_t, [_pad_rows(s, tl) for s in s0], _pad_seq(jnp.swapaxes(x, 0, 1), tl), wt, extra

    def run(d, w_, b_, s0, x, keep):
        """The forward kernel: final state, outs, I (if wanted or kept), reads, residuals - padded."""
        p_t, s0_t, x_t, wt, extra = tiles_in(d, w_, b_, s0, x)
        res = list(_forward_call(keep=keep, **fwd_cfg)(*p_t, *s0_t, x_t, wt, *extra))
        sT, res = res[:n_s], res[n_s:]
        outs = res.pop(0) if want_out else None
        cur = res.pop(0) if (keep or want_cur) else None
        reads = res.pop(0)
        return p_t, s0_t, sT, outs, cur, reads, res

    def unpad(a):
        """A padded time-major kernel sequence -> (B, T, n)."""
        return None if a is None else jnp.swapaxes(a[:T, :B, :n], 0, 1)

    def pad_in(g, dtype):
        """A (B, T, n) cotangent -> padded time-major."""
        return _pad_seq(jnp.swapaxes(g.astype(dtype), 0, 1), tl)

    @jax.custom_vjp
    def loop(d, w_, b_, s0, x):
        _, _, sT, outs, cur, reads, _ = run(d, w_, b_, s0, x, False)
        return [a[:B, :n] for a in sT], unpad(outs), unpad(cur), unpad(reads)

    def loop_fwd(d, w_, b_, s0, x):
        p_t, s0_t, sT, outs, cur_t, reads_t, res_t = run(d, w_, b_, s0, x, True)
        primal = ([a[:B, :n] for a in sT], unpad(outs), unpad(cur_t) if want_cur else None, unpad(reads_t))
        # residuals stay padded and time-major, as the backward kernel reads them
        return primal, (d, w_, b_, p_t, s0_t, res_t, cur_t, reads_t)

    def loop_bwd(res, g):
        d, w_, b_, p_t, s0_t, res_t, cur_t, reads_t = res
        g_sT, g_outs, g_cur, g_reads = g
        wp = jnp.pad(w_.astype(dot_dtype), [(0, tl.n_pad - n)] * 2)
        ins = [*p_t, *s0_t, *res_t, cur_t, reads_t, wp]
        if want_out:
            ins.append(pad_in(g_outs, out_dtype))
        if want_cur:
            ins.append(pad_in(g_cur, cur_dtype))
        ins.append(pad_in(g_reads, s_dtypes[-1]))
        ins += [_pad_rows(gs.astype(s_dtypes[k]), tl) for k, gs in enumerate(g_sT)]
        outs = _backward_call(p_dtypes=[a.dtype for a in p_t], want_cur=want_cur, **cfg)(*ins)
        g_s0 = [o[:B, :n] for o in outs[:n_s]]
        g_i = outs[n_s][:T, :B, :n]
        g_p = [_reduce_to(o[:B, :n], a.shape).astype(a.dtype) for o, a in zip(outs[n_s + 1:], d)]
        g_w = jnp.einsum("tbn,tbm->nm", g_i, reads_t[:T, :B, :n].astype(g_i.dtype)).astype(w_.dtype)
        g_b = jnp.sum(g_i, axis=(0, 1)).astype(b_.dtype) if has_bias else None
        return g_p, g_w, g_b, g_s0, jnp.swapaxes(g_i, 0, 1).astype(ff.dtype)

    loop.defvjp(loop_fwd, loop_bwd)
    return loop(list(leaves), w, b, state0, ff)


def _dot(a, b, dot_dtype, precision):
    return jnp.dot(a.astype(dot_dtype), b, precision=precision, preferred_element_type=jnp.float32)


def _forward_call(*, tl: RecTiling, step, combine, n_p, n_s, s_dtypes, cur_dtype, out_dtype, dot_dtype, res_dtypes,
                  has_bias, resident, want_out, want_cur, interpret, precision, keep):
    rows, seq, whole, vec = _specs(tl)
    chunked = tl.n_chunks > 1
    masked = tl.T_pad > tl.T
    emit_cur = want_cur or keep          # I_t: an output, and the backward pass's residual

    def kernel(*refs):
        refs = list(refs)
        p_refs = [refs.pop(0) for _ in range(n_p)]
        s0_refs = [refs.pop(0) for _ in range(n_s)]
        x_ref, wt_ref = refs.pop(0), refs.pop(0)
        b_ref = refs.pop(0) if has_bias else None
        sT_refs = [refs.pop(0) for _ in range(n_s)]
        out_ref = refs.pop(0) if want_out else None
        cur_ref = refs.pop(0) if emit_cur else None
        read_ref = refs.pop(0)
        res_refs = refs if keep else []

        shape = (tl.bB, tl.n_pad)
        p = combine([jnp.broadcast_to(r[...], shape) for r in p_refs])
        bias = jnp.broadcast_to(b_ref[...], shape) if has_bias else None
        wt_res = wt_ref[...] if resident else None
        c = pl.program_id(1) if chunked else 0
        s, _ = _carry_start(chunked, c, sT_refs, s0_refs)   # the final-state blocks carry the state

        def body(j, s):
            r = s[-1]
            read_ref[j] = r
            for k in range(n_s - 1):
                if keep:
                    res_refs[k][j] = s[k].astype(res_dtypes[k])
            rec = _dot(r, wt_res if resident else wt_ref[...], dot_dtype, precision)
            x = x_ref[j]
            i_t = (x + ((rec + bias) if has_bias else rec)).astype(cur_dtype)
            if emit_cur:
                cur_ref[j] = i_t
            return _step_and_emit(step, p, s, i_t, s_dtypes, (c * tl.tc + j < tl.T) if masked else None,
                                  out_ref, j, out_dtype)

        _store(sT_refs, jax.lax.fori_loop(0, tl.tc, body, s))

    Bp, Np, Tp = tl.B_pad, tl.n_pad, tl.T_pad
    out_shape = [jax.ShapeDtypeStruct((Bp, Np), dt) for dt in s_dtypes]
    out_specs = [rows] * n_s
    if want_out:
        out_shape.append(jax.ShapeDtypeStruct((Tp, Bp, Np), out_dtype))
        out_specs.append(seq)
    if emit_cur:
        out_shape.append(jax.ShapeDtypeStruct((Tp, Bp, Np), cur_dtype))
        out_specs.append(seq)
    out_shape.append(jax.ShapeDtypeStruct((Tp, Bp, Np), s_dtypes[-1]))
    out_specs.append(seq)
    if keep:
        out_shape += [jax.ShapeDtypeStruct((Tp, Bp, Np), dt) for dt in res_dtypes]
        out_specs += [seq] * (n_s - 1)
    in_specs = [vec] * n_p + [rows] * n_s + [seq, whole] + ([vec] if has_bias else [])
    return pl.pallas_call(kernel, out_shape=out_shape, grid=(tl.n_tiles, tl.n_chunks), in_specs=in_specs,
                          out_specs=out_specs, compiler_params=_compiler_params(tl, interpret), interpret=interpret,
                          name="snnkern_recurrent_fwd")


def _backward_call(*, tl: RecTiling, step, combine, n_p, n_s, s_dtypes, cur_dtype, out_dtype, dot_dtype, res_dtypes,
                   has_bias, resident, want_out, want_cur, interpret, precision, p_dtypes):
    rows, seq, whole, vec = _specs(tl, reverse=True)
    chunked = tl.n_chunks > 1
    masked = tl.T_pad > tl.T
    nc = tl.n_chunks
    spike_res = [dt == jnp.int8 for dt in res_dtypes]

    def kernel(*refs):
        refs = list(refs)
        p_refs = [refs.pop(0) for _ in range(n_p)]
        s0_refs = [refs.pop(0) for _ in range(n_s)]
        res_refs = [refs.pop(0) for _ in range(n_s - 1)]
        cur_ref, read_ref, w_ref = refs.pop(0), refs.pop(0), refs.pop(0)
        g_out_ref = refs.pop(0) if want_out else None
        g_cur_ref = refs.pop(0) if want_cur else None
        g_read_ref = refs.pop(0)
        g_sT_refs = [refs.pop(0) for _ in range(n_s)]
        g_s0_refs = [refs.pop(0) for _ in range(n_s)]
        g_i_ref = refs.pop(0)
        g_p_refs = refs

        shape = (tl.bB, tl.n_pad)
        p_vals = [jnp.broadcast_to(r[...], shape) for r in p_refs]
        s0 = [r[...] for r in s0_refs]
        w_res = w_ref[...] if resident else None
        c = pl.program_id(1) if chunked else 0
        chunk = nc - 1 - c          # reverse time
        g_s, g_p = _carry_start(chunked, c, g_s0_refs, g_sT_refs, g_p_refs)

        def f(d, s, x):
            return step(combine(d), s, x)

        def body(i, carry):
            g_s, g_p = carry
            j = tl.tc - 1 - i
            t = chunk * tl.tc + j
            s = []
            for k in range(n_s - 1):
                v = res_refs[k][j].astype(s_dtypes[k])
                if spike_res[k]:      # int8 0/1 in the residual; the user's exact state at t = 0
                    v = jnp.where(t == 0, s0[k], v)
                s.append(v)
            s.append(read_ref[j])
            x = cur_ref[j]
            g_out = g_out_ref[j] if want_out else jnp.zeros(shape, out_dtype)
            _, vjp = jax.vjp(f, p_vals, s, x)
            dd, ds, di = vjp(([a.astype(dt) for a, dt in zip(g_s, s_dtypes)], g_out))
            di = di.astype(jnp.float32)
            if want_cur:
                di = di + g_cur_ref[j].astype(jnp.float32)
            ds = [a.astype(dt) for a, dt in zip(ds, s_dtypes)]
            rec = _dot(di, w_res if resident else w_ref[...], dot_dtype, precision)
            ds[-1] = ds[-1] + rec.astype(s_dtypes[-1]) + g_read_ref[j].astype(s_dtypes[-1])
            if masked:
                valid = t < tl.T
                ds = _keep_valid(valid, ds, g_s)
                dd = _keep_valid(valid, dd, [jnp.zeros_like(a) for a in dd])
                di = jnp.where(valid, di, jnp.zeros_like(di))
            g_i_ref[j] = di
            return ds, [a + b_.astype(a.dtype) for a, b_ in zip(g_p, dd)]

        g_s, g_p = jax.lax.fori_loop(0, tl.tc, body, (g_s, g_p))
        _store(g_s0_refs, g_s)
        _store(g_p_refs, g_p)

    Bp, Np, Tp = tl.B_pad, tl.n_pad, tl.T_pad
    in_specs = [vec] * n_p + [rows] * n_s + [seq] * (n_s - 1) + [seq, seq, whole]
    if want_out:
        in_specs.append(seq)
    in_specs += [seq] * (2 if want_cur else 1) + [rows] * n_s
    out_shape = ([jax.ShapeDtypeStruct((Bp, Np), dt) for dt in s_dtypes]
                 + [jax.ShapeDtypeStruct((Tp, Bp, Np), jnp.float32)]
                 + [jax.ShapeDtypeStruct((Bp, Np), dt) for dt in p_dtypes])
    out_specs = [rows] * n_s + [seq] + [rows] * n_p
    return pl.pallas_call(kernel, out_shape=out_shape, grid=(tl.n_tiles, tl.n_chunks), in_specs=in_specs,
                          out_specs=out_specs, compiler_params=_compiler_params(tl, interpret), interpret=interpret,
                          name="snnkern_recurrent_bwd")
