"""A time loop over any per-step function with a hand-written backward pass (XLA), batched under
``vmap`` by a custom rule: what runs a cycle of layers that no fused kernel recognises.

``step(dyn, state, x_t) -> (new_state, y_t)`` is one step of **one sample** (``dyn`` the array
leaves it differentiates, ``state`` and ``x_t`` pytrees). The forward pass is one ``lax.scan``
that stores only the state entering each step, binary entries (spikes) as ``bool``; the backward
pass is a reverse scan that re-runs each step's VJP from that state. Autodiff of a scan would keep
every intermediate of every step instead.

Under ``jax.vmap`` (how snnax-style models run over a batch) one loop runs over the whole batch,
the step vmapped over its rows inside, so a weight's gradient is one contraction over the batch
per step, accumulated once (vmap of a custom VJP would accumulate a per-example gradient).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.custom_batching import custom_vmap

from .common import keep_entry, restore_entry, vmap_is_innermost
from .neuron_loop import scan_axis1

__all__ = ["component_loop"]


def _compress(state, binary):
    return jax.tree.map(lambda s, b: keep_entry(s) if b else s, state, binary)


def _restore(kept, state0, t, binary):
    """A stored entering state back in its dtypes; at t = 0 the exact initial state."""
    return jax.tree.map(lambda k, s0, b: restore_entry(k, s0, t) if b else k, kept, state0, binary)


def _batched_loop(step: Callable, binary, derived, dyn, state0, xs):
    """Batch-major: ``state0`` a list of entries (pytrees, leaves (B, ...)), ``xs`` leaves (B, T, ...);
    ``(final_state, ys)`` with ``ys`` leaves (B, T, ...). ``dyn`` is shared by all rows. Entry k
    with ``derived[k]`` is not stored: the backward pass recomputes it from the previous step."""
    T = jax.tree.leaves(xs)[0].shape[1]

    def rows(d, s, xt):
        return jax.vmap(lambda ss, xx: step(d, ss, xx))(s, xt)

    def keep(s):
        return [None if dv else _compress(e, b) for e, b, dv in zip(s, binary, derived)]

    def restore(kept, s0, t):
        return [e0 if dv else _restore(k, e0, t, b) for k, e0, b, dv in zip(kept, s0, binary, derived)]

    def run(d, s0, x, store):
        def body(s, t, xt):
            ns, y = rows(d, s, xt)
            ns = jax.tree.map(lambda a, o: a.astype(o.dtype), ns, s)
            return ns, (y, keep(s) if store else None)

        return scan_axis1(body, s0, x, T)

    @jax.custom_vjp
    def loop(d, s0, x):
        sT, (ys, _) = run(d, s0, x, False)
        return sT, ys

    def fwd(d, s0, x):
        sT, (ys, kept) = run(d, s0, x, True)
        return (sT, ys), (d, s0, kept, x)

    def bwd(res, g):
        d, s0, kept, x = res
        g_sT, g_ys = g

        def entering(t, k):
            """The state entering step t: the stored entries, and the derived ones recomputed by
            step t-1 from the stored entries entering it (at t = 0 the initial state)."""
            s = restore(k, s0, t)
            if not any(derived):
                return s
            tp = jnp.maximum(t - 1, 0)
            kp, xp = jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, tp, axis=1, keepdims=False), (kept, x))
            ns, _ = rows(d, restore(kp, s0, tp), xp)
            return [jax.tree.map(lambda a, o: jnp.where(t == 0, o, a.astype(o.dtype)), n, e0) if dv else e
                    for e, n, e0, dv in zip(s, ns, s0, derived)]

        def body(carry, t, inp):
            g_s, g_d = carry
            k, xt, gy = inp
            _, vjp = jax.vjp(rows, d, entering(t, k), xt)
            dd, ds, dx = vjp((g_s, gy))
            return (ds, jax.tree.map(jnp.add, g_d, dd)), dx

        (g_s0, g_d), g_x = scan_axis1(body, (g_sT, jax.tree.map(jnp.zeros_like, d)), (kept, x, g_ys), T,
                                       reverse=True)
        return g_d, g_s0, g_x

    loop.defvjp(fwd, bwd)
    return loop(dyn, state0, xs)


def component_loop(step: Callable, dyn, state0: list, xs, binary, derived=None):
    """Run ``step`` over the leading (time) axis of the sequences ``xs``: ``(final_state, ys)``.

    One sample: ``state0`` a pytree of arrays, ``xs`` a pytree of (T, ...) inexact sequences,
    ``binary`` ``state0``'s structure with a Python bool per leaf (True: the entry is exactly 0/1,
    stored as bool). ``derived``: a bool per entry of the list ``state0`` (True: not stored; the
    backward pass recomputes it by re-running the previous step, so the new value of a derived
    entry must depend only on the entries that are not derived, and on ``x_t``). Every leaf of
    ``dyn``, ``state0``, ``xs`` and of the state and ``y`` that ``step`` returns must be inexact
    (the planner checks). Gradients flow to ``dyn``, ``state0`` and ``xs``; ``step`` may close over
    constants (keys, integer arrays)."""
    derived = [False] * len(state0) if derived is None else list(derived)

    def one(d, s0, x):
        add = lambda a: a[None]  # noqa: E731
        sT, ys = _batched_loop(step, binary, derived, d, jax.tree.map(add, s0), jax.tree.map(add, x))
        return jax.tree.map(lambda a: a[0], sT), jax.tree.map(lambda a: a[0], ys)

    loop = custom_vmap(one)

    @loop.def_vmap
    def _batched(axis_size, in_batched, d, s0, x):
        d_b, s0_b, x_b = in_batched
        if any(jax.tree.leaves(d_b)):
            # per-example parameters (an ensemble): plain vmap of the one-sample loop
            axes = jax.tree.map(lambda b: 0 if b else None, (d_b, s0_b, x_b))
            out = jax.vmap(one, in_axes=axes)(d, s0, x)
        else:
            full = lambda a, b: a if b else jnp.broadcast_to(a, (axis_size,) + a.shape)  # noqa: E731
            out = _batched_loop(step, binary, derived, d, jax.tree.map(full, s0, s0_b), jax.tree.map(full, x, x_b))
        return out, jax.tree.map(lambda _: True, out)

    if not vmap_is_innermost():
        # no vmap, or vmap outside autodiff (per-example gradients): the one-sample custom VJP
        return one(dyn, state0, xs)
    return loop(dyn, state0, xs)
