"""Fused Pallas time loops over a neuron step function (GPU via Triton, TPU via Mosaic).

A drop-in replacement for :func:`snnkern.kernels.neuron_loop.neuron_loop`: same arguments, same
``(final_state, outs, reads)`` result, same gradients (w.r.t. the array leaves of ``params``,
``state0`` and ``xs``), but each direction is **one** ``pallas_call``:

- forward: the grid runs over tiles of neurons (and, on TPU, over chunks of time, sequentially);
  each program keeps its tile's state in registers/VMEM and runs a ``fori_loop`` over the time
  steps, reading ``xs[t]`` and writing ``outs[t]``, ``reads[t]`` and the residuals of step t. The
  neuron's own ``step`` function is traced inside the kernel, so every neuron gets the kernel
  (a neuron's dynamics are written once).
- backward: a reverse-time ``pallas_call`` re-runs each step's VJP (``jax.vjp`` of ``step`` inside
  the kernel) from the residuals, carrying the state cotangent, emitting ``d xs[t]`` and
  accumulating per-neuron parameter gradients (parameters are broadcast to the tile), which are
  reduced to the parameters' shapes after the kernel.

Residuals (what the forward pass stores for the backward pass; the policy of every loop,
:mod:`.residuals`): the state entering each step, with spike entries (``spike_idx``, exactly 0/1)
stored as ``int8``; the exact user ``state0`` is used at t = 0; plus ``xs`` itself. That is exactly
what a step's VJP needs, so the backward pass
is exact (the same float32 operations as the XLA loop; see docs/kernels.md for measured errors).
``residual_dtype=jnp.bfloat16`` / ``jnp.float16`` stores the other floating state entries
(membranes, synaptic currents) narrower: less residual memory, an approximate backward pass
(docs/kernels.md, "Membrane residual precision": the default stays float32).

Layout: the neuron axes are flattened to N and laid out as ``(R, L)`` rows x lanes, time-major
``(T, R, L)``; a tile is ``(rb, L)``. N is **padded** up to a whole number of tiles (and T, on
TPU, up to a whole number of time chunks; padded steps are masked out) and sliced back after.

- ``gpu`` (Triton): power-of-2 tiles (``L = min(128, next_pow2(N))``, ``rb`` a power of 2), all T
  steps in one program (Triton programs cannot carry state across grid steps).
- ``tpu`` (Mosaic): ``L = 128``, ``rb`` a multiple of 8 (or all rows): the (8, 128) vreg tile;
  time in chunks of ``block_t`` on a sequential ("arbitrary") grid axis, the state carried in the
  final-state output block (resident across that axis), so VMEM holds one chunk, not all of T.
- ``any``: a layout valid for both (``L = 128``, power-of-2 ``rb``, one time chunk) and no
  compiler parameters: what a CPU host emits when asked for compiled kernels, so that the same
  trace lowers for cuda and for tpu.

``interpret=True`` runs the kernels with the Pallas interpreter (any host; for tests).
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from .common import FLOATS, params_broadcast, reduce_to
from .loop_builder import custom_loop
from .pallas_common import (RefReader, backward_start, carry_start, entering_state, keep_valid, masked_step_valid,
                             reverse_index, seq_spec, step_and_emit, write)
from .residuals import check_residual_dtype, residual_dtypes, store
from .tiling import GPU_PLATFORMS, NeuronLayout, NeuronTiling, compiler_params, layout_target

__all__ = ["neuron_loop", "eligible", "unsupported", "default_tiling", "residual_dtypes", "check_residual_dtype"]


def eligible(shape: Sequence[int], dtype, platform: Optional[str] = None) -> Optional[str]:
    """None if a neuron loop over ``xs`` of ``shape`` = ``(T, *neuron_shape)`` (one sample) and
    ``dtype`` can run as a Pallas kernel on ``platform`` (``cpu`` = interpret mode only), else
    the reason why not."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 1:
        return "the input has no time axis"
    if shape[0] == 0:
        return "the sequence is empty (T = 0)"
    if math.prod(shape[1:]) == 0:
        return f"the neuron shape {shape[1:]} is empty"
    dt = jnp.dtype(dtype)
    if not any(dt == jnp.dtype(f) for f in FLOATS):
        return f"input dtype {dt} is not float32, bfloat16 or float16"
    plat = (platform or jax.default_backend()).lower()
    if plat not in ("cpu", "tpu", *GPU_PLATFORMS):
        return f"no Pallas lowering for platform {plat!r}"
    if plat == "tpu" and dt == jnp.dtype(jnp.float16):
        return "float16 inputs are not supported by the TPU (Mosaic) kernels; use bfloat16"
    return None


