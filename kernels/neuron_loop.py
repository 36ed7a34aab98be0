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

:func:`recurrent_loop` adds a recurrent weight: ``I_t = ff_t + (W_rec r_{t-1} + b_rec)`` with
``r`` the neuron's output state; ``dW_rec`` and ``db_rec`` are one GEMM / one sum after the loop.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.custom_batching import custom_vmap

__all__ = ["neuron_loop", "recurrent_loop", "recurrent_batched", "scan_loop", "params_broadcast"]

Step = Callable[[dict, list, jax.Array], Tuple[list, jax.Array]]


def scan_loop(step: Step, params, state0: list, xs: jax.Array):
    """Plain ``lax.scan`` of ``step`` (autodiff backward): ``(final_state, outs)``."""

    def body(s, x):
        return step(params, s, x)

    return jax.lax.scan(body, list(state0), xs)


def params_broadcast(dyn, shape) -> bool:
    """Whether every parameter array broadcasts to ``shape`` (the per-neuron gradient trick applies)."""
    try:
        return all(jnp.broadcast_shapes(a.shape, tuple(shape)) == tuple(shape) for a in jax.tree.leaves(dyn))
    except ValueError:
        return False


def _reduce_to(g, shape):
    """Sum a per-neuron gradient back to the parameter's shape."""
    lead = g.ndim - len(shape)
    g = jnp.sum(g, axis=tuple(range(lead))) if lead else g
    axes = tuple(k for k, n in enumerate(shape) if n == 1 and g.shape[k] != 1)
    return jnp.sum(g, axis=axes, keepdims=True) if axes else g


def _compress(state: list, spike_idx: Sequence[int]) -> list:
    return [s.astype(jnp.bool_) if k in spike_idx else s for k, s in enumerate(state)]


def _restore(state: list, state0: list, t, spike_idx: Sequence[int]) -> list:
    """Decompress a stored entering state; at t = 0 use the exact initial state."""
    return [jnp.where(t == 0, s0, s.astype(s0.dtype)) if k in spike_idx else s
            for k, (s, s0) in enumerate(zip(state, state0))]


class _Grads:
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
            return jax.tree.map(lambda gg, a: _reduce_to(gg, a.shape).astype(a.dtype), g, dyn)
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
            kept = _compress(s[:-1] if last_from_reads else s, spike_idx) if keep else None
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
        grads = _Grads(step, static, d, x.shape[1:])

        def body(carry, inp):
            g_s, g_d = carry
            t, s, xt, g_out, g_read, rd = inp
            if last_from == "outs":
                prev = jax.lax.dynamic_index_in_dim(outs, jnp.maximum(t - 1, 0), keepdims=False)
                rd = jnp.where(t == 0, s0[-1], prev.astype(s0[-1].dtype))
            s = _restore(s, s0, t, spike_idx) + ([rd] if last_from_reads else [])
            cot_out = g_out if want_out else jnp.zeros_like(xt, dtype=g_s[-1].dtype)
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


def _current(w, b, r, fft):
    """``I = ff + (r @ W^T + b)`` for a batch of rows ``r`` (the recurrent compound's Parallel sum:
    its external branches first, the recurrent branch last)."""
    rec = r @ w.T
    return fft + (rec + b if b is not None else rec)


