"""Fused Pallas kernels for the recurrent compound ``CompoundLayer([Parallel([..., Linear_rec]), neuron])``.

The batched, time-major drop-in for :func:`snnkern.kernels.recurrent.recurrent_batched` (what
:func:`~snnkern.kernels.recurrent.recurrent_loop` runs under ``vmap``): same arguments, same
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
registers / shared memory), else (TPU, ``any``) read from its ref at every step (VMEM). On GPU a
W that is not resident is **streamed** (:func:`_streamed_forward_kernel`): W stays in global memory
(L2) and is read per step in ``bk`` x ``bk`` tiles, the state lives in the program's output blocks,
and each step works through ``bk``-neuron column blocks (see the comment above those kernels).
Size limit: ``n_pad <= MAX_N`` (1024); larger recurrent layers are planned on the XLA loop (a
cuBLAS / MXU GEMM per step), with the reason in the plan.

Tiles: GPU (Triton) ``bB`` a power of 2 >= 16 and ``n_pad = next_pow2(n) >= 16`` (``tl.dot`` needs
power-of-2 dims >= 16); TPU (Mosaic) ``bB`` a multiple of 8, ``n_pad`` a multiple of 128, time in
chunks of ``block_t``; ``any`` (a CPU host lowering for both) ``bB = 16``, ``n_pad = max(128,
next_pow2(n))``, all T. Padded samples and neurons get zero inputs and zero weights, so they never
reach a real neuron; padded time steps are masked.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from .common import current, params_broadcast, reduce_to
from .loop_builder import Feedback, custom_loop
from .pallas_common import (RefReader, backward_start, carry_start, entering_state, keep_valid, masked_step_valid,
                             reverse_index, seq_spec, step_and_emit, write)
from .residuals import residual_dtypes, store
from .pallas_neuron import eligible as neuron_eligible
from .tiling import RecLayout, RecTiling, compiler_params, layout_target, next_pow2, round_up

__all__ = ["recurrent_batched", "eligible", "unsupported", "size_reason", "default_tiling", "resident_w",
           "dot_dtype_of", "plan_w", "MAX_N", "RESIDENT_W_BYTES"]

MAX_N = 1024
RESIDENT_W_BYTES = {"gpu": 64 * 1024, "tpu": 8 * 1024 * 1024, "any": 64 * 1024}


def eligible(T: int, n: int, dtype, platform: Optional[str] = None) -> Optional[str]:
    """None if a recurrent loop of ``n`` neurons over ``T`` steps with ``dtype`` inputs can run as
    Pallas kernels on ``platform`` (``cpu`` = interpret mode only), else why not."""
    # the neuron-loop kernels' rules (T, dtype, platform), then the size of W_rec
    return neuron_eligible((T, n), dtype, platform) or size_reason(n, platform)


def size_reason(n: int, platform: Optional[str] = None) -> Optional[str]:
    """None if a recurrent layer of ``n`` neurons fits the kernels' size limit, else why not."""
    plat = (platform or jax.default_backend()).lower()
    n_pad = round_up(n, 128) if plat == "tpu" else next_pow2(n)
    if n_pad > MAX_N:
        return (f"the recurrent layer has {n} neurons (padded {n_pad}) > {MAX_N}: W_rec does not fit on chip "
                f"next to the state tiles; the XLA loop runs one GEMM per step instead")
    return None


def unsupported(step, params, state0, ff, w, b, platform: str) -> Optional[str]:
    """None if the kernels take this batched loop (``state0`` entries (B, n), ``ff`` (B, T, n)),
    else why not. Works on arrays and ``jax.ShapeDtypeStruct`` s (the planner asks first, with a
    batch of 1; the kernel raises with the same reason)."""
    B, T, n = (int(d) for d in ff.shape)
    why = eligible(T, n, ff.dtype, platform)
    if why is not None:
        return why
    dyn, static = eqx.partition(params, eqx.is_array)
    if not params_broadcast(dyn, (n,)):
        return "a neuron parameter does not broadcast against the (n,) neuron shape"
    if any(tuple(s.shape) != (B, n) for s in state0):
        return "a state entry's shape differs from (batch, neurons)"
    if tuple(w.shape) != (n, n):
        return f"W_rec has shape {tuple(w.shape)}, not ({n}, {n})"
    cur = jax.eval_shape(lambda r, x: current(w, b, r, x), state0[-1], jax.ShapeDtypeStruct((B, n), ff.dtype))
    out = jax.eval_shape(lambda d, s, x: step(eqx.combine(d, static), s, x), dyn,
                         [jax.ShapeDtypeStruct((n,), s.dtype) for s in state0],
                         jax.ShapeDtypeStruct((n,), cur.dtype))[1]
    if tuple(out.shape) != (n,):
        return f"the step's output shape {tuple(out.shape)} is not the neuron shape ({n},)"
    return None


