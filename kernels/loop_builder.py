"""The one time-loop builder: what every loop repeats, written once (docs/kernels.md, "One loop builder").

- :func:`custom_loop`: the custom VJP of a loop (the XLA loops and the Pallas wrappers): a forward pass
  that stores residuals only when differentiated, and a hand-written backward pass.
- :func:`batch_over`: the batching rule of a loop that is batched as a whole under ``jax.vmap`` (one loop
  over the batch, a weight's gradient one contraction over time and batch), with the per-example
  (ensemble) fallback and the ``vmap_is_innermost`` guard.
- :func:`coupled_loop`: the XLA loop of a neuron driven by a **coupling**: :data:`DIRECT` (none,
  ``I_t = x_t``: the neuron loop) or :class:`Feedback` (``I_t = c_t + W s_{t-d} (+ b)``: the recurrent
  compound's loop, d = 1 with a bias; the delay loop, d >= 1). It stores what :mod:`.residuals` says: the
  state entering each step without its last entry when that is a primal output (``reads``, or ``outs``
  shifted by one step), spikes as ``bool``, the exact initial state at t = 0; plus the current (stored,
  or the loop input from which the coupling recomputes it). The backward pass is a reverse loop of each
  step's VJP; a coupling says how the current is formed, how its cotangent flows back through the
  coupling, and the weight gradient after the loop.

Parameter gradients are accumulated **per neuron** in the carry and reduced once after the loop (a
reduction inside each step costs more than the step itself on CPU): :class:`Grads`.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence, Tuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.custom_batching import custom_vmap

from .common import current, params_broadcast, reduce_to
from .residuals import Residuals

__all__ = ["Step", "custom_loop", "batch_over", "vmap_is_innermost", "Grads", "scan_into", "scan_time", "filled",
           "DIRECT", "Feedback", "coupled_loop"]

Step = Callable[[dict, list, jax.Array], Tuple[list, jax.Array]]


# the custom VJP and the batching rule ---------------------------------------------------------

def custom_loop(run: Callable, backward: Callable) -> Callable:
    """A loop with a hand-written backward pass: the one place a loop's ``jax.custom_vjp`` is set up.

    ``run(*args, keep)`` -> ``(outputs, residuals)`` is the forward pass (``keep`` False when it is
    not differentiated: the outputs alone, nothing stored); ``backward(residuals, cotangents)`` -> the
    cotangents of ``args``. Returns ``loop(*args) -> outputs``."""
    @jax.custom_vjp
    def loop(*args):
        return run(*args, keep=False)[0]

    def fwd(*args):
        return run(*args, keep=True)

    loop.defvjp(fwd, backward)
    return loop


def vmap_is_innermost() -> bool:
    """Whether the innermost transformation being traced is ``vmap`` (so a custom batching rule
    runs before any autodiff of it: ``grad(vmap(f))``, ``jit(vmap(f))``), not ``grad`` / ``jvp``
    (``vmap(grad(f))``, or no vmap at all). Private JAX API, guarded: False when unknown."""
    try:
        from jax._src import core
        from jax._src.interpreters import batching
        return isinstance(core.trace_ctx.trace, batching.BatchTrace)
    except Exception:  # noqa: BLE001 - moved internals: the always-correct per-sample path
        return False


def _one_sample(many: Callable, n_shared: int) -> Callable:
    """``many`` for one sample: a batch axis of 1 added to its per-sample arguments, removed from its outputs."""
    def one(*args):
        rows = jax.tree.map(lambda a: a[None], args[n_shared:])
        return jax.tree.map(lambda a: a[0], many(*args[:n_shared], *rows))

    return one


def batch_over(many: Callable, n_shared: int, one: Optional[Callable] = None) -> Callable:
    """A loop that runs per sample and, under ``jax.vmap``, once over the whole batch.

    ``many(*shared, *rows)``: the batched loop; ``shared`` (the first ``n_shared`` arguments:
    parameters, weights) as one sample has them, ``rows`` (initial states, sequences) with a leading
    batch axis; returns outputs with a leading batch axis. ``one(*args)``: one sample (default:
    ``many`` with a batch of 1). Under ``vmap`` a custom batching rule runs ``many`` (a weight's
    gradient is then one contraction over the batch; vmap of a custom VJP would form a per-example
    gradient first), the rows vmap did not batch broadcast; if a shared argument is batched (an
    ensemble: per-example weights) plain ``vmap`` of ``one``. Without vmap, or with vmap outside an
    autodiff transform (JAX cannot linearize a ``custom_vmap`` function: ``vmap(grad(f))``, per-example
    gradients), ``one`` runs: vmap of its custom VJP is right there."""
    one = _one_sample(many, n_shared) if one is None else one
    loop = custom_vmap(one)

    @loop.def_vmap
    def _rule(axis_size, in_batched, *args):
        if any(jax.tree.leaves(in_batched[:n_shared])):
            axes = jax.tree.map(lambda b: 0 if b else None, tuple(in_batched))
            out = jax.vmap(one, in_axes=axes)(*args)
        else:
            def full(a, b):
                return a if b else jnp.broadcast_to(a, (axis_size,) + a.shape)

            rows = [jax.tree.map(full, a, b) for a, b in zip(args[n_shared:], in_batched[n_shared:])]
            out = many(*args[:n_shared], *rows)
        return out, jax.tree.map(lambda _: True, out)

    def call(*args):
        return (loop if vmap_is_innermost() else one)(*args)

    return call


# per-step VJPs with per-neuron parameter cotangents --------------------------------------------

class Grads:
    """Per-step VJP of ``step`` whose parameter cotangents are per neuron when possible.

    ``batched``: the state and input carry a leading batch axis that ``step`` does not know about
    (the batched loops): ``step`` runs under ``vmap`` over it, and the per-neuron parameter
    cotangents are per (sample, neuron), reduced once in :meth:`finish` like the rest."""

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


# scans over a time axis ---------------------------------------------------------------------

def _at(a, t, axis: int):
    return jax.lax.dynamic_index_in_dim(a, t, axis=axis, keepdims=False)


def filled(shape, dtype, seed):
    """A buffer whose every entry the loop overwrites. Not ``zeros``: XLA shares one zero broadcast
    among all such buffers of a program and materialises their copies at its start, so each would
    hold memory through the whole program; a buffer made from ``seed``, a value of the loop's
    inputs, exists only from when they do."""
    return jnp.broadcast_to(seed.astype(dtype), shape)


def scan_into(body, init, xs, length: int, axis: int = 1, reverse: bool = False, seed=None):
    """``lax.scan`` over ``axis`` of the sequences ``xs``: ``body(carry, t, x_t) -> (carry, y_t)``;
    returns ``(carry, ys)`` with ``ys`` stacked on ``axis``. Step t is read with a dynamic slice and
    written in place into a carried buffer (what scan does on axis 0), so no transposed copy of a
    batch-major sequence is made. The buffers start as zeros, or :func:`filled` from ``seed``."""
    x0 = jax.tree.map(lambda a: _at(a, 0, axis), xs)
    y_aval = jax.eval_shape(lambda c, x: body(c, jnp.int32(0), x)[1], init, x0)

    def buffer(v):
        shape = tuple(v.shape[:axis]) + (length,) + tuple(v.shape[axis:])
        return jnp.zeros(shape, v.dtype) if seed is None else filled(shape, v.dtype, seed)

    def step(carry, t):
        c, bufs = carry
        c, y = body(c, t, jax.tree.map(lambda a: _at(a, t, axis), xs))
        bufs = jax.tree.map(lambda buf, v: jax.lax.dynamic_update_index_in_dim(buf, v.astype(buf.dtype), t, axis),
                            bufs, y)
        return (c, bufs), None

    (c, bufs), _ = jax.lax.scan(step, (init, jax.tree.map(buffer, y_aval)), jnp.arange(length), reverse=reverse)
    return c, bufs


def scan_time(body, init, xs, length: int, axis: int, reverse: bool = False, with_t: bool = True):
    """:func:`scan_into`, but on axis 0 a plain ``lax.scan`` (``xs`` read and ``ys`` written by scan
    itself; ``with_t`` False: ``body`` gets ``t = None``, no step counter)."""
    if axis:
        return scan_into(body, init, xs, length, axis, reverse)
    if not with_t:
        return jax.lax.scan(lambda c, x: body(c, None, x), init, xs, reverse=reverse)
    return jax.lax.scan(lambda c, a: body(c, *a), init, (jnp.arange(length), xs), reverse=reverse)


def _span(a, start: int, stop: int, axis: int):
    """``a`` from ``start`` to ``stop`` on ``axis`` (``a`` itself when that is all of it)."""
    if start == 0 and stop == a.shape[axis]:
        return a
    return jax.lax.slice_in_dim(a, start, stop, axis=axis)


# couplings ----------------------------------------------------------------------------------

class _Direct(NamedTuple):
    """Coupling none: ``I_t = x_t`` (the neuron loop). No weights (``cw = ()``), nothing carried."""

    forms_current = False       # the current is the loop input (a residual as it is)

    def step_current(self, cw, ring, s_last, x_t):
        return x_t, ring

    def current_at(self, cw, t, x_t, reads, axis):
        return x_t

    def ring0(self, s_last) -> list:
        return []

    def back(self, cw, di, pending):
        return None, pending

    def pending0(self, cw, di_aval) -> list:
        return []

    def weight_grads(self, cw, g_i, reads, axis):
        return ()


DIRECT = _Direct()


class Feedback(NamedTuple):
    """``I_t = c_t + W s_{t-d} (+ b)``: ``s`` the neuron's last state entry (``s_{-1}`` = ``state0[-1]``,
    zeros before), ``cw = (W or None, b or None)`` (``W`` (n, n) as ``eqx.nn.Linear.weight``; None: the
    identity). The loop carries ``s_{t-d} .. s_{t-2}`` in a ring of ``d - 1`` arrays (empty for d = 1)
    and the backward pass the cotangents ``dI W`` that wait for the step that made ``s_{t-d}`` in
    another. ``recompute``: the backward pass forms ``I_t`` again from ``c`` and ``reads`` (one small
    GEMM per step) instead of storing it; ``input_dtype``: ``W s (+ b)`` is cast to ``c``'s dtype
    (else the current has the promoted dtype)."""

    delay: int = 1
    recompute: bool = False
    input_dtype: bool = False
    forms_current = True

    def step_current(self, cw, ring, s_last, c_t):
        w, b = cw
        hist = ring + [s_last]                 # s_{t-d}, ..., s_{t-1}
        return current(w, b, hist[0], c_t, self.input_dtype), hist[1:]

    def current_at(self, cw, t, cres_t, reads, axis):
        """``I_t`` in the backward pass: the stored current, or recomputed from ``c_t`` = ``cres_t``
        and ``s_{t-d}`` = ``reads[t-d+1]`` (the zero seeds before)."""
        if not self.recompute:
            return cres_t
        d = self.delay
        back = _at(reads, jnp.maximum(t - d + 1, 0), axis)
        back = jnp.where(t >= d - 1, back, jnp.zeros_like(back))
        return current(*cw, back, cres_t, self.input_dtype)

    def ring0(self, s_last) -> list:
        return [jnp.zeros_like(s_last) for _ in range(self.delay - 1)]   # s_{-d} .. s_{-2}

    def _feed_back(self, w, di):
        return di if w is None else di @ w      # dI_t W: the cotangent of s_{t-d}

    def back(self, cw, di, pending):
        """What the cotangent of ``s_{t-1}`` (the last entry entering step t) gets from the coupling:
        ``dI_{t+d-1} W``; ``pending`` holds ``dI_{t+1} W .. dI_{t+d-1} W``."""
        queue = [self._feed_back(cw[0], di)] + pending
        return queue[-1], queue[:-1]

    def pending0(self, cw, di_aval) -> list:
        aval = jax.eval_shape(lambda g: self._feed_back(cw[0], g), di_aval)
        return [jnp.zeros(aval.shape, aval.dtype) for _ in range(self.delay - 1)]

    def weight_grads(self, cw, g_i, reads, axis):
        """``dW = sum dI_t s_{t-d}^T`` (``s_{t-d}`` = ``reads[t-d+1]``, zeros before step d-1) as one
        contraction over time and batch, ``db = sum dI_t``."""
        w, b = cw
        T, d, lead = g_i.shape[axis], self.delay, tuple(range(g_i.ndim - 1))
        g_w = g_b = None
        if w is not None:
            first = min(d - 1, T)       # the first step whose s_{t-d} is not a zero seed
            # summed over the batch axes, then time (one order, whichever axis is time: the same sums)
            over = tuple(k for k in lead if k != axis) + (axis,)
            g_w = jnp.tensordot(_span(g_i, first, T, axis), _span(reads, 0, T - first, axis).astype(g_i.dtype),
                                (over, over)).astype(w.dtype)
        if b is not None:
            g_b = jnp.sum(g_i, axis=lead).astype(b.dtype)
        return g_w, g_b


# the coupled loop ---------------------------------------------------------------------------

class _Loop(NamedTuple):
    """A coupled loop's static description; :meth:`run` and :meth:`backward` are its custom VJP."""

    step: Step
    static: object
    coupling: object
    residuals: Residuals
    want_out: bool
    want_read: bool
    want_cur: bool
    last_from: Optional[str]       # where the backward pass gets the last state entry: reads / outs / stored
    axis: int                      # the time axis (0: one sample; 1: batch-major, the step vmapped over rows)
    x_dtype: object

    def grads(self, d, x) -> Grads:
        shape = tuple(x.shape[:self.axis]) + tuple(x.shape[self.axis + 1:])
        return Grads(self.step, self.static, d, shape, batched=self.axis > 0)

    def run(self, d, cw, s0, x, keep):
        c, T = self.coupling, x.shape[self.axis]
        grads = self.grads(d, x)
        stored_cur = c.forms_current and not c.recompute
        emit_cur = c.forms_current and (self.want_cur or (keep and stored_cur))

        def body(carry, t, x_t):
            s, ring = carry
            i_t, ring = c.step_current(cw, ring, s[-1], x_t)
            ns, out = grads.apply(d, s, i_t)
            ns = [a.astype(o.dtype) for a, o in zip(ns, s)]
            return (ns, ring), (out if self.want_out else None, s[-1] if self.want_read else None,
                                i_t if emit_cur else None, self.residuals.store(s) if keep else None)

        (sT, _), (outs, reads, cur, s_in) = scan_time(body, (list(s0), c.ring0(s0[-1])), x, T, self.axis,
                                                      with_t=False)
        primal = (sT, outs, reads, cur if self.want_cur else None)
        res = (d, cw, list(s0), s_in, cur if stored_cur else x, reads, outs if self.last_from == "outs" else None)
        return primal, res

    def entering(self, kept, s0, t, rd, outs) -> list:
        """The state entering step ``t``: the stored entries restored, the last one from ``reads``
        (``rd``) or from ``outs[t-1]`` (``state0[-1]`` at t = 0)."""
        if self.last_from == "outs":
            prev = _at(outs, jnp.maximum(t - 1, 0), self.axis)
            rd = jnp.where(t == 0, s0[-1], prev.astype(s0[-1].dtype))
        given = {len(s0) - 1: rd} if self.last_from else None
        return self.residuals.restore(kept, s0, t, given)

    def backward(self, res, g):
        d, cw, s0, s_in, cres, reads, outs = res
        g_sT, g_outs, g_reads, g_cur = g
        c, axis, T = self.coupling, self.axis, cres.shape[self.axis]
        grads = self.grads(d, cres)
        i_aval = jax.eval_shape(lambda r, x: c.current_at(cw, 0, _at(x, 0, axis), r, axis), reads, cres)
        out_aval = jax.eval_shape(grads.apply, d, s0, i_aval)[1]

        def body(carry, t, inp):
            g_s, g_d, pending = carry
            kept, cres_t, rd, g_out, g_rd, g_ct = inp
            s = self.entering(kept, s0, t, rd, outs)
            i_t = c.current_at(cw, t, cres_t, reads, axis)
            cot_out = g_out if self.want_out else jnp.zeros(out_aval.shape, g_s[-1].dtype)
            dd, ds, di = grads.vjp(d, s, i_t, (g_s, cot_out))
            if g_ct is not None:
                di = di + g_ct
            back, pending = c.back(cw, di, pending)
            ds = list(ds)
            if back is not None:      # s_{t-1} fed I_{t+d-1}
                ds[-1] = ds[-1] + back.astype(ds[-1].dtype)
            if g_rd is not None:      # and was read
                ds[-1] = ds[-1] + g_rd
            return (ds, jax.tree.map(jnp.add, g_d, dd), pending), di

        xs = (s_in, cres, reads if self.last_from == "reads" else None, g_outs, g_reads, g_cur)
        init = (list(g_sT), grads.zeros(d), c.pending0(cw, i_aval))
        (g_s0, g_d, _), g_i = scan_time(body, init, xs, T, axis, reverse=True)
        return grads.finish(g_d, d), c.weight_grads(cw, g_i, reads, axis), g_s0, g_i.astype(self.x_dtype)


