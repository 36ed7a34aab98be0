"""The neuron loop (XLA): a time loop over a neuron step function with a hand-written backward
pass - the coupling *none* of the one loop builder (:func:`.loop_builder.coupled_loop`).

``step(params, state, x) -> (new_state, out)`` is the neuron's one written-once step function
(``state`` a list of arrays, ``params`` a dict whose array leaves broadcast elementwise against
the state). The forward pass is a ``lax.scan``; the backward pass is a reverse-time scan that
re-runs each step's VJP from what the forward stored (:mod:`.residuals`): the state entering each
step (spike components as ``bool``; the user's initial state is kept exactly, apart; its last entry
taken from ``reads`` or ``outs`` when those are primal outputs) and the input of each step.
That is all a step needs; autodiff of a scan keeps every intermediate of every step instead.
The loop runs per sample and is batched by ``vmap`` of its custom VJP (time-major: XLA lays each
step out as one contiguous slab).
"""
from __future__ import annotations

from typing import Sequence

import equinox as eqx
import jax

from .loop_builder import DIRECT, Step, coupled_loop

__all__ = ["neuron_loop", "scan_loop"]


def scan_loop(step: Step, params, state0: list, xs: jax.Array):
    """Plain ``lax.scan`` of ``step`` (autodiff backward): ``(final_state, outs)``."""

    def body(s, x):
        return step(params, s, x)

    return jax.lax.scan(body, list(state0), xs)


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
    sT, outs, reads, _ = coupled_loop(step, DIRECT, dyn, static, (), state0, xs, spike_idx, want_out, want_read,
                                      out_is_last_state)
    return sT, outs, reads
