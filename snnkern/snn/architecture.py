"""The stateful model and the reference time step (docs/semantics.md).

Time semantics: at step t layer i reads the output its sources produced at step t-1 (their
``state[-1]``), and the external inputs of step t. A call is: check the arguments, make the plan
(from the layers and the abstract inputs), run it. The reference path runs
``loop_fn(default_forward_fn, states, x)`` (``lax.scan`` by default), exactly snnax's algorithm.
"""
from __future__ import annotations

import functools as ft
from typing import Callable, Optional, Sequence, Tuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jrand

from ..plan import Plan, make_plan, run_plan
from ..plan.wiring import gather
from ..plan.protocol import AbstractParallel, call_layer, entry_module, keep_dtypes, is_stateful, layer_output, merge_inputs
from .checks import (InputMergeError, apply_stateless, check_call, check_merges_at_construction, describe_layer,
                     expected_in_shape, init_layer, init_states, normalise_in_shapes)
from .graph_structure import GraphStructure
from ._forward_fns import ForwardFn, ForwardFnOutput, delayed_forward_fn
from .layers.stateful import RequiresStateLayer, StatefulLayer

__all__ = ["GraphStructure", "StatefulModel", "default_forward_fn", "InputMergeError", "layer_output",
           "describe_layer", "is_stateful", "apply_stateless", "init_layer",
           "delayed_forward_fn", "ForwardFn", "ForwardFnOutput", "StatefulLayer", "RequiresStateLayer"]


def default_forward_fn(layers: Sequence[eqx.Module], struct: GraphStructure, key: jax.Array,
                       states: Sequence, data) -> Tuple[list, list]:
    """One time step of the whole model (the reference path; use with ``lax.scan``).

    Layer i gets ``split(key, n)[i]``, the external inputs ``data[e]`` of this step and the outputs
    its sources produced at the previous step (read from ``states``). Returns ``(new_states, outs)``
    with ``outs`` the outputs of ``struct.final_layer_ids``.
    """
    data = list(data) if isinstance(data, (list, tuple)) else [data]
    keys = jrand.split(key, len(layers))
    new_states, outs = [], []
    for i, layer in enumerate(layers):
        inputs = gather(struct, i, lambda e: data[e], lambda j: layer_output(layers[j], states[j]))
        new_state, out = call_layer(layer, states[i], merge_inputs(layer, inputs), keys[i])
        new_states.append(keep_dtypes(new_state, states[i]))
        outs.append(out)
    return new_states, [outs[j] for j in struct.final_layer_ids]


def _abstract(tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(tuple(jnp.shape(a)), jnp.result_type(a)), tree)


