"""Demo training: loss, jitted train step (one device or data-parallel), prediction and accuracy,
the training loop (a tqdm bar per epoch), timing of the planned vs the reference step, and the
checkpoint round trip.
"""
from __future__ import annotations

import time
from typing import Dict, List, NamedTuple, Optional

import numpy as np

from .data import SpikeData
from .defaults import DEFAULTS
from .models import readout_lag


def _readout(model, states, xb, key, lag: int):
    """Batched forward pass -> (read-out membrane (B, T, C), the first step read, min(lag, T-1))."""
    import equinox as eqx
    _, outs = eqx.filter_vmap(model, in_axes=(None, 0, None))(states, xb, key)
    mem = outs[-1]                      # (B, T, C)
    return mem, min(lag, mem.shape[1] - 1)


def logits_fn(model, states, xb, key, lag: int):
    """Class scores (B, C): the read-out membrane averaged over the steps t >= lag (the logits of
    :func:`snnkern.losses.mean_membrane_cross_entropy`)."""
    mem, start = _readout(model, states, xb, key, lag)
    return mem[:, start:].mean(axis=1)


def loss_fn(model, xb, yb, key, in_shape, lag):
    """``snnkern.losses.mean_membrane_cross_entropy`` of the read-out from step ``lag`` on, averaged
    over the batch; returns (loss, logits)."""
    import jax
    from snnkern import losses
    states = model.init_state(in_shape, key)
    mem, start = _readout(model, states, xb, key, lag)
    loss = jax.vmap(lambda m, y: losses.mean_membrane_cross_entropy(m, y, start=start))(mem, yb).mean()
    return loss, mem[:, start:].mean(axis=1)


def make_train_step(optim, in_shape, lag):
    """A fresh ``eqx.filter_jit``-ed training step (fresh, so each backend traces its own)."""
    import equinox as eqx

    @eqx.filter_jit
    def train_step(model, opt_state, xb, yb, key):
        (loss, logits), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(
            model, xb, yb, key, in_shape, lag)
        updates, opt_state = optim.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        model = eqx.apply_updates(model, updates)
        return model, opt_state, loss, (logits.argmax(-1) == yb).mean()

    return train_step


def make_sharded_train_step(optim, in_shape, lag, n_devices: int):
    """``make_train_step`` over ``n_devices`` (snnkern.distributed, docs/distributed.md): the batch
    is sharded over a "data" mesh axis, each device runs the planned model on its part, loss and
    gradients are averaged over the devices. Same call signature and results."""
    from snnkern import distributed as dist

    def dp_loss(model, batch, key):
        xb, yb = batch
        loss, logits = loss_fn(model, xb, yb, key, in_shape, lag)
        return loss, (logits.argmax(-1) == yb).mean()

    dp_step = dist.data_parallel_step(dp_loss, optim, dist.make_mesh(n_devices), has_aux=True, aux="mean")
    return lambda model, opt_state, xb, yb, key: dp_step(model, opt_state, (xb, yb), key)


def _predict_batch_fn():
    import equinox as eqx

    @eqx.filter_jit
    def predict_batch(model, xb, key, in_shape, lag):
        states = model.init_state(in_shape, key)
        return logits_fn(model, states, xb, key, lag).argmax(-1)

    return predict_batch


_PREDICT = None


def predict(model, x: np.ndarray, key=None, batch_size: int = 512) -> np.ndarray:
    """Predicted classes for spike trains ``x`` of shape (N, T, F)."""
    global _PREDICT
    import jax
    if _PREDICT is None:
        _PREDICT = _predict_batch_fn()
    key = jax.random.PRNGKey(0) if key is None else key
    in_shape, lag = tuple(x.shape[2:]), readout_lag(model)
    preds = []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i:i + batch_size]
        n = xb.shape[0]
        if n < batch_size and x.shape[0] > batch_size:  # pad the last batch: one compiled shape
            xb = np.concatenate([xb, np.zeros((batch_size - n,) + xb.shape[1:], xb.dtype)])
        preds.append(np.asarray(_PREDICT(model, xb, key, in_shape, lag))[:n])
    return np.concatenate(preds) if preds else np.zeros((0,), np.int32)


def evaluate(model, x: np.ndarray, y: np.ndarray, key=None) -> float:
    """Accuracy of ``model`` on spike trains ``x`` (N, T, F) with labels ``y``."""
    if len(y) == 0:
        return float("nan")
    return float((predict(model, x, key) == np.asarray(y)).mean())


class TrainResult(NamedTuple):
    model: object
    history: Dict[str, List[float]]   # per epoch: loss, train_acc, test_acc, seconds
    accuracy: float                   # final test accuracy


