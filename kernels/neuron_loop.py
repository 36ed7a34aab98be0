"""Time loops over a neuron step function, with a hand-written backward pass (XLA backend).

``step(params, state, x) -> (new_state, out)`` is the neuron's one written-once step function
(``state`` a list of arrays, ``params`` a dict whose array leaves broadcast elementwise against
the state). The forward pass is a ``lax.scan``; the backward pass is a reverse-time scan that
re-runs each step's VJP from what the forward stored:

- the state entering each step (spike components as ``bool``: they are exactly 0/1; the user's
  initial state is kept exactly, apart),
- the input current of each step.

That is all a step needs; autodiff of a scan keeps every intermediate of every step instead.
Parameter gradients are accumulated **per neuron** in the carry and reduced once after the loop
(a reduction inside each step costs more than the step itself on CPU).

:func:`recurrent_batched` adds a recurrent weight: ``I_t = ff_t + (W_rec r_{t-1} + b_rec)`` with
``r`` the neuron's output state; ``dW_rec`` and ``db_rec`` are one GEMM / one sum after the loop
(:mod:`.recurrent` wraps it for one sample and batches it under ``vmap``).
"""
from __future__ import annotations

from typing import Callable, Sequence, Tuple

import equinox as eqx
import jax
import jax.numpy as jnp

from .common import compress, current, params_broadcast, reduce_to, restore

__all__ = ["neuron_loop", "recurrent_batched", "scan_loop", "scan_axis1", "Grads"]

Step = Callable[[dict, list, jax.Array], Tuple[list, jax.Array]]


def scan_loop(step: Step, params, state0: list, xs: jax.Array):
    """Plain ``lax.scan`` of ``step`` (autodiff backward): ``(final_state, outs)``."""

    def body(s, x):
        return step(params, s, x)

    return jax.lax.scan(body, list(state0), xs)


class Grads:
    """Per-step VJP of ``step`` whose parameter cotangents are per neuron when possible.

    ``batched``: the state and input carry a leading batch axis that ``step`` does not know about
    (the batched recurrent loop): ``step`` runs under ``vmap`` over it, and the per-neuron
    parameter cotangents are per (sample, neuron), reduced once in :meth:`finish` like the rest."""

    def __init__(self, step: Step, static, dyn, x_shape, batched: bool = False):
        self.step, self.static, self.batched = step, static, batched
        self.elementwise = params_broadcast(dyn, x_shape)
        self.shape = tuple(x_shape)

    def apply(self, dyn, s, x, per_row_params: bool = False):
        """``step`` at the array leaves ``dyn`` (batched: over the rows, the parameters shared, or
        one per row when ``per_row_params``)."""
        def f(d, ss, xx):
            return self.step(eqx.combine(d, self.static), ss, xx)

        if not self.batched:
            return f(dyn, s, x)
        return jax.vmap(f, in_axes=(0 if per_row_params else None, 0, 0))(dyn, s, x)

    def zeros(self, dyn):
        if self.elementwise:
            return jax.tree.map(lambda a: jnp.zeros(self.shape, a.dtype), dyn)
        return jax.tree.map(jnp.zeros_like, dyn)

    def vjp(self, dyn, s, x, cot):
        if self.elementwise:
            dyn = jax.tree.map(lambda a: jnp.broadcast_to(a, self.shape), dyn)
        _, f = jax.vjp(lambda d, ss, xx: self.apply(d, ss, xx, self.elementwise), dyn, s, x)
        return f(cot)

    def finish(self, g, dyn):
        if self.elementwise:
            return jax.tree.map(lambda gg, a: reduce_to(gg, a.shape).astype(a.dtype), g, dyn)
        return g


