"""A time loop over any per-step function with a hand-written backward pass (XLA), batched under
``vmap`` by a custom rule: what runs a cycle of layers that no fused kernel recognises.

``step(dyn, state, x_t) -> (new_state, y_t)`` is one step of **one sample** (``dyn`` the array
leaves it differentiates, ``state`` and ``x_t`` pytrees). The forward pass is one ``lax.scan``
that stores only the state entering each step, binary entries (spikes) as ``bool``, and not the
entries the backward pass can recompute; the backward pass is a reverse scan that re-runs each
step's VJP from that state. Autodiff of a scan would keep every intermediate of every step instead.

``x_t`` is ``(now[t], lagged[t])``: ``now`` sequences are read at step t, ``lagged`` ones one step
later (``first`` at step 0, then ``seq[t - 1]``) - a source's output read by a consumer, with no
shifted copy of the sequence in the forward pass nor of its gradient in the backward pass.

Under ``jax.vmap`` (how snnax-style models run over a batch) one loop runs over the whole batch,
the step vmapped over its rows inside, so a weight's gradient is one contraction over the batch
per step, accumulated once (vmap of a custom VJP would accumulate a per-example gradient). The
loop is time-major (its sequences ``(T, B, ...)``, one contiguous slab per step), like the neuron
loops, so a sequence passed between them needs no transposed copy (XLA on CPU still makes one of a
sequence computed batch-major, e.g. a GEMM of the model input).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from .loop_builder import batch_over, custom_loop, filled, scan_into
from .residuals import Residuals

__all__ = ["component_loop"]


def _at(a, t):
    return jax.lax.dynamic_index_in_dim(a, t, axis=0, keepdims=False)


def _lagged_at(lag, first, t):
    """The lagged inputs of step t: ``first`` at t = 0, else ``lag[t - 1]``."""
    return jax.tree.map(lambda a, f: jnp.where(t == 0, f, _at(a, jnp.maximum(t - 1, 0)).astype(f.dtype)),
                        lag, first)


def _seed(tree):
    """One element of the first array in ``tree``: a value that exists only once ``tree`` does."""
    a = jax.tree.leaves(tree)[0]
    return a[(0,) * a.ndim]


def _scan(body, init, T: int, seed, reverse: bool = False):
    """``lax.scan`` of ``body(carry, t) -> (carry, y_t)`` over t in [0, T): ``(carry, ys)``, each step's
    ``y_t`` written in place into a (T, ...) buffer made by :func:`.loop_builder.filled` (a plain scan's
    output buffers start as zeros)."""
    return scan_into(lambda c, t, _: body(c, t), init, (), T, axis=0, reverse=reverse, seed=seed)


class _Component:
    """The time-major loop of :func:`_loop`: its forward pass (:meth:`run`) and backward pass
    (:meth:`backward`), the custom VJP of :func:`.loop_builder.custom_loop`."""

    def __init__(self, step: Callable, residuals: Residuals, derived, T: int):
        self.step, self.residuals, self.derived, self.T = step, residuals, derived, T

    def rows(self, d, dr, s, xt):
        return jax.vmap(lambda r, ss, xx: self.step((d, r), ss, xx))(dr, s, xt)

    @staticmethod
    def x_at(x, lg, f, t):
        return jax.tree.map(lambda a: _at(a, t), x), _lagged_at(lg, f, t)

    def run(self, d, dr, s0, x, lg, f, keep):
        def body(s, t):
            ns, y = self.rows(d, dr, s, self.x_at(x, lg, f, t))
            ns = jax.tree.map(lambda a, o: a.astype(o.dtype), ns, s)
            return ns, (y, self.residuals.store(s) if keep else None)

        sT, (ys, kept) = _scan(body, s0, self.T, _seed((x, lg, s0)))
        return (sT, ys), (d, dr, s0, kept, x, lg, f)

    def entering(self, res, t, k):
        """The state entering step t: the stored entries, and the derived ones recomputed by
        step t-1 from the stored entries entering it (at t = 0 the initial state)."""
        d, dr, s0, kept, x, lg, f = res
        s = self.residuals.restore(k, s0, t)
        if not any(self.derived):
            return s
        tp = jnp.maximum(t - 1, 0)
        kp = jax.tree.map(lambda a: _at(a, tp), kept)
        ns, _ = self.rows(d, dr, self.residuals.restore(kp, s0, tp), self.x_at(x, lg, f, tp))
        return [jax.tree.map(lambda a, o: jnp.where(t == 0, o, a.astype(o.dtype)), n, e0) if dv else e
                for e, n, e0, dv in zip(s, ns, s0, self.derived)]

    def backward(self, res, g):
        d, dr, s0, kept, x, lg, f = res
        g_sT, g_ys = g
        T = self.T

        def body(carry, t):
            g_s, g_d, g_dr, g_lag = carry
            k, gy = jax.tree.map(lambda a: _at(a, t), (kept, g_ys))
            _, vjp = jax.vjp(self.rows, d, dr, self.entering(res, t, k), self.x_at(x, lg, f, t))
            dd, ddr, ds, (dx, dlag) = vjp((g_s, gy))
            # step t read lag[t - 1]: its gradient goes there, in place; step 0 read first, whose
            # gradient parks in the slot of lag[T - 1] (which no step reads)
            g_lag = jax.tree.map(lambda buf, v: jax.lax.dynamic_update_index_in_dim(
                buf, v.astype(buf.dtype), (t + T - 1) % T, 0), g_lag, dlag)
            return (ds, jax.tree.map(jnp.add, g_d, dd), jax.tree.map(jnp.add, g_dr, ddr), g_lag), dx

        seed = _seed((kept, x, lg, g_ys, g_sT))
        init = (g_sT, jax.tree.map(jnp.zeros_like, d), jax.tree.map(jnp.zeros_like, dr),
                jax.tree.map(lambda a: filled(a.shape, a.dtype, seed), lg))
        (g_s0, g_d, g_dr, g_lag), g_x = _scan(body, init, T, seed, reverse=True)
        g_first = jax.tree.map(lambda a, f0: _at(a, T - 1).astype(f0.dtype), g_lag, f)
        g_lag = jax.tree.map(lambda a: jax.lax.dynamic_update_index_in_dim(a, jnp.zeros_like(_at(a, T - 1)), T - 1, 0),
                             g_lag)
        return g_d, g_dr, g_s0, g_x, g_lag, g_first


def _loop(step: Callable, binary, derived, dyn, dyn_rows, state0, now, lag, first):
    """Time-major: ``state0`` a list of entries (pytrees, leaves (B, ...)), ``now`` and ``lag``
    leaves (T, B, ...), ``first`` ``lag``'s structure with leaves (B, ...); ``(final_state, ys)``
    with ``ys`` leaves (T, B, ...). ``dyn`` is shared by all rows, ``dyn_rows`` has one copy per row
    (leaves (B, ...)): its gradient is accumulated per row, elementwise, with no reduction inside a
    step. Entry k with ``derived[k]`` is not stored: the backward pass recomputes it from the
    previous step."""
    T = jax.tree.leaves((now, lag))[0].shape[0]
    residuals = Residuals(state0, binary, skip=[k for k, dv in enumerate(derived) if dv])
    loop = _Component(step, residuals, derived, T)
    return custom_loop(loop.run, loop.backward)(dyn, dyn_rows, state0, now, lag, first)


def component_loop(step: Callable, dyn, state0: list, xs, binary, derived=None, lagged=None, dyn_rows=None):
    """Run ``step`` over the leading (time) axis of the sequences: ``(final_state, ys)``.

    One sample: ``state0`` a list of entries (pytrees of arrays); ``xs`` a pytree of (T, ...)
    inexact sequences read at step t; ``lagged`` (optional) a pair ``(seqs, firsts)``: a pytree of
    (T, ...) sequences read one step late, ``firsts[...]`` (same structure, one step's shape) at
    step 0 and ``seqs[t - 1]`` at step t. ``step`` receives ``x_t = (xs[t], lagged_t)``.
    ``binary``: ``state0``'s structure with a Python bool per leaf (True: the entry is exactly 0/1,
    stored as bool). ``derived``: a bool per entry of ``state0`` (True: not stored; the backward
    pass recomputes it by re-running the previous step, so the new value of a derived entry must
    depend only on the entries that are not derived, and on ``x_t``). Every leaf of ``dyn``,
    ``state0``, the sequences and of the state and ``y`` that ``step`` returns must be inexact (the
    planner checks). Gradients flow to ``dyn``, ``state0`` and every sequence; ``step`` may close
    over constants (keys, integer arrays). Without ``lagged``, ``step`` receives ``xs[t]`` alone.
    ``dyn_rows`` (optional): arrays of one sample's shape that each batch row gets its own copy of
    (a neuron's parameters broadcast to its shape), so that their gradient is accumulated
    elementwise per row and reduced once after the loop (a reduction inside the step costs more
    than the step on CPU); ``step`` then receives ``(dyn, dyn_rows)``."""
    derived = [False] * len(state0) if derived is None else list(derived)
    lag, first = ([], []) if lagged is None else lagged
    inner, has_rows, has_lag = step, dyn_rows is not None, lagged is not None

    def step(d, s, xt):
        return inner(d if has_rows else d[0], s, xt if has_lag else xt[0])

    dyn_rows = () if dyn_rows is None else dyn_rows

    def one(d, dr, s0, x, lg, f):
        add0 = lambda a: a[None]  # noqa: E731
        add1 = lambda a: a[:, None]  # noqa: E731
        sT, ys = _loop(step, binary, derived, d, jax.tree.map(add0, dr), jax.tree.map(add0, s0),
                       jax.tree.map(add1, x), jax.tree.map(add1, lg), jax.tree.map(add0, f))
        return jax.tree.map(lambda a: a[0], sT), jax.tree.map(lambda a: a[:, 0], ys)

    def many(d, dr, s0, x, lg, f):
        def tm(a):   # batch-major as vmap hands it over -> time-major
            return jnp.swapaxes(a, 0, 1)

        # one copy of dyn_rows per row: broadcast here, so its gradient is summed over the batch
        # once, after the loop
        B = jax.tree.leaves((s0, x))[0].shape[0]
        dr = jax.tree.map(lambda a: jnp.broadcast_to(a, (B,) + a.shape), dr)
        sT, ys = _loop(step, binary, derived, d, dr, s0, jax.tree.map(tm, x), jax.tree.map(tm, lg), f)
        return sT, jax.tree.map(tm, ys)

    return batch_over(many, 2, one)(dyn, dyn_rows, state0, xs, lag, first)