def default_tiling(platform: Optional[str], interpret: bool, block_b=None, block_t=None) -> RecTiling:
    """The tiling used when none is given (as :func:`.pallas_neuron.default_tiling`)."""
    if interpret and platform is None:
        target = "tpu" if block_t is not None else "gpu"
    else:
        target = layout_target(platform)
    return RecTiling(target, block_t=block_t, block_b=block_b)


def resident_w(n_pad: int, dot_dtype, target: str) -> bool:
    """Whether W_rec (``n_pad`` x ``n_pad`` in ``dot_dtype``) is kept on chip for the whole loop."""
    return n_pad * n_pad * jnp.dtype(dot_dtype).itemsize <= RESIDENT_W_BYTES[target]


def plan_w(n: int, dot_dtype, target: str, per_step: Sequence[str] = ()):
    """Where W_rec lives for ``n`` neurons on layout ``target``: ``(resident, note, why_not)``.
    ``resident``: loaded on chip once (``n_pad^2 x itemsize <= RESIDENT_W_BYTES``); else on GPU the
    streamed kernels (W tiles read per step, the state in global memory, column blocks), which
    cannot take per-step layers (a LayerNorm needs a whole row at once): ``why_not`` then says so.
    ``note``: the choice and its reason, for the plan."""
    tiling = RecTiling(target)
    n_pad, itemsize = tiling.n_pad(n), jnp.dtype(dot_dtype).itemsize
    size = f"{n_pad} x {n_pad} x {itemsize} B {{}} {RESIDENT_W_BYTES[target] // 1024} KiB"
    if resident_w(n_pad, dot_dtype, target):
        return True, "W_rec on chip: " + size.format("<="), None
    if target != "gpu":
        return False, "W_rec read per step: " + size.format(">"), None
    bk = tiling.layout(1, 1, n, streamed=True).bk
    note = f"W_rec streamed per step in {bk} x {bk} tiles, state in global memory: " + size.format(">")
    if per_step:
        return False, note, (f"the per-step layers {', '.join(per_step)} need a whole row of neurons at once; "
                             f"the streamed GPU kernels for {n} neurons (padded {n_pad}) work in {bk}-neuron blocks")
    return False, note, None


def dot_dtype_of(state_dtype, w_dtype):
    """The dtype of the in-loop recurrent product's operands."""
    return jnp.result_type(state_dtype, w_dtype)


def _specs(tl: RecLayout, reverse: bool = False):
    rows = pl.BlockSpec((tl.bB, tl.n_pad), lambda i, c: (i, 0))
    seq = seq_spec((tl.tc, tl.bB, tl.n_pad), tl.n_chunks, reverse)
    whole = pl.BlockSpec((tl.n_pad, tl.n_pad), lambda i, c: (0, 0))
    vec = pl.BlockSpec((1, tl.n_pad), lambda i, c: (0, 0))
    return rows, seq, whole, vec


# layout helpers ------------------------------------------------------------------------------

def _pad_rows(a, tl: RecLayout):
    """(B, n) -> (B_pad, n_pad), zeros."""
    return jnp.pad(a, [(0, tl.B_pad - a.shape[0]), (0, tl.n_pad - a.shape[1])])


def _pad_seq(a, tl: RecLayout):
    """(T, B, n) -> (T_pad, B_pad, n_pad), zeros."""
    return jnp.pad(a, [(0, tl.T_pad - a.shape[0]), (0, tl.B_pad - a.shape[1]), (0, tl.n_pad - a.shape[2])])


def _pad_vec(a, tl: RecLayout, fill_first: bool):
    """A per-neuron vector (n,) -> (1, n_pad); parameters padded with their first value (pad
    neurons stay in a realistic range), biases with zeros."""
    pad = tl.n_pad - a.shape[0]
    if pad:
        tail = jnp.broadcast_to(a[:1], (pad,)) if fill_first else jnp.zeros((pad,), a.dtype)
        a = jnp.concatenate([a, tail])
    return a.reshape(1, tl.n_pad)


