"""A recurrent compound: ``CompoundLayer([Parallel([..., Linear_rec]), per-step layers..., neuron])``
with a self-edge arriving at the last branch, as one fused loop (docs/plans.md).

``I_t = sum of the feed-forward branches + W_rec r_{t-1} + b``: the feed-forward branches run before
the loop as GEMMs over all T·B rows; the loop forms the recurrent product per step, applies the
per-step layers (LayerNorm, Identity, Lambda, Dropout) to the current and steps the neuron; ``dW_rec``
is one GEMM after the loop. Implementations: the XLA loop (``kernels/recurrent.py``) and the Pallas
kernels (``kernels/pallas_recurrent.py``: W_rec on chip, or streamed per step on GPU).
"""
from __future__ import annotations

import functools as ft
import operator
from dataclasses import dataclass
from typing import ClassVar, Optional, Tuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jrand

from snnkern.kernels.tiling import RecTiling

from ..impl import Impl, choose_impl, fallback, kernel_target
from ..protocol import is_compound, is_neuron, is_stateful, takes_input_list
from ..seq import float_aval, float_input, gemm_seq, is_vector_linear, neuron_step, stateless_seq
from ..types import Step
from .base import KEY, CycleSite, CycleStrategy, Taken, fallback_mark, span

__all__ = ["RecurrentLoop", "recurrent_pattern", "chain_step", "PER_STEP_LAYERS"]

PER_STEP_LAYERS = (eqx.nn.LayerNorm, eqx.nn.Identity, eqx.nn.Lambda, eqx.nn.Dropout)


def recurrent_pattern(layer, n_inputs: int, self_pos: int) -> Optional[str]:
    """None if ``layer`` (with a self-edge arriving as input ``self_pos`` of ``n_inputs``) is a
    recognised recurrent chain, else why not."""
    if not is_compound(layer):
        return f"a {type(layer).__name__} in a cycle is not a recognised recurrent chain"
    subs = layer.layers
    if (len(subs) < 2 or not takes_input_list(subs[0]) or is_compound(subs[0]) or not is_neuron(subs[-1])
            or not all(type(m) in PER_STEP_LAYERS for m in subs[1:-1])):
        kinds = ", ".join(type(s).__name__ for s in subs)
        return (f"CompoundLayer([{kinds}]) is not CompoundLayer([Parallel([...]), per-step layers "
                f"(LayerNorm, Identity, Lambda, Dropout)..., neuron]); it runs as a per-step loop")
    branches = subs[0].layers
    if any(is_stateful(b) for b in branches):
        return "a Parallel branch is stateful"
    if self_pos != n_inputs - 1 or len(branches) != n_inputs:
        return "the self-edge does not arrive at the last Parallel branch"
    if n_inputs < 2:
        return "the recurrent compound has no feed-forward branch"
    rec = branches[-1]
    if type(rec) is not eqx.nn.Linear or rec.in_features == "scalar" or rec.out_features == "scalar":
        return f"the recurrent branch is a {type(rec).__name__}, not a vector eqx.nn.Linear"
    if rec.in_features != rec.out_features:
        return f"the recurrent Linear is {rec.in_features}->{rec.out_features}, not square"
    return None


def _per_row(module, h):
    """A per-step layer of an (n,) vector applied to every row of ``h`` (..., n)."""
    if h.ndim == 1:
        return module(h)
    return jax.vmap(module)(h.reshape(-1, h.shape[-1])).reshape(h.shape)


def _dropout_active(m) -> bool:
    """A Dropout that drops (training mode, p > 0): it needs its key."""
    return isinstance(m, eqx.nn.Dropout) and not m.inference and not (isinstance(m.p, (int, float)) and m.p == 0)


def _per_step_arrays(m, k, width):
    if _dropout_active(m):
        # eqx.nn.Dropout's own draw for an (n,) input: the same mask every step, as the reference draws it
        # from the compound's key at every step (docs/semantics.md "Keys")
        return {"mask": jax.random.bernoulli(k, 1.0 - jax.lax.stop_gradient(m.p), (width,)).astype(jnp.float32)}
    return eqx.filter(m, eqx.is_array)


