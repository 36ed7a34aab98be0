"""The native neuron loop: :func:`native_neuron_loop`, the contract of ``kernels/neuron_loop.py``'s
``neuron_loop`` with the forward and backward loops compiled from the step (``generate.py``).

Residual policy (as the XLA loop): the forward stores the state entering each step, spike entries
as ``bool``; the last entry is not stored when the reads (``reads[t]``) or the outputs
(``outs[t-1]``, when the output is the last state entry) already hold it; at t = 0 the backward
uses the exact initial state. Parameter cotangents are accumulated per neuron inside the loop and
reduced to the parameter shapes after the call (``reduce_to``).

Under ``vmap`` the FFI call broadcasts every operand to the batch (``vmap_method="broadcast_all"``):
the kernel takes the leading axes as more rows of neurons (parameters are passed per neuron, so a
batch of them is a batch like any other).
"""
from __future__ import annotations

from typing import Optional, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..common import params_broadcast, reduce_to
from ..loop_builder import custom_loop
from .build import NativeUnavailable, load, native_unavailable
from .codegen import NativeUnsupported
from .generate import check_elementwise, source, trace

__all__ = ["native_neuron_loop", "native_unsupported", "kernel_targets"]


def _aval(a):
    """Shape and dtype of an array, a tracer or a ``jax.ShapeDtypeStruct`` (the planner's avals)."""
    return jax.ShapeDtypeStruct(tuple(jnp.shape(a)), jnp.dtype(a.dtype))


def _avals(state0, xs):
    x = _aval(xs)
    return [_aval(s) for s in state0], jax.ShapeDtypeStruct(x.shape[1:], x.dtype)


def kernel_targets(step, params, state0: Sequence, xs):
    """``(forward target, backward target, traced)`` of ``step`` at these operands: generated,
    compiled (or loaded from the cache) and registered. Raises :class:`NativeUnsupported` /
    :class:`NativeUnavailable` with the reason."""
    dyn, static = eqx.partition(params, eqx.is_array)
    dyn = jax.tree.map(_aval, dyn)
    s_avals, x_aval = _avals(state0, xs)
    for s in s_avals:
        if s.shape != x_aval.shape:
            raise NativeUnsupported(f"a state entry of shape {s.shape} for an input step of shape {x_aval.shape}")
    if not params_broadcast(dyn, x_aval.shape):
        raise NativeUnsupported(f"a parameter does not broadcast elementwise to the neurons {x_aval.shape}")
    why = native_unavailable()
    if why is not None:
        raise NativeUnavailable(why)
    check_elementwise(step, static, dyn, s_avals, x_aval)
    tr = trace(step, static, dyn, s_avals, x_aval)
    fwd, bwd = load(source(tr))
    return fwd, bwd, tr


def native_unsupported(step, params, state0: Sequence, xs) -> Optional[str]:
    """None if ``step`` runs natively at these operands (compiling it now), else why not."""
    try:
        kernel_targets(step, params, state0, xs)
    except (NativeUnsupported, NativeUnavailable) as e:
        return str(e)
    return None


def native_neuron_loop(step, params, state0: list, xs, spike_idx: Sequence[int] = (), want_out: bool = True,
                       want_read: bool = False, out_is_last_state: bool = False, kernel=None):
    """``(final_state, outs, reads)`` as ``kernels.neuron_loop.neuron_loop`` returns them, from the
    native loops (custom VJP; works under ``jit``, ``vmap`` and ``grad``). ``kernel``: what
    :func:`kernel_targets` returned for these operands (the planner's, so the step is not traced again)."""
    state0, xs = [jnp.asarray(s) for s in state0], jnp.asarray(xs)
    fwd_t, bwd_t, tr = kernel if kernel is not None else kernel_targets(step, params, state0, xs)
    dyn, static = eqx.partition(params, eqx.is_array)
    shape, dtype = xs.shape[1:], xs.dtype
    ns = len(state0)
    last_from = 1 if want_read else 2 if (want_out and out_is_last_state) else 0
    keep = [k for k in range(ns) if not (last_from and k == ns - 1)]
    attrs = dict(core_rank=np.int64(xs.ndim), want_out=np.int64(want_out), want_read=np.int64(want_read),
                 keep_mask=np.int64(sum(1 << k for k in keep)),
                 spike_mask=np.int64(sum(1 << k for k in set(spike_idx) if 0 <= k < ns)))

    def per_neuron(d):
        return [jnp.broadcast_to(a, shape).astype(dtype) for a in jax.tree.leaves(d)]

    def run(d, s0, x, with_res: bool):
        seq = jax.ShapeDtypeStruct(x.shape, dtype)
        outs = [jax.ShapeDtypeStruct(shape, dtype)] * ns + [seq] * (int(want_out) + int(want_read))
        if with_res:
            outs += [jax.ShapeDtypeStruct(x.shape, jnp.bool_ if k in spike_idx else dtype) for k in keep]
        kw = dict(attrs, keep_mask=attrs["keep_mask"] if with_res else np.int64(0))
        got = jax.ffi.ffi_call(fwd_t, outs, vmap_method="broadcast_all")(*per_neuron(d), *s0, x, **kw)
        sT, rest = list(got[:ns]), list(got[ns:])
        o = rest.pop(0) if want_out else None
        r = rest.pop(0) if want_read else None
        return sT, o, r, rest

    def forward(d, s0, x, keep):
        sT, o, r, res = run(d, s0, x, keep)
        last = [r] if last_from == 1 else [o] if last_from == 2 else []
        return (sT, o, r), ((d, s0, x, res, last) if keep else None)

    def bwd(saved, g):
        d, s0, x, res, last = saved
        g_sT, g_o, g_r = g
        cots = [jnp.asarray(a, dtype) for a in g_sT] + ([g_o.astype(dtype)] if want_out else []) \
            + ([g_r.astype(dtype)] if want_read else [])
        outs = [jax.ShapeDtypeStruct(shape, dtype)] * (tr.np + ns) + [jax.ShapeDtypeStruct(x.shape, dtype)]
        got = jax.ffi.ffi_call(bwd_t, outs, vmap_method="broadcast_all")(
            *per_neuron(d), *s0, x, *res, *last, *cots, **attrs, last_from=np.int64(last_from))
        g_p = [reduce_to(g, a.shape).astype(a.dtype) for g, a in zip(got[:tr.np], jax.tree.leaves(d))]
        g_d = jax.tree.unflatten(jax.tree.structure(d), g_p)
        return g_d, [g.astype(s.dtype) for g, s in zip(got[tr.np:tr.np + ns], s0)], got[-1].astype(x.dtype)

    return custom_loop(forward, bwd)(dyn, state0, xs)