def recurrent_loop(step: Step, params, state0: list, ff: jax.Array, w_rec: jax.Array,
                   b_rec: Optional[jax.Array], spike_idx: Sequence[int] = (), want_out: bool = True,
                   impl: Optional[Callable] = None, want_cur: bool = True):
    """A neuron driven by ``I_t = ff_t + (w_rec @ r_{t-1} + b_rec)``, ``r`` = ``state[-1]``.

    One sample: ``ff`` (T, n) is the hoisted feed-forward current. Returns ``(final_state, outs, I,
    reads)``: ``outs`` the step outputs (None unless ``want_out``), ``I`` the (T, n) currents (the
    recurrent compound's Parallel output) and ``reads`` the one-step-shifted ``r`` sequence
    (``state0[-1]`` first), which is also what ``dW_rec`` is made of. All outputs are differentiable.
    ``want_cur=False``: ``I`` is only the last step's current, shape (1, n) (what a non-final
    recurrent compound keeps in its state), recomputed from ``reads[-1]``; the loop then neither
    emits the (T, n) currents nor receives a (T, n) cotangent for them.

    The loop is **batched**: under ``jax.vmap`` (how snnax-style models are run over a batch) a
    custom batching rule runs one loop over the whole batch, ``r_{t-1} @ W^T`` as a (B, n) x (n, n)
    GEMM per step, and the backward pass forms ``dW_rec`` once, as one GEMM over time *and* batch
    (vmap of a custom VJP would form a (B, n, n) per-example ``dW_rec`` first). ``impl`` is the
    batched, batch-major implementation (:func:`recurrent_batched`, or the Pallas kernel's).
    """
    impl = recurrent_batched if impl is None else impl
    dyn, static = eqx.partition(params, eqx.is_array)
    spike_idx = tuple(spike_idx)

    def last_current(w, b, reads, x):
        return _current(w, b, reads[:, -1:], x[:, -1:])    # (B, 1, n): the recurrent product of one step

    def one(d, w, b, s0, x):
        sT, outs, cur, reads = impl(step, d, static, w, b, [s[None] for s in s0], x[None], spike_idx, want_out,
                                    want_cur=want_cur)
        if not want_cur:
            cur = last_current(w, b, reads, x[None])
        return [s[0] for s in sT], (None if outs is None else outs[0]), cur[0], reads[0]

    loop = custom_vmap(one)

    @loop.def_vmap
    def _batched(axis_size, in_batched, d, w, b, s0, x):
        d_b, w_b, b_b, s0_b, x_b = in_batched
        if any(jax.tree.leaves(d_b)) or w_b or bool(b_b):
            # per-example weights (an ensemble): plain vmap of the one-sample loop
            axes = jax.tree.map(lambda t: 0 if t else None, (d_b, w_b, b_b, s0_b, x_b))
            out = jax.vmap(one, in_axes=axes)(d, w, b, s0, x)
        else:
            s0 = [s if sb else jnp.broadcast_to(s, (axis_size,) + s.shape) for s, sb in zip(s0, s0_b)]
            x = x if x_b else jnp.broadcast_to(x, (axis_size,) + x.shape)
            # batch-major (B, T, n) in and out, as vmap lays the batch out: no transposes
            sT, outs, cur, reads = impl(step, d, static, w, b, s0, x, spike_idx, want_out, want_cur=want_cur)
            if not want_cur:
                cur = last_current(w, b, reads, x)
            out = (sT, outs, cur, reads)
        return out, jax.tree.map(lambda _: True, out)

    if not _vmap_is_innermost():
        # no vmap, or vmap outside an autodiff transform (per-example gradients): JAX cannot
        # linearize a custom_vmap function, and vmap of the one-sample custom VJP is right there
        return one(dyn, w_rec, b_rec, list(state0), ff)
    return loop(dyn, w_rec, b_rec, list(state0), ff)


def _vmap_is_innermost() -> bool:
    """Whether the innermost transformation being traced is ``vmap`` (so a custom batching rule
    runs before any autodiff of it: ``grad(vmap(f))``, ``jit(vmap(f))``), not ``grad`` / ``jvp``
    (``vmap(grad(f))``, or no vmap at all). Private JAX API, guarded: False when unknown."""
    try:
        from jax._src import core
        from jax._src.interpreters import batching
        return isinstance(core.trace_ctx.trace, batching.BatchTrace)
    except Exception:  # noqa: BLE001 - moved internals: the always-correct per-sample path
        return False


def _scan_axis1(body, init, xs, length: int, reverse: bool = False):
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
    The loops read step t as ``[:, t]`` and write their sequences in place (:func:`_scan_axis1`),
    so the batch-major sequences vmap hands over are never transposed.
    """
    spike_idx = tuple(spike_idx)
    T = ff.shape[1]
    # ``step`` over the batch rows (vmap: no assumption that it is elementwise); per-(sample,
    # neuron) parameter cotangents, reduced once after the loop
    grads = _Grads(step, static, dyn, (ff.shape[0],) + ff.shape[2:], batched=True)

    def run(d, w, b, s0, x, keep):
        # (I_t could overwrite ff_t in ff's buffer, saving one (B, T, n) array; measured on XLA CPU
        # it makes the training step 2x slower: the carried buffer that is read and updated in the
        # same iteration gets copied)
        def body(s, t, fft):
            i_t = _current(w, b, s[-1], fft)
            ns, out = grads.apply(d, s, i_t)
            ns = [a.astype(o.dtype) for a, o in zip(ns, s)]
            return ns, (out if want_out else None, i_t if keep or want_cur else None, s[-1],
                        _compress(s[:-1], spike_idx) if keep else None)

        return _scan_axis1(body, list(s0), x, T)

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
            s = _restore(s, s0, t, spike_idx) + [rd]
            cot_out = g_out if want_out else jnp.zeros_like(i_t, dtype=g_s[-1].dtype)
            dd, ds, di = grads.vjp(d, s, i_t, (g_s, cot_out))
            if g_i_extra is not None:
                di = di + g_i_extra
            ds = list(ds)
            ds[-1] = ds[-1] + (di @ w).astype(ds[-1].dtype) + g_rd   # r_{t-1} fed I_t through w, and was read
            return (ds, jax.tree.map(jnp.add, g_d, dd)), di

        (g_s0, g_d), g_i = _scan_axis1(body, (list(g_sT), grads.zeros(d)),
                                       (s_in, cur, reads, g_outs, g_cur, g_reads), T, reverse=True)
        g_w = jnp.einsum("btn,btm->nm", g_i, reads.astype(g_i.dtype)).astype(w.dtype)
        g_b = None if b is None else jnp.sum(g_i, axis=(0, 1)).astype(b.dtype)
        return grads.finish(g_d, d), g_w, g_b, g_s0, g_i.astype(ff.dtype)

    loop.defvjp(fwd, bwd)
    return loop(dyn, w, b, list(state0), ff)
