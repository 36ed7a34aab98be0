"""Shared pieces of NIR export and import: the lazy ``nir`` import, the error type, the parameter
mapping (forward Euler time constants, thresholds), parameter forms and surrogates."""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ..functional import surrogate
from .layers import _DEFAULT_SPIKE_FN

NIR_HINT = 'pip install "snnkern[nir]"  (or: pip install "nir>=1.0.8,<2")'
META_KEY = "snnkern"          # node and graph metadata key holding a JSON string
SCHEME = ("forward Euler with step dt, each state updated from its value at the previous step and "
          "the input of the current step: LI/LIF v += dt/tau*(v_leak - v + r*I); CubaLIF "
          "v += dt/tau_mem*(v_leak - v + r*i_prev), i += dt/tau_syn*(-i + w_in*I); IF v += dt*r*I; "
          "spike z = v > v_threshold, then v = v_reset")
TIME = ("edges are instantaneous; a Delay node shifts by delay/dt steps (0 before the start); a cycle "
        "without a Delay node reads its neuron's output of the previous step (0 at t = 0)")


class NIRConversionError(ValueError):
    """A layer or node that cannot be converted exactly (the message names it and says why)."""


def require_nir():
    """The ``nir`` package (>= 1.0.8), or an ImportError saying how to install it."""
    try:
        import nir
    except ImportError as e:
        raise ImportError(f"snnkern.nir needs the NIR package: {NIR_HINT}") from e
    version = getattr(nir, "__version__", "0")
    try:
        parts = tuple(int(p) for p in version.split(".")[:3])
    except ValueError:
        parts = (1, 0, 8)
    if parts < (1, 0, 8):
        raise ImportError(f"snnkern.nir needs nir >= 1.0.8 (keyword-only node metadata), found {version}: "
                          f"{NIR_HINT}")
    return nir


def dumps(info: Dict[str, Any]) -> Dict[str, str]:
    return {META_KEY: json.dumps(info, sort_keys=True)}


def loads(node) -> Optional[Dict[str, Any]]:
    """The snnkern metadata of a node or graph, or None (graphs written by other tools)."""
    meta = getattr(node, "metadata", None)
    if not isinstance(meta, dict) or META_KEY not in meta:
        return None
    raw = meta[META_KEY]
    if isinstance(raw, bytes):
        raw = raw.decode("utf8")
    try:
        out = json.loads(str(raw))
    except ValueError:
        return None
    return out if isinstance(out, dict) else None


# ----------------------------------------------------------------------------------------------
# Parameters


def f32(x) -> np.ndarray:
    return np.asarray(jax.device_get(x), dtype=np.float32)


def decay_to_tau(decay, dt: float, shape) -> np.ndarray:
    """``tau = dt/(1 - a)`` with ``a`` clamped to [0.5, 1] as the neurons clamp it (float64; inf at a = 1)."""
    a = np.clip(f32(decay), np.float32(0.5), np.float32(1.0)).astype(np.float64)
    with np.errstate(divide="ignore"):
        tau = dt / (1.0 - a)
    return np.array(np.broadcast_to(tau, tuple(shape)), dtype=np.float64)


def tau_to_decay(tau, dt: float, where: str, name: str) -> np.ndarray:
    """``a = 1 - dt/tau`` as float32, or an error when it falls outside snnkern's clamp [0.5, 1]."""
    tau = np.asarray(tau, dtype=np.float64)
    if not np.all(tau > 0):
        raise NIRConversionError(f"{where}: {name} must be > 0, got min {tau.min():g}")
    a = 1.0 - dt / tau
    low = float(a.min())
    if low < 0.5 - 1e-6:
        raise NIRConversionError(
            f"{where}: {name} = {float(tau.min()):g} with dt = {dt:g} gives the decay 1 - dt/{name} = {low:.4g}, "
            f"below 0.5, the smallest decay snnkern's neurons allow (they clamp it to [0.5, 1]): the time "
            f"constant must be >= 2*dt. Pass the dt the graph was made for (from_nir(graph, dt=...); Norse "
            f"writes time constants in seconds for dt = 1e-3, snnTorch for dt = 1e-4)")
    return np.clip(a, 0.5, 1.0).astype(np.float32)