def unsupported(step, params, state0, xs, platform: str, residual_dtype=None) -> Optional[str]:
    """None if the kernels take this loop, else why not. Works on arrays and on
    ``jax.ShapeDtypeStruct`` s alike (the planner asks before anything is traced; the kernel raises
    with the same reason)."""
    why = eligible(xs.shape, xs.dtype, platform)
    if why is not None:
        return why
    shape = tuple(xs.shape[1:])
    dyn, static = eqx.partition(params, eqx.is_array)
    if not params_broadcast(dyn, shape):
        return "a parameter does not broadcast against the neuron shape"
    if any(tuple(s.shape) != shape for s in state0):
        return "a state entry's shape differs from the input's neuron shape"
    out = jax.eval_shape(lambda d, s, x: step(eqx.combine(d, static), s, x)[1], dyn, list(state0),
                         jax.ShapeDtypeStruct(shape, xs.dtype))
    if tuple(out.shape) != shape:
        return f"the step's output shape {tuple(out.shape)} is not the neuron shape {shape}"
    rdt = check_residual_dtype(residual_dtype)
    if platform == "tpu" and rdt == jnp.dtype(jnp.float16):
        return "residual_dtype float16 is not supported by the TPU (Mosaic) kernels; use jnp.bfloat16"
    return None


def default_tiling(platform: Optional[str], interpret: bool, block_n=None, block_t=None) -> NeuronTiling:
    """The tiling used when none is given: interpreted, the GPU layout (small power-of-2 tiles),
    or the TPU one if time is chunked; compiled, the layout family of ``platform``."""
    if interpret and platform is None:
        target = "tpu" if block_t is not None else "gpu"
    else:
        target = layout_target(platform)
    return NeuronTiling(target, block_t=block_t, block_n=block_n)


# --------------------------------------------------------------------------------------------
# layout helpers (plain JAX, outside the kernels; vmap-friendly)

def _neurons(a, lead: int, tl: NeuronLayout):
    """(*lead, *shape) -> (*lead, R, L), zero-padded."""
    a = a.reshape(a.shape[:lead] + (tl.N,))
    pad = tl.R * tl.L - tl.N
    if pad:
        a = jnp.pad(a, [(0, 0)] * lead + [(0, pad)])
    return a.reshape(a.shape[:lead] + (tl.R, tl.L))


def _time(a, tl: NeuronLayout):
    """(T, *shape) -> (T_pad, R, L), zero-padded in both."""
    a = _neurons(a, 1, tl)
    return jnp.pad(a, [(0, tl.T_pad - tl.T), (0, 0), (0, 0)]) if tl.T_pad > tl.T else a


def _unneurons(a, lead: int, tl: NeuronLayout, shape):
    a = a.reshape(a.shape[:lead] + (tl.R * tl.L,))[..., :tl.N]
    return a.reshape(a.shape[:lead] + tuple(shape))


def _untime(a, tl: NeuronLayout, shape):
    return _unneurons(a[:tl.T], 1, tl, shape)


def _param_tile(a, shape, tl: NeuronLayout):
    """A parameter broadcast to every neuron, padded with its first value (keeps pad neurons in a
    realistic range; their results are sliced away and their cotangents are zero)."""
    a = jnp.broadcast_to(a, tuple(shape)).reshape(tl.N)
    pad = tl.R * tl.L - tl.N
    if pad:
        a = jnp.concatenate([a, jnp.broadcast_to(a[:1], (pad,))])
    return a.reshape(tl.R, tl.L)


def _specs(tl: NeuronLayout, reverse: bool = False):
    """BlockSpecs of per-neuron (R, L) and per-step (T_pad, R, L) arrays on the (tiles, chunks) grid."""
    return pl.BlockSpec((tl.rb, tl.L), lambda i, c: (i, 0)), seq_spec((tl.tc, tl.rb, tl.L), tl.n_chunks, reverse)