def recurrent_batched(step, dyn, static, w, b, state0: list, ff: jax.Array, spike_idx: Sequence[int] = (),
                      want_out: bool = True, want_cur: bool = True, *, interpret: bool = False,
                      tiling: Optional[RecTiling] = None, block_b: Optional[int] = None,
                      block_t: Optional[int] = None, platform: Optional[str] = None, precision=None,
                      resident: Optional[bool] = None):
    """The recurrent loop as fused Pallas kernels: ``state0`` entries (B, n), ``ff`` (B, T, n)
    (batch-major, the contract of :func:`~snnkern.kernels.recurrent.recurrent_batched`; the
    kernels work time-major, so sequences are transposed on the way in and out),
    ``w`` (n, n) as ``eqx.nn.Linear.weight`` (out x in), ``b`` (n,) or None.

    Returns ``(final_state, outs or None, I or None, reads)`` (sequences (B, T, n); ``I`` only if
    ``want_cur``, it is a residual either way); custom VJP w.r.t. the array leaves of ``dyn``,
    ``w``, ``b``, ``state0`` and ``ff``. ``interpret``: the Pallas interpreter (CPU tests);
    ``tiling``: the :class:`~snnkern.kernels.tiling.RecTiling` the planner decided (else one from
    ``block_b`` samples per tile, ``block_t`` steps per time chunk and ``platform``);
    ``precision``: of the in-loop dot (``None``: the platform default; pass
    ``jax.lax.Precision.HIGHEST`` for exact float32 on GPU); ``resident``: keep W_rec on chip
    (default: when it fits, :func:`resident_w`).
    A loop the kernels cannot take (:func:`unsupported`) raises ``ValueError``.
    """
    if tiling is None:
        tiling = default_tiling(platform, interpret, block_b, block_t)
    spike_idx = tuple(sorted(set(int(k) for k in spike_idx)))
    state0 = list(state0)
    why = unsupported(step, eqx.combine(dyn, static), state0, ff, w, b, tiling.rules_platform(interpret))
    if why is not None:
        raise ValueError(f"the Pallas recurrent kernel cannot take this loop: {why}")
    leaves, treedef = jax.tree.flatten(dyn)

    def combine(vals):
        return eqx.combine(jax.tree.unflatten(treedef, list(vals)), static)

    s_dtypes = [s.dtype for s in state0]
    cur_dtype = jax.eval_shape(lambda r, x: current(w, b, r, x), state0[-1], ff[:, 0]).dtype
    n = int(ff.shape[2])
    out_dtype = jax.eval_shape(lambda d, s, x: step(combine(d), s, x), leaves,
                               [jax.ShapeDtypeStruct((n,), s.dtype) for s in state0],
                               jax.ShapeDtypeStruct((n,), cur_dtype))[1].dtype
    dot_dtype = dot_dtype_of(s_dtypes[-1], w.dtype)
    tl, resident = _layout(tiling, ff.shape, dot_dtype, resident)
    # the entering state without its last entry (reads, a primal output), spikes int8 (:mod:`.residuals`)
    cfg = dict(tl=tl, step=step, combine=combine, n_p=len(leaves), s_dtypes=s_dtypes, cur_dtype=cur_dtype,
               out_dtype=out_dtype, dot_dtype=dot_dtype, has_bias=b is not None,
               res_dtypes=residual_dtypes(s_dtypes[:-1], spike_idx), resident=resident,
               want_out=want_out, want_cur=want_cur, interpret=interpret, precision=precision)
    loop = _Wrapper(cfg, tuple(int(d) for d in ff.shape), ff.dtype)
    return custom_loop(loop.run, loop.backward)(list(leaves), w, b, state0, ff)


