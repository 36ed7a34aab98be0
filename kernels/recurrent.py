"""The recurrent compound's loop for one sample, batched under ``vmap`` by a custom rule.

A neuron driven by ``I_t = ff_t + (W_rec r_{t-1} + b_rec)`` (``r`` the neuron's output state):
:func:`recurrent_loop` is what a model calls per sample; under ``jax.vmap`` it runs one batched,
batch-major implementation (:func:`.neuron_loop.recurrent_batched` on XLA, the Pallas kernel's
:func:`.pallas_recurrent.recurrent_batched`) over the whole batch.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.custom_batching import custom_vmap

from .common import current, vmap_is_innermost
from .neuron_loop import Step, recurrent_batched

__all__ = ["recurrent_loop"]


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
    batched, batch-major implementation (:func:`.neuron_loop.recurrent_batched`, or the Pallas kernel's).
    """
    impl = recurrent_batched if impl is None else impl
    dyn, static = eqx.partition(params, eqx.is_array)
    spike_idx = tuple(spike_idx)

    def lastcurrent(w, b, reads, x):
        return current(w, b, reads[:, -1:], x[:, -1:])    # (B, 1, n): the recurrent product of one step

    def one(d, w, b, s0, x):
        sT, outs, cur, reads = impl(step, d, static, w, b, [s[None] for s in s0], x[None], spike_idx, want_out,
                                    want_cur=want_cur)
        if not want_cur:
            cur = lastcurrent(w, b, reads, x[None])
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
                cur = lastcurrent(w, b, reads, x)
            out = (sT, outs, cur, reads)
        return out, jax.tree.map(lambda _: True, out)

    if not vmap_is_innermost():
        # no vmap, or vmap outside an autodiff transform (per-example gradients): JAX cannot
        # linearize a custom_vmap function, and vmap of the one-sample custom VJP is right there
        return one(dyn, w_rec, b_rec, list(state0), ff)
    return loop(dyn, w_rec, b_rec, list(state0), ff)