# --------------------------------------------------------------------------------------------

def neuron_loop(step, params, state0: list, xs: jax.Array, spike_idx: Sequence[int] = (),
                want_out: bool = True, want_read: bool = False, out_is_last_state: bool = False, *,
                interpret: bool = False, tiling: Optional[NeuronTiling] = None, block_n: Optional[int] = None,
                block_t: Optional[int] = None, platform: Optional[str] = None, residual_dtype=None):
    """Run ``step`` over the leading (time) axis of ``xs`` as fused Pallas kernels.

    Same contract as :func:`snnkern.kernels.neuron_loop.neuron_loop`: returns ``(final_state,
    outs or None, reads or None)``; ``reads[t]`` is ``state[-1]`` entering step t. Differentiable
    (custom VJP) w.r.t. the array leaves of ``params``, ``state0`` and ``xs``; works under
    ``jax.jit`` and ``jax.vmap`` (the batch becomes a leading grid axis).

    ``interpret``: run the kernels in the Pallas interpreter (CPU tests). ``tiling``: the
    :class:`~snnkern.kernels.tiling.NeuronTiling` (what the planner decided); without it, one is made
    from ``block_n`` (neurons per tile), ``block_t`` (steps per time chunk, TPU/interpret) and
    ``platform`` (layout family; default: the platform being traced for). ``out_is_last_state`` is
    accepted for the call contract and changes nothing here (the kernels store the entering state).

    ``residual_dtype``: the dtype the per-step residuals of the non-spike floating state entries
    (membranes, currents) are stored in. None (default): each entry's own dtype, an exact backward
    pass. ``jnp.bfloat16`` / ``jnp.float16``: entries wider than that are stored narrower and cast
    back when the backward kernel reads them (the exact ``state0`` is used at t = 0): half the
    residual memory of a float32 membrane, at the cost of gradient error (the step's VJP, e.g. the
    surrogate derivative at the threshold, is evaluated at the rounded membrane; measured in
    docs/kernels.md, "Membrane residual precision"). Spike entries are ``int8`` either way; the
    forward results do not depend on it. A non-float dtype raises TypeError, an unsupported float
    ValueError (float16 also on the compiled TPU kernels).

    A loop the kernels cannot take (:func:`unsupported`: parameters that do not broadcast against
    the state, an ineligible shape or dtype) raises ``ValueError``: the planner decides the path
    and asks the same question first.
    """
    r_dtype = check_residual_dtype(residual_dtype)
    if tiling is None:
        tiling = default_tiling(platform, interpret, block_n, block_t)
    spike_idx = tuple(sorted(set(int(k) for k in spike_idx)))
    state0 = list(state0)
    why = unsupported(step, params, state0, xs, tiling.rules_platform(interpret), residual_dtype)
    if why is not None:
        raise ValueError(f"the Pallas neuron-loop kernel cannot take this loop: {why}")
    dyn, static = eqx.partition(params, eqx.is_array)
    shape = tuple(xs.shape[1:])
    tl = tiling.layout(xs.shape[0], math.prod(shape))
    leaves, treedef = jax.tree.flatten(dyn)
    s_dtypes = [s.dtype for s in state0]

    def combine(vals):
        return eqx.combine(jax.tree.unflatten(treedef, list(vals)), static)

    out_dtype = jax.eval_shape(lambda d, s, x: step(combine(d), s, x)[1], leaves, state0, xs[0]).dtype
    # the residual policy (:mod:`.residuals`): the whole entering state (see "Residuals" above), spike
    # entries int8, floats optionally narrower
    cfg = dict(step=step, combine=combine, tl=tl, n_p=len(leaves), s_dtypes=s_dtypes, out_dtype=out_dtype,
               res_dtypes=residual_dtypes(s_dtypes, spike_idx, r_dtype), want_out=want_out, want_read=want_read,
               interpret=interpret)
    loop = _Wrapper(cfg, shape, xs.dtype)
    return custom_loop(loop.run, loop.backward)(leaves, state0, xs)