def chain_step(layer, key=None):
    """``(step, params)`` of a recurrent chain's loop: the per-step layers between the Parallel and the
    neuron applied to the current ``I_t``, then the neuron's step. ``params`` holds the neuron's
    parameters and the per-step layers' arrays (a training-mode Dropout: its mask). ``key``: the
    compound's key (None when planning: only the mask's shape matters then)."""
    neuron, mids = layer.layers[-1], list(layer.layers[1:-1])
    nstep = neuron_step(neuron)
    if not mids:
        return nstep, neuron.params()
    skeletons = [eqx.filter(m, eqx.is_array, inverse=True) for m in mids]
    sub_keys = jax.random.split(KEY if key is None else key, len(layer.layers))[1:-1]
    width = layer.layers[0].layers[-1].out_features

    def step(p, s, x):
        h = x
        for arrays, skeleton in zip(p["per_step"], skeletons):
            if _dropout_active(skeleton):
                h = jnp.where(arrays["mask"] > 0, h / (1 - jax.lax.stop_gradient(skeleton.p)), 0)
            else:
                h = _per_row(eqx.combine(arrays, skeleton), h)
        return nstep(p["neuron"], s, h)

    return step, {"neuron": neuron.params(), "per_step": [_per_step_arrays(m, k, width) for m, k in zip(mids, sub_keys)]}


def _self_edge_why(site: CycleSite) -> Optional[str]:
    """None if the component is one layer with one self-edge forming a recognised recurrent chain."""
    if len(site.ids) != 1:
        return "a cycle through several layers runs as one per-step loop"
    (i,) = site.ids
    struct = site.planner.struct
    srcs = list(struct.input_connectivity[i])
    if srcs.count(i) != 1:
        return "several self-edges"
    n_ext = len(struct.input_layer_ids[i])
    return recurrent_pattern(site.planner.layers[i], n_ext + len(srcs), n_ext + srcs.index(i))


@dataclass(frozen=True)
class RecurrentLoop(CycleStrategy):
    """The recurrent compound's loop. ``want_cur``: emit the (T, n) currents (the Parallel's output)
    rather than only the last one; ``tiling`` (Pallas); ``resident_w``: W_rec kept on chip (Pallas;
    decided by its size); ``w_note``: where W_rec lives and why, as the plan shows it."""

    impl: Impl
    spike_idx: Tuple[int, ...] = ()
    want_out: bool = True
    want_cur: bool = True
    tiling: Optional[RecTiling] = None
    resident_w: Optional[bool] = None
    w_note: Optional[str] = None

    kind: ClassVar[str] = "recurrent-compound"
    is_loop: ClassVar[bool] = True

    @classmethod
    def take(cls, site: CycleSite) -> Taken:
        why = _self_edge_why(site)
        if why is not None:
            return why
        planner, (i,) = site.planner, site.ids
        layer = planner.layers[i]
        par, neuron = layer.layers[0], layer.layers[-1]
        where = f"layer {i} ({type(layer).__name__})"
        ff = jax.eval_shape(lambda *v: ft.reduce(operator.add, [b(x, key=KEY) for b, x in zip(par.layers[:-1], v)]),
                            *planner.inputs(i)[:-1])
        want = i in planner.final
        step, params = chain_step(layer)
        per_step = tuple(type(m).__name__ for m in layer.layers[1:-1])
        impl, tiling, resident, note, reason = _choose(f"{where} recurrence + neuron", step, params, planner,
                                                       planner.states[i][-1], float_aval(ff), par.layers[-1], per_step)
        spec = cls(impl, tuple(sorted(set(neuron.binary_state_entries()))), want, want, tiling, resident, note)
        names = " -> ".join(type(m).__name__ for m in layer.layers[1:])
        return Step(f"{where} recurrence -> {names}", spec, (i,), reason)

    def run_component(self, run, ids) -> None:
        (i,) = ids
        layer = run.layers[i]
        par, mids = layer.layers[0], layer.layers[1:-1]
        sub_keys = jrand.split(run.keys[i], len(layer.layers))
        ff, bias = _feed_forward(par, run.outside(i, ids)[:-1], jrand.split(sub_keys[0], len(par.layers)))
        step, params = chain_step(layer, run.keys[i])
        sT, out, cur, reads = self.loop(step, params, list(run.states[i][-1]), float_input(ff),
                                         par.layers[-1].weight, bias)
        # the compound reads as its neuron: reads = the shifted neuron output. A non-final compound keeps
        # only the last current (its Parallel's state); the per-step layers' outputs are recomputed from the
        # currents (stateless: the same values as in the loop)
        h, mid_outs = cur, []
        for m, k in zip(mids, sub_keys[1:-1]):
            h = stateless_seq(m, h, k)
            mid_outs.append(h)
        run.finals[i] = [[cur[-1]]] + [[o[-1]] for o in mid_outs] + [sT]
        run.shifted[i] = reads
        run.outs[i] = [cur, *mid_outs, out] if self.want_out else None

    def loop(self, step, params, state0: list, ff, w, b):
        """The loop over ``ff`` (one sample, (T, n); batched under vmap) as this spec says:
        ``(final_state, outs or None, I, reads)``."""
        from snnkern.kernels.recurrent import recurrent_loop
        impl = None
        if self.impl.is_pallas:
            from snnkern.kernels import pallas_recurrent
            impl = ft.partial(pallas_recurrent.recurrent_batched, interpret=self.impl is Impl.PALLAS_INTERPRET,
                              tiling=self.tiling, resident=self.resident_w)
        return recurrent_loop(step, params, state0, ff, w, b, self.spike_idx, want_out=self.want_out, impl=impl,
                              want_cur=self.want_cur)

    def detail(self) -> str:
        if self.tiling is None:
            return str(self.impl)
        w = self.w_note or ("W_rec on chip" if self.resident_w else "W_rec read per step")
        return f"{self.impl}, {self.tiling.target} tiling, {w}"

    def describe(self) -> str:
        return f"recurrent loop (custom VJP) [{self.detail()}], its feed-forward branches one GEMM over T·B rows"

    def summary(self, layer=None) -> str:
        return f"GEMM over T·B rows + fused recurrent loop ({self.detail()})"

    def chain_line(self, step: Step, layers) -> str:
        (i,) = step.address
        par, rest = layers[i].layers[0], layers[i].layers[1:]
        branches = [type(b).__name__ for b in par.layers]
        branches[-1] += "_rec"
        names = " -> ".join([f"Parallel([{', '.join(branches)}])"] + [type(m).__name__ for m in rest])
        return f"{span(step.address)}: recurrent chain {names}: {self.summary()}{fallback_mark(step)}"


