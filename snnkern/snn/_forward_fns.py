"""snnax's forward-function types and ``delayed_forward_fn`` (re-exported by ``snn.architecture``).

A forward function is one time step of a whole model, for ``loop_fn`` (``lax.scan``):
``forward_fn(layers, struct, key, carry, x_t) -> (new_carry, outs_t)``.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence, Tuple

import jax
import jax.random as jrand

from ..plan.protocol import call_layer, keep_dtypes, layer_output, merge_inputs
from ..plan.wiring import gather

__all__ = ["ForwardFnOutput", "ForwardFn", "delayed_forward_fn"]

ForwardFnOutput = Tuple[Sequence[Any], Sequence[jax.Array]]
"""``(new_carry, outs)`` of one step: the carry for the next step and the outputs of the final layers."""

ForwardFn = Callable[[Sequence[Any], Any, jax.Array, Sequence[Any], Any], ForwardFnOutput]
"""``forward_fn(layers, graph_structure, key, carry, x_t) -> ForwardFnOutput``."""


def delayed_forward_fn(layers: Sequence[Any], struct, key: jax.Array, carry, batch) -> ForwardFnOutput:
    """One time step in which every layer reads its sources' outputs of the previous step from the carry.

    ``carry`` is either the list of layer states (what ``init_state`` returns; usable as
    ``StatefulModel(..., forward_fn=delayed_forward_fn)``) or snnax's pair ``(states, outs)``, with
    ``outs[j]`` the value layer j exposed at the previous step. Layer i receives the external inputs
    ``batch[e]`` of ``struct.input_layer_ids[i]`` (this step) and then ``outs[j]`` for the ``j`` in
    ``struct.input_connectivity[i]``, merged like the default forward (a list for a ``Parallel``
    first layer, else the sum). The results equal :func:`default_forward_fn`'s, whose ``outs[j]``
    is the last element of layer j's state.

    Returns ``(new_states, final_outs)`` for a list carry and ``((new_states, new_outs), final_outs)``
    for a pair, ``final_outs`` being the outputs of ``struct.final_layer_ids``. (snnax's version
    unpacked the model's state list as the pair and failed with "too many values to unpack".)
    """
    pair = isinstance(carry, tuple)
    if pair:
        if len(carry) != 2 or len(carry[0]) != len(layers) or len(carry[1]) != len(layers):
            raise ValueError(f"delayed_forward_fn: a tuple carry must be (states, outs) with one entry per layer "
                             f"({len(layers)}); got a tuple of {len(carry)}")
        states, reads = carry
    else:
        states = carry
        reads = [layer_output(layer, s) for layer, s in zip(layers, states)]
    xs = list(batch) if isinstance(batch, (list, tuple)) else [batch]
    keys = jrand.split(key, len(layers))
    new_states, outs = [], []
    for i, layer in enumerate(layers):
        received = gather(struct, i, lambda e: xs[e], lambda j: reads[j])
        state, out = call_layer(layer, states[i], merge_inputs(layer, received), keys[i])
        new_states.append(keep_dtypes(state, states[i]))   # the scan carry keeps its dtypes
        outs.append(out)
    final = [outs[j] for j in struct.final_layer_ids]
    if pair:
        new_reads = [layer_output(layer, s) for layer, s in zip(layers, new_states)]
        return (new_states, keep_dtypes(new_reads, list(reads))), final
    return new_states, final