class _Wrapper:
    """The kernels' custom VJP (:func:`.loop_builder.custom_loop`): tiling on the way in and out of the
    forward (:meth:`run`) and backward (:meth:`backward`) kernels."""

    def __init__(self, cfg: dict, shape, x_dtype):
        self.cfg, self.tl, self.shape, self.x_dtype = cfg, cfg["tl"], shape, x_dtype

    def run(self, d, s0, x, keep):
        tl, shape, want_read = self.tl, self.shape, self.cfg["want_read"]
        p_t, s0_t, x_t = [_param_tile(a, shape, tl) for a in d], [_neurons(s, 0, tl) for s in s0], _time(x, tl)
        res = RefReader(_forward_call(keep=keep, **self.cfg)(*p_t, *s0_t, x_t))
        sT = [_unneurons(r, 0, tl, shape) for r in res.take(len(s0))]
        outs = _untime(res.one(), tl, shape) if self.cfg["want_out"] else None
        reads = _untime(res.one(), tl, shape) if want_read else None
        # residuals stay tiled: the backward kernel reads them in the same layout
        return (sT, outs, reads), (d, p_t, s0_t, x_t, res.rest())

    def backward(self, res, g):
        d, p_t, s0_t, x_t, res_t = res
        g_sT, g_outs, g_reads = g
        tl, shape, s_dtypes, n_s = self.tl, self.shape, self.cfg["s_dtypes"], len(s0_t)
        ins = [*p_t, *s0_t, *res_t, x_t]
        if self.cfg["want_out"]:
            ins.append(_time(g_outs.astype(self.cfg["out_dtype"]), tl))
        if self.cfg["want_read"]:
            ins.append(_time(g_reads.astype(s_dtypes[-1]), tl))
        ins += [_neurons(gs.astype(s_dtypes[k]), 0, tl) for k, gs in enumerate(g_sT)]
        outs = _backward_call(x_dtype=self.x_dtype, p_dtypes=[a.dtype for a in p_t], **self.cfg)(*ins)
        g_s0 = [_unneurons(o, 0, tl, shape) for o in outs[:n_s]]
        g_x = _untime(outs[n_s], tl, shape)
        g_p = [reduce_to(_unneurons(o, 0, tl, shape), a.shape).astype(a.dtype) for o, a in zip(outs[n_s + 1:], d)]
        return g_p, g_s0, g_x


def _forward_kernel(*refs, step, combine, tl: NeuronLayout, n_p, s_dtypes, out_dtype, res_dtypes, want_out,
                    want_read, keep):
    n_s = len(s_dtypes)
    r = RefReader(refs)
    p_refs, s0_refs, x_ref = r.take(n_p), r.take(n_s), r.one()
    sT_refs, out_ref, read_ref = r.take(n_s), r.opt(want_out), r.opt(want_read)
    res_refs = r.rest() if keep else []

    p = combine([ref[...] for ref in p_refs])
    chunked = tl.n_chunks > 1
    c = pl.program_id(1) if chunked else 0
    s, _ = carry_start(chunked, c, sT_refs, s0_refs)   # the final-state blocks carry the state

    def body(j, s):
        if keep:
            write(res_refs, store(s, res_dtypes), j)
        if want_read:
            read_ref[j] = s[-1]
        valid = masked_step_valid(tl.T_pad > tl.T, c, tl.tc, j, tl.T)
        return step_and_emit(step, p, s, x_ref[j], s_dtypes, valid, out_ref, j, out_dtype)

    write(sT_refs, jax.lax.fori_loop(0, tl.tc, body, s))


def _forward_call(*, step, combine, tl: NeuronLayout, n_p, s_dtypes, out_dtype, res_dtypes, want_out, want_read,
                  keep, interpret):
    neur, seq = _specs(tl)
    R, L, Tp = tl.R, tl.L, tl.T_pad
    out_shape = [jax.ShapeDtypeStruct((R, L), dt) for dt in s_dtypes]
    seqs = ([out_dtype] if want_out else []) + ([s_dtypes[-1]] if want_read else []) + (res_dtypes if keep else [])
    out_shape += [jax.ShapeDtypeStruct((Tp, R, L), dt) for dt in seqs]
    kernel = functools.partial(_forward_kernel, step=step, combine=combine, tl=tl, n_p=n_p, s_dtypes=s_dtypes,
                                   out_dtype=out_dtype, res_dtypes=res_dtypes, want_out=want_out,
                                   want_read=want_read, keep=keep)
    return pl.pallas_call(
        kernel, out_shape=out_shape, grid=(tl.n_tiles, tl.n_chunks),
        in_specs=[neur] * (n_p + len(s_dtypes)) + [seq], out_specs=[neur] * len(s_dtypes) + [seq] * len(seqs),
        compiler_params=compiler_params(tl, interpret), interpret=interpret, name="snnkern_neuron_fwd")


