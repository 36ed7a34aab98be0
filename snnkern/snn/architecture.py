"""Graph structure, the stateful model and the reference time step (SPEC §2-§4, §7-§8).

Time semantics: at step t layer i reads the output its sources produced at step t-1 (their
``state[-1]``), and the external inputs of step t. The reference path runs
``loop_fn(default_forward_fn, states, x)`` (``lax.scan`` by default), exactly snnax's algorithm.
"""
from __future__ import annotations

import functools as ft
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jrand

from ..plan.planner import make_plan
from ..plan.runner import run_plan
from ..plan.protocol import call_layer, is_stateful, layer_output, merge_inputs, takes_input_list
from .layers.stateful import StatefulLayer, as_shape

__all__ = ["GraphStructure", "StatefulModel", "default_forward_fn", "InputMergeError",
           "layer_output", "describe_layer", "is_stateful"]


class InputMergeError(ValueError):
    """Several inputs into one layer that cannot be merged (SPEC §8.2)."""


class _LayerShapeError(ValueError):
    """A layer that cannot be applied to its input shape (already names the layer)."""


# ----------------------------------------------------------------------------------------------
# Graph structure


def _as_id_tuple(value, what: str) -> tuple:
    try:
        return tuple(tuple(int(i) for i in ids) for ids in value)
    except TypeError:
        raise TypeError(f"GraphStructure: {what} must be a sequence of sequences of layer ids, "
                        f"got {value!r}") from None


class GraphStructure:
    """Which layers get the external inputs and which layers feed which.

    Accepts snnax's 3-field form ``GraphStructure(num_layers, input_layer_ids, input_connectivity)``
    and the documented 4-field form ``GraphStructure(num_layers, input_layer_ids, final_layer_ids,
    input_connectivity)`` (positions or keywords). Lists are stored as tuples, so the structure is
    hashable (a static field under ``eqx.filter_jit``).

    - ``input_layer_ids[i]``: ids of the external inputs layer i receives at the current step.
    - ``input_connectivity[i]``: ids of the layers whose previous-step output layer i receives.
    - ``final_layer_ids``: layers whose outputs the model returns, in that order (default: last).
    """

    __slots__ = ("num_layers", "input_layer_ids", "final_layer_ids", "input_connectivity")

    def __init__(self, num_layers: int, *args, input_layer_ids=None, final_layer_ids=None,
                 input_connectivity=None):
        if len(args) == 3:
            input_layer_ids, final_layer_ids, input_connectivity = args
        elif len(args) == 2:
            if input_connectivity is None:
                input_layer_ids, input_connectivity = args
            else:
                input_layer_ids, final_layer_ids = args
        elif len(args) == 1:
            input_layer_ids = args[0]
        elif len(args) > 3:
            raise TypeError(f"GraphStructure takes at most 4 positional arguments, got {1 + len(args)}")
        if input_layer_ids is None or input_connectivity is None:
            raise TypeError("GraphStructure needs num_layers, input_layer_ids and input_connectivity")
        n = int(num_layers)
        ilid = _as_id_tuple(input_layer_ids, "input_layer_ids")
        conn = _as_id_tuple(input_connectivity, "input_connectivity")
        final = (n - 1,) if final_layer_ids is None else tuple(int(i) for i in final_layer_ids)
        if n < 1:
            raise ValueError(f"GraphStructure: num_layers must be >= 1, got {n}")
        for name, v in (("input_layer_ids", ilid), ("input_connectivity", conn)):
            if len(v) != n:
                raise ValueError(f"GraphStructure: {name} has {len(v)} entries but num_layers is {n}; "
                                 f"give one entry (a possibly empty list) per layer")
        for i in range(n):
            for j in conn[i]:
                if not 0 <= j < n:
                    raise ValueError(f"GraphStructure: input_connectivity[{i}] names layer {j}, "
                                     f"out of range 0..{n - 1}")
            for e in ilid[i]:
                if e < 0:
                    raise ValueError(f"GraphStructure: input_layer_ids[{i}] names external input {e}; "
                                     f"ids must be >= 0")
            if not conn[i] and not ilid[i]:
                raise ValueError(f"GraphStructure: layer {i} receives nothing (no external input and "
                                 f"no source layer); give it an entry in input_layer_ids or "
                                 f"input_connectivity")
        if not final:
            raise ValueError("GraphStructure: final_layer_ids must name at least one layer")
        for j in final:
            if not 0 <= j < n:
                raise ValueError(f"GraphStructure: final_layer_ids names layer {j}, out of range 0..{n - 1}")
        for k, v in (("num_layers", n), ("input_layer_ids", ilid), ("final_layer_ids", final),
                     ("input_connectivity", conn)):
            object.__setattr__(self, k, v)

    def __setattr__(self, key, value):
        raise AttributeError("GraphStructure is immutable")

    @property
    def output_layer_ids(self) -> tuple:
        """snnax's name for ``final_layer_ids``."""
        return self.final_layer_ids

    @property
    def num_inputs(self) -> int:
        """How many external inputs the graph reads (largest id + 1)."""
        ids = [e for ids in self.input_layer_ids for e in ids]
        return max(ids) + 1 if ids else 0

    def _key(self):
        return (self.num_layers, self.input_layer_ids, self.final_layer_ids, self.input_connectivity)

    def __eq__(self, other):
        return isinstance(other, GraphStructure) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        return (f"GraphStructure(num_layers={self.num_layers}, input_layer_ids={self.input_layer_ids}, "
                f"final_layer_ids={self.final_layer_ids}, input_connectivity={self.input_connectivity})")


