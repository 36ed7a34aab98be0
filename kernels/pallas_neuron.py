"""Fused Pallas time loops over a neuron step function (GPU via Triton, TPU via Mosaic).

A drop-in replacement for :func:`snnkern.kernels.neuron_loop.neuron_loop`: same arguments, same
``(final_state, outs, reads)`` result, same gradients (w.r.t. the array leaves of ``params``,
``state0`` and ``xs``), but each direction is **one** ``pallas_call``:

- forward: the grid runs over tiles of neurons (and, on TPU, over chunks of time, sequentially);
  each program keeps its tile's state in registers/VMEM and runs a ``fori_loop`` over the time
  steps, reading ``xs[t]`` and writing ``outs[t]``, ``reads[t]`` and the residuals of step t. The
  neuron's own ``step`` function is traced inside the kernel, so every neuron gets the kernel
  (DESIGN: "a neuron's dynamics are written once").
- backward: a reverse-time ``pallas_call`` re-runs each step's VJP (``jax.vjp`` of ``step`` inside
  the kernel) from the residuals, carrying the state cotangent, emitting ``d xs[t]`` and
  accumulating per-neuron parameter gradients (parameters are broadcast to the tile), which are
  reduced to the parameters' shapes after the kernel.

Residuals (what the forward pass stores for the backward pass): the state entering each step,
with spike entries (``spike_idx``, exactly 0/1) stored as ``int8``; the exact user ``state0`` is
used at t = 0; plus ``xs`` itself. That is exactly what a step's VJP needs, so the backward pass
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

import dataclasses
import math
from typing import Optional, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from .neuron_loop import Step, params_broadcast
from .neuron_loop import neuron_loop as xla_neuron_loop

__all__ = ["neuron_loop", "eligible", "tiling", "Tiling", "target_platform", "residual_dtypes"]

_FLOATS = (jnp.float32, jnp.bfloat16, jnp.float16)
_DEFAULT_BLOCK_N = {"gpu": 512, "tpu": 1024, "any": 1024}
_DEFAULT_BLOCK_T_TPU = 64          # 64 steps x 1024 neurons x 4 B = 256 KiB per array per chunk
_GPU_PLATFORMS = ("gpu", "cuda", "rocm")


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def target_platform(platform: Optional[str] = None) -> str:
    """``gpu`` | ``tpu`` | ``any``: the layout family to emit. Explicit ``platform`` first, then
    the abstract device of an active ``jax.sharding.use_abstract_mesh`` (how a CPU host lowers for
    an accelerator it does not have), then the default backend (``cpu`` -> ``any``)."""
    if platform is None:
        from .dispatch import tracing_platform
        platform = tracing_platform()
    platform = platform.lower()
    if platform in _GPU_PLATFORMS:
        return "gpu"
    if platform == "tpu":
        return "tpu"
    return "any"


@dataclasses.dataclass(frozen=True)
class Tiling:
    """How (T, N) is cut: ``L`` lanes, ``rb`` rows per tile, ``R`` rows (padded), ``tc`` steps per
    time chunk, ``T_pad`` steps (padded, masked)."""

    target: str
    N: int
    T: int
    L: int
    rb: int
    R: int
    tc: int
    T_pad: int

    @property
    def n_tiles(self) -> int:
        return self.R // self.rb

    @property
    def n_chunks(self) -> int:
        return self.T_pad // self.tc

    @property
    def block_n(self) -> int:
        return self.rb * self.L


def tiling(T: int, N: int, target: str, block_n: Optional[int] = None, block_t: Optional[int] = None) -> Tiling:
    """The tiling of a (T, N) problem for ``target`` (see module docstring). ``block_n``: neurons
    per tile (a power of 2; on TPU a multiple of 1024 unless one tile holds all rows); ``block_t``:
    steps per time chunk (TPU and interpret only; GPU/any always run all T in one program)."""
    if target not in _DEFAULT_BLOCK_N:
        raise ValueError(f"unknown tiling target {target!r}")
    bn = _DEFAULT_BLOCK_N[target] if block_n is None else int(block_n)
    if bn <= 0 or bn & (bn - 1):
        raise ValueError(f"block_n must be a power of 2, got {block_n}")
    L = min(128, _next_pow2(N), bn) if target == "gpu" else 128
    if bn < L:
        raise ValueError(f"block_n={bn} is smaller than one row of {L} lanes")
    rows = -(-N // L)
    rb_max = bn // L
    if rows <= rb_max:
        rb = rows if target == "tpu" else _next_pow2(rows)   # TPU: a block may span all rows
        R = rb
    else:
        if target in ("tpu", "any") and rb_max % 8:
            raise ValueError(f"block_n={bn} on TPU (or the portable layout) must be a multiple of "
                             f"8*128 = 1024 neurons when one tile does not hold all {rows} rows")
        rb, R = rb_max, -(-rows // rb_max) * rb_max
    if target in ("gpu", "any"):
        if block_t not in (None, T):
            raise ValueError(f"block_t is only supported for TPU/interpret tilings (target {target!r})")
        tc = T
    else:
        tc = min(T, _DEFAULT_BLOCK_T_TPU if block_t is None else int(block_t))
        if tc <= 0:
            raise ValueError(f"block_t must be positive, got {block_t}")
    T_pad = -(-T // tc) * tc
    return Tiling(target, N, T, L, rb, R, tc, T_pad)


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
    if not any(dt == jnp.dtype(f) for f in _FLOATS):
        return f"input dtype {dt} is not float32, bfloat16 or float16"
    plat = (platform or jax.default_backend()).lower()
    if plat not in ("cpu", "tpu", *_GPU_PLATFORMS):
        return f"no Pallas lowering for platform {plat!r}"
    if plat == "tpu" and dt == jnp.dtype(jnp.float16):
        return "float16 inputs are not supported by the TPU (Mosaic) kernels; use bfloat16"
    return None


def _check_residual_dtype(residual_dtype):
    """``residual_dtype`` as a numpy dtype (None stays None); TypeError / ValueError if it is not
    one of the floating dtypes the kernels store."""
    if residual_dtype is None:
        return None
    try:
        dt = jnp.dtype(residual_dtype)
    except TypeError as e:
        raise TypeError(f"residual_dtype must be None or a floating dtype (jnp.float32, jnp.bfloat16, "
                        f"jnp.float16), got {residual_dtype!r}") from e
    if not jnp.issubdtype(dt, jnp.floating):
        raise TypeError(f"residual_dtype must be a floating dtype (jnp.float32, jnp.bfloat16, jnp.float16), "
                        f"got {dt}: spike entries are already stored as int8, the other state entries "
                        f"need a float")
    if not any(dt == jnp.dtype(f) for f in _FLOATS):
        raise ValueError(f"residual_dtype {dt} is not supported by the kernels; use jnp.float32, "
                         f"jnp.bfloat16 or jnp.float16")
    return dt


def residual_dtypes(state_dtypes: Sequence, spike_idx: Sequence[int] = (), residual_dtype=None) -> list:
    """The dtype each state entry is stored in as a per-step residual: ``int8`` for spike entries,
    ``residual_dtype`` for floating entries whose dtype is wider than it, else the entry's own
    dtype. (Per neuron and step the residuals take ``sum(itemsize)`` bytes, plus ``xs``.)"""
    rdt = _check_residual_dtype(residual_dtype)
    out = []
    for k, dt in enumerate(state_dtypes):
        dt = jnp.dtype(dt)
        if k in spike_idx:
            out.append(jnp.dtype(jnp.int8))
        elif rdt is not None and jnp.issubdtype(dt, jnp.floating) and dt.itemsize > rdt.itemsize:
            out.append(rdt)
        else:
            out.append(dt)
    return out


# --------------------------------------------------------------------------------------------
# layout helpers (plain JAX, outside the kernels; vmap-friendly)

def _neurons(a, lead: int, tl: Tiling):
    """(*lead, *shape) -> (*lead, R, L), zero-padded."""
    a = a.reshape(a.shape[:lead] + (tl.N,))
    pad = tl.R * tl.L - tl.N
    if pad:
        a = jnp.pad(a, [(0, 0)] * lead + [(0, pad)])
    return a.reshape(a.shape[:lead] + (tl.R, tl.L))


def _time(a, tl: Tiling):
    """(T, *shape) -> (T_pad, R, L), zero-padded in both."""
    a = _neurons(a, 1, tl)
    return jnp.pad(a, [(0, tl.T_pad - tl.T), (0, 0), (0, 0)]) if tl.T_pad > tl.T else a


def _unneurons(a, lead: int, tl: Tiling, shape):
    a = a.reshape(a.shape[:lead] + (tl.R * tl.L,))[..., :tl.N]
    return a.reshape(a.shape[:lead] + tuple(shape))


def _untime(a, tl: Tiling, shape):
    return _unneurons(a[:tl.T], 1, tl, shape)


def _param_tile(a, shape, tl: Tiling):
    """A parameter broadcast to every neuron, padded with its first value (keeps pad neurons in a
    realistic range; their results are sliced away and their cotangents are zero)."""
    a = jnp.broadcast_to(a, tuple(shape)).reshape(tl.N)
    pad = tl.R * tl.L - tl.N
    if pad:
        a = jnp.concatenate([a, jnp.broadcast_to(a[:1], (pad,))])
    return a.reshape(tl.R, tl.L)


def _reduce_to(g, shape):
    """Sum a per-neuron gradient back to the parameter's shape."""
    lead = g.ndim - len(shape)
    g = jnp.sum(g, axis=tuple(range(lead))) if lead else g
    axes = tuple(k for k, n in enumerate(shape) if n == 1 and g.shape[k] != 1)
    return jnp.sum(g, axis=axes, keepdims=True) if axes else g