def _backward_kernel(*refs, step, combine, tl: NeuronLayout, n_p, s_dtypes, out_dtype, res_dtypes, want_out,
                     want_read, x_dtype):
    n_s = len(s_dtypes)
    r = RefReader(refs)
    p_refs, s0_refs, res_refs, x_ref = r.take(n_p), r.take(n_s), r.take(n_s), r.one()
    g_out_ref, g_read_ref, g_sT_refs = r.opt(want_out), r.opt(want_read), r.take(n_s)
    g_s0_refs, g_x_ref, g_p_refs = r.take(n_s), r.one(), r.rest()

    p_vals = [ref[...] for ref in p_refs]
    s0 = [ref[...] for ref in s0_refs]
    chunk, g_s, g_p = backward_start(tl, g_s0_refs, g_sT_refs, g_p_refs)

    def body(i, carry):
        g_s, g_p = carry
        j, t = reverse_index(tl.tc, chunk, i)
        s = entering_state(res_refs, None, s0, t, (j,))
        x = x_ref[j]
        g_out = g_out_ref[j] if want_out else jnp.zeros(x.shape, out_dtype)
        _, vjp = jax.vjp(lambda d, ss, xx: step(combine(d), ss, xx), p_vals, s, x)
        dd, ds, dx = vjp(([a.astype(dt) for a, dt in zip(g_s, s_dtypes)], g_out))
        ds = [a.astype(dt) for a, dt in zip(ds, s_dtypes)]
        if want_read:
            ds[-1] = ds[-1] + g_read_ref[j].astype(s_dtypes[-1])
        dx = dx.astype(jnp.float32)
        if tl.T_pad > tl.T:
            valid = t < tl.T
            ds = keep_valid(valid, ds, g_s)
            dd = keep_valid(valid, dd, [jnp.zeros_like(a) for a in dd])
            dx = jnp.where(valid, dx, jnp.zeros_like(dx))
        g_x_ref[j] = dx.astype(x_dtype)
        return ds, [a + b.astype(a.dtype) for a, b in zip(g_p, dd)]

    g_s, g_p = jax.lax.fori_loop(0, tl.tc, body, (g_s, g_p))
    write(g_s0_refs, g_s)
    write(g_p_refs, g_p)


def _backward_call(*, step, combine, tl: NeuronLayout, n_p, s_dtypes, x_dtype, out_dtype, res_dtypes, p_dtypes,
                   want_out, want_read, interpret):
    neur, seq = _specs(tl, reverse=True)
    n_s = len(s_dtypes)
    R, L, Tp = tl.R, tl.L, tl.T_pad
    in_specs = [neur] * (n_p + n_s) + [seq] * (n_s + 1 + int(want_out) + int(want_read)) + [neur] * n_s
    out_shape = ([jax.ShapeDtypeStruct((R, L), dt) for dt in s_dtypes]
                 + [jax.ShapeDtypeStruct((Tp, R, L), x_dtype)]
                 + [jax.ShapeDtypeStruct((R, L), dt) for dt in p_dtypes])
    kernel = functools.partial(_backward_kernel, step=step, combine=combine, tl=tl, n_p=n_p, s_dtypes=s_dtypes,
                                   out_dtype=out_dtype, res_dtypes=res_dtypes, want_out=want_out,
                                   want_read=want_read, x_dtype=x_dtype)
    return pl.pallas_call(
        kernel, out_shape=out_shape, grid=(tl.n_tiles, tl.n_chunks), in_specs=in_specs,
        out_specs=[neur] * n_s + [seq] + [neur] * n_p, compiler_params=compiler_params(tl, interpret),
        interpret=interpret, name="snnkern_neuron_bwd")
