"""Shapes and checks of a model: initial states along the graph, input merges, call arguments.

Every problem is a ``ValueError`` / ``TypeError`` that names the layer (index and type) and the
shapes, raised before anything is traced (docs/semantics.md "States" and "Several inputs").
"""
from __future__ import annotations

import functools as ft
from typing import Any, List, Optional, Tuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jrand

from ..plan.wiring import sources
from ..plan.protocol import entry_module, is_stateful, layer_output, merge_inputs, takes_input_list
from .layers.stateful import as_shape

__all__ = ["InputMergeError", "describe_layer", "apply_stateless", "init_layer", "init_states", "check_call",
           "check_merges_at_construction", "expected_in_shape", "normalise_in_shapes"]


class InputMergeError(ValueError):
    """Several inputs into one layer that cannot be merged (docs/semantics.md "Several inputs")."""


class _LayerShapeError(ValueError):
    """A layer that cannot be applied to its input shape (already names the layer)."""


def describe_layer(i: Optional[int], layer) -> str:
    name = type(layer).__name__
    return name if i is None else f"layer {i} ({name})"


def _shape_str(x) -> str:
    if isinstance(x, (list, tuple)):
        return "[" + ", ".join(_shape_str(v) for v in x) + "]"
    return str(tuple(x.shape))


def expected_in_shape(layer) -> Optional[tuple]:
    """The input shape a layer states in its fields, where it does (Linear)."""
    if isinstance(layer, eqx.nn.Linear):
        return () if layer.in_features == "scalar" else (int(layer.in_features),)
    return None


def apply_stateless(layer, x, key, where: str):
    """``layer(x, key=key)`` with a clear error naming the layer when the input does not fit."""
    want = expected_in_shape(layer)
    if want is not None and not isinstance(x, (list, tuple)) and tuple(x.shape) != want:
        raise _LayerShapeError(f"{where} expects input shape {want}, got {tuple(x.shape)}")
    try:
        return layer(x, key=key)
    except (_LayerShapeError, InputMergeError):
        raise
    except Exception as e:  # equinox/jax raise TypeErrors from inside the layer
        raise _LayerShapeError(f"{where} cannot be applied to input shape {_shape_str(x)}: "
                               f"{type(e).__name__}: {e}") from e


def init_layer(layer, x, key, where: str) -> Tuple[list, Any]:
    """Initial state and initial output of one layer given (zero or initial) input values ``x``."""
    if is_stateful(layer):
        shape = [tuple(v.shape) for v in x] if isinstance(x, (list, tuple)) else tuple(x.shape)
        try:
            state = layer.init_state(shape, key)
        except (_LayerShapeError, InputMergeError):
            raise
        except Exception as e:
            raise _LayerShapeError(f"{where} cannot initialise its state for input shape {shape}: "
                                   f"{type(e).__name__}: {e}") from e
        return state, jax.tree.map(jnp.zeros_like, layer_output(layer, state))
    out = apply_stateless(layer, x, key, where)
    return [out], out


def normalise_in_shapes(in_shape) -> List[tuple]:
    if isinstance(in_shape, int):
        return [(in_shape,)]
    if isinstance(in_shape, list) and in_shape and all(isinstance(s, (list, tuple)) for s in in_shape):
        return [as_shape(s) for s in in_shape]
    if isinstance(in_shape, (list, tuple)) and all(isinstance(s, int) for s in in_shape):
        return [tuple(in_shape)]
    raise TypeError(f"in_shape must be a shape tuple (e.g. (10,)) or a list of shapes, got {in_shape!r}")


def _sources(struct, i) -> list:
    """Layer i's inputs in merge order, as ``("x", external input)`` / ``("l", source layer)``."""
    return [("x" if s.external else "l", s.index) for s in sources(struct, i)]


def _source_name(layers, src) -> str:
    kind, j = src
    return f"external input {j}" if kind == "x" else describe_layer(j, layers[j])


