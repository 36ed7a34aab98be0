"""Helpers used inside the Pallas kernels (the neuron-loop and the recurrent kernels). What a kernel
stores of the state and how it restores it is :mod:`.residuals`' (``store`` / ``restore``), as in the
XLA loops."""
from __future__ import annotations

import jax.numpy as jnp
from jax.experimental import pallas as pl

from .residuals import restore

__all__ = ["seq_spec", "reverse_index", "entering_state", "backward_start", "carry_start", "keep_valid",
           "step_and_emit", "write", "RefReader", "masked_step_valid"]


def seq_spec(block: tuple, n_chunks: int, reverse: bool = False):
    """BlockSpec of a time-major ``(T_pad, rows, cols)`` sequence on the ``(tiles, chunks)`` grid:
    tile ``i`` of chunk ``c`` (chunk ``n_chunks - 1 - c`` when walking time backwards)."""
    if reverse:
        return pl.BlockSpec(block, lambda i, c: (n_chunks - 1 - c, i, 0))
    return pl.BlockSpec(block, lambda i, c: (c, i, 0))


def reverse_index(tc: int, chunk, i):
    """Backward kernels walk time in reverse: iteration ``i`` of ``chunk`` is local step ``j`` and
    global step ``t``."""
    j = tc - 1 - i
    return j, chunk * tc + j


def entering_state(res_refs, read_ref, s0: list, t, idx: tuple) -> list:
    """The state entering step ``t`` in a backward kernel: the stored entries ``ref[idx]`` restored
    (:func:`.residuals.restore`: the exact ``s0`` at t = 0), then the last entry from ``read_ref[idx]``
    when it was not stored (``read_ref`` None: every entry was)."""
    s = restore([ref[idx] for ref in res_refs], s0[:len(res_refs)], t)
    return s + ([read_ref[idx]] if read_ref is not None else [])


def backward_start(tl, g_s0_refs, g_sT_refs, g_p_refs):
    """A backward kernel's start: ``(chunk, g_state, g_params)``, the time chunk this grid step works on
    (reverse time) and the cotangent carries at its start (the ``g_state0`` / ``g_params`` output blocks
    carry them across the chunks; the parameter sums start at zero)."""
    chunked = tl.n_chunks > 1
    c = pl.program_id(1) if chunked else 0
    g_s, g_p = carry_start(chunked, c, g_s0_refs, g_sT_refs, g_p_refs)
    return tl.n_chunks - 1 - c, g_s, g_p


def carry_start(chunked: bool, c, carry_refs, init_refs, zero_refs=()):
    """Values of a loop carry at the start of this program's time chunk: ``(from_init, zeros)``.

    Chunked (a sequential time axis on the grid): ``carry_refs`` are output blocks that stay
    resident across the chunks (their index map ignores the chunk axis), so at chunk 0 they are
    filled from ``init_refs`` (and ``zero_refs`` zeroed) and later chunks read what the previous
    one left there. Not chunked: the values come straight from ``init_refs`` / zeros."""
    if chunked:
        @pl.when(c == 0)
        def _():
            for dst, src in zip(carry_refs, init_refs):
                dst[...] = src[...]
            for r in zero_refs:
                r[...] = jnp.zeros(r.shape, r.dtype)

        return [r[...] for r in carry_refs], [r[...] for r in zero_refs]
    return [r[...] for r in init_refs], [jnp.zeros(r.shape, r.dtype) for r in zero_refs]


def keep_valid(valid, new, old):
    """``new`` where the step is a real one, ``old`` on a padded (masked) step."""
    return [jnp.where(valid, a, b) for a, b in zip(new, old)]


def step_and_emit(step, p, s, x, s_dtypes, valid, out_ref, j, out_dtype):
    """One forward step inside a kernel: the new state in the carry dtypes (the old one kept on a
    padded step, ``valid`` False; ``valid`` None: no padded steps) and ``out`` written to
    ``out_ref[j]`` (when an output is wanted)."""
    ns, out = step(p, list(s), x)
    ns = [a.astype(dt) for a, dt in zip(ns, s_dtypes)]
    if valid is not None:
        ns = keep_valid(valid, ns, s)
    if out_ref is not None:
        out_ref[j] = out.astype(out_dtype)
    return ns


def write(refs, values, j=None):
    """``ref[...] = value`` for each pair (``ref[j]``: step ``j`` of a sequence block, when given)."""
    for r, v in zip(refs, values):
        if j is None:
            r[...] = v
        else:
            r[j] = v


class RefReader:
    """Names a kernel's positional refs: ``take(k)`` the next k refs, ``one()`` the next, ``opt(c)``
    the next if ``c`` else None, ``rest()`` what is left (Pallas passes inputs then outputs)."""

    def __init__(self, refs):
        self._refs = list(refs)

    def take(self, k: int) -> list:
        out, self._refs = self._refs[:k], self._refs[k:]
        return out

    def one(self):
        return self._refs.pop(0)

    def opt(self, cond: bool):
        return self._refs.pop(0) if cond else None

    def rest(self) -> list:
        out, self._refs = self._refs, []
        return out


def masked_step_valid(masked: bool, c, tc: int, j, T: int):
    """Whether step ``j`` of chunk ``c`` is a real step (None when no step is padded)."""
    return (c * tc + j < T) if masked else None

