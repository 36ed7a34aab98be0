"""Hidden activity of a model: every layer's outputs, firing rates, synaptic operations and an
energy estimate, and a firing-rate penalty for training (docs/toolkit.md).

A model call returns only its final layers' outputs. :func:`record` runs a copy of the model whose
``GraphStructure`` names every layer final (:func:`recorder`), so one call on the planned path (the
same plan, fused loops and all) returns every layer's output sequence. Every function here works
under ``jit`` and, for a batch, under ``jax.vmap`` / ``eqx.filter_vmap`` over the input (the results
get a batch axis).

**Compounds.** A ``CompoundLayer``'s output entry is the list of its sub-layers' outputs
(docs/semantics.md). :func:`record` reports, for layer ``i``, the value other layers read from it:
for a compound, its last sub-layer's output (the neuron of a recurrent ``CompoundLayer(Parallel(..),
LIF)``); ``sublayers=True`` gives the lists instead. A **spiking layer** is a neuron whose output
is its spike entry (LIF, IAF, SRM, SigmaDelta, ... - not SimpleLI, whose output is a membrane, nor
SpikeCounter), or a compound whose last sub-layer is one; :func:`firing_rates` reports those.

**Energy.** :func:`synaptic_ops` counts, per ``Linear``/``Conv`` layer, the synaptic operations the
layer performs on its actual inputs (each non-zero input entry times the outputs it reaches) and
the multiply-accumulates (MACs) the dense layer computes, and prices them with per-operation
energies from M. Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014
(45 nm, 32-bit float): add 0.9 pJ, multiply 3.7 pJ, so a MAC costs 4.6 pJ and an accumulate (AC, a
binary input selects a weight to add) 0.9 pJ - the constants SNN papers commonly use.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import equinox as eqx
import jax
import jax.numpy as jnp

from . import _checks
from .plan.protocol import AbstractParallel, is_compound, is_neuron, layer_output, merge_inputs, read_from_out
from .snn import GraphStructure, StatefulModel

__all__ = ["record", "recorder", "spiking_layers", "firing_rates", "synaptic_ops", "rate_penalty", "summary",
           "E_AC_PJ", "E_MAC_PJ"]

#: energy of one accumulate (32-bit float add, 45 nm; Horowitz, ISSCC 2014), picojoules
E_AC_PJ = 0.9
#: energy of one multiply-accumulate (32-bit float multiply 3.7 pJ + add 0.9 pJ, 45 nm; Horowitz, ISSCC 2014)
E_MAC_PJ = 4.6

SYNAPSES = (eqx.nn.Linear, eqx.nn.Conv)


def _model(fn: str, model) -> StatefulModel:
    if not isinstance(model, StatefulModel):
        raise TypeError(f"activity.{fn}: model must be an snn.StatefulModel (snn.Sequential, ...), "
                        f"got {type(model).__name__}")
    return model


def recorder(model) -> StatefulModel:
    """A copy of ``model`` (same layers, forward and loop functions) whose graph names every layer
    final: its call returns ``outs`` with one entry per layer, ``outs[i]`` the output sequence of
    ``model.layers[i]``. ``snnkern.explain(recorder(model), in_shape)`` shows its plan (the planned
    path whenever the model's is)."""
    g = _model("recorder", model).graph_structure
    struct = GraphStructure(g.num_layers, g.input_layer_ids, list(range(g.num_layers)), g.input_connectivity)
    return StatefulModel(struct, model.layers, forward_fn=model.forward_fn, loop_fn=model.loop_fn)


def record(model, states, x, key, burnin: int = 0, *, sublayers: bool = False) -> list:
    """Every layer's output sequence from one call: a list indexed like ``model.layers``, entry ``i``
    of shape ``(T - burnin, ...)`` (arguments as for ``model(states, x, key, burnin)``).

    A compound's entry is its last sub-layer's output (what other layers read); with
    ``sublayers=True`` it is the list of all its sub-layers' outputs, as a model call returns it."""
    _, outs = recorder(model)(states, x, key, burnin)
    if sublayers:
        return list(outs)
    return [read_from_out(layer, out) for layer, out in zip(model.layers, outs)]


def _exposed(layer):
    """The sub-layer whose output ``layer`` exposes (descending into compounds' last sub-layers)."""
    while is_compound(layer) and layer.layers:
        layer = layer.layers[-1]
    return layer


def is_spiking(layer) -> bool:
    """Whether the value ``layer`` exposes is a neuron's spike entry (see the module docstring)."""
    n = _exposed(layer)
    return (is_neuron(n) and bool(getattr(n, "output_is_last_state", False))
            and n.state_names[-1] in n.spike_states)


def spiking_layers(model) -> List[int]:
    """Indices of the spiking layers of ``model`` (the keys of :func:`firing_rates`)."""
    return [i for i, layer in enumerate(_model("spiking_layers", model).layers) if is_spiking(layer)]


def firing_rates(model, states, x, key, burnin: int = 0) -> Dict[int, jax.Array]:
    """``{layer index: mean firing rate}`` for every spiking layer (:func:`spiking_layers`): spikes
    per neuron per step, averaged over the ``T - burnin`` recorded steps and all neurons, in [0, 1]
    for binary spikes. One model call (:func:`record`)."""
    ids = spiking_layers(model)
    outs = record(model, states, x, key, burnin)
    return {i: jnp.mean(outs[i].astype(jnp.float32)) for i in ids}


def rate_penalty(spikes, low: float = 0.0, high: float = 1.0) -> jax.Array:
    """A differentiable penalty that is 0 while the mean rate of ``spikes`` lies in ``[low, high]``
    and grows quadratically outside: ``relu(low - r)**2 + relu(r - high)**2``, ``r = mean(spikes)``.

    ``spikes``: an array (e.g. a layer's ``(T, n)`` output from :func:`record`, whose spikes carry
    the surrogate gradient), or a list / dict of them: then the sum of their penalties, each on its
    own mean rate. Add it to the loss, times a weight, to keep layers sparse (``high``) or alive
    (``low``)."""
    arrays = list(spikes.values()) if isinstance(spikes, dict) else (
        list(spikes) if isinstance(spikes, (list, tuple)) else [spikes])
    if not arrays:
        raise ValueError("activity.rate_penalty: spikes is an empty list; give at least one spike array")
    if not 0.0 <= low <= high:
        raise ValueError(f"activity.rate_penalty: need 0 <= low <= high, got low={low}, high={high}")
    total = jnp.zeros((), jnp.float32)
    for k, s in enumerate(arrays):
        s = _checks.array("activity.rate_penalty", f"spikes[{k}]", s)
        if s.size == 0:
            raise ValueError(f"activity.rate_penalty: spikes[{k}] is empty (shape {tuple(s.shape)})")
        r = jnp.mean(s.astype(jnp.float32) if s.dtype.kind != "f" else s)
        total = total + jax.nn.relu(low - r) ** 2 + jax.nn.relu(r - high) ** 2
    return total


# ------------------------------------------------------------------------------------------------
# synaptic operations


def _layer_input(model, states, xs: list, outs: list, i: int):
    """What layer ``i`` receives at every step: its external inputs and its sources' outputs one step
    late (their initial outputs first), merged as the model merges them (docs/semantics.md)."""
    struct, layers = model.graph_structure, model.layers
    inputs = [xs[e] for e in struct.input_layer_ids[i]]
    for j in struct.input_connectivity[i]:
        seq = read_from_out(layers[j], outs[j])
        first = jnp.asarray(layer_output(layers[j], states[j]), seq.dtype)
        inputs.append(jnp.concatenate([first[None], seq[:-1]]))
    return merge_inputs(layers[i], inputs)


def _unrecorded(where: tuple, layer) -> NotImplementedError:
    return NotImplementedError(
        f"activity.synaptic_ops: the {type(layer).__name__} at {where} (layer, sub-layer / branch, ...) gets an "
        f"input that a model call does not return (it is inside a neuron, a ResNetBlock or a Parallel branch's "
        f"compound), so its operations cannot be counted; count the layers you can address with record()")


def _contains_synapse(layer) -> bool:
    leaves = jax.tree.leaves(layer, is_leaf=lambda n: isinstance(n, (*SYNAPSES, eqx.nn.ConvTranspose)))
    return any(isinstance(n, (*SYNAPSES, eqx.nn.ConvTranspose)) for n in leaves)


def _synapses(layer, inp, out, where: tuple):
    """``(where, layer, input sequence)`` for every Linear/Conv in ``layer`` (descending into
    compounds and Parallels); ``where`` is the path of indices (layer, sub-layer or branch, ...)."""
    if isinstance(layer, SYNAPSES):
        if inp is None:
            raise _unrecorded(where, layer)
        yield where, layer, inp
    elif is_compound(layer):
        for m, sub in enumerate(layer.layers):
            sub_in = inp if m == 0 else (None if out is None else read_from_out(layer.layers[m - 1], out[m - 1]))
            yield from _synapses(sub, sub_in, None if out is None else out[m], where + (m,))
    elif isinstance(layer, AbstractParallel):
        for k, branch in enumerate(layer.layers):
            yield from _synapses(branch, None if inp is None else inp[k], None, where + (k,))
    elif _contains_synapse(layer):
        raise _unrecorded(where, layer)


def _dense_macs_per_step(layer, x_t) -> int:
    """Multiply-accumulates of the dense layer on one step's input ``x_t`` (biases not counted)."""
    if isinstance(layer, eqx.nn.Linear):
        n_out = 1 if layer.out_features == "scalar" else int(layer.out_features)
        return int(math.prod(x_t.shape)) * n_out
    out = jax.eval_shape(layer, x_t)   # Conv: every output entry sums in_channels/groups x kernel volume terms
    return int(math.prod(out.shape)) * int(math.prod(layer.weight.shape[1:]))


def _synaptic_ops_of(layer, seq) -> jax.Array:
    """Synaptic operations on the sequence ``seq``: for every non-zero input entry, the outputs it
    reaches. A Linear: nnz x out_features. A Conv: exactly, borders, strides and groups included
    (the layer with all-one weights and no bias, applied to the non-zero indicator, sums to it)."""
    nz = (seq != 0)
    if isinstance(layer, eqx.nn.Linear):
        n_out = 1 if layer.out_features == "scalar" else int(layer.out_features)
        return jnp.sum(nz, dtype=jnp.float32) * n_out
    ones = eqx.tree_at(lambda l: l.weight, layer, jnp.ones_like(layer.weight))
    if ones.bias is not None:
        ones = eqx.tree_at(lambda l: l.bias, ones, jnp.zeros_like(ones.bias))
    return jnp.sum(jax.vmap(ones)(nz.astype(layer.weight.dtype)), dtype=jnp.float32)


def _count(layer, seq, e_ac: float, e_mac: float) -> dict:
    T = seq.shape[0]
    syn = _synaptic_ops_of(layer, seq)
    macs = jnp.float32(_dense_macs_per_step(layer, jax.ShapeDtypeStruct(seq.shape[1:], jnp.float32)) * T)
    spiking = jnp.all((seq == 0) | (seq == 1))   # binary input: an op is an accumulate, else a MAC
    return {"synaptic_ops": syn, "dense_macs": macs, "spiking_input": spiking,
            "energy_pj": syn * jnp.where(spiking, e_ac, e_mac), "dense_energy_pj": macs * e_mac}


def synaptic_ops(model, states, x, key, burnin: int = 0, *, e_ac: float = E_AC_PJ,
                 e_mac: float = E_MAC_PJ) -> Dict[tuple, Dict[str, jax.Array]]:
    """Per ``Linear`` / ``Conv`` layer, the work it does on this input over the ``T - burnin`` steps
    after the burn-in, and an energy estimate. Keys: the layer's path, ``(i,)`` for ``model.layers[i]``,
    ``(i, m, ...)`` for sub-layer ``m`` of a compound / branch ``m`` of a Parallel. Values: a dict of
    scalars (arrays, so it works under jit and vmap):

    - ``synaptic_ops``: for every non-zero input entry, the outputs it reaches (a Linear: its
      ``out_features``; a Conv: ``out_channels / groups`` x kernel volume, exactly, with fewer at the
      borders and strides) - the accumulates an event-driven implementation performs;
    - ``dense_macs``: the multiply-accumulates the dense layer computes, per step x steps (biases
      not counted);
    - ``spiking_input``: whether every input entry was 0 or 1;
    - ``energy_pj``: ``synaptic_ops x e_ac`` for a spiking input, ``x e_mac`` otherwise (a non-binary
      input needs a multiply); ``dense_energy_pj``: ``dense_macs x e_mac``.

    ``e_ac`` / ``e_mac`` default to :data:`E_AC_PJ` (0.9 pJ) / :data:`E_MAC_PJ` (4.6 pJ), 45 nm 32-bit
    float (M. Horowitz, ISSCC 2014). One model call (:func:`record`). A Linear/Conv whose input a
    model call does not return (inside a neuron, a ResNetBlock, ...) raises NotImplementedError."""
    model = _model("synaptic_ops", model)
    xs = list(x) if isinstance(x, (list, tuple)) else [x]
    outs = record(model, states, xs, key, sublayers=True)   # from step 0: inputs at t need outputs of t-1
    result = {}
    for i, layer in enumerate(model.layers):
        if not _contains_synapse(layer):
            continue
        inp = _layer_input(model, states, xs, outs, i)
        for where, syn, seq in _synapses(layer, inp, outs[i], (i,)):
            result[where] = _count(syn, seq[burnin:], e_ac, e_mac)
    return result


# ------------------------------------------------------------------------------------------------
# text summary


def _mean(v) -> float:
    return float(jnp.mean(jnp.asarray(v, jnp.float32)))


def _name(model, where) -> str:
    layer = model.layers[where[0]]
    for k in where[1:]:
        layer = layer.layers[k]
    path = ".".join(str(k) for k in where)
    return f"layer {path} ({type(layer).__name__})"


def summary(model, rates: Optional[dict] = None, ops: Optional[dict] = None, *, e_ac: float = E_AC_PJ,
            e_mac: float = E_MAC_PJ) -> str:
    """A few lines of text: the firing rates (:func:`firing_rates`), the synaptic operations, dense
    MACs and energy estimates (:func:`synaptic_ops`) per layer and in total. Batched results (from
    ``vmap``) are averaged over the batch: numbers per sample. ``e_ac`` / ``e_mac``: the constants
    ``ops`` was computed with (only printed)."""
    lines = []
    if rates:
        lines.append("firing rates (spikes per neuron per step): " + ", ".join(
            f"{_name(model, (i,))} {_mean(r):.3f}" for i, r in rates.items()))
    if ops:
        for where, o in ops.items():
            kind = "spiking" if _mean(o["spiking_input"]) == 1.0 else "non-binary"
            lines.append(f"{_name(model, where)}: {_mean(o['synaptic_ops']):.4g} synaptic ops ({kind} input) vs "
                         f"{_mean(o['dense_macs']):.4g} dense MACs per sample")
        e = sum(_mean(o["energy_pj"]) for o in ops.values())
        d = sum(_mean(o["dense_energy_pj"]) for o in ops.values())
        ratio = f", {d / e:.1f}x less" if e > 0 else ""
        lines.append(f"estimated energy per sample: {e / 1e3:.4g} nJ (synaptic ops) vs {d / 1e3:.4g} nJ (dense MACs)"
                     f"{ratio} [{e_ac:g} pJ/AC, {e_mac:g} pJ/MAC" + (
                         "; 45 nm, 32-bit float, Horowitz, ISSCC 2014]" if (e_ac, e_mac) == (E_AC_PJ, E_MAC_PJ) else "]"))
    return "\n".join(lines)

