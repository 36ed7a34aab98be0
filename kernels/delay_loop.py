"""A neuron fed back its own output ``d`` steps late: the loop of a feedback cycle of affine
stateless layers through one neuron (XLA), custom VJP, batched under ``vmap`` by a custom rule.

The neuron's input current is ``I_t = c_t + W s_{t-d}`` (``s`` the neuron's output state,
``state[-1]``; ``W`` the cycle's Linear weight, or the identity when it has none; ``c`` every other
part of the current, hoisted before the loop). The loop carries the last ``d`` outputs: the state
entering step t holds ``s_{t-1}``, and a ring of ``d - 1`` arrays holds ``s_{t-d}, ..., s_{t-2}``,
seeded with zeros (``s_{-1}`` is the initial state; what the cycle's layers started from is
part of ``c``, docs/plans.md "How cycles run"). With ``d = 1`` it is the recurrent compound's
recurrence (:func:`.neuron_loop.recurrent_batched`) without a bias.

The forward stores the state entering each step without its last entry (spikes as ``bool``) and
the one-step-shifted outputs ``reads`` (a primal output); with the input ``c`` that is all the
backward needs: a reverse loop of each step's VJP, the current ``c_t + W s_{t-d}`` recomputed (not
stored: one (B, T, n) array less for one small GEMM per step). The recurrent cotangent ``dI_t W``
of ``s_{t-d}`` waits in a ring of ``d - 1`` arrays until the reverse loop reaches the step that made
``s_{t-d}``; ``dW`` is one GEMM after the loop, over the ``d``-shifted outputs.
"""
from __future__ import annotations

from typing import Optional, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.custom_batching import custom_vmap

from .common import compress, restore, vmap_is_innermost
from .neuron_loop import Grads, Step, scan_axis1

__all__ = ["delay_batched", "delay_loop"]


def _feed(w, r):
    """``W r`` for a batch of rows ``r`` (the identity without a weight)."""
    return r if w is None else r @ w.T


def delay_batched(step: Step, dyn, static, w: Optional[jax.Array], state0: list, c: jax.Array, delay: int,
                  spike_idx: Sequence[int] = (), want_out: bool = True):
    """The batched delay-``delay`` loop, batch-major: ``state0`` entries (B, ...), ``c`` (B, T, ...),
    ``w`` (n, n) or None (then ``c`` may have any feature shape). Returns ``(final_state, outs,
    reads)``: ``outs`` the step outputs (None unless ``want_out``), ``reads[:, t]`` = ``s_{t-1}``
    (``state0[-1]`` first), both (B, T, ...). Gradients flow to ``dyn``, ``w``, ``state0`` and ``c``."""
    spike_idx, d = tuple(spike_idx), int(delay)
    if d < 1:
        raise ValueError(f"delay_batched: the delay must be >= 1, got {delay}")
    T = c.shape[1]
    grads = Grads(step, static, dyn, (c.shape[0],) + c.shape[2:], batched=True)

    def run(dd, w, s0, x, keep):
        ring0 = [jnp.zeros_like(s0[-1]) for _ in range(d - 1)]   # s_{-d} .. s_{-2}

        def body(carry, t, ct):
            s, ring = carry
            i_t = ct + _feed(w, ring[0] if ring else s[-1]).astype(ct.dtype)
            ns, out = grads.apply(dd, s, i_t)
            ns = [a.astype(o.dtype) for a, o in zip(ns, s)]
            return (ns, (ring[1:] + [s[-1]]) if ring else ring), (out if want_out else None, s[-1],
                                                                  compress(s[:-1], spike_idx) if keep else None)

        (sT, _), ys = scan_axis1(body, (list(s0), ring0), x, T)
        return sT, ys

    @jax.custom_vjp
    def loop(dd, w, s0, x):
        sT, (outs, reads, _) = run(dd, w, s0, x, False)
        return sT, outs, reads

    def fwd(dd, w, s0, x):
        sT, (outs, reads, s_in) = run(dd, w, s0, x, True)
        return (sT, outs, reads), (dd, w, list(s0), s_in, x, reads)

    def bwd(res, g):
        dd, w, s0, s_in, x, reads = res
        g_sT, g_outs, g_reads = g

        def body(carry, t, inp):
            g_s, g_d, pending = carry           # pending: dI_{t+1} W, ..., dI_{t+d-1} W
            s, ct, rd, g_out, g_rd = inp
            s = restore(s, s0, t, spike_idx) + [rd]
            # I_t again (cheaper than storing it): s_{t-d} = reads[:, t-d+1], the zero seeds before
            back_t = jax.lax.dynamic_index_in_dim(reads, jnp.maximum(t - d + 1, 0), axis=1, keepdims=False)
            back_t = jnp.where(t >= d - 1, back_t, jnp.zeros_like(back_t))
            i_t = ct + _feed(w, back_t).astype(ct.dtype)
            cot_out = g_out if want_out else jnp.zeros_like(i_t, dtype=g_s[-1].dtype)
            ddd, ds, di = grads.vjp(dd, s, i_t, (g_s, cot_out))
            back = _feed(None if w is None else w.T, di)    # dI_t W: the cotangent of s_{t-d}
            ds = list(ds)
            if pending:   # s_{t-1} fed I_{t+d-1}
                ds[-1] = ds[-1] + pending[-1].astype(ds[-1].dtype) + g_rd
                pending = [back] + pending[:-1]
            else:
                ds[-1] = ds[-1] + back.astype(ds[-1].dtype) + g_rd
            return (ds, jax.tree.map(jnp.add, g_d, ddd), pending), di

        pending0 = [jnp.zeros_like(x[:, 0]) for _ in range(d - 1)]
        (g_s0, g_d, _), g_i = scan_axis1(body, (list(g_sT), grads.zeros(dd), pending0),
                                          (s_in, x, reads, g_outs, g_reads), T, reverse=True)
        g_w = None
        if w is not None:
            # I_t = c_t + W s_{t-d}, s_{t-d} = reads[:, t-d+1]; before step d-1 the ring seeds are zeros
            g_w = jnp.einsum("btn,btm->nm", g_i[:, d - 1:], reads[:, :T - d + 1].astype(g_i.dtype)).astype(w.dtype)
        return grads.finish(g_d, dd), g_w, g_s0, g_i.astype(c.dtype)

    loop.defvjp(fwd, bwd)
    return loop(dyn, w, list(state0), c)