def _layout(tiling: RecTiling, shape, dot_dtype, resident: Optional[bool]):
    """The kernels' layout of a (B, T, n) loop and whether W_rec is resident (default: when it fits)."""
    B, T, n = (int(d) for d in shape)
    if resident is None:
        resident = resident_w(tiling.n_pad(n), dot_dtype, tiling.target)
    if resident and tiling.target == "gpu" and not resident_w(tiling.n_pad(n), dot_dtype, "gpu"):
        raise ValueError(f"the Pallas recurrent kernel cannot hold W_rec on chip: {n} neurons (padded "
                         f"{tiling.n_pad(n)}) of {jnp.dtype(dot_dtype).name} exceed RESIDENT_W_BYTES['gpu'] = "
                         f"{RESIDENT_W_BYTES['gpu']} B (GPU shared memory); pass resident=False (W streamed per step)")
    # GPU without W_rec on chip: the streamed kernels (column blocks, W tiles read per step)
    tl = tiling.layout(T, B, n, streamed=not resident and tiling.target == "gpu")
    if tl.streamed and tl.n_chunks != 1:
        raise ValueError(f"the streamed recurrent kernels run all T = {T} steps in one program, not {tl.n_chunks} chunks")
    return tl, resident


class _Wrapper:
    """The kernels' custom VJP (:func:`.loop_builder.custom_loop`): padding and layout on the way in and
    out of the forward (:meth:`run`) and backward (:meth:`backward`) kernels."""

    def __init__(self, cfg: dict, shape, ff_dtype):
        self.cfg, self.tl, (self.B, self.T, self.n), self.ff_dtype = cfg, cfg["tl"], shape, ff_dtype

    def unpad(self, a):
        """A padded time-major kernel sequence -> (B, T, n)."""
        return None if a is None else jnp.swapaxes(a[:self.T, :self.B, :self.n], 0, 1)

    def pad_in(self, g, dtype):
        """A (B, T, n) cotangent -> padded time-major."""
        return _pad_seq(jnp.swapaxes(g.astype(dtype), 0, 1), self.tl)

    def run(self, d, w_, b_, s0, x, keep):
        """The forward kernel: final state, outs, I (if wanted), reads; residuals padded and time-major, as
        the backward kernel reads them."""
        tl, n, cfg = self.tl, self.n, self.cfg
        p_t = [_pad_vec(jnp.broadcast_to(a, (n,)), tl, True) for a in d]
        s0_t = [_pad_rows(s, tl) for s in s0]
        wt = jnp.pad(w_.T.astype(cfg["dot_dtype"]), [(0, tl.n_pad - n)] * 2)
        extra = [_pad_vec(b_, tl, False)] if cfg["has_bias"] else []
        r = RefReader(_forward_call(keep=keep, **cfg)(*p_t, *s0_t, _pad_seq(jnp.swapaxes(x, 0, 1), tl), wt, *extra))
        sT, outs, cur_t, reads_t = r.take(len(s0)), r.opt(cfg["want_out"]), r.opt(keep or cfg["want_cur"]), r.one()
        primal = ([a[:self.B, :n] for a in sT], self.unpad(outs), self.unpad(cur_t) if cfg["want_cur"] else None,
                  self.unpad(reads_t))
        return primal, (d, w_, b_, p_t, s0_t, r.rest(), cur_t, reads_t)

    def backward(self, res, g):
        d, w_, b_, p_t, s0_t, res_t, cur_t, reads_t = res
        g_sT, g_outs, g_cur, g_reads = g
        tl, cfg, (B, T, n) = self.tl, self.cfg, (self.B, self.T, self.n)
        s_dtypes, n_s = cfg["s_dtypes"], len(cfg["s_dtypes"])
        wp = jnp.pad(w_.astype(cfg["dot_dtype"]), [(0, tl.n_pad - n)] * 2)
        ins = [*p_t, *s0_t, *res_t, cur_t, reads_t, wp]
        if cfg["want_out"]:
            ins.append(self.pad_in(g_outs, cfg["out_dtype"]))
        if cfg["want_cur"]:
            ins.append(self.pad_in(g_cur, cfg["cur_dtype"]))
        ins.append(self.pad_in(g_reads, s_dtypes[-1]))
        ins += [_pad_rows(gs.astype(s_dtypes[k]), tl) for k, gs in enumerate(g_sT)]
        outs = _backward_call(p_dtypes=[a.dtype for a in p_t], **cfg)(*ins)
        g_s0 = [o[:B, :n] for o in outs[:n_s]]
        g_i = outs[n_s][:T, :B, :n]
        g_p = [reduce_to(o[:B, :n], a.shape).astype(a.dtype) for o, a in zip(outs[n_s + 1:], d)]
        # the coupling's weight gradient, over the time-major dI and reads
        g_w, g_b = Feedback(delay=1).weight_grads((w_, b_), g_i, reads_t[:T, :B, :n], axis=0)
        return g_p, g_w, g_b, g_s0, jnp.swapaxes(g_i, 0, 1).astype(self.ff_dtype)


