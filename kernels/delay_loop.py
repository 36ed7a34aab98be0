"""A neuron fed back its own output ``d`` steps late: the loop of a feedback cycle of affine
stateless layers through one neuron (XLA) - the coupling *feedback* without a bias of the one loop
builder (:mod:`.loop_builder`), custom VJP, batched under ``vmap`` by its batching rule.

The neuron's input current is ``I_t = c_t + W s_{t-d}`` (``s`` the neuron's output state,
``state[-1]``; ``W`` the cycle's Linear weight, or the identity when it has none; ``c`` every other
part of the current, hoisted before the loop). The loop carries the last ``d`` outputs: the state
entering step t holds ``s_{t-1}``, and a ring of ``d - 1`` arrays holds ``s_{t-d}, ..., s_{t-2}``,
seeded with zeros (``s_{-1}`` is the initial state; what the cycle's layers started from is
part of ``c``, docs/plans.md "How cycles run"). With ``d = 1`` it is the recurrent compound's
recurrence (:mod:`.recurrent`) without a bias.

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

from .loop_builder import Feedback, Step, batch_over, coupled_loop

__all__ = ["delay_batched", "delay_loop"]


def delay_batched(step: Step, dyn, static, w: Optional[jax.Array], state0: list, c: jax.Array, delay: int,
                  spike_idx: Sequence[int] = (), want_out: bool = True):
    """The batched delay-``delay`` loop, batch-major: ``state0`` entries (B, ...), ``c`` (B, T, ...),
    ``w`` (n, n) or None (then ``c`` may have any feature shape). Returns ``(final_state, outs,
    reads)``: ``outs`` the step outputs (None unless ``want_out``), ``reads[:, t]`` = ``s_{t-1}``
    (``state0[-1]`` first), both (B, T, ...). Gradients flow to ``dyn``, ``w``, ``state0`` and ``c``."""
    if int(delay) < 1:
        raise ValueError(f"delay_batched: the delay must be >= 1, got {delay}")
    coupling = Feedback(delay=int(delay), recompute=True, input_dtype=True)
    sT, outs, reads, _ = coupled_loop(step, coupling, dyn, static, (w, None), state0, c, spike_idx, want_out, axis=1)
    return sT, outs, reads


def delay_loop(step: Step, params, state0: list, c: jax.Array, w: Optional[jax.Array], delay: int,
               spike_idx: Sequence[int] = (), want_out: bool = True):
    """A neuron driven by ``I_t = c_t + W s_{t-delay}`` (``s`` = ``state[-1]``, ``s_{-1}`` =
    ``state0[-1]``, zeros before), one sample: ``c`` (T, ...). Returns ``(final_state, outs,
    reads)`` (see :func:`delay_batched`). Under ``jax.vmap`` one batch-major loop runs over the whole
    batch (``s @ W^T`` one (B, n) x (n, n) GEMM per step, ``dW`` one GEMM over time and batch), as the
    recurrent loop does (:func:`.loop_builder.batch_over`)."""
    dyn, static = eqx.partition(params, eqx.is_array)
    spike_idx = tuple(spike_idx)

    def many(d, ww, s0, x):
        return delay_batched(step, d, static, ww, s0, x, delay, spike_idx, want_out)

    return batch_over(many, 2)(dyn, w, list(state0), c)