def delay_loop(step: Step, params, state0: list, c: jax.Array, w: Optional[jax.Array], delay: int,
               spike_idx: Sequence[int] = (), want_out: bool = True):
    """A neuron driven by ``I_t = c_t + W s_{t-delay}`` (``s`` = ``state[-1]``, ``s_{-1}`` =
    ``state0[-1]``, zeros before), one sample: ``c`` (T, ...). Returns ``(final_state, outs,
    reads)`` (see :func:`delay_batched`). Under ``jax.vmap`` a custom batching rule runs one
    batch-major loop over the whole batch (``s @ W^T`` one (B, n) x (n, n) GEMM per step, ``dW`` one
    GEMM over time and batch), as the recurrent loop does (:mod:`.recurrent`)."""
    dyn, static = eqx.partition(params, eqx.is_array)
    spike_idx = tuple(spike_idx)
    ws = () if w is None else (w,)   # a pytree custom_vmap batches (None has no leaves either way)

    def impl(d, ww, s0, x):
        return delay_batched(step, d, static, ww[0] if ww else None, s0, x, delay, spike_idx, want_out)

    def one(d, ww, s0, x):
        sT, outs, reads = impl(d, ww, [s[None] for s in s0], x[None])
        return [s[0] for s in sT], (None if outs is None else outs[0]), reads[0]

    loop = custom_vmap(one)

    @loop.def_vmap
    def _batched(axis_size, in_batched, d, ww, s0, x):
        d_b, w_b, s0_b, x_b = in_batched
        if any(jax.tree.leaves(d_b)) or any(jax.tree.leaves(w_b)):
            # per-example weights (an ensemble): plain vmap of the one-sample loop
            axes = jax.tree.map(lambda t: 0 if t else None, (d_b, w_b, s0_b, x_b))
            out = jax.vmap(one, in_axes=axes)(d, ww, s0, x)
        else:
            s0 = [s if sb else jnp.broadcast_to(s, (axis_size,) + s.shape) for s, sb in zip(s0, s0_b)]
            x = x if x_b else jnp.broadcast_to(x, (axis_size,) + x.shape)
            out = impl(d, ww, s0, x)       # batch-major (B, T, ...) in and out
        return out, jax.tree.map(lambda _: True, out)

    if not vmap_is_innermost():
        # no vmap, or vmap outside an autodiff transform (per-example gradients): the one-sample VJP
        return one(dyn, ws, list(state0), c)
    return loop(dyn, ws, list(state0), c)

