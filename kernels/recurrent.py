"""The recurrent compound's loop: a neuron driven by ``I_t = ff_t + (W_rec r_{t-1} + b_rec)`` (``r``
the neuron's output state) - the coupling *feedback* with d = 1 and a bias of the one loop builder
(:mod:`.loop_builder`). :func:`recurrent_loop` is what a model calls per sample; under ``jax.vmap``
it runs one batched, batch-major implementation (:func:`recurrent_batched` on XLA, the Pallas
kernel's :func:`.pallas_recurrent.recurrent_batched`) over the whole batch.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import equinox as eqx
import jax

from .common import current
from .loop_builder import Feedback, Step, batch_over, coupled_loop

__all__ = ["recurrent_loop", "recurrent_batched"]

# I_t is stored (measured: recomputing it costs a GEMM per step; when the compound emits I anyway,
# ``want_cur``, it costs nothing)
_RECURRENT = Feedback(delay=1, recompute=False)


def recurrent_batched(step: Step, dyn, static, w, b, state0: list, ff: jax.Array, spike_idx: Sequence[int] = (),
                      want_out: bool = True, want_cur: bool = True):
    """The batched recurrent loop (XLA), batch-major: ``state0`` entries (B, n), ``ff`` (B, T, n).

    Returns ``(final_state, outs, I, reads)`` with (B, T, n) sequences (``outs`` None unless
    ``want_out``, ``I`` None unless ``want_cur``; it is a residual either way); custom VJP. The forward
    stores the entering state without its last entry (spikes as bool; the last entry is ``reads``,
    a primal output) and ``I``; the backward is a reverse loop of each step's VJP plus the
    recurrent cotangent ``dI_t @ W``, then ``dW = sum_{b,t} dI_t r_{t-1}^T`` as one GEMM.
    The loops read step t as ``[:, t]`` and write their sequences in place
    (:func:`.loop_builder.scan_into`), so the batch-major sequences vmap hands over are never transposed.
    (I_t could overwrite ff_t in ff's buffer, saving one (B, T, n) array; measured on XLA CPU it makes
    the training step 2x slower: the carried buffer that is read and updated in the same iteration
    gets copied.)
    """
    sT, outs, reads, cur = coupled_loop(step, _RECURRENT, dyn, static, (w, b), state0, ff, spike_idx, want_out,
                                        want_cur=want_cur, axis=1)
    return sT, outs, cur, reads


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

    The loop is **batched** (:func:`.loop_builder.batch_over`): under ``jax.vmap`` one loop runs over
    the whole batch, ``r_{t-1} @ W^T`` as a (B, n) x (n, n) GEMM per step, and the backward pass forms
    ``dW_rec`` once, as one GEMM over time *and* batch. ``impl`` is the batched, batch-major
    implementation (:func:`recurrent_batched`, or the Pallas kernel's).
    """
    impl = recurrent_batched if impl is None else impl
    dyn, static = eqx.partition(params, eqx.is_array)
    spike_idx = tuple(spike_idx)

    def many(d, w, b, s0, x):
        sT, outs, cur, reads = impl(step, d, static, w, b, s0, x, spike_idx, want_out, want_cur=want_cur)
        if not want_cur:    # (B, 1, n): the recurrent product of one step
            cur = current(w, b, reads[:, -1:], x[:, -1:])
        return sT, outs, cur, reads

    return batch_over(many, 3)(dyn, w_rec, b_rec, list(state0), ff)