def _dot(a, b, dot_dtype, precision):
    return jnp.dot(a.astype(dot_dtype), b, precision=precision, preferred_element_type=jnp.float32)


def _forward_refs(refs, n_p, n_s, has_bias, want_out, emit_cur, keep):
    """The forward kernels' refs: params, state0, ff, W^T, bias | final state, outs, I, reads, residuals."""
    r = RefReader(refs)
    return (r.take(n_p), r.take(n_s), r.one(), r.one(), r.opt(has_bias), r.take(n_s), r.opt(want_out),
            r.opt(emit_cur), r.one(), r.rest() if keep else [])


def _backward_refs(refs, n_p, n_s, want_out, want_cur):
    """The backward kernels' refs: params, state0, residuals, I, reads, W, d outs, d I, d reads, d final
    state | d state0, d I, d params."""
    r = RefReader(refs)
    return (r.take(n_p), r.take(n_s), r.take(n_s - 1), r.one(), r.one(), r.one(), r.opt(want_out), r.opt(want_cur),
            r.one(), r.take(n_s), r.take(n_s), r.one(), r.rest())


def _forward_kernel(*refs, tl: RecLayout, step, combine, n_p, s_dtypes, cur_dtype, out_dtype, dot_dtype,
                    res_dtypes, has_bias, resident, want_out, emit_cur, keep, precision):
    n_s = len(s_dtypes)
    (p_refs, s0_refs, x_ref, wt_ref, b_ref, sT_refs, out_ref, cur_ref, read_ref,
     res_refs) = _forward_refs(refs, n_p, n_s, has_bias, want_out, emit_cur, keep)

    shape = (tl.bB, tl.n_pad)
    p = combine([jnp.broadcast_to(ref[...], shape) for ref in p_refs])
    bias = jnp.broadcast_to(b_ref[...], shape) if has_bias else None
    wt_res = wt_ref[...] if resident else None
    chunked = tl.n_chunks > 1
    c = pl.program_id(1) if chunked else 0
    s, _ = carry_start(chunked, c, sT_refs, s0_refs)   # the final-state blocks carry the state

    def body(j, s):
        rd = s[-1]
        read_ref[j] = rd
        if keep:
            write(res_refs, store(s[:-1], res_dtypes), j)
        rec = _dot(rd, wt_res if resident else wt_ref[...], dot_dtype, precision)
        i_t = (x_ref[j] + ((rec + bias) if has_bias else rec)).astype(cur_dtype)
        if emit_cur:
            cur_ref[j] = i_t
        valid = masked_step_valid(tl.T_pad > tl.T, c, tl.tc, j, tl.T)
        return step_and_emit(step, p, s, i_t, s_dtypes, valid, out_ref, j, out_dtype)

    write(sT_refs, jax.lax.fori_loop(0, tl.tc, body, s))


def _forward_call(*, tl: RecLayout, step, combine, n_p, s_dtypes, cur_dtype, out_dtype, dot_dtype, res_dtypes,
                  has_bias, resident, want_out, want_cur, interpret, precision, keep):
    rows, seq, whole, vec = _specs(tl)
    emit_cur = want_cur or keep          # I_t: an output, and the backward pass's residual
    Bp, Np, Tp = tl.B_pad, tl.n_pad, tl.T_pad
    n_s = len(s_dtypes)
    seqs = ([out_dtype] if want_out else []) + ([cur_dtype] if emit_cur else []) + [s_dtypes[-1]]
    seqs += res_dtypes if keep else []
    out_shape = [jax.ShapeDtypeStruct((Bp, Np), dt) for dt in s_dtypes]
    out_shape += [jax.ShapeDtypeStruct((Tp, Bp, Np), dt) for dt in seqs]
    in_specs = [vec] * n_p + [rows] * n_s + [seq, whole] + ([vec] if has_bias else [])
    body = _streamed_forward_kernel if tl.streamed else _forward_kernel
    kernel = functools.partial(body, tl=tl, step=step, combine=combine, n_p=n_p, s_dtypes=s_dtypes,
                               cur_dtype=cur_dtype, out_dtype=out_dtype, dot_dtype=dot_dtype, res_dtypes=res_dtypes,
                               has_bias=has_bias, resident=resident, want_out=want_out, emit_cur=emit_cur,
                               keep=keep, precision=precision, **_sync_kw(tl, interpret))
    return pl.pallas_call(kernel, out_shape=out_shape, grid=(tl.n_tiles, tl.n_chunks), in_specs=in_specs,
                          out_specs=[rows] * n_s + [seq] * len(seqs), compiler_params=compiler_params(tl, interpret),
                          interpret=interpret, name="snnkern_recurrent_fwd")


