"""The floor of a configuration (BENCH.md "What to time" 7): its parts timed alone at the model's shapes.

Walking the model's layers in order, each ``Linear`` is one GEMM over all T*B rows (``x @ W^T``;
backward ``dW = g^T x`` and, unless it reads the external input, ``dX = g W``), each neuron is the
XLA neuron loop the planned path runs (``NeuronLoop.loop`` of the spec ``explain()``
gives, vmapped over the batch like the model), and each recurrent compound is its feed-forward
GEMM(s) plus the recurrent loop (``RecurrentLoop.loop``). The inputs of every part are the
values the model computes (so the neurons spike as in the model). ``floor_fwd`` is the sum of the
forward parts, ``floor_fwdbwd`` the sum of the GEMMs' forward and backward and the loops'
forward+backward: a path at 1.0x of it spends nothing besides its parts.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import equinox as eqx
import jax
import jax.numpy as jnp

import snnkern
from snnkern import snn
from snnkern.plan.seq import neuron_step
from snnkern.plan.strategies.recurrent import chain_step
from snnkern.plan.protocol import is_compound, is_neuron

from . import timing

__all__ = ["KINDS", "Part", "parts", "measure", "tbn_bytes"]

KINDS = ("ff", "rec", "recmlp")      # the models whose parts this module knows


def tbn_bytes(T: int, B: int, N: int) -> int:
    """Bytes of one (T, B, N) float32 array: the unit of the ``mem_TBN`` column."""
    return 4 * T * B * N


class Part:
    """One part: a name and its two compiled timings, ``fwd`` and ``extra`` (the GEMM's backward, or
    the loop's forward+backward); ``fwdbwd_is_extra``: the loop's fwd+bwd already holds its forward."""

    def __init__(self, name: str, fwd: Callable[[], object], extra: Callable[[], object], fwdbwd_is_extra: bool,
                 fwd_bytes: int = 0):
        self.name, self.fwd, self.extra, self.fwdbwd_is_extra = name, fwd, extra, fwdbwd_is_extra
        self.fwd_bytes = fwd_bytes     # a loop's forward: the bytes its sequences move (input read + output written)


def _compiled(fn, *args) -> Callable[[], object]:
    c = timing.compile_under("xla", fn, *args).fn
    return lambda: c(*args)


def _gemm(name: str, x, w, b, need_dx: bool) -> Tuple[Part, jax.Array]:
    """``x`` (B, T, i) @ ``w.T`` (+ b): one GEMM over B*T rows; backward dW (+ dX)."""
    def fwd(x, w):
        y = jnp.einsum("bti,oi->bto", x, w)
        return y if b is None else y + b

    def bwd(g, x, w):
        dw = jnp.einsum("bto,bti->oi", g, x)
        return (dw, jnp.einsum("bto,oi->bti", g, w)) if need_dx else dw

    y = jax.jit(fwd)(x, w)
    g = jnp.ones_like(y)
    return Part(name, _compiled(fwd, x, w), _compiled(bwd, g, x, w), False), y


def _neuron(name: str, spec, layer, state0, cur) -> Tuple[Part, jax.Array]:
    """The neuron's loop over ``cur`` (B, T, n), vmapped over the batch; gradients to its
    parameters and its input current (the model needs both)."""
    step = neuron_step(layer)
    dyn, static = eqx.partition(layer.params(), eqx.is_inexact_array)

    def fwd(d, xs):
        p = eqx.combine(d, static)

        def one(x1):     # a non-final neuron emits only the read sequence its consumer takes
            _, outs, reads = spec.loop(step, p, list(state0), x1)
            return reads if outs is None else outs
        return jax.vmap(one)(xs)

    def loss(d, xs):
        return jnp.sum(fwd(d, xs))

    vg = jax.value_and_grad(loss, argnums=(0, 1))
    out = jax.jit(fwd)(dyn, cur)
    return Part(name, _compiled(fwd, dyn, cur), _compiled(vg, dyn, cur), True, cur.nbytes + out.nbytes), out


def _recurrent(name: str, spec, layer, state0, ff) -> Tuple[Part, jax.Array]:
    """The recurrent compound's loop over its feed-forward current ``ff`` (B, T, n), vmapped;
    gradients to the loop's parameters, ``ff`` and the recurrent weight and bias."""
    step, params = chain_step(layer)
    rec = layer.layers[0].layers[-1]
    dyn, static = eqx.partition(params, eqx.is_inexact_array)

    def fwd(d, ff, w, b):
        p = eqx.combine(d, static)

        def one(f1):
            _, outs, _, reads = spec.loop(step, p, list(state0), f1, w, b)
            return reads if outs is None else outs
        return jax.vmap(one)(ff)

    def loss(d, ff, w, b):
        return jnp.sum(fwd(d, ff, w, b))

    vg = jax.value_and_grad(loss, argnums=(0, 1, 2, 3))
    args = (dyn, ff, rec.weight, rec.bias)
    out = jax.jit(fwd)(*args)
    # the consumer reads the spikes (shifted by one step; the shift changes no timing)
    return Part(name, _compiled(fwd, *args), _compiled(vg, *args), True), out


def _spec_at(plan, address) -> Optional[object]:
    return next((s.spec for s in plan.steps if s.address == address and s.spec.is_loop), None)


def parts(spec, x) -> List[Part]:
    """The parts of ``spec.model`` (a ``Sequential`` / ``SequentialLocalFeedback`` chain) on input
    ``x`` (B, T, N_in), in layer order. Raises ValueError for a layer it does not know."""
    model = spec.model
    with snnkern.backend("xla"):
        plan = snnkern.explain(model, spec.in_shape)
    states = model.init_state(spec.in_shape, jax.random.PRNGKey(0))
    h, out, first = jnp.asarray(x), [], True
    for i, layer in enumerate(model.layers):
        where = f"layer {i} ({type(layer).__name__})"
        if isinstance(layer, snn.Flatten) and h.ndim == 3:
            continue                              # a vector per step already: nothing to do
        if isinstance(layer, eqx.nn.Linear):
            p, h = _gemm(f"gemm{i}", h, layer.weight, layer.bias, need_dx=not first)
        elif is_neuron(layer):
            lspec = _spec_at(plan, (i,))
            if lspec is None:
                raise ValueError(f"{where}: the plan has no neuron loop for it")
            p, h = _neuron(f"loop{i}", lspec, layer, states[i], h)
        elif is_compound(layer) and isinstance(layer.layers[0], snn.Parallel):
            lspec = _spec_at(plan, (i,))
            if lspec is None:
                raise ValueError(f"{where}: the plan has no recurrent loop for it")
            ff = None
            for m, br in enumerate(layer.layers[0].layers[:-1]):
                if not isinstance(br, eqx.nn.Linear):
                    raise ValueError(f"{where}: branch {m} is a {type(br).__name__}, not a Linear")
                p, y = _gemm(f"gemm{i}.{m}", h, br.weight, br.bias, need_dx=not first)
                out.append(p)
                ff = y if ff is None else ff + y
            p, h = _recurrent(f"rec{i}", lspec, layer, states[i][-1], ff)
        else:
            raise ValueError(f"{where}: no floor part for this layer type (floor models: {', '.join(KINDS)})")
        out.append(p)
        first = False
    return out


def measure(spec, x, **timing_kw) -> Dict[str, object]:
    """``floor_fwd_s``, ``floor_fwdbwd_s`` (sums of the parts' medians) and ``floor_parts`` (text:
    each part's fwd / fwd+bwd ms), the parts timed alternating in this process."""
    ps = parts(spec, x)
    calls = {}
    for p in ps:
        calls[p.name + " fwd"] = p.fwd
        calls[p.name + " extra"] = p.extra
    st = timing.measure_interleaved(calls, **timing_kw)
    fwd_total = fwdbwd_total = 0.0
    text = []
    for p in ps:
        f, e = st[p.name + " fwd"].median, st[p.name + " extra"].median
        fb = e if p.fwdbwd_is_extra else f + e
        fwd_total += f
        fwdbwd_total += fb
        rate = f" ({p.fwd_bytes / f / 1e9:.2g} GB/s)" if p.fwd_bytes else ""
        text.append(f"{p.name} {f * 1e3:.3g}/{fb * 1e3:.3g}{rate}")
    return {"floor_fwd_s": fwd_total, "floor_fwdbwd_s": fwdbwd_total,
            "floor_parts": "; ".join(text) + " (ms fwd/fwd+bwd; a neuron loop's forward GB/s: its input read + "
                           "output written)"}
