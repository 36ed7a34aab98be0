"""The C++ source of one neuron's native loops, generated from its step function and the step's VJP.

The step ``step(params, state, x) -> (new_state, out)`` is traced with ``jax.make_jaxpr`` at scalar
shapes (it is elementwise over neurons), and so is ``jax.vjp`` of it (the surrogate spike function is
a ``custom_jvp``: its derivative is in that jaxpr). Each becomes the body of a loop over a block of
``SNN_BLK`` neurons, inside the loop over time: the block's state stays in registers / L1 for all T
steps (``snnkern_native.h`` describes the job; ``runtime.cc`` hands the blocks out).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .codegen import NativeUnsupported, c_type, lower

__all__ = ["Traced", "trace", "source", "check_elementwise"]

# primitives a step may apply to whole arrays and still be elementwise over neurons
_ELEMENTWISE_SHAPING = ("broadcast_in_dim", "reshape", "squeeze", "expand_dims")


@dataclass(frozen=True)
class Traced:
    """A step's scalar jaxprs: ``fwd(p..., s..., x) -> (s'..., out)`` and
    ``vjp(p..., s..., x, g_s'..., g_out) -> (g_p..., g_s..., g_x)``."""

    fwd: object
    vjp: object
    np: int
    ns: int
    dtype: str


def _flat_step(step, static, d_def, n_p: int, n_s: int):
    def f(*flat):
        d = jax.tree.unflatten(d_def, flat[:n_p])
        new, out = step(eqx.combine(d, static), list(flat[n_p:n_p + n_s]), flat[n_p + n_s])
        if len(new) != n_s:
            raise NativeUnsupported(f"the step returns {len(new)} state entries for {n_s}")
        return (*new, out)

    return f


def check_elementwise(step, static, dyn, state0, x_aval) -> None:
    """Raise :class:`NativeUnsupported` unless the step, traced at the real (one-sample) shapes, only
    uses primitives that act elementwise (a reduction over neurons would be wrong at scalar shapes)."""
    d_leaves, d_def = jax.tree.flatten(dyn)
    f = _flat_step(step, static, d_def, len(d_leaves), len(state0))
    shape = tuple(x_aval.shape)
    closed = jax.make_jaxpr(f)(*d_leaves, *[jax.ShapeDtypeStruct(s.shape, s.dtype) for s in state0], x_aval)
    for v in closed.jaxpr.outvars:
        if tuple(v.aval.shape) != shape:
            raise NativeUnsupported(f"the step returns a value of shape {tuple(v.aval.shape)} for neurons of shape "
                                    f"{shape}: not elementwise")
    _check_eqns(closed.jaxpr, shape)


def _broadcasts(src, dst) -> bool:
    try:
        return jnp.broadcast_shapes(tuple(src), tuple(dst)) == tuple(dst)
    except ValueError:
        return False


def _nonunit(shape) -> tuple:
    return tuple(n for n in shape if n != 1)


def _check_eqns(jaxpr, shape) -> None:
    """Shaping primitives may only add or drop unit axes (a parameter broadcast to the neurons);
    every other primitive must take operands of its result's shape (no reduction, no contraction)."""
    from .codegen import _CALLS, _sub_jaxpr
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in _CALLS:
            sub = _sub_jaxpr(eqn)
            _check_eqns(getattr(sub, "jaxpr", sub), shape)
            continue
        for v in eqn.outvars:
            s = tuple(v.aval.shape)
            ins = [tuple(getattr(a.aval, "shape", ())) for a in eqn.invars]
            fits = _broadcasts(s, shape)
            if name in _ELEMENTWISE_SHAPING:
                ok = fits and all(name == "broadcast_in_dim" or _nonunit(i) == _nonunit(s) for i in ins)
            else:
                ok = fits and all(_broadcasts(i, s) for i in ins)
            if not ok:
                raise NativeUnsupported(f"primitive {name!r} (operands {ins}, result {s} for neurons of shape "
                                        f"{shape}) is not elementwise")


def trace(step, static, dyn, state0, x_aval) -> Traced:
    """The scalar jaxprs of ``step`` and of its VJP (see :class:`Traced`)."""
    dtype = np.dtype(x_aval.dtype)
    c_type(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise NativeUnsupported(f"input dtype {dtype.name} is not supported by the native loops (float32, float64)")
    d_leaves, d_def = jax.tree.flatten(dyn)
    for what, arrs in (("parameter", d_leaves), ("state entry", state0)):
        for a in arrs:
            if np.dtype(a.dtype) != dtype:
                raise NativeUnsupported(f"a {what} of dtype {np.dtype(a.dtype).name} with a {dtype.name} input: the "
                                        "native loops take one float dtype")
    n_p, n_s = len(d_leaves), len(state0)
    if n_p > 16 or n_s > 16:
        raise NativeUnsupported("more than 16 parameters or state entries")
    f = _flat_step(step, static, d_def, n_p, n_s)
    z = jax.ShapeDtypeStruct((), dtype)
    fwd = jax.make_jaxpr(f)(*[z] * (n_p + n_s + 1))

    def vjp(*flat):
        _, pull = jax.vjp(f, *flat[:n_p + n_s + 1])
        return pull(tuple(flat[n_p + n_s + 1:]))

    bwd = jax.make_jaxpr(vjp)(*[z] * (n_p + 2 * n_s + 2))
    return Traced(fwd, bwd, n_p, n_s, dtype.name)


def _block_loads(tr: Traced, t: str) -> List[str]:
    lines = [f"{t} P{k}[SNN_BLK];" for k in range(tr.np)]
    lines += [f"for (int64_t i = 0; i < nb; ++i) P{k}[i] = (({t}*)j->p[{k}])[row + i];" for k in range(tr.np)]
    return lines


def _fwd_block(tr: Traced, t: str) -> List[str]:
    ns = tr.ns
    ins = [f"P{k}[i]" for k in range(tr.np)] + [f"S{k}[i]" for k in range(ns)] + ["xt[i]"]
    body, outs = lower(tr.fwd, [f"a{k}" for k in range(len(ins))])
    lines = _block_loads(tr, t) + [f"{t} S{k}[SNN_BLK];" for k in range(ns)] + [f"{t} O[SNN_BLK];"]
    lines += [f"for (int64_t i = 0; i < nb; ++i) S{k}[i] = (({t}*)j->s0[{k}])[row + i];" for k in range(ns)]
    lines += ["for (int64_t t = 0; t < nT; ++t) {", "const int64_t off = (b * nT + t) * N + n0;",
              f"const {t}* xt = ({t}*)j->x + off;"]
    for k in range(ns):
        lines += [f"if (j->res[{k}]) {{ if (j->spike_mask >> {k} & 1) {{ bool* r = (bool*)j->res[{k}] + off;",
                  f"for (int64_t i = 0; i < nb; ++i) r[i] = S{k}[i] != 0; }}",
                  f"else std::memcpy(({t}*)j->res[{k}] + off, S{k}, nb * sizeof({t})); }}"]
    lines += [f"if (j->read) std::memcpy(({t}*)j->read + off, S{ns - 1}, nb * sizeof({t}));",
              "for (int64_t i = 0; i < nb; ++i) {"]
    lines += [f"const {t} a{k} = {e};" for k, e in enumerate(ins)] + body
    lines += [f"S{k}[i] = {outs[k]};" for k in range(ns)] + [f"O[i] = {outs[ns]};", "}"]
    lines += [f"if (j->out) std::memcpy(({t}*)j->out + off, O, nb * sizeof({t}));", "}"]
    lines += [f"std::memcpy(({t}*)j->sT[{k}] + row, S{k}, nb * sizeof({t}));" for k in range(ns)]
    return lines


def _entering(k: int, last: bool, t: str) -> List[str]:
    """Fill ``E{k}`` with state entry k entering step t (see the residual policy in loop.py)."""
    copy = "std::memcpy(E{k}, ({t}*){src}, nb * sizeof({t}));"
    lines = []
    if last:
        lines += [f"if (j->last_from == 1) {copy.format(k=k, t=t, src='j->last + off')}",
                  f"else if (j->last_from == 2) {{ if (t == 0) {copy.format(k=k, t=t, src=f'j->s0[{k}] + row')}",
                  f"else {copy.format(k=k, t=t, src='j->last + off - N')} }}", "else "]
    lines += [f"if (t == 0) {copy.format(k=k, t=t, src=f'j->s0[{k}] + row')}",
              f"else if (j->spike_mask >> {k} & 1) {{ const uint8_t* r = (const uint8_t*)j->res_in[{k}] + off;",
              f"for (int64_t i = 0; i < nb; ++i) E{k}[i] = ({t})r[i]; }}",
              f"else {copy.format(k=k, t=t, src=f'j->res_in[{k}] + off')}"]
    return lines


def _bwd_block(tr: Traced, t: str) -> List[str]:
    n_p, ns = tr.np, tr.ns
    ins = ([f"P{k}[i]" for k in range(n_p)] + [f"E{k}[i]" for k in range(ns)] + ["xt[i]"]
           + [f"G{k}[i]" for k in range(ns)] + ["GO[i]"])
    body, outs = lower(tr.vjp, [f"a{k}" for k in range(len(ins))])
    lines = _block_loads(tr, t) + [f"{t} GP{k}[SNN_BLK] = {{}};" for k in range(n_p)]
    lines += [f"{t} E{k}[SNN_BLK]; {t} G{k}[SNN_BLK];" for k in range(ns)] + [f"{t} GO[SNN_BLK];"]
    lines += [f"std::memcpy(G{k}, ({t}*)j->g_sT[{k}] + row, nb * sizeof({t}));" for k in range(ns)]
    lines += ["for (int64_t t = nT - 1; t >= 0; --t) {", "const int64_t off = (b * nT + t) * N + n0;",
              f"const {t}* xt = ({t}*)j->x + off;", f"{t}* gx = ({t}*)j->g_x + off;"]
    for k in range(ns):
        lines += _entering(k, k == ns - 1, t)
    lines += [f"if (j->g_out) std::memcpy(GO, ({t}*)j->g_out + off, nb * sizeof({t}));",
              "else for (int64_t i = 0; i < nb; ++i) GO[i] = 0;", "for (int64_t i = 0; i < nb; ++i) {"]
    lines += [f"const {t} a{k} = {e};" for k, e in enumerate(ins)] + body
    lines += [f"GP{k}[i] = GP{k}[i] + {outs[k]};" for k in range(n_p)]
    lines += [f"G{k}[i] = {outs[n_p + k]};" for k in range(ns)] + [f"gx[i] = {outs[n_p + ns]};", "}"]
    lines += [f"if (j->g_read) {{ const {t}* gr = ({t}*)j->g_read + off;",
              f"for (int64_t i = 0; i < nb; ++i) G{ns - 1}[i] = G{ns - 1}[i] + gr[i]; }}", "}"]
    lines += [f"std::memcpy(({t}*)j->g_p[{k}] + row, GP{k}, nb * sizeof({t}));" for k in range(n_p)]
    lines += [f"std::memcpy(({t}*)j->g_s0[{k}] + row, G{k}, nb * sizeof({t}));" for k in range(ns)]
    return lines


def source(tr: Traced) -> str:
    """The translation unit of one neuron's kernels (no FFI header: the runtime decodes the call)."""
    t = c_type(tr.dtype)
    head = "extern \"C\" void snn_{d}_block(const SnnJob* j, int64_t b, int64_t n0, int64_t nb) {{"
    start = ["const int64_t nT = j->T, N = j->N, row = b * N + n0;"]
    parts = ["// generated by snnkern.kernels.native from a neuron step (do not edit)", "#include <cmath>",
             "#include <cstring>", "#include <limits>", '#include "snnkern_native.h"', ""]
    for d, block in (("fwd", _fwd_block), ("bwd", _bwd_block)):
        parts += [head.format(d=d)] + start + block(tr, t) + ["}", ""]
    parts += [f"static const SnnKernel kernel = {{{tr.np}, {tr.ns}, sizeof({t}), snn_fwd_block, snn_bwd_block}};",
              'extern "C" XLA_FFI_Error* snn_fwd(XLA_FFI_CallFrame* f) { return snnkern_native_fwd(f, &kernel); }',
              'extern "C" XLA_FFI_Error* snn_bwd(XLA_FFI_CallFrame* f) { return snnkern_native_bwd(f, &kernel); }', ""]
    return "\n".join(parts)