def _backward_kernel(*refs, tl: RecLayout, step, combine, n_p, s_dtypes, out_dtype, dot_dtype, res_dtypes,
                     resident, want_out, want_cur, precision):
    n_s = len(s_dtypes)
    (p_refs, s0_refs, res_refs, cur_ref, read_ref, w_ref, g_out_ref, g_cur_ref, g_read_ref, g_sT_refs, g_s0_refs,
     g_i_ref, g_p_refs) = _backward_refs(refs, n_p, n_s, want_out, want_cur)

    shape = (tl.bB, tl.n_pad)
    p_vals = [jnp.broadcast_to(ref[...], shape) for ref in p_refs]
    s0 = [ref[...] for ref in s0_refs]
    w_res = w_ref[...] if resident else None
    chunk, g_s, g_p = backward_start(tl, g_s0_refs, g_sT_refs, g_p_refs)

    def body(i, carry):
        g_s, g_p = carry
        j, t = reverse_index(tl.tc, chunk, i)
        s = entering_state(res_refs, read_ref, s0, t, (j,))      # the last entry is reads
        g_out = g_out_ref[j] if want_out else jnp.zeros(shape, out_dtype)
        _, vjp = jax.vjp(lambda d, ss, x: step(combine(d), ss, x), p_vals, s, cur_ref[j])
        dd, ds, di = vjp(([a.astype(dt) for a, dt in zip(g_s, s_dtypes)], g_out))
        di = di.astype(jnp.float32)
        if want_cur:
            di = di + g_cur_ref[j].astype(jnp.float32)
        ds = [a.astype(dt) for a, dt in zip(ds, s_dtypes)]
        rec = _dot(di, w_res if resident else w_ref[...], dot_dtype, precision)
        ds[-1] = ds[-1] + rec.astype(s_dtypes[-1]) + g_read_ref[j].astype(s_dtypes[-1])
        if tl.T_pad > tl.T:
            valid = t < tl.T
            ds = keep_valid(valid, ds, g_s)
            dd = keep_valid(valid, dd, [jnp.zeros_like(a) for a in dd])
            di = jnp.where(valid, di, jnp.zeros_like(di))
        g_i_ref[j] = di
        return ds, [a + b_.astype(a.dtype) for a, b_ in zip(g_p, dd)]

    g_s, g_p = jax.lax.fori_loop(0, tl.tc, body, (g_s, g_p))
    write(g_s0_refs, g_s)
    write(g_p_refs, g_p)


def _backward_call(*, tl: RecLayout, step, combine, n_p, s_dtypes, cur_dtype, out_dtype, dot_dtype, res_dtypes,
                   has_bias, resident, want_out, want_cur, interpret, precision, p_dtypes):
    del cur_dtype, has_bias  # the backward kernel reads I_t as stored; the bias gradient is db = sum dI
    rows, seq, whole, vec = _specs(tl, reverse=True)
    n_s = len(s_dtypes)
    Bp, Np, Tp = tl.B_pad, tl.n_pad, tl.T_pad
    in_specs = [vec] * n_p + [rows] * n_s + [seq] * (n_s - 1) + [seq, seq, whole]
    in_specs += [seq] * (int(want_out) + int(want_cur) + 1) + [rows] * n_s
    out_shape = ([jax.ShapeDtypeStruct((Bp, Np), dt) for dt in s_dtypes]
                 + [jax.ShapeDtypeStruct((Tp, Bp, Np), jnp.float32)]
                 + [jax.ShapeDtypeStruct((Bp, Np), dt) for dt in p_dtypes])
    body = _streamed_backward_kernel if tl.streamed else _backward_kernel
    kernel = functools.partial(body, tl=tl, step=step, combine=combine, n_p=n_p, s_dtypes=s_dtypes,
                               out_dtype=out_dtype, dot_dtype=dot_dtype, res_dtypes=res_dtypes, resident=resident,
                               want_out=want_out, want_cur=want_cur, precision=precision, **_sync_kw(tl, interpret))
    return pl.pallas_call(kernel, out_shape=out_shape, grid=(tl.n_tiles, tl.n_chunks), in_specs=in_specs,
                          out_specs=[rows] * n_s + [seq] + [rows] * n_p, compiler_params=compiler_params(tl, interpret),
                          interpret=interpret, name="snnkern_recurrent_bwd")


