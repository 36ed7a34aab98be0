"""Composed models and layers (docs/semantics.md "Composed models"): Sequential, Parallel,
CompoundLayer, SequentialLocalFeedback. Each constructor takes both ``(*layers)`` and ``(layers_list)``."""
from __future__ import annotations

from typing import Callable, Dict, Optional

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jrand

from ..plan.protocol import (AbstractCompound, AbstractParallel, call_layer, is_stateful, layer_output,
                             read_from_out)
from .architecture import GraphStructure, StatefulModel, apply_stateless, default_forward_fn, init_layer
from .architecture import ForwardFn  # noqa: F401 (snnax's names here)
from .layers.stateful import RequiresStateLayer, StateShape, StatefulLayer, default_init_fn  # noqa: F401

__all__ = ["Sequential", "Parallel", "CompoundLayer", "SequentialLocalFeedback", "gen_feed_forward_struct"]


def _layer_list(owner: str, args: tuple) -> list:
    if len(args) == 1 and isinstance(args[0], (list, tuple)):
        args = tuple(args[0])
    if not args:
        raise ValueError(f"{owner} needs at least one layer")
    for i, layer in enumerate(args):
        if not isinstance(layer, eqx.Module):
            hint = " (wrap a function in eqx.nn.Lambda)" if callable(layer) else ""
            raise TypeError(f"{owner}: layer {i} is a {type(layer).__name__}, not an equinox Module{hint}")
    return list(args)


def gen_feed_forward_struct(num_layers: int) -> GraphStructure:
    """Layer 0 reads external input 0; layer i reads layer i-1."""
    return GraphStructure(num_layers, input_layer_ids=[(0,)] + [()] * (num_layers - 1),
                          input_connectivity=[()] + [(i,) for i in range(num_layers - 1)])


class Sequential(StatefulModel):
    """A feed-forward chain. ``Sequential(*layers)`` or ``Sequential(layers_list)``.

    Every edge is delayed by one step (docs/semantics.md "Time"): with L layers the output lags the
    input by L-1 steps.
    """

    def __init__(self, *layers, forward_fn: Callable = default_forward_fn, loop_fn: Callable = jax.lax.scan):
        layers = _layer_list("Sequential", layers)
        super().__init__(gen_feed_forward_struct(len(layers)), layers, forward_fn=forward_fn, loop_fn=loop_fn)

    def __getitem__(self, idx):
        return self.layers[idx]

    def __len__(self) -> int:
        return len(self.layers)


class SequentialLocalFeedback(StatefulModel):
    """A feed-forward chain plus feedback edges (which snnax builds and then drops; here they work).

    ``feedback_layers=None``: every ``CompoundLayer`` gets a self-edge. ``{k: l}``: layer ``l`` also
    receives the previous-step output of layer ``k``, after its feed-forward input.
    """

    def __init__(self, *layers, forward_fn: Callable = default_forward_fn,
                 feedback_layers: Optional[Dict[int, int]] = None, loop_fn: Callable = jax.lax.scan):
        layers = _layer_list("SequentialLocalFeedback", layers)
        n = len(layers)
        ff = gen_feed_forward_struct(n)
        conn = [list(c) for c in ff.input_connectivity]
        if feedback_layers is None:
            for i, layer in enumerate(layers):
                if isinstance(layer, CompoundLayer):
                    conn[i].append(i)
        else:
            if not isinstance(feedback_layers, dict):
                raise TypeError(f"feedback_layers must be a dict {{source: target}} or None, got "
                                f"{type(feedback_layers).__name__}")
            for k, l in feedback_layers.items():
                for role, idx in (("source", k), ("target", l)):
                    if not isinstance(idx, int) or not 0 <= idx < n:
                        raise ValueError(f"feedback_layers {{{k}: {l}}}: {role} {idx!r} is not a layer id "
                                         f"in 0..{n - 1}")
                conn[l].append(k)
        graph = GraphStructure(n, input_layer_ids=ff.input_layer_ids, input_connectivity=conn)
        super().__init__(graph, layers, forward_fn=forward_fn, loop_fn=loop_fn)

    def __getitem__(self, idx):
        return self.layers[idx]

    def __len__(self) -> int:
        return len(self.layers)