# ----------------------------------------------------------------------------------------------
# Layer protocol shared by the model and CompoundLayer


def describe_layer(i: Optional[int], layer) -> str:
    name = type(layer).__name__
    return name if i is None else f"layer {i} ({name})"


def _shape_str(x) -> str:
    if isinstance(x, (list, tuple)):
        return "[" + ", ".join(_shape_str(v) for v in x) + "]"
    return str(tuple(x.shape))


def _expected_in_shape(layer) -> Optional[tuple]:
    """The input shape a layer states in its fields, where it does (Linear)."""
    if isinstance(layer, eqx.nn.Linear):
        return () if layer.in_features == "scalar" else (int(layer.in_features),)
    return None


def apply_stateless(layer, x, key, where: str):
    """``layer(x, key=key)`` with a clear error naming the layer when the input does not fit."""
    want = _expected_in_shape(layer)
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


# ----------------------------------------------------------------------------------------------
# Reference step


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
        inputs = [data[e] for e in struct.input_layer_ids[i]]
        inputs += [layer_output(layers[j], states[j]) for j in struct.input_connectivity[i]]
        new_state, out = call_layer(layer, states[i], merge_inputs(layer, inputs), keys[i])
        # keep the carry's dtypes (e.g. integer spikes fed to a float32 state)
        new_state = jax.tree.map(lambda n, o: n.astype(o.dtype) if hasattr(o, "dtype") else n,
                                 new_state, states[i])
        new_states.append(new_state)
        outs.append(out)
    return new_states, [outs[j] for j in struct.final_layer_ids]


# ----------------------------------------------------------------------------------------------
# The model


def _normalise_in_shapes(in_shape) -> List[tuple]:
    if isinstance(in_shape, int):
        return [(in_shape,)]
    if isinstance(in_shape, list) and in_shape and all(isinstance(s, (list, tuple)) for s in in_shape):
        return [as_shape(s) for s in in_shape]
    if isinstance(in_shape, (list, tuple)) and all(isinstance(s, int) for s in in_shape):
        return [tuple(in_shape)]
    raise TypeError(f"in_shape must be a shape tuple (e.g. (10,)) or a list of shapes, got {in_shape!r}")


def _source_name(layers, src) -> str:
    kind, j = src
    return f"external input {j}" if kind == "x" else describe_layer(j, layers[j])