def train(model, data: SpikeData, epochs: int = DEFAULTS["epochs"], batch_size: int = DEFAULTS["batch_size"],
          lr: float = DEFAULTS["lr"], seed: int = 0, progress: bool = True, optim=None,
          step=None) -> TrainResult:
    """Adam on softmax cross-entropy, minibatches via ``eqx.filter_vmap``; a tqdm bar per epoch.

    ``optim`` (default ``optax.adam(lr)``) and ``step`` (default ``make_train_step(optim, ...)``)
    may be given, e.g. to reuse a step that is already compiled.
    """
    import equinox as eqx
    import jax
    import optax

    rng = np.random.default_rng(seed + 1)
    key = jax.random.PRNGKey(seed + 2)
    optim = optax.adam(lr) if optim is None else optim
    opt_state = optim.init(eqx.filter(model, eqx.is_array))
    if step is None:
        step = make_train_step(optim, data.in_shape, readout_lag(model))
    n = data.x_train.shape[0]
    batch_size = max(1, min(batch_size, n))
    n_batches = n // batch_size   # drop the last partial batch: one compiled shape
    history: Dict[str, List[float]] = {"loss": [], "train_acc": [], "test_acc": [], "seconds": []}
    for epoch in range(epochs):
        t0 = time.perf_counter()
        if epoch > 0:
            data.resample(rng)
        perm = rng.permutation(n)
        bar = _epoch_bar(n_batches, f"epoch {epoch + 1}/{epochs}", progress)
        model, opt_state, key, losses, accs = _run_epoch(step, model, opt_state, data, perm, batch_size, key, bar)
        history["loss"].append(float(np.mean(losses)))
        history["train_acc"].append(float(np.mean(accs)))
        history["test_acc"].append(evaluate(model, data.x_test, data.y_test))
        history["seconds"].append(time.perf_counter() - t0)
        if progress:
            _print_epoch(history, epoch, epochs)
    accuracy = history["test_acc"][-1] if epochs else evaluate(model, data.x_test, data.y_test)
    return TrainResult(model, history, accuracy)


def _epoch_bar(n_batches: int, desc: str, progress: bool):
    from tqdm import tqdm
    return tqdm(range(n_batches), desc=desc, leave=False, disable=not progress, dynamic_ncols=True)


def _run_epoch(step, model, opt_state, data: SpikeData, perm, batch_size: int, key, bar):
    """One step per minibatch of ``perm`` (the bar iterates over the batch numbers).

    Returns (model, opt_state, key, losses, accuracies)."""
    import jax
    losses, accs = [], []
    for b in bar:
        idx = perm[b * batch_size:(b + 1) * batch_size]
        key, sub = jax.random.split(key)
        model, opt_state, loss, acc = step(model, opt_state, data.x_train[idx], data.y_train[idx], sub)
        losses.append(float(loss))
        accs.append(float(acc))
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    bar.close()
    return model, opt_state, key, losses, accs


def _print_epoch(history: Dict[str, List[float]], epoch: int, epochs: int) -> None:
    print(f"epoch {epoch + 1:3d}/{epochs}  loss {history['loss'][-1]:.4f}  "
          f"train acc {history['train_acc'][-1]:.3f}  test acc {history['test_acc'][-1]:.3f}  "
          f"({history['seconds'][-1]:.1f} s)", flush=True)


def time_train_step(model, data: SpikeData, batch_size: int, optim, backend: Optional[str] = None,
                    reps: int = 5, step=None) -> Dict[str, float]:
    """Compile time and median wall time of one jitted training step, on ``backend`` (None: default).

    The step is traced inside ``snnkern.backend(backend)``, and run there too. ``step`` (default: a
    fresh ``make_train_step``) lets the caller reuse the compiled step for training.
    """
    import contextlib
    import equinox as eqx
    import jax
    import snnkern

    ctx = contextlib.nullcontext() if backend is None else snnkern.backend(backend)
    opt_state = optim.init(eqx.filter(model, eqx.is_array))
    bs = min(batch_size, data.x_train.shape[0])
    xb, yb = data.x_train[:bs], data.y_train[:bs]
    key = jax.random.PRNGKey(0)
    with ctx:
        if step is None:
            step = make_train_step(optim, data.in_shape, readout_lag(model))
        t0 = time.perf_counter()
        jax.block_until_ready(step(model, opt_state, xb, yb, key))
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            jax.block_until_ready(step(model, opt_state, xb, yb, key))
            times.append(time.perf_counter() - t0)
    return {"compile_s": compile_s, "step_s": float(np.median(times))}


def time_paths(model, data: SpikeData, batch_size: int, optim, reps: int, step=None) -> Dict[str, Dict[str, float]]:
    """:func:`time_train_step` on the planned path (the default backend; ``step`` is reused, e.g. the
    data-parallel step) and on the reference path (a fresh step traced under ``backend("reference")``)."""
    return {"planned": time_train_step(model, data, batch_size, optim, None, reps, step=step),
            "reference": time_train_step(model, data, batch_size, optim, "reference", reps)}


def save_checkpoint(path: str, model) -> None:
    import equinox as eqx
    eqx.tree_serialise_leaves(path, model)


def load_checkpoint(path: str, like):
    """Load leaves saved by :func:`save_checkpoint` into a model of the same architecture."""
    import equinox as eqx
    return eqx.tree_deserialise_leaves(path, like)


def checkpoint_round_trip(path: str, model, like, x: np.ndarray) -> int:
    """Save ``model`` to ``path``, load it into ``like`` (same architecture, other weights) and count
    the samples of ``x`` on which the reloaded model predicts another class than ``model`` (0: identical)."""
    save_checkpoint(path, model)
    reloaded = load_checkpoint(path, like)
    return int((predict(model, x) != predict(reloaded, x)).sum())