def threshold_to_nir(thr, shape) -> np.ndarray:
    """snnkern fires at ``v >= thr``, NIR at ``v > v_threshold``: for float32 ``v`` these agree exactly
    when ``v_threshold`` is the float32 just below ``thr``."""
    t = np.nextafter(f32(thr), np.float32(-np.inf))
    return np.array(np.broadcast_to(t, tuple(shape)), dtype=np.float32)


def threshold_from_nir(v) -> np.ndarray:
    """The inverse of :func:`threshold_to_nir`: ``v > v_thr`` is ``v >= nextafter(v_thr, +inf)``."""
    return np.nextafter(f32(v), np.float32(np.inf))


def form_of(value) -> Any:
    """How a parameter was given: "none", {"float": value} (a Python constant) or an array shape."""
    if value is None:
        return "none"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {"float": float(value)}
    return list(np.shape(value))


def unbroadcast(values: np.ndarray, shape) -> Optional[np.ndarray]:
    """``values`` (full shape) as an array of ``shape`` that broadcasts back to it exactly, or None."""
    shape = tuple(int(s) for s in shape)
    full = values.shape
    if len(shape) > len(full):
        return None
    lead = len(full) - len(shape)
    v = values[(0,) * lead] if lead else values
    for ax, d in enumerate(shape):
        if d == 1 and v.shape[ax] != 1:
            v = np.take(v, [0], axis=ax)
    if v.shape != shape or not np.array_equal(np.broadcast_to(v, full), values):
        return None
    return v


def value_in_form(values: np.ndarray, form, dtype=np.float32):
    """A parameter of the full neuron shape back in its snnkern form (a float, or an array of the
    recorded shape); without a recorded form: a float if uniform, else the full array."""
    values = np.asarray(values, dtype=dtype)
    uniform = values.size > 0 and bool(np.all(values == values.flat[0]))
    if isinstance(form, dict) and "float" in form:
        given = float(form["float"])   # the Python constant snnkern had, if the graph still holds it
        if uniform and dtype(given) == values.flat[0]:
            return given
        form = "float"
    if form == "float" or (form is None and uniform):
        if uniform:
            return float(values.flat[0])
        form = None
    if isinstance(form, list):
        v = unbroadcast(values, form)
        if v is not None:
            return jnp.asarray(v, dtype=dtype)
    return jnp.asarray(values, dtype=dtype)


def decay_array(parts, form) -> jax.Array:
    """Decay constants ``[a, b, ...]`` (each of the neuron's shape) stacked in their recorded form."""
    rest = form[1:] if isinstance(form, list) and form else []
    cols = []
    for p in parts:
        v = unbroadcast(np.asarray(p, np.float32), rest) if isinstance(form, list) else None
        if v is None:
            uniform = bool(np.all(p == p.flat[0]))
            v = np.asarray(p.flat[0] if uniform else p, np.float32)
        cols.append(v)
    shapes = {c.shape for c in cols}
    if len(shapes) > 1:
        cols = [np.broadcast_to(c, np.broadcast_shapes(*shapes)) for c in cols]
    return jnp.asarray(np.stack(cols), dtype=jnp.float32)


# ----------------------------------------------------------------------------------------------
# Surrogates (gradient only: NIR has no gradients; recorded so that a round trip keeps them)

_FACTORIES = {"superspike": surrogate.superspike_surrogate, "piecewise": surrogate.piecewise_surrogate,
              "sigmoid": surrogate.sigmoid_surrogate}


def spike_fn_name(fn) -> str:
    if fn is _DEFAULT_SPIKE_FN:
        return "default"
    tag = getattr(fn, "surrogate", None)
    if isinstance(tag, tuple) and len(tag) == 2 and tag[0] in _FACTORIES:
        return f"{tag[0]}:{float(tag[1])!r}"
    return "custom"


def spike_fn_from(name: Optional[str]):
    if not name or name in ("default", "custom"):
        return _DEFAULT_SPIKE_FN
    kind, _, beta = name.partition(":")
    if kind in _FACTORIES:
        try:
            return _FACTORIES[kind](float(beta))
        except ValueError:
            pass
    return _DEFAULT_SPIKE_FN


def scc(n: int, succ: List[List[int]]) -> List[int]:
    """Component id of each node (Tarjan)."""
    index, low, on, stack, comp = {}, {}, set(), [], [-1] * n
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in succ[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            c = max(comp) + 1
            while True:
                w = stack.pop()
                on.discard(w)
                comp[w] = c
                if w == v:
                    break

    for v in range(n):
        if v not in index:
            visit(v)
    return comp