def init_states(model, in_shape, key: Optional[jax.Array] = None) -> list:
    """Initial state of every layer, for one sample of feature shape ``in_shape``.

    Walks the layers in list order (docs/semantics.md "States"): a stateless layer's state is
    ``[layer(initial outputs of its sources)]`` (zeros for external inputs); a stateful layer gets
    ``layer.init_state(input_shape, key)``. Back edges read the source's initial output.
    Raises ValueError naming the layer when an input shape does not fit or inputs cannot be
    merged (docs/semantics.md "Several inputs").
    """
    in_shapes = normalise_in_shapes(in_shape)
    struct, layers = model.graph_structure, model.layers
    if len(in_shapes) < struct.num_inputs:
        raise ValueError(f"the graph reads {struct.num_inputs} external inputs but in_shape gives "
                         f"{len(in_shapes)}: {in_shapes}")
    key = jrand.PRNGKey(0) if key is None else key
    keys = jrand.split(key, len(layers))
    outs: list = [None] * len(layers)
    states: list = [None] * len(layers)
    assumed = []  # (target, source j, assumed shape) for sources read before they are initialised
    for i, layer in enumerate(layers):
        where = describe_layer(i, layer)
        srcs = _sources(struct, i)
        values = []
        for kind, j in srcs:
            if kind == "x":
                if j >= len(in_shapes):
                    raise ValueError(f"{where} reads external input {j} but in_shape gives only "
                                     f"{len(in_shapes)} input shape(s)")
                values.append(jnp.zeros(in_shapes[j]))
            else:
                values.append(outs[j])
        values = _fill_back_edges(model, i, layer, srcs, values, assumed)
        _check_merge(model, i, layer, srcs, values)
        states[i], outs[i] = init_layer(layer, merge_inputs(layer, values), keys[i], where)
    for i, j, shape in assumed:
        if tuple(outs[j].shape) != shape:
            srcs = _sources(struct, i)
            values = [jnp.zeros(in_shapes[s]) if kind == "x" else outs[s] for kind, s in srcs]
            raise InputMergeError(_merge_message(model,
                i, srcs, values,
                f"its input from {_source_name(layers, ('l', j))} (a feedback edge) has shape "
                f"{tuple(outs[j].shape)}, but {describe_layer(i, layers[i])} needs {shape} there"))
    return states


def _fill_back_edges(model, i, layer, srcs, values, assumed):
    """Sources not initialised yet (back edges, model-edges) get zeros of the shape the target needs."""
    if all(v is not None for v in values):
        return values
    known = [v for v in values if v is not None]
    branches = getattr(entry_module(layer), "layers", None) if takes_input_list(layer) else None
    filled = []
    for k, (src, v) in enumerate(zip(srcs, values)):
        if v is None:
            shape = expected_in_shape(branches[k]) if branches is not None and k < len(branches) else None
            if shape is None:
                if not known:
                    raise ValueError(f"{describe_layer(i, layer)}: cannot infer the shape of its input "
                                     f"from {_source_name(model.layers, src)} (a back edge with no other "
                                     f"input); give the layer an external or earlier input")
                shape = tuple(known[0].shape)
            assumed.append((i, src[1], shape))
            v = jnp.zeros(shape)
        filled.append(v)
    return filled


def _merge_message(model, i, srcs, values, problem):
    layer = model.layers[i]
    got = ", ".join(f"{_source_name(model.layers, s)}: {tuple(v.shape)}" for s, v in zip(srcs, values))
    return (f"{describe_layer(i, layer)} cannot merge its inputs: {problem}. Inputs (external "
            f"first, then sources): {got}. To combine inputs of different shapes, make the target "
            f"a CompoundLayer(Parallel([layer_for_input_0, layer_for_input_1, ...]), ...) so each "
            f"input gets its own layer; inputs into any other layer are summed and must have the "
            f"same shape.")


def _check_merge(model, i, layer, srcs, values):
    if len(values) < 2 and not takes_input_list(layer):
        return
    if takes_input_list(layer):
        branches = getattr(entry_module(layer), "layers", [])
        if len(branches) != len(values):
            raise InputMergeError(_merge_message(model,
                i, srcs, values, f"its Parallel has {len(branches)} branches but it receives "
                                 f"{len(values)} input(s)"))
        return
    shapes = {tuple(v.shape) for v in values}
    if len(shapes) > 1:
        raise InputMergeError(_merge_message(model, i, srcs, values, "the shapes differ, so they cannot be summed"))