def neuron_loop(step: Step, params, state0: list, xs: jax.Array, spike_idx: Sequence[int] = (),
                want_out: bool = True, want_read: bool = False, out_is_last_state: bool = False):
    """Run ``step`` over the leading (time) axis of ``xs``: ``(final_state, outs, reads)``.

    ``outs[t]`` is what step t returned (None unless ``want_out``); ``reads[t]`` is the value a
    consumer reads at step t, i.e. the last state entry *entering* step t (``state0[-1]`` first) -
    the one-step-shifted output sequence, emitted directly so that no shifted copy is made (None
    unless ``want_read``). Gradients flow to the array leaves of ``params``, to ``state0`` and to
    ``xs``; non-array leaves of ``params`` (Python-float thresholds) are constants.
    ``out_is_last_state``: the step's output equals its new state's last entry (true of every
    snnkern neuron), so the outputs can stand in for that entry in the backward pass.
    """
    dyn, static = eqx.partition(params, eqx.is_array)
    spike_idx = tuple(spike_idx)

    # The last state entry entering step t is reads[t], or outs[t-1]: keep those primal outputs as
    # the residual instead of a second (compressed) copy of the spikes.
    last_from = "reads" if want_read else "outs" if (want_out and out_is_last_state) else None
    last_from_reads = last_from is not None

    def run(d, s0, x, keep):
        p = eqx.combine(d, static)

        def body(s, xt):
            ns, out = step(p, s, xt)
            kept = compress(s[:-1] if last_from_reads else s, spike_idx) if keep else None
            return ns, (out if want_out else None, s[-1] if want_read else None, kept)

        return jax.lax.scan(body, list(s0), x)

    @jax.custom_vjp
    def loop(d, s0, x):
        sT, (outs, reads, _) = run(d, s0, x, False)
        return sT, outs, reads

    def fwd(d, s0, x):
        sT, (outs, reads, s_in) = run(d, s0, x, True)
        return (sT, outs, reads), (d, list(s0), s_in, x, reads, outs if last_from == "outs" else None)

    def bwd(res, g):
        d, s0, s_in, x, reads, outs = res
        g_sT, g_outs, g_reads = g
        grads = Grads(step, static, d, x.shape[1:])
        # the step's output may differ in shape from its input (a neuron with a layer inside)
        out_aval = jax.eval_shape(lambda dd, ss, xx: step(eqx.combine(dd, static), ss, xx)[1], d, list(s0), x[0])

        def body(carry, inp):
            g_s, g_d = carry
            t, s, xt, g_out, g_read, rd = inp
            if last_from == "outs":
                prev = jax.lax.dynamic_index_in_dim(outs, jnp.maximum(t - 1, 0), keepdims=False)
                rd = jnp.where(t == 0, s0[-1], prev.astype(s0[-1].dtype))
            s = restore(s, s0, t, spike_idx) + ([rd] if last_from_reads else [])
            cot_out = g_out if want_out else jnp.zeros(out_aval.shape, g_s[-1].dtype)
            dd, ds, dx = grads.vjp(d, s, xt, (g_s, cot_out))
            if want_read:
                ds = list(ds)
                ds[-1] = ds[-1] + g_read
            return (ds, jax.tree.map(jnp.add, g_d, dd)), dx

        steps = jnp.arange(x.shape[0])
        (g_s0, g_d), g_x = jax.lax.scan(body, (list(g_sT), grads.zeros(d)),
                                        (steps, s_in, x, g_outs, g_reads, reads), reverse=True)
        return grads.finish(g_d, d), g_s0, g_x

    loop.defvjp(fwd, bwd)
    return loop(dyn, list(state0), xs)


def scan_axis1(body, init, xs, length: int, reverse: bool = False):
    """``lax.scan`` over axis 1 of batch-major (B, T, ...) sequences: ``body(carry, t, xs[:, t])
    -> (carry, ys_t)``; returns ``(carry, ys)`` with ``ys`` stacked on axis 1. Step t is read with a
    dynamic slice and written in place into a carried buffer (what scan does on axis 0), so no
    transposed copy of a sequence is made."""
    def at(a, t):
        return jax.lax.dynamic_index_in_dim(a, t, axis=1, keepdims=False)

    x0 = jax.tree.map(lambda a: at(a, 0), xs)
    y_aval = jax.eval_shape(lambda c, x: body(c, jnp.int32(0), x)[1], init, x0)
    bufs = jax.tree.map(lambda v: jnp.zeros((v.shape[0], length) + tuple(v.shape[1:]), v.dtype), y_aval)

    def step(carry, t):
        c, bufs = carry
        c, y = body(c, t, jax.tree.map(lambda a: at(a, t), xs))
        bufs = jax.tree.map(lambda buf, v: jax.lax.dynamic_update_index_in_dim(buf, v.astype(buf.dtype), t, axis=1),
                            bufs, y)
        return (c, bufs), None

    (c, bufs), _ = jax.lax.scan(step, (init, bufs), jnp.arange(length), reverse=reverse)
    return c, bufs