# the streamed GPU kernels ---------------------------------------------------------------------
#
# W_rec stays in global memory (HBM; at n <= 1024 float32 it is 4 MiB and stays in the H200's L2) and so
# does the state: its carry is the program's final-state output block. A step works on column blocks of
# ``bk`` neurons (the neuron step is elementwise across neurons): block J of ``r_{t-1} @ W^T`` is
# ``sum_K r_{t-1}[:, K] @ W^T[K, J]``, a loop of (bB, bk) x (bk, bk) dots whose r tiles come from
# ``reads[t]`` (a primal output, written at the start of the step). A program thus needs the whole of
# ``r_{t-1}`` at every step: splitting the neurons across programs would need a grid-wide barrier per
# step, which a kernel does not have, so the neurons stay in one program and only the batch is split.
# The threads of one program exchange data through global memory; ``sync`` (a block-wide barrier,
# ``bar.sync``) orders every write before the reads of other threads that follow it, and every read
# of a block before it is overwritten (a load's and a store's thread layouts may differ).


def _sync_kw(tl: RecLayout, interpret: bool) -> dict:
    """The streamed kernels' barrier (compiled GPU only: the interpreter runs a program's ops in order)."""
    if not tl.streamed:
        return {}
    if interpret:
        return dict(sync=lambda: None)
    from jax.experimental.pallas import triton as plgpu
    return dict(sync=plgpu.debug_barrier)