def check_merges_at_construction(model):
    """Where the input shape is written in the first layer (a Linear), surface merge errors now
    (docs/semantics.md "Several inputs")."""
    struct = model.graph_structure
    shapes = {}
    for i, ids in enumerate(struct.input_layer_ids):
        for e in ids:
            want = expected_in_shape(entry_module(model.layers[i]))
            if want is None or shapes.get(e, want) != want:
                return
            shapes[e] = want
    if len(shapes) != struct.num_inputs:
        return
    try:
        jax.eval_shape(lambda: model.init_state([shapes[e] for e in range(struct.num_inputs)],
                                               jrand.PRNGKey(0)))
    except InputMergeError:
        raise
    except Exception:  # other problems surface at init_state with the real in_shape
        pass


def check_call(model, states, xs: list, key, burnin) -> None:
    if key is None:
        raise TypeError("a PRNG key is required: model(states, x, key), e.g. key=jax.random.PRNGKey(0)")
    struct = model.graph_structure
    if len(xs) < struct.num_inputs:
        raise ValueError(f"the model reads {struct.num_inputs} external inputs but {len(xs)} were given")
    for e, x in enumerate(xs):
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise TypeError(f"input {e} must be an array of shape (T, *in_shape), got {type(x).__name__}")
        if x.ndim < 1:
            raise ValueError(f"input {e} has shape {tuple(x.shape)}: it needs a leading time axis (T, *in_shape)")
    T = xs[0].shape[0]
    if any(x.shape[0] != T for x in xs):
        raise ValueError(f"external inputs have different lengths in time: {[x.shape[0] for x in xs]}")
    if not isinstance(burnin, int) or isinstance(burnin, bool) or burnin < 0:
        raise ValueError(f"burnin must be an int >= 0, got {burnin!r}")
    if burnin >= T:
        raise ValueError(f"burnin={burnin} must be smaller than the number of time steps T={T}")
    feat = [tuple(x.shape[1:]) for x in xs]
    try:
        expected = jax.eval_shape(ft.partial(init_states, model, feat), key)
    except ValueError as e:
        whole = [tuple(x.shape) for x in xs]
        try:
            jax.eval_shape(ft.partial(init_states, model, whole), key)
        except Exception:
            raise ValueError(f"input feature shape {feat[0] if len(feat) == 1 else feat} does not fit "
                             f"the model: {e}") from None
        raise ValueError(f"input of shape {whole[0] if len(whole) == 1 else whole} has no time axis: "
                         f"give x as (T, *in_shape), e.g. x[None] for one step") from None
    got_def, exp_def = jax.tree.structure(states), jax.tree.structure(expected)
    if got_def != exp_def:
        for i, layer in enumerate(model.layers):
            if i >= len(states) or jax.tree.structure(states[i]) != jax.tree.structure(expected[i]):
                got = "missing" if i >= len(states) else jax.tree.structure(states[i])
                raise ValueError(f"the states do not belong to this model: {describe_layer(i, layer)} "
                                 f"expects a state of structure {jax.tree.structure(expected[i])}, got "
                                 f"{got}; make them with model.init_state(in_shape, key)")
        raise ValueError(f"the states do not belong to this model: expected {len(expected)} layer "
                         f"states, got {len(states) if isinstance(states, (list, tuple)) else states!r}")
    for i, layer in enumerate(model.layers):
        gs = [tuple(jnp.shape(a)) for a in jax.tree.leaves(states[i])]
        es = [tuple(a.shape) for a in jax.tree.leaves(expected[i])]
        if gs != es:
            raise ValueError(f"{describe_layer(i, layer)}: state shapes {gs} do not match the input: with "
                             f"input feature shape {feat[0] if len(feat) == 1 else feat} it expects {es}. "
                             f"Were the states made by init_state for another in_shape (or model)?")