def recurrent_batched(step: Step, dyn, static, w, b, state0: list, ff: jax.Array, spike_idx: Sequence[int] = (),
                      want_out: bool = True, want_cur: bool = True):
    """The batched recurrent loop (XLA), batch-major: ``state0`` entries (B, n), ``ff`` (B, T, n).

    Returns ``(final_state, outs, I, reads)`` with (B, T, n) sequences (``outs`` None unless
    ``want_out``, ``I`` None unless ``want_cur``; it is a residual either way); custom VJP. The forward
    stores the entering state without its last entry (spikes as bool; the last entry is ``reads``,
    a primal output) and ``I``; the backward is a reverse loop of each step's VJP plus the
    recurrent cotangent ``dI_t @ W``, then ``dW = sum_{b,t} dI_t r_{t-1}^T`` as one GEMM.
    The loops read step t as ``[:, t]`` and write their sequences in place (:func:`scan_axis1`),
    so the batch-major sequences vmap hands over are never transposed.
    """
    spike_idx = tuple(spike_idx)
    T = ff.shape[1]
    # ``step`` over the batch rows (vmap: no assumption that it is elementwise); per-(sample,
    # neuron) parameter cotangents, reduced once after the loop
    grads = Grads(step, static, dyn, (ff.shape[0],) + ff.shape[2:], batched=True)

    def run(d, w, b, s0, x, keep):
        # (I_t could overwrite ff_t in ff's buffer, saving one (B, T, n) array; measured on XLA CPU
        # it makes the training step 2x slower: the carried buffer that is read and updated in the
        # same iteration gets copied)
        def body(s, t, fft):
            i_t = current(w, b, s[-1], fft)
            ns, out = grads.apply(d, s, i_t)
            ns = [a.astype(o.dtype) for a, o in zip(ns, s)]
            return ns, (out if want_out else None, i_t if keep or want_cur else None, s[-1],
                        compress(s[:-1], spike_idx) if keep else None)

        return scan_axis1(body, list(s0), x, T)

    @jax.custom_vjp
    def loop(d, w, b, s0, x):
        sT, (outs, cur, reads, _) = run(d, w, b, s0, x, False)
        return sT, outs, cur if want_cur else None, reads

    def fwd(d, w, b, s0, x):
        sT, (outs, cur, reads, s_in) = run(d, w, b, s0, x, True)
        return (sT, outs, cur if want_cur else None, reads), (d, w, b, list(s0), s_in, cur, reads)

    def bwd(res, g):
        d, w, b, s0, s_in, cur, reads = res
        g_sT, g_outs, g_cur, g_reads = g

        def body(carry, t, inp):
            g_s, g_d = carry
            s, i_t, rd, g_out, g_i_extra, g_rd = inp
            s = restore(s, s0, t, spike_idx) + [rd]
            cot_out = g_out if want_out else jnp.zeros_like(i_t, dtype=g_s[-1].dtype)
            dd, ds, di = grads.vjp(d, s, i_t, (g_s, cot_out))
            if g_i_extra is not None:
                di = di + g_i_extra
            ds = list(ds)
            ds[-1] = ds[-1] + (di @ w).astype(ds[-1].dtype) + g_rd   # r_{t-1} fed I_t through w, and was read
            return (ds, jax.tree.map(jnp.add, g_d, dd)), di

        (g_s0, g_d), g_i = scan_axis1(body, (list(g_sT), grads.zeros(d)),
                                       (s_in, cur, reads, g_outs, g_cur, g_reads), T, reverse=True)
        g_w = jnp.einsum("btn,btm->nm", g_i, reads.astype(g_i.dtype)).astype(w.dtype)
        g_b = None if b is None else jnp.sum(g_i, axis=(0, 1)).astype(b.dtype)
        return grads.finish(g_d, d), g_w, g_b, g_s0, g_i.astype(ff.dtype)

    loop.defvjp(fwd, bwd)
    return loop(dyn, w, b, list(state0), ff)
