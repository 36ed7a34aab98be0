"""Plots of the demo (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

import os
from typing import Dict, List

import numpy as np


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_history(history: Dict[str, List[float]], path: str) -> str:
    """Loss and train/test accuracy per epoch -> PNG at ``path``."""
    plt = _pyplot()
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_l.plot(epochs, history.get("loss", []), marker="o", ms=3)
    ax_l.set_xlabel("epoch")
    ax_l.set_ylabel("cross-entropy (train)")
    ax_l.set_title("loss")
    ax_l.grid(alpha=0.3)
    ax_a.plot(epochs, history.get("train_acc", []), marker="o", ms=3, label="train")
    ax_a.plot(epochs, history.get("test_acc", []), marker="s", ms=3, label="test")
    ax_a.set_xlabel("epoch")
    ax_a.set_ylabel("accuracy")
    ax_a.set_ylim(0, 1.02)
    ax_a.set_title("accuracy")
    ax_a.grid(alpha=0.3)
    ax_a.legend(loc="lower right")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_raster(x: np.ndarray, hidden: np.ndarray, out: np.ndarray, label: int, path: str, lag: int = 0,
                hidden_name: str = "hidden LIF layer") -> str:
    """Input spikes (T, F), hidden spikes (T, H) and the read-out membrane (T, C) of one sample
    (rasters by :func:`snnkern.plot.raster`) -> PNG at ``path``."""
    from snnkern import plot
    plt = _pyplot()
    out = np.asarray(out).reshape(out.shape[0], -1)
    fig, axes = plt.subplots(3, 1, figsize=(8, 8.4), sharex=True, height_ratios=[1, 1.3, 1])
    for ax, s, color, name, ylabel in ((axes[0], x, "tab:blue", "input", "input channel"),
                                       (axes[1], hidden, "tab:orange", hidden_name, "neuron")):
        s = np.asarray(s)
        plot.raster(s, ax=ax, color=color, xlabel="", ylabel=ylabel,
                    title=f"{name}: {int(np.count_nonzero(s))} spikes ({np.mean(s > 0):.3f} per neuron per step)")
    ax = axes[-1]
    ts = np.arange(out.shape[0])
    pred = int(np.argmax(out[min(lag, out.shape[0] - 1):].mean(axis=0)))
    for c in range(out.shape[1]):
        is_label = c == label
        ax.plot(ts, out[:, c], lw=2.2 if is_label else 0.9, alpha=1.0 if is_label else 0.55,
                label=f"class {c}" + (" (true)" if is_label else ""), zorder=3 if is_label else 2)
    if lag:
        ax.axvspan(-0.5, lag - 0.5, color="0.9", zorder=0, label=f"lag ({lag} steps)")
    ax.set_title(f"read-out membrane (SimpleLI): true {label}, predicted {pred} (mean membrane)", fontsize=10)
    ax.set_ylabel("membrane")
    ax.set_xlabel("time step")
    ax.legend(fontsize=7, ncol=2, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