class StatefulModel(eqx.Module):
    """A spiking network over a :class:`GraphStructure`.

    ``init_state(in_shape, key)`` -> list of per-layer states (one sample, no batch axis).
    ``model(states, x, key, burnin=0)`` with ``x`` of shape ``(T, *in_shape)`` (or a list of such
    arrays, one per external input) -> ``(final_states, outs)``; ``outs[k]`` is the output of
    ``final_layer_ids[k]`` stacked over time, shape ``(T - burnin, ...)``. Batch with ``vmap``.
    """

    graph_structure: GraphStructure = eqx.field(static=True)
    layers: list
    forward_fn: Callable = eqx.field(static=True)
    loop_fn: Callable = eqx.field(static=True)

    def __init__(self, graph_structure: GraphStructure, layers: Sequence[eqx.Module],
                 forward_fn: Callable = default_forward_fn, loop_fn: Callable = jax.lax.scan):
        if not isinstance(graph_structure, GraphStructure):
            raise TypeError(f"graph_structure must be a GraphStructure, got {type(graph_structure).__name__}")
        layers = list(layers)
        for i, layer in enumerate(layers):
            if not isinstance(layer, eqx.Module):
                hint = " (wrap a function in eqx.nn.Lambda)" if callable(layer) else ""
                raise TypeError(f"layer {i} is a {type(layer).__name__}, not an equinox Module{hint}")
        if len(layers) != graph_structure.num_layers:
            raise ValueError(f"the graph has num_layers={graph_structure.num_layers} but "
                             f"{len(layers)} layers were given")
        self.graph_structure = graph_structure
        self.layers = layers
        self.forward_fn = forward_fn
        self.loop_fn = loop_fn
        check_merges_at_construction(self)

    def init_state(self, in_shape, key: Optional[jax.Array] = None) -> list:
        """Initial state of every layer, for one sample of feature shape ``in_shape``.

        Walks the layers in list order: a stateless layer's state is ``[layer(initial outputs of its
        sources)]`` (zeros for external inputs); a stateful layer gets ``layer.init_state(input_shape,
        key)``. Back edges read the source's initial output. Raises ValueError naming the layer when
        an input shape does not fit or inputs cannot be merged."""
        return init_states(self, in_shape, key)

    def reference_reason(self) -> Optional[str]:
        """Why this model must take the reference path whatever the backend (None if it need not)."""
        if self.forward_fn is not default_forward_fn:
            return "a custom forward_fn always takes the reference path"
        if self.loop_fn is not jax.lax.scan:
            return "a custom loop_fn always takes the reference path"
        return None

    def plan(self, xs: Sequence, states, arrays: Sequence = ()) -> Plan:
        """The plan of a call on ``xs`` (external inputs ``(T, *in_shape)``) from ``states``; arrays
        or ``jax.ShapeDtypeStruct`` s (only shapes and dtypes are read; ``arrays``, the call's inputs,
        may name the device compiled for through their shardings)."""
        return make_plan(self.graph_structure, self.layers, list(xs), states,
                         reference_reason=self.reference_reason(), arrays=arrays)

    def explain(self, in_shape=None, T: Optional[int] = None, dtype=jnp.float32) -> Plan:
        """The plan a call with inputs of feature shape ``in_shape`` (or an input array / list of
        them, ``(T, *in_shape)``) runs; see :func:`snnkern.explain`."""
        xs = _explain_inputs(self, in_shape, T, dtype)
        plans = []

        def trace():   # planned inside a trace, as a call is: nothing runs eagerly
            states = init_states(self, [tuple(x.shape[1:]) for x in xs], jrand.PRNGKey(0))
            plans.append(self.plan(xs, _abstract(states)))
            return 0.0

        jax.eval_shape(trace)
        return plans[0]

    def __call__(self, input_states, input_batch, key, burnin: int = 0):
        """Run the model over time. See the class docstring; ``burnin`` steps are run, their state
        is stop-gradient'ed and their outputs dropped."""
        single = not isinstance(input_batch, (list, tuple))
        xs = [input_batch] if single else list(input_batch)
        check_call(self, input_states, xs, key, burnin)
        plan = self.plan(_abstract(xs), _abstract(input_states), arrays=xs)
        if plan.reference:
            batch = xs[0] if single else xs
            forward = ft.partial(self.forward_fn, self.layers, self.graph_structure, key)
            run = lambda states, batch: self.loop_fn(forward, states, batch)  # noqa: E731
        else:
            batch = xs
            run = lambda states, batch: run_plan(plan, self, states, batch, key)  # noqa: E731
        states = input_states
        if burnin > 0:
            states, _ = run(states, jax.tree.map(lambda x: x[:burnin], batch))
            states = jax.lax.stop_gradient(states)
            batch = jax.tree.map(lambda x: x[burnin:], batch)
        return run(states, batch)


def _explain_inputs(model, in_shape, T, dtype) -> list:
    """Abstract external inputs for :meth:`StatefulModel.explain`."""
    if in_shape is None:
        in_shape = _stated_in_shapes(model)
    if hasattr(in_shape, "shape") or (isinstance(in_shape, list) and in_shape and hasattr(in_shape[0], "shape")):
        arrays = in_shape if isinstance(in_shape, list) else [in_shape]
        return [jax.ShapeDtypeStruct(tuple(a.shape), a.dtype) for a in arrays]
    T = 1 if T is None else int(T)
    return [jax.ShapeDtypeStruct((T,) + s, jnp.dtype(dtype)) for s in normalise_in_shapes(in_shape)]


def _stated_in_shapes(model) -> list:
    """The input shapes the model's input layers state in their fields (a first Linear), or a
    TypeError asking for them."""
    struct, shapes = model.graph_structure, {}
    for i, ids in enumerate(struct.input_layer_ids):
        for pos, e in enumerate(ids):
            entry = entry_module(model.layers[i])
            if isinstance(entry, AbstractParallel) and pos < len(entry.layers):
                entry = entry.layers[pos]        # external inputs come first, branch by branch
            want = expected_in_shape(entry)
            if want is None:
                raise TypeError(f"explain: give in_shape: {describe_layer(i, model.layers[i])} does not state "
                                f"the shape of external input {e}")
            shapes.setdefault(e, want)
    return [shapes[e] for e in range(struct.num_inputs)]