class Parallel(AbstractParallel):
    """Branches side by side: input k goes to branch k; the result is the sum of their outputs.

    ``Parallel(*layers)`` or ``Parallel(layers_list)``. Standalone: ``par([x0, x1, ...])``. As a
    model layer (or the first sub-layer of a ``CompoundLayer``) it receives the list of the layer's
    inputs (external first, then sources). Branches may be stateful; then the Parallel is too, with
    state ``[branch_states, output]``, and is called as ``par(state, inputs)``.
    """

    layers: list

    def __init__(self, *layers):
        self.layers = _layer_list("Parallel", layers)

    @property
    def has_state(self) -> bool:
        """Whether a branch is stateful (then so is the Parallel)."""
        return is_stateful(self)

    def _check_count(self, inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) != len(self.layers):
            got = f"{len(inputs)} inputs" if isinstance(inputs, (list, tuple)) else f"a single {type(inputs).__name__}"
            raise ValueError(f"Parallel with {len(self.layers)} branches needs a list of {len(self.layers)} "
                             f"inputs (input k goes to branch k), got {got}")

    def _sum(self, outs):
        try:
            jnp.broadcast_shapes(*[jnp.shape(o) for o in outs])
        except ValueError:
            raise ValueError("Parallel: branch outputs do not broadcast to one shape: "
                             f"{[tuple(jnp.shape(o)) for o in outs]}") from None
        total = outs[0]
        for o in outs[1:]:
            total = total + o
        return total

    def init_state(self, shape, key=None) -> list:
        keys = jrand.split(jrand.PRNGKey(0) if key is None else key, len(self.layers))
        if not isinstance(shape, (list, tuple)) or not all(isinstance(s, (list, tuple)) for s in shape):
            shape = [shape]
        self._check_count(shape)
        states, outs = [], []
        for m, (b, s, k) in enumerate(zip(self.layers, shape, keys)):
            st, out = init_layer(b, jnp.zeros(s), k, f"Parallel branch {m} ({type(b).__name__})")
            states.append(st)
            outs.append(out if not is_stateful(b) else layer_output(b, st))
        return [states, self._sum(outs)]

    def __call__(self, *args, key=None):
        if len(args) == 1:
            inputs = args[0]
            self._check_count(inputs)
            if self.has_state:
                raise TypeError("this Parallel has stateful branches: call it as par(state, inputs) with "
                                "state = par.init_state(shapes, key), or use it inside a model")
            keys = [None] * len(self.layers) if key is None else list(jrand.split(key, len(self.layers)))
            return self._sum([apply_stateless(b, x, k, f"Parallel branch {m} ({type(b).__name__})")
                              for m, (b, x, k) in enumerate(zip(self.layers, inputs, keys))])
        if len(args) != 2:
            raise TypeError("Parallel is called as par(inputs) or, with stateful branches, par(state, inputs)")
        state, inputs = args
        self._check_count(inputs)
        keys = [None] * len(self.layers) if key is None else list(jrand.split(key, len(self.layers)))
        branch_states, outs = [], []
        for b, st, x, k in zip(self.layers, state[0], inputs, keys):
            ns, out = call_layer(b, st, x, k)
            branch_states.append(ns)
            outs.append(read_from_out(b, out))  # a compound branch contributes its last sub-output
        out = self._sum(outs)
        return [branch_states, out], out


class CompoundLayer(StatefulLayer, AbstractCompound):
    """Sub-layers chained *within* a time step (no delay), addressed as one layer.

    ``CompoundLayer(*layers)``, ``CompoundLayer(layers_list)`` or ``CompoundLayer(layers_list, init_fn)``.
    State: the list of sub-states (a stateless sub-layer keeps ``[its output]``). ``__call__`` returns
    ``(new_states, list_of_all_sub_outputs)``. Other layers read the last sub-layer's output. Shape-
    changing compounds work; a first sub-layer that is a ``Parallel`` receives the list of inputs.
    """

    layers: list

    def __init__(self, *layers, init_fn: Optional[Callable] = None):
        if len(layers) == 2 and isinstance(layers[0], (list, tuple)) and not isinstance(layers[1], eqx.Module):
            layers, init_fn = (layers[0],), layers[1]
        elif len(layers) > 1 and callable(layers[-1]) and not isinstance(layers[-1], eqx.Module):
            layers, init_fn = layers[:-1], layers[-1]
        self.layers = _layer_list("CompoundLayer", layers)
        super().__init__(init_fn=init_fn if init_fn is not None else default_init_fn)

    def init_state(self, shape, key=None, *args, **kwargs) -> list:
        keys = jrand.split(jrand.PRNGKey(0) if key is None else key, len(self.layers))
        if isinstance(shape, (list, tuple)) and shape and all(isinstance(s, (list, tuple)) for s in shape):
            x = [jnp.zeros(s) for s in shape]
        else:
            x = jnp.zeros(shape)
        states = []
        for m, (sub, k) in enumerate(zip(self.layers, keys)):
            where = f"CompoundLayer sub-layer {m} ({type(sub).__name__})"
            st, out = init_layer(sub, x, k, where)
            states.append(st)
            x = jax.tree.map(jnp.zeros_like, out)
        return states

    def __call__(self, state, synaptic_input, *, key=None):
        keys = [None] * len(self.layers) if key is None else list(jrand.split(key, len(self.layers)))
        h, new_states, outs = synaptic_input, [], []
        for sub, st, k in zip(self.layers, state, keys):
            ns, h = call_layer(sub, st, h, k)
            new_states.append(ns)
            outs.append(h)
        return new_states, outs