def _blocks(tl: RecLayout, fn):
    """``fn(cols)`` for every column block (``cols`` a ``pl.ds`` of ``tl.bk`` neurons), in a loop."""
    def body(J, carry):
        fn(pl.ds(pl.multiple_of(J * tl.bk, tl.bk), tl.bk))
        return carry

    jax.lax.fori_loop(0, tl.n_pad // tl.bk, body, 0)


def _streamed_dot(tl: RecLayout, rows_ref, j, w_ref, cj, dot_dtype, precision):
    """Block ``cj`` of ``rows_ref[j] @ w_ref``: the (bB, bk) sum over K tiles, float32."""
    def body(K, acc):
        ck = pl.ds(pl.multiple_of(K * tl.bk, tl.bk), tl.bk)
        return acc + _dot(rows_ref[j, :, ck], w_ref[ck, cj], dot_dtype, precision)

    return jax.lax.fori_loop(0, tl.n_pad // tl.bk, body, jnp.zeros((tl.bB, tl.bk), jnp.float32))


def _copy_blocks(tl: RecLayout, dsts, srcs, sync):
    """``dst[...] = src[...]`` (zeros where ``src`` is None), one column block at a time."""
    def copy(cj):
        for d, s_ in zip(dsts, srcs):
            d[:, cj] = jnp.zeros((tl.bB, tl.bk), d.dtype) if s_ is None else s_[:, cj]

    _blocks(tl, copy)
    sync()


def _streamed_forward_kernel(*refs, tl: RecLayout, step, combine, n_p, s_dtypes, cur_dtype, out_dtype, dot_dtype,
                             res_dtypes, has_bias, resident, want_out, emit_cur, keep, precision, sync):
    del resident
    n_s = len(s_dtypes)
    (p_refs, s0_refs, x_ref, wt_ref, b_ref, sT_refs, out_ref, cur_ref, read_ref,
     res_refs) = _forward_refs(refs, n_p, n_s, has_bias, want_out, emit_cur, keep)
    shape = (tl.bB, tl.bk)
    _copy_blocks(tl, sT_refs, s0_refs, sync)      # one program runs all T steps (a gpu layout: no chunks)

    def body(j, carry):
        def snapshot(cj):   # reads[t] = r_{t-1}; the residuals: the entering state
            read_ref[j, :, cj] = sT_refs[-1][:, cj]
            if keep:
                for ref, v in zip(res_refs, store([r[:, cj] for r in sT_refs[:-1]], res_dtypes)):
                    ref[j, :, cj] = v

        _blocks(tl, snapshot)
        sync()

        def update(cj):
            rec = _streamed_dot(tl, read_ref, j, wt_ref, cj, dot_dtype, precision)
            if has_bias:
                rec = rec + jnp.broadcast_to(b_ref[:, cj], shape)
            i_t = (x_ref[j, :, cj] + rec).astype(cur_dtype)
            s = [ref[:, cj] for ref in sT_refs]
            p = combine([jnp.broadcast_to(ref[:, cj], shape) for ref in p_refs])
            ns, out = step(p, list(s), i_t)
            ns = [a.astype(dt) for a, dt in zip(ns, s_dtypes)]
            sync()          # every thread has read its part of this block before any of it is overwritten
            for ref, v in zip(sT_refs, ns):
                ref[:, cj] = v
            if emit_cur:
                cur_ref[j, :, cj] = i_t
            if want_out:
                out_ref[j, :, cj] = out.astype(out_dtype)

        _blocks(tl, update)
        sync()
        return carry

    jax.lax.fori_loop(0, tl.T, body, 0)


def _streamed_backward_kernel(*refs, tl: RecLayout, step, combine, n_p, s_dtypes, out_dtype, dot_dtype, res_dtypes,
                              resident, want_out, want_cur, precision, sync):
    del resident
    n_s = len(s_dtypes)
    (p_refs, s0_refs, res_refs, cur_ref, read_ref, w_ref, g_out_ref, g_cur_ref, g_read_ref, g_sT_refs, g_s_refs,
     g_i_ref, g_p_refs) = _backward_refs(refs, n_p, n_s, want_out, want_cur)
    shape = (tl.bB, tl.bk)
    # the carries live in the output blocks: d state (from d final state) and the parameter sums (zeros)
    _copy_blocks(tl, g_s_refs + g_p_refs, g_sT_refs + [None] * n_p, sync)

    def body(i, carry):
        j = t = tl.T - 1 - i         # reverse time, all T steps in this program

        def local(cj):      # the step's VJP on one block; d state without the recurrent term
            s = entering_state(res_refs, read_ref, [ref[:, cj] for ref in s0_refs], t, (j, slice(None), cj))
            g_s = [ref[:, cj] for ref in g_s_refs]
            g_p = [ref[:, cj] for ref in g_p_refs]
            g_out = g_out_ref[j, :, cj] if want_out else jnp.zeros(shape, out_dtype)
            p_vals = [jnp.broadcast_to(ref[:, cj], shape) for ref in p_refs]
            _, vjp = jax.vjp(lambda d, ss, x: step(combine(d), ss, x), p_vals, s, cur_ref[j, :, cj])
            dd, ds, di = vjp(([a.astype(dt) for a, dt in zip(g_s, s_dtypes)], g_out))
            di = di.astype(jnp.float32)
            if want_cur:
                di = di + g_cur_ref[j, :, cj].astype(jnp.float32)
            ds = [a.astype(dt) for a, dt in zip(ds, s_dtypes)]
            ds[-1] = ds[-1] + g_read_ref[j, :, cj].astype(s_dtypes[-1])
            g_i_ref[j, :, cj] = di
            sync()
            for ref, v in zip(g_s_refs, ds):
                ref[:, cj] = v
            for ref, a, b_ in zip(g_p_refs, g_p, dd):
                ref[:, cj] = a + b_.astype(a.dtype)

        _blocks(tl, local)
        sync()

        def recurrent(cj):  # d r_{t-1} += dI_t @ W, block cj
            rec = _streamed_dot(tl, g_i_ref, j, w_ref, cj, dot_dtype, precision)
            v = g_s_refs[-1][:, cj] + rec.astype(s_dtypes[-1])
            sync()
            g_s_refs[-1][:, cj] = v

        _blocks(tl, recurrent)
        sync()
        return carry

    jax.lax.fori_loop(0, tl.T, body, 0)