def _compiler_params(tl: Tiling, interpret: bool):
    if interpret:
        return None
    if tl.target == "gpu":
        from jax.experimental.pallas import triton as plgpu
        # a tile of 512 neurons = 4 warps x 32 threads x 4 neurons per thread
        return plgpu.CompilerParams(num_warps=max(1, min(8, tl.block_n // 128)), num_stages=1)
    if tl.target == "tpu":
        from jax.experimental.pallas import tpu as pltpu
        return pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary"))
    return None


def _carry_start(chunked: bool, c, carry_refs, init_refs, zero_refs=()):
    """Values of a loop carry at the start of this program's time chunk: ``(from_init, zeros)``.

    Chunked (a sequential time axis on the grid): ``carry_refs`` are output blocks that stay
    resident across the chunks (their index map ignores the chunk axis), so at chunk 0 they are
    filled from ``init_refs`` (and ``zero_refs`` zeroed) and later chunks read what the previous
    one left there. Not chunked: the values come straight from ``init_refs`` / zeros."""
    if chunked:
        @pl.when(c == 0)
        def _():
            for dst, src in zip(carry_refs, init_refs):
                dst[...] = src[...]
            for r in zero_refs:
                r[...] = jnp.zeros(r.shape, r.dtype)

        return [r[...] for r in carry_refs], [r[...] for r in zero_refs]
    return [r[...] for r in init_refs], [jnp.zeros(r.shape, r.dtype) for r in zero_refs]


def _keep_valid(valid, new, old):
    """``new`` where the step is a real one, ``old`` on a padded (masked) step."""
    return [jnp.where(valid, a, b) for a, b in zip(new, old)]


def _step_and_emit(step, p, s, x, s_dtypes, valid, out_ref, j, out_dtype):
    """One forward step inside a kernel: the new state in the carry dtypes (the old one kept on a
    padded step, ``valid`` False; ``valid`` None: no padded steps) and ``out`` written to
    ``out_ref[j]`` (when an output is wanted)."""
    ns, out = step(p, list(s), x)
    ns = [a.astype(dt) for a, dt in zip(ns, s_dtypes)]
    if valid is not None:
        ns = _keep_valid(valid, ns, s)
    if out_ref is not None:
        out_ref[j] = out.astype(out_dtype)
    return ns


def _store(refs, values):
    for r, v in zip(refs, values):
        r[...] = v


def _specs(tl: Tiling, reverse: bool = False):
    """BlockSpecs of per-neuron (R, L) and per-step (T_pad, R, L) arrays on the (tiles, chunks) grid."""
    nc = tl.n_chunks
    neur = pl.BlockSpec((tl.rb, tl.L), lambda i, c: (i, 0))
    if reverse:
        seq = pl.BlockSpec((tl.tc, tl.rb, tl.L), lambda i, c: (nc - 1 - c, i, 0))
    else:
        seq = pl.BlockSpec((tl.tc, tl.rb, tl.L), lambda i, c: (c, i, 0))
    return neur, seq


# --------------------------------------------------------------------------------------------

def neuron_loop(step: Step, params, state0: list, xs: jax.Array, spike_idx: Sequence[int] = (),
                want_out: bool = True, want_read: bool = False, out_is_last_state: bool = False, *,
                interpret: bool = False, block_n: Optional[int] = None, block_t: Optional[int] = None,
                platform: Optional[str] = None, residual_dtype=None):
    """Run ``step`` over the leading (time) axis of ``xs`` as fused Pallas kernels.

    Same contract as :func:`snnkern.kernels.neuron_loop.neuron_loop`: returns ``(final_state,
    outs or None, reads or None)``; ``reads[t]`` is ``state[-1]`` entering step t. Differentiable
    (custom VJP) w.r.t. the array leaves of ``params``, ``state0`` and ``xs``; works under
    ``jax.jit`` and ``jax.vmap`` (the batch becomes a leading grid axis).

    ``interpret``: run the kernels in the Pallas interpreter (CPU tests). ``block_n``: neurons per
    tile; ``block_t``: steps per time chunk (TPU/interpret); ``platform``: layout family to emit
    (default: see :func:`target_platform`). ``out_is_last_state`` is accepted for the call
    contract and does not change anything here (the kernels store the entering state anyway).

    ``residual_dtype``: the dtype the per-step residuals of the non-spike floating state entries
    (membranes, currents) are stored in. None (default): each entry's own dtype, an exact backward
    pass. ``jnp.bfloat16`` / ``jnp.float16``: entries wider than that are stored narrower and cast
    back when the backward kernel reads them (the exact ``state0`` is used at t = 0): half the
    residual memory of a float32 membrane, at the cost of gradient error (the step's VJP, e.g. the
    surrogate derivative at the threshold, is evaluated at the rounded membrane; measured in
    docs/kernels.md, "Membrane residual precision"). Spike entries are ``int8`` either way; the
    forward results do not depend on it. A non-float dtype raises TypeError, an unsupported float
    ValueError (float16 also on the compiled TPU kernels).

    A loop the kernels cannot take (parameters that do not broadcast against the state, an
    ineligible shape) runs the XLA loop instead, with identical results (and its own, exact,
    residuals: ``residual_dtype`` does not apply there).
    """
    r_dtype = _check_residual_dtype(residual_dtype)
    dyn, static = eqx.partition(params, eqx.is_array)
    spike_idx = tuple(sorted(set(int(k) for k in spike_idx)))
    state0 = list(state0)
    shape = tuple(xs.shape[1:])
    plat = "cpu" if interpret else {"gpu": "gpu", "tpu": "tpu"}.get(target_platform(platform), "cpu")
    why = eligible(xs.shape, xs.dtype, plat)
    if why is None and not params_broadcast(dyn, shape):
        why = "a parameter does not broadcast against the neuron shape"
    if why is None and any(tuple(s.shape) != shape for s in state0):
        why = "a state entry's shape differs from the input's neuron shape"
    if why is not None:
        return _fallback(why, step, params, state0, xs, spike_idx, want_out, want_read, out_is_last_state)

    if interpret and platform is None:
        # interpreted: the GPU layout (small power-of-2 tiles), or the TPU one if time is chunked
        target = "tpu" if block_t is not None else "gpu"
    else:
        target = target_platform(platform)
    if target == "tpu" and not interpret and r_dtype == jnp.dtype(jnp.float16):
        raise ValueError("residual_dtype float16 is not supported by the TPU (Mosaic) kernels; use jnp.bfloat16")
    tl = tiling(xs.shape[0], math.prod(shape), target, block_n, block_t)
    leaves, treedef = jax.tree.flatten(dyn)
    n_s = len(state0)
    s_dtypes = [s.dtype for s in state0]
    x_dtype = xs.dtype

    def combine(vals):
        return eqx.combine(jax.tree.unflatten(treedef, list(vals)), static)

    # dtype/shape of the step's output, from an abstract evaluation of one step
    out_aval = jax.eval_shape(lambda d, s, x: step(combine(d), s, x)[1], leaves, state0, xs[0])
    if tuple(out_aval.shape) != shape:
        return _fallback(f"the step's output shape {tuple(out_aval.shape)} is not the neuron shape {shape}",
                         step, params, state0, xs, spike_idx, want_out, want_read, out_is_last_state)
    out_dtype = out_aval.dtype
    res_dtypes = residual_dtypes(s_dtypes, spike_idx, r_dtype)
    # entries whose residual is not the state itself (int8 spikes, narrowed floats): at t = 0 the
    # backward kernel uses the exact state0 instead
    inexact = tuple(k for k in range(n_s) if jnp.dtype(res_dtypes[k]) != jnp.dtype(s_dtypes[k]))

    def fwd_call(p_t, s0_t, x_t, keep: bool):
        return _forward_call(step, combine, tl, n_s, s_dtypes, out_dtype, res_dtypes, len(leaves), want_out,
                             want_read, keep, interpret)(*p_t, *s0_t, x_t)

    def tiles_in(d, s0, x):
        p_t = [_param_tile(a, shape, tl) for a in d]
        s0_t = [_neurons(s, 0, tl) for s in s0]
        return p_t, s0_t, _time(x, tl)

    def untile_fwd(res):
        sT = [_unneurons(r, 0, tl, shape) for r in res[:n_s]]
        k = n_s
        outs = reads = None
        if want_out:
            outs, k = _untime(res[k], tl, shape), k + 1
        if want_read:
            reads, k = _untime(res[k], tl, shape), k + 1
        return sT, outs, reads, list(res[k:])

    @jax.custom_vjp
    def loop(d, s0, x):
        sT, outs, reads, _ = untile_fwd(fwd_call(*tiles_in(d, s0, x), keep=False))
        return sT, outs, reads

    def loop_fwd(d, s0, x):
        p_t, s0_t, x_t = tiles_in(d, s0, x)
        sT, outs, reads, res_t = untile_fwd(fwd_call(p_t, s0_t, x_t, keep=True))
        # residuals stay tiled: the backward kernel reads them in the same layout
        return (sT, outs, reads), (d, p_t, s0_t, x_t, res_t)

    def loop_bwd(res, g):
        d, p_t, s0_t, x_t, res_t = res
        g_sT, g_outs, g_reads = g
        ins = [*p_t, *s0_t, *res_t, x_t]
        if want_out:
            ins.append(_time(g_outs.astype(out_dtype), tl))
        if want_read:
            ins.append(_time(g_reads.astype(s_dtypes[-1]), tl))
        ins += [_neurons(gs.astype(s_dtypes[k]), 0, tl) for k, gs in enumerate(g_sT)]
        outs = _backward_call(step, combine, tl, n_s, s_dtypes, x_dtype, out_dtype, res_dtypes, inexact,
                              [a.dtype for a in p_t], want_out, want_read, interpret)(*ins)
        g_s0 = [_unneurons(o, 0, tl, shape) for o in outs[:n_s]]
        g_x = _untime(outs[n_s], tl, shape)
        g_p = [_reduce_to(_unneurons(o, 0, tl, shape), a.shape).astype(a.dtype)
               for o, a in zip(outs[n_s + 1:], d)]
        return g_p, g_s0, g_x

    loop.defvjp(loop_fwd, loop_bwd)
    sT, outs, reads = loop(leaves, state0, xs)
    return sT, outs, reads


def _fallback(why, step, params, state0, xs, spike_idx, want_out, want_read, out_is_last_state):
    """The XLA loop (same results), logged - or a FallbackError in strict mode."""
    from .dispatch import fallback
    fallback("pallas neuron loop", "xla", why)
    return xla_neuron_loop(step, params, state0, xs, spike_idx, want_out=want_out, want_read=want_read,
                           out_is_last_state=out_is_last_state)


def _forward_call(step, combine, tl: Tiling, n_s, s_dtypes, out_dtype, res_dtypes, n_p, want_out, want_read,
                  keep, interpret):
    neur, seq = _specs(tl)
    chunked = tl.n_chunks > 1
    masked = tl.T_pad > tl.T

    def kernel(*refs):
        p_refs = refs[:n_p]
        s0_refs = refs[n_p:n_p + n_s]
        x_ref = refs[n_p + n_s]
        o = list(refs[n_p + n_s + 1:])
        sT_refs, o = o[:n_s], o[n_s:]
        out_ref = o.pop(0) if want_out else None
        read_ref = o.pop(0) if want_read else None
        res_refs = o if keep else []

        p = combine([r[...] for r in p_refs])
        c = pl.program_id(1) if chunked else 0
        s, _ = _carry_start(chunked, c, sT_refs, s0_refs)   # the final-state blocks carry the state

        def body(j, s):
            if keep:
                for k in range(n_s):
                    res_refs[k][j] = s[k].astype(res_dtypes[k])
            if want_read:
                read_ref[j] = s[-1]
            return _step_and_emit(step, p, s, x_ref[j], s_dtypes, (c * tl.tc + j < tl.T) if masked else None,
                                  out_ref, j, out_dtype)

        _store(sT_refs, jax.lax.fori_loop(0, tl.tc, body, s))

    R, L, Tp = tl.R, tl.L, tl.T_pad
    out_shape = [jax.ShapeDtypeStruct((R, L), dt) for dt in s_dtypes]
    out_specs = [neur] * n_s
    if want_out:
        out_shape.append(jax.ShapeDtypeStruct((Tp, R, L), out_dtype))
        out_specs.append(seq)
    if want_read:
        out_shape.append(jax.ShapeDtypeStruct((Tp, R, L), s_dtypes[-1]))
        out_specs.append(seq)
    if keep:
        out_shape += [jax.ShapeDtypeStruct((Tp, R, L), dt) for dt in res_dtypes]
        out_specs += [seq] * n_s
    return pl.pallas_call(
        kernel, out_shape=out_shape, grid=(tl.n_tiles, tl.n_chunks),
        in_specs=[neur] * (n_p + n_s) + [seq], out_specs=out_specs,
        compiler_params=_compiler_params(tl, interpret), interpret=interpret, name="snnkern_neuron_fwd")


def _backward_call(step, combine, tl: Tiling, n_s, s_dtypes, x_dtype, out_dtype, res_dtypes, inexact,
                   p_dtypes, want_out, want_read, interpret):
    neur, seq = _specs(tl, reverse=True)
    n_p = len(p_dtypes)
    chunked = tl.n_chunks > 1
    masked = tl.T_pad > tl.T
    nc = tl.n_chunks

    def kernel(*refs):
        refs = list(refs)
        p_refs = [refs.pop(0) for _ in range(n_p)]
        s0_refs = [refs.pop(0) for _ in range(n_s)]
        res_refs = [refs.pop(0) for _ in range(n_s)]
        x_ref = refs.pop(0)
        g_out_ref = refs.pop(0) if want_out else None
        g_read_ref = refs.pop(0) if want_read else None
        g_sT_refs = [refs.pop(0) for _ in range(n_s)]
        g_s0_refs = [refs.pop(0) for _ in range(n_s)]
        g_x_ref = refs.pop(0)
        g_p_refs = refs

        p_vals = [r[...] for r in p_refs]
        s0 = [r[...] for r in s0_refs]
        c = pl.program_id(1) if chunked else 0
        chunk = nc - 1 - c          # the chunk this grid step works on (reverse time)
        # the g_state0 / g_params blocks carry the cotangents across the chunks
        g_s, g_p = _carry_start(chunked, c, g_s0_refs, g_sT_refs, g_p_refs)

        def f(d, s, x):
            return step(combine(d), s, x)

        def body(i, carry):
            g_s, g_p = carry
            j = tl.tc - 1 - i
            t = chunk * tl.tc + j
            s = []
            for k in range(n_s):
                v = res_refs[k][j].astype(s_dtypes[k])
                if k in inexact:       # int8 0/1 or a narrowed float: the user's exact state at t = 0
                    v = jnp.where(t == 0, s0[k], v)
                s.append(v)
            x = x_ref[j]
            g_out = g_out_ref[j] if want_out else jnp.zeros(x.shape, out_dtype)
            _, vjp = jax.vjp(f, p_vals, s, x)
            dd, ds, dx = vjp(([a.astype(dt) for a, dt in zip(g_s, s_dtypes)], g_out))
            ds = [a.astype(dt) for a, dt in zip(ds, s_dtypes)]
            if want_read:
                ds[-1] = ds[-1] + g_read_ref[j].astype(s_dtypes[-1])
            dx = dx.astype(jnp.float32)
            if masked:
                valid = t < tl.T
                ds = _keep_valid(valid, ds, g_s)
                dd = _keep_valid(valid, dd, [jnp.zeros_like(a) for a in dd])
                dx = jnp.where(valid, dx, jnp.zeros_like(dx))
            g_x_ref[j] = dx.astype(x_dtype)
            return ds, [a + b.astype(a.dtype) for a, b in zip(g_p, dd)]

        g_s, g_p = jax.lax.fori_loop(0, tl.tc, body, (g_s, g_p))
        _store(g_s0_refs, g_s)
        _store(g_p_refs, g_p)

    R, L, Tp = tl.R, tl.L, tl.T_pad
    in_specs = [neur] * (n_p + n_s) + [seq] * n_s + [seq]
    if want_out:
        in_specs.append(seq)
    if want_read:
        in_specs.append(seq)
    in_specs += [neur] * n_s
    out_shape = ([jax.ShapeDtypeStruct((R, L), dt) for dt in s_dtypes]
                 + [jax.ShapeDtypeStruct((Tp, R, L), x_dtype)]
                 + [jax.ShapeDtypeStruct((R, L), dt) for dt in p_dtypes])
    out_specs = [neur] * n_s + [seq] + [neur] * n_p
    return pl.pallas_call(
        kernel, out_shape=out_shape, grid=(tl.n_tiles, tl.n_chunks), in_specs=in_specs,
        out_specs=out_specs, compiler_params=_compiler_params(tl, interpret), interpret=interpret,
        name="snnkern_neuron_bwd")