def _entry_module(layer):
    """The module that first touches the input of ``layer`` (descending into compounds)."""
    while getattr(layer, "output_of", None) is not None and getattr(layer, "layers", None):
        layer = layer.layers[0]
    return layer


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
        self._check_merges_at_construction()

    # -- initial state ---------------------------------------------------------------------------

    def init_state(self, in_shape, key: Optional[jax.Array] = None) -> list:
        """Initial state of every layer, for one sample of feature shape ``in_shape``.

        Walks the layers in list order (SPEC §4): a stateless layer's state is ``[layer(initial
        outputs of its sources)]`` (zeros for external inputs); a stateful layer gets
        ``layer.init_state(input_shape, key)``. Back edges read the source's initial output.
        Raises ValueError naming the layer when an input shape does not fit or inputs cannot be
        merged (SPEC §8.2).
        """
        in_shapes = _normalise_in_shapes(in_shape)
        struct, layers = self.graph_structure, self.layers
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
            srcs = [("x", e) for e in struct.input_layer_ids[i]] + [("l", j) for j in struct.input_connectivity[i]]
            values = []
            for kind, j in srcs:
                if kind == "x":
                    if j >= len(in_shapes):
                        raise ValueError(f"{where} reads external input {j} but in_shape gives only "
                                         f"{len(in_shapes)} input shape(s)")
                    values.append(jnp.zeros(in_shapes[j]))
                else:
                    values.append(outs[j])
            values = self._fill_back_edges(i, layer, srcs, values, assumed)
            self._check_merge(i, layer, srcs, values)
            states[i], outs[i] = init_layer(layer, merge_inputs(layer, values), keys[i], where)
        for i, j, shape in assumed:
            if tuple(outs[j].shape) != shape:
                srcs = [("x", e) for e in struct.input_layer_ids[i]] + [("l", s) for s in struct.input_connectivity[i]]
                values = [jnp.zeros(in_shapes[s]) if kind == "x" else outs[s] for kind, s in srcs]
                raise InputMergeError(self._merge_message(
                    i, srcs, values,
                    f"its input from {_source_name(layers, ('l', j))} (a feedback edge) has shape "
                    f"{tuple(outs[j].shape)}, but {describe_layer(i, layers[i])} needs {shape} there"))
        return states

    def _fill_back_edges(self, i, layer, srcs, values, assumed):
        """Sources not initialised yet (back edges, self-edges) get zeros of the shape the target needs."""
        if all(v is not None for v in values):
            return values
        known = [v for v in values if v is not None]
        branches = getattr(_entry_module(layer), "layers", None) if takes_input_list(layer) else None
        filled = []
        for k, (src, v) in enumerate(zip(srcs, values)):
            if v is None:
                shape = _expected_in_shape(branches[k]) if branches is not None and k < len(branches) else None
                if shape is None:
                    if not known:
                        raise ValueError(f"{describe_layer(i, layer)}: cannot infer the shape of its input "
                                         f"from {_source_name(self.layers, src)} (a back edge with no other "
                                         f"input); give the layer an external or earlier input")
                    shape = tuple(known[0].shape)
                assumed.append((i, src[1], shape))
                v = jnp.zeros(shape)
            filled.append(v)
        return filled

    def _merge_message(self, i, srcs, values, problem):
        layer = self.layers[i]
        got = ", ".join(f"{_source_name(self.layers, s)}: {tuple(v.shape)}" for s, v in zip(srcs, values))
        return (f"{describe_layer(i, layer)} cannot merge its inputs: {problem}. Inputs (external "
                f"first, then sources): {got}. To combine inputs of different shapes, make the target "
                f"a CompoundLayer(Parallel([layer_for_input_0, layer_for_input_1, ...]), ...) so each "
                f"input gets its own layer; inputs into any other layer are summed and must have the "
                f"same shape.")

    def _check_merge(self, i, layer, srcs, values):
        if len(values) < 2 and not takes_input_list(layer):
            return
        if takes_input_list(layer):
            branches = getattr(_entry_module(layer), "layers", [])
            if len(branches) != len(values):
                raise InputMergeError(self._merge_message(
                    i, srcs, values, f"its Parallel has {len(branches)} branches but it receives "
                                     f"{len(values)} input(s)"))
            return
        shapes = {tuple(v.shape) for v in values}
        if len(shapes) > 1:
            raise InputMergeError(self._merge_message(i, srcs, values, "the shapes differ, so they cannot be summed"))

    def _check_merges_at_construction(self):
        """Where the input shape is written in the first layer (a Linear), surface §8.2 errors now."""
        struct = self.graph_structure
        shapes = {}
        for i, ids in enumerate(struct.input_layer_ids):
            for e in ids:
                want = _expected_in_shape(_entry_module(self.layers[i]))
                if want is None or shapes.get(e, want) != want:
                    return
                shapes[e] = want
        if len(shapes) != struct.num_inputs:
            return
        try:
            jax.eval_shape(lambda: self.init_state([shapes[e] for e in range(struct.num_inputs)],
                                                   jrand.PRNGKey(0)))
        except InputMergeError:
            raise
        except Exception:  # other problems surface at init_state with the real in_shape
            pass

    # -- one call ----------------------------------------------------------------------------------

    def _check_call(self, states, xs: list, key, burnin) -> None:
        if key is None:
            raise TypeError("a PRNG key is required: model(states, x, key), e.g. key=jax.random.PRNGKey(0)")
        struct = self.graph_structure
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
            expected = jax.eval_shape(ft.partial(self.init_state, feat), key)
        except ValueError as e:
            whole = [tuple(x.shape) for x in xs]
            try:
                jax.eval_shape(ft.partial(self.init_state, whole), key)
            except Exception:
                raise ValueError(f"input feature shape {feat[0] if len(feat) == 1 else feat} does not fit "
                                 f"the model: {e}") from None
            raise ValueError(f"input of shape {whole[0] if len(whole) == 1 else whole} has no time axis: "
                             f"give x as (T, *in_shape), e.g. x[None] for one step") from None
        got_def, exp_def = jax.tree.structure(states), jax.tree.structure(expected)
        if got_def != exp_def:
            for i, layer in enumerate(self.layers):
                if i >= len(states) or jax.tree.structure(states[i]) != jax.tree.structure(expected[i]):
                    got = "missing" if i >= len(states) else jax.tree.structure(states[i])
                    raise ValueError(f"the states do not belong to this model: {describe_layer(i, layer)} "
                                     f"expects a state of structure {jax.tree.structure(expected[i])}, got "
                                     f"{got}; make them with model.init_state(in_shape, key)")
            raise ValueError(f"the states do not belong to this model: expected {len(expected)} layer "
                             f"states, got {len(states) if isinstance(states, (list, tuple)) else states!r}")
        for i, layer in enumerate(self.layers):
            gs = [tuple(jnp.shape(a)) for a in jax.tree.leaves(states[i])]
            es = [tuple(a.shape) for a in jax.tree.leaves(expected[i])]
            if gs != es:
                raise ValueError(f"{describe_layer(i, layer)}: state shapes {gs} do not match the input: with "
                                 f"input feature shape {feat[0] if len(feat) == 1 else feat} it expects {es}. "
                                 f"Were the states made by init_state for another in_shape (or model)?")

    def __call__(self, input_states, input_batch, key, burnin: int = 0):
        """Run the model over time. See the class docstring; ``burnin`` steps are run, their state
        is stop-gradient'ed and their outputs dropped."""
        single = not isinstance(input_batch, (list, tuple))
        xs = [input_batch] if single else list(input_batch)
        self._check_call(input_states, xs, key, burnin)
        plan = make_plan(self)
        if plan.path == "reference":
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

    def custom_loop_reason(self) -> Optional[str]:
        """Why this model must take the reference path whatever the backend (None if it need not)."""
        if self.forward_fn is not default_forward_fn:
            return "a custom forward_fn always takes the reference path"
        if self.loop_fn is not jax.lax.scan:
            return "a custom loop_fn always takes the reference path"
        return None
