"""Plots of spiking activity (matplotlib, the ``demo`` extra; docs/toolkit.md).

- :func:`raster`: a spike raster, one row per neuron, a tick per spike;
- :func:`rates`: bars of firing rates, per layer (:func:`snnkern.activity.firing_rates`) or per neuron.

Both return the matplotlib ``Figure`` (save it with ``fig.savefig(path)``) and draw into ``ax`` when
one is given (to compose panels). matplotlib is imported when a function runs, so ``import
snnkern`` does not need it; without it they raise an ImportError that says how to get it.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = ["raster", "rates"]


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError('snnkern.plot needs matplotlib: pip install "snnkern[demo]" (or pip install matplotlib)') \
            from None
    return plt


def _axes(ax, figsize):
    """``ax``'s figure, or a new figure of ``figsize`` laid out to fit its labels (constrained layout)."""
    if ax is not None:
        return ax.figure, ax
    fig, ax = _pyplot().subplots(figsize=figsize, layout="constrained")
    return fig, ax


def _as_numpy(fn: str, name: str, x) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise TypeError(f"plot.{fn}: {name} must be a numeric or bool array, got dtype {x.dtype}")
    return x


def raster(spikes, *, ax=None, title: Optional[str] = None, color: str = "tab:orange", ylabel: str = "neuron",
           xlabel: str = "time step", t0: int = 0, marker_size: Optional[float] = None):
    """A raster plot of ``spikes`` of shape ``(T, ...)`` (time first; the other axes are flattened
    into neurons, row-major): a vertical tick at ``(t, n)`` for every non-zero entry. ``t0`` shifts
    the time axis (e.g. the burn-in). The title defaults to the spike count. Returns the Figure."""
    s = _as_numpy("raster", "spikes", spikes)
    if s.ndim < 1 or s.shape[0] < 1:
        raise ValueError(f"plot.raster: spikes must have shape (T, ...) with T >= 1, got {s.shape}")
    s = s.reshape(s.shape[0], -1)
    T, n = s.shape
    fig, ax = _axes(ax, (8, 1.2 + min(6.0, 0.04 * n + 1.0)))
    t, idx = np.nonzero(s)
    size = marker_size if marker_size is not None else float(np.clip(2000.0 / max(n, 1), 4.0, 60.0))
    ax.scatter(t + t0, idx, s=size, marker="|", color=color, linewidths=1.0)
    ax.set_xlim(t0 - 0.5, t0 + T - 0.5)
    ax.set_ylim(-0.5, n - 0.5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title if title is not None else f"{len(t)} spikes ({len(t) / s.size:.3f} per neuron per step)",
                 fontsize=10)
    return fig


def rates(r, *, ax=None, title: Optional[str] = None, labels=None, color: str = "tab:blue"):
    """Bars of firing rates: ``r`` a dict ``{layer: rate}`` (:func:`snnkern.activity.firing_rates`;
    batched rates are averaged), or a spike array ``(T, ...)``: one bar per neuron, its spikes per
    step. ``labels`` names the bars (default: "layer i" / the neuron index). Returns the Figure."""
    if isinstance(r, dict):
        if not r:
            raise ValueError("plot.rates: the dict of rates is empty (a model without spiking layers?)")
        values = np.array([float(np.mean(np.asarray(v, np.float64))) for v in r.values()])
        names = [f"layer {k}" for k in r] if labels is None else list(labels)
        xlabel, ylabel = "layer", "spikes per neuron per step"
    else:
        s = _as_numpy("rates", "r", r)
        if s.ndim < 1 or s.shape[0] < 1:
            raise ValueError(f"plot.rates: a spike array must have shape (T, ...) with T >= 1, got {s.shape}")
        values = s.reshape(s.shape[0], -1).astype(np.float64).mean(axis=0)
        names = [str(k) for k in range(len(values))] if labels is None else list(labels)
        xlabel, ylabel = "neuron", "spikes per step"
    if len(names) != len(values):
        raise ValueError(f"plot.rates: {len(names)} labels for {len(values)} bars")
    fig, ax = _axes(ax, (max(4.0, min(12.0, 0.5 * len(values) + 2.0)), 3.2))
    ax.bar(np.arange(len(values)), values, color=color)
    if len(values) <= 40:
        ax.set_xticks(np.arange(len(values)), names, rotation=45 if len(values) > 8 else 0, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, max(1e-3, float(values.max()) * 1.15))
    ax.set_title(title if title is not None else f"mean {values.mean():.3f}", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    return fig