def _feed_forward(par, seqs, keys):
    """The hoisted feed-forward branches: ``(sum of their products, summed bias)``. The Linear
    branches' biases join the recurrent bias, added inside the loop's step: the GEMMs then write their
    product only (no second (T, n) array with the bias added)."""
    ff, bias = None, par.layers[-1].bias
    for b, seq, k in zip(par.layers[:-1], seqs, keys):
        if is_vector_linear(b) and b.bias is not None and not isinstance(seq, (list, tuple)):
            o = gemm_seq(seq, b.weight)
            bias = b.bias if bias is None else bias + b.bias
        else:
            o = stateless_seq(b, seq, k)
        ff = o if ff is None else ff + o
    return ff, bias


def _choose(where, step, params, planner, state0, ff_step, rec, per_step):
    """``(impl, tiling, resident_w, w_note, reason)`` for the loop over ``ff_step`` per-step currents."""
    choice = choose_impl(where, planner.platform)
    if not choice.impl.is_pallas:
        return choice.impl, None, None, None, choice.reason
    from snnkern.kernels import pallas_recurrent as pr
    target, rules = kernel_target(choice.impl, planner.platform)
    batched = [jax.ShapeDtypeStruct((1,) + tuple(s.shape), s.dtype) for s in state0]
    ff1 = jax.ShapeDtypeStruct((1, planner.T) + tuple(ff_step.shape), ff_step.dtype)
    why = pr.unsupported(step, params, batched, ff1, rec.weight, rec.bias, rules)
    n, tiling = int(ff_step.shape[-1]), RecTiling.get_default(target)
    if why is None and per_step and tiling.n_pad(n) != n:
        why = (f"the per-step layers {', '.join(per_step)} inside the recurrence need every lane of a kernel "
               f"row to be a real neuron; {n} neurons are padded to {tiling.n_pad(n)}")
    if why is None and per_step and isinstance(params, dict) and jax.tree.leaves(params.get("per_step")):
        why = f"the per-step layers {', '.join(per_step)} have parameters (the kernels tile only the neuron's)"
    resident = note = None
    if why is None:   # W_rec on chip, or (GPU, large n) streamed per step: the choice and its reason
        resident, note, why = pr.plan_w(n, pr.dot_dtype_of(state0[-1].dtype, rec.weight.dtype), target, per_step)
    if why is not None:
        return Impl.XLA, None, None, None, fallback(where, "xla", why)
    return choice.impl, tiling, resident, note, choice.reason
