"""C++ statements from a jaxpr traced at scalar shapes (the neuron step is elementwise over neurons).

:func:`lower` turns a closed jaxpr whose every value is a scalar into straight-line C++: one
``const`` per equation, in the jaxpr's order (the written operation order; the kernels are compiled
with ``-ffp-contract=off``, so no FMA changes the rounding). Calls (``pjit``, ``closed_call``,
``custom_jvp_call``, ``custom_vjp_call``, ``remat``) are inlined; dead equations are dropped. An
unsupported primitive raises :class:`NativeUnsupported` naming it.
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence

import numpy as np
from jax.extend import core as jcore

__all__ = ["NativeUnsupported", "lower", "c_type"]


class NativeUnsupported(ValueError):
    """The step cannot be compiled natively (the message says why: a primitive, a dtype, a shape)."""


_C_TYPES = {"float32": "float", "float64": "double", "bool": "bool", "int32": "int32_t", "int64": "int64_t"}

_BINARY = {"add": "+", "add_any": "+", "sub": "-", "mul": "*", "div": "/", "lt": "<", "le": "<=", "gt": ">",
           "ge": ">=", "eq": "==", "ne": "!=", "and": "&", "or": "|", "xor": "^"}
# unary primitives: a C++ expression of the operand ``a`` (``{t}`` is the value's C type)
_UNARY = {"neg": "-{a}", "abs": "std::fabs({a})", "exp": "std::exp({a})", "exp2": "std::exp2({a})",
          "log": "std::log({a})", "log1p": "std::log1p({a})", "expm1": "std::expm1({a})", "tanh": "std::tanh({a})",
          "sqrt": "std::sqrt({a})", "rsqrt": "(({t})1 / std::sqrt({a}))", "sin": "std::sin({a})",
          "cos": "std::cos({a})", "floor": "std::floor({a})", "ceil": "std::ceil({a})", "square": "({a} * {a})",
          "logistic": "(({t})1 / (({t})1 + std::exp(-{a})))", "stop_gradient": "{a}", "copy": "{a}",
          "copy_p": "{a}", "not": "(!{a})", "is_finite": "std::isfinite({a})",
          "sign": "(({a} > 0) - ({a} < 0) + ({a} != {a}) * {a})",
          "round": "std::round({a})", "reduce_precision": "{a}", "optimization_barrier": "{a}"}
_CALLS = ("pjit", "jit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr",
          "remat", "checkpoint", "custom_lin")


def c_type(dtype) -> str:
    name = np.dtype(dtype).name
    if name not in _C_TYPES:
        raise NativeUnsupported(f"dtype {name} is not supported by the native loops (float32, float64)")
    return _C_TYPES[name]


def literal(value, dtype) -> str:
    """A C++ literal of exactly ``value`` in ``dtype`` (hex floats: no decimal rounding)."""
    t = c_type(dtype)
    v = np.asarray(value).astype(dtype).item()
    if t == "bool":
        return "true" if v else "false"
    if t in ("int32_t", "int64_t"):
        return f"(({t}){int(v)})"
    if math.isnan(v):
        return f"std::numeric_limits<{t}>::quiet_NaN()"
    if math.isinf(v):
        return f"({'-' if v < 0 else ''}std::numeric_limits<{t}>::infinity())"
    return f"(({t}){float(v).hex()})"


class _Emitter:
    def __init__(self):
        self.lines: List[str] = []
        self.count = 0

    def fresh(self, dtype, expr: str) -> str:
        name = f"v{self.count}"
        self.count += 1
        self.lines.append(f"const {c_type(dtype)} {name} = {expr};")
        return name


def _scalar(aval, what):
    if getattr(aval, "shape", ()) != ():
        raise NativeUnsupported(f"{what} has shape {tuple(aval.shape)}: the native loops take elementwise steps "
                                "(every value a scalar per neuron)")
    return aval


def _read(env: Dict, atom) -> str:
    if isinstance(atom, jcore.Literal):
        _scalar(atom.aval, "a constant")
        return literal(atom.val, atom.aval.dtype)
    return env[atom]


def _live(jaxpr) -> List:
    """The equations some output depends on (the VJP jaxpr keeps the primal's dead values)."""
    need = {v for v in jaxpr.outvars if not isinstance(v, jcore.Literal)}
    keep = []
    for eqn in reversed(jaxpr.eqns):
        if any(v in need for v in eqn.outvars):
            keep.append(eqn)
            need.update(v for v in eqn.invars if not isinstance(v, jcore.Literal))
    return keep[::-1]


def _sub_jaxpr(eqn):
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        sub = eqn.params.get(key)
        if sub is not None and (hasattr(sub, "eqns") or hasattr(sub, "jaxpr")):
            return sub
    raise NativeUnsupported(f"primitive {eqn.primitive.name!r} (a call without a jaxpr) is not supported natively")


def _integer_pow(em: _Emitter, a: str, y: int, dtype) -> str:
    """``a**y`` by square-and-multiply, in the order XLA's lowering multiplies."""
    if y == 0:
        return literal(1, dtype)
    acc, x, n = None, a, abs(y)
    while n:
        if n & 1:
            acc = x if acc is None else em.fresh(dtype, f"{acc} * {x}")
        n >>= 1
        if n:
            x = em.fresh(dtype, f"{x} * {x}")
    return acc if y > 0 else em.fresh(dtype, f"{literal(1, dtype)} / {acc}")


def _convert(a: str, src, dst) -> str:
    s, d = np.dtype(src), np.dtype(dst)
    if d == np.bool_:
        return f"({a} != 0)"
    if s == np.bool_:
        return f"({c_type(d)})({a} ? 1 : 0)"
    return f"({c_type(d)})({a})"


def _primitive(em: _Emitter, eqn, args: Sequence[str]) -> str:
    """The C++ expression of one equation's (single) output."""
    name = eqn.primitive.name
    out = eqn.outvars[0].aval
    t = c_type(out.dtype)
    if name in _BINARY:
        op = _BINARY[name]
        if op in "&|^" and np.dtype(out.dtype) == np.bool_:
            op = {"&": "&&", "|": "||", "^": "!="}[op]
        return f"({args[0]} {op} {args[1]})"
    if name in _UNARY:
        return _UNARY[name].format(a=args[0], t=t)
    if name in ("max", "min"):
        # NaN-propagating, as XLA's max / min
        cmp = ">" if name == "max" else "<"
        a, b = args
        return f"(({a} != {a}) ? {a} : ({b} != {b}) ? {b} : ({a} {cmp} {b}) ? {a} : {b})"
    if name == "clamp":
        lo, x, hi = args
        mx = f"(({x} != {x}) ? {x} : ({x} > {lo}) ? {x} : {lo})"
        m = em.fresh(out.dtype, mx)
        return f"(({m} != {m}) ? {m} : ({m} < {hi}) ? {m} : {hi})"
    if name == "select_n":
        pred, *cases = args
        if len(cases) != 2:
            raise NativeUnsupported("select_n with more than two cases is not supported natively")
        return f"({pred} ? {cases[1]} : {cases[0]})"
    if name == "convert_element_type":
        return _convert(args[0], eqn.invars[0].aval.dtype, out.dtype)
    if name == "integer_pow":
        return _integer_pow(em, args[0], int(eqn.params["y"]), out.dtype)
    if name == "pow":
        return f"std::pow({args[0]}, {args[1]})"
    if name == "atan2":
        return f"std::atan2({args[0]}, {args[1]})"
    if name in ("broadcast_in_dim", "reshape", "squeeze", "expand_dims") and out.shape == ():
        return args[0]
    raise NativeUnsupported(f"primitive {name!r} is not supported by the native loops")


def _emit(em: _Emitter, jaxpr, consts, ins: Sequence[str]) -> List[str]:
    env: Dict = {}
    for v, c in zip(jaxpr.constvars, consts):
        _scalar(v.aval, "a captured constant")
        env[v] = literal(np.asarray(c), v.aval.dtype)
    for v, e in zip(jaxpr.invars, ins):
        _scalar(v.aval, "an input")
        env[v] = e
    for eqn in _live(jaxpr):
        args = [_read(env, a) for a in eqn.invars]
        for v in eqn.outvars:
            _scalar(v.aval, f"the result of {eqn.primitive.name!r}")
        if eqn.primitive.name in _CALLS:
            sub = _sub_jaxpr(eqn)
            inner, sub_consts = (sub.jaxpr, sub.consts) if hasattr(sub, "jaxpr") else (sub, ())
            outs = _emit(em, inner, sub_consts, args)
        else:
            if len(eqn.outvars) != 1:
                raise NativeUnsupported(f"primitive {eqn.primitive.name!r} is not supported by the native loops")
            outs = [em.fresh(eqn.outvars[0].aval.dtype, _primitive(em, eqn, args))]
        for v, o in zip(eqn.outvars, outs):
            env[v] = o
    return [_read(env, v) for v in jaxpr.outvars]


def lower(closed, ins: Sequence[str]):
    """``(lines, outs)``: C++ statements computing ``closed``'s outputs from the C++ expressions
    ``ins`` of its inputs, and the expressions of its outputs."""
    em = _Emitter()
    outs = _emit(em, closed.jaxpr, closed.consts, ins)
    return em.lines, outs
