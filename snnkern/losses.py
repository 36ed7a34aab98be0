"""Losses on a model's output sequence, per sample (docs/toolkit.md).

Every loss takes one sample's output ``(T, classes)`` (time first, as a model call returns it) and
returns a scalar; batch with ``jax.vmap`` and average::

    loss = jax.vmap(losses.rate_cross_entropy)(spikes, labels).mean()   # spikes (B, T, C), labels (B,)

- :func:`rate_cross_entropy`: softmax cross-entropy of the spike counts over time (the counts are the logits);
- :func:`count_mse`: squared error between the spike counts and target counts;
- :func:`max_membrane_cross_entropy` / :func:`mean_membrane_cross_entropy`: softmax cross-entropy of
  each class's largest / mean membrane value over time (a non-spiking read-out such as ``SimpleLI``).

Spike arrays may be ``bool`` or numbers (the model's spikes are floats carrying the surrogate
gradient). Wrong ranks, dtypes and labels raise ``ValueError`` / ``TypeError`` naming the argument.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from . import _checks

__all__ = ["rate_cross_entropy", "count_mse", "max_membrane_cross_entropy", "mean_membrane_cross_entropy"]


def _sequence(fn: str, name: str, x, kinds: str = "biuf"):
    """One sample's output ``(T, classes)`` as float32."""
    x = _checks.array(fn, name, x, kinds=kinds)
    if x.ndim != 2:
        hint = (" for a batch (B, T, classes) use jax.vmap(" + fn.split(".")[-1] + ")(x, labels)"
                if x.ndim == 3 else "")
        raise ValueError(f"{fn}: {name} must have shape (T, classes) for one sample (time first), got shape "
                         f"{tuple(x.shape)};{hint or ' give the time axis first and the class axis last'}")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{fn}: {name} has shape {tuple(x.shape)}; need T >= 1 and classes >= 1")
    return x.astype(jnp.float32) if x.dtype.kind in "biu" else x


def _label(fn: str, labels, n_classes: int, shape: tuple):
    """An integer class index (a scalar) in 0..n_classes-1."""
    if isinstance(labels, float) or (hasattr(labels, "dtype") and jnp.asarray(labels).dtype.kind == "f"):
        raise TypeError(f"{fn}: labels must be an integer class index, got a float "
                        f"({getattr(labels, 'dtype', type(labels).__name__)}); use labels.astype(jnp.int32)")
    labels = _checks.array(fn, "labels", labels, kinds="iu")
    if labels.ndim != 0:
        hint = (" (a one-hot vector? pass its argmax)" if labels.shape == (n_classes,)
                else " (one label per sample: batch with jax.vmap)")
        raise ValueError(f"{fn}: labels must be one class index (a scalar) per sample, got shape "
                         f"{tuple(labels.shape)}{hint}")
    if _checks.is_concrete(labels) and not 0 <= int(labels) < n_classes:
        raise ValueError(f"{fn}: label {int(labels)} is out of range 0..{n_classes - 1} for an output of shape "
                         f"{shape} (T, classes); is the class axis last?")
    return labels


def _cross_entropy(logits, labels):
    return -jnp.take(jax.nn.log_softmax(logits), labels)


def rate_cross_entropy(spikes, labels, *, scale: float = 1.0) -> jax.Array:
    """Softmax cross-entropy with the spike counts as logits: ``logits = scale * spikes.sum(0)``.

    ``spikes``: ``(T, classes)`` of one sample; ``labels``: its integer class (a scalar). The loss
    rises the count of the labelled class against the others (snnTorch's ``ce_count_loss``)."""
    fn = "losses.rate_cross_entropy"
    spikes = _sequence(fn, "spikes", spikes)
    labels = _label(fn, labels, spikes.shape[1], tuple(spikes.shape))
    return _cross_entropy(scale * spikes.sum(axis=0), labels)


def count_mse(spikes, target_counts) -> jax.Array:
    """Mean squared error between the spike counts ``spikes.sum(0)`` (one per class) and
    ``target_counts``: a scalar or one count per class, shape ``(classes,)``.

    E.g. ``target_counts = jnp.where(jnp.arange(C) == label, 0.8 * T, 0.1 * T)`` asks the labelled
    class to fire at 80 % of the steps and the others at 10 % (snnTorch's ``mse_count_loss``)."""
    fn = "losses.count_mse"
    spikes = _sequence(fn, "spikes", spikes)
    target = _checks.array(fn, "target_counts", target_counts, kinds="biuf").astype(spikes.dtype)
    if target.shape not in ((), (spikes.shape[1],)):
        raise ValueError(f"{fn}: target_counts must be a scalar or have shape ({spikes.shape[1]},) (one count per "
                         f"class of spikes {tuple(spikes.shape)}, (T, classes)), got shape {tuple(target.shape)}")
    return jnp.mean((spikes.sum(axis=0) - target) ** 2)


def _membrane_logits(fn: str, mem, labels, start):
    """``(mem[start:], label)`` of one sample's read-out membrane ``(T, classes)``, checked."""
    if hasattr(mem, "dtype") and jnp.asarray(mem).dtype == jnp.bool_:
        raise TypeError(f"{fn}: mem must be a float membrane (T, classes), got bool {tuple(jnp.shape(mem))} "
                        f"(spikes? use rate_cross_entropy)")
    mem = _sequence(fn, "mem", mem, kinds="f")
    if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start < mem.shape[0]:
        raise ValueError(f"{fn}: start must be an int in 0..T-1 = 0..{mem.shape[0] - 1} (mem has shape "
                         f"{tuple(mem.shape)}), got {start!r}")
    return mem[start:], _label(fn, labels, mem.shape[1], tuple(mem.shape))


def max_membrane_cross_entropy(mem, labels, *, start: int = 0) -> jax.Array:
    """Softmax cross-entropy with each class's largest membrane value over time as its logit:
    ``logits = mem[start:].max(0)``.

    ``mem``: float ``(T, classes)``, the membrane of a non-spiking read-out (``SimpleLI``) of one
    sample; ``labels``: its integer class; ``start`` skips the first steps (e.g. the ``L - 1`` steps
    an ``L``-layer model's output lags its input, docs/semantics.md "Time")."""
    mem, labels = _membrane_logits("losses.max_membrane_cross_entropy", mem, labels, start)
    return _cross_entropy(mem.max(axis=0), labels)


def mean_membrane_cross_entropy(mem, labels, *, start: int = 0) -> jax.Array:
    """As :func:`max_membrane_cross_entropy`, with each class's mean membrane over the steps from
    ``start`` as its logit: ``logits = mem[start:].mean(0)`` (the demo's read-out: it learns faster
    than the max, docs/demo.md)."""
    mem, labels = _membrane_logits("losses.mean_membrane_cross_entropy", mem, labels, start)
    return _cross_entropy(mem.mean(axis=0), labels)