def coupled_loop(step: Step, coupling, dyn, static, cw, state0: list, xs: jax.Array, spike_idx: Sequence[int] = (),
                 want_out: bool = True, want_read: bool = False, out_is_last_state: bool = False,
                 want_cur: bool = False, axis: int = 0):
    """A neuron's loop (XLA) with a coupling: ``(final_state, outs, reads, I)``, custom VJP.

    ``step(params, state, I_t) -> (new_state, out)`` with ``params = eqx.combine(dyn, static)``;
    ``coupling``: :data:`DIRECT` (``cw = ()``) or a :class:`Feedback` (``cw = (W, b)``). ``axis``: the
    time axis of ``xs`` and of the sequences returned; 0: one sample, ``state0`` entries of the neuron
    shape; 1: batch-major (B, T, ...), ``state0`` entries (B, ...), ``step`` vmapped over the rows.
    ``outs[t]`` is what step t returned (None unless ``want_out``), ``reads[t]`` the last state entry
    entering step t (``state0[-1]`` first; None unless ``want_read`` or a feedback coupling, which
    always emits it), ``I`` the currents (None unless ``want_cur``). ``out_is_last_state``: the step's
    output equals its new state's last entry, so ``outs`` can stand in for that entry's residual.
    Gradients flow to ``dyn``, ``cw``, ``state0`` and ``xs``."""
    want_read = want_read or coupling.forms_current      # a feedback loop's dW and residual
    last_from = "reads" if want_read else "outs" if (want_out and out_is_last_state) else None
    state0 = list(state0)
    skip = (len(state0) - 1,) if last_from else ()
    loop = _Loop(step, static, coupling, Residuals.of_spikes(state0, tuple(spike_idx), skip), want_out, want_read,
                 want_cur, last_from, axis, xs.dtype)
    return custom_loop(loop.run, loop.backward)(dyn, cw, state0, xs)
