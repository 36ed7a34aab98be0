"""End-to-end demo: train a spiking classifier with snnkern on real data.

Default data: scikit-learn's handwritten digits (8x8 images, 1797 samples, shipped with
scikit-learn, no download), turned into spike trains by rate or latency coding. ``--data PATH``
loads spike data the user already has on disk instead (an ``.npz`` file, or a tonic N-MNIST / SHD
folder when ``tonic`` is installed). See docs/demo.md.

Everything here is usable from Python (and from the tests):
``load_digits_spikes``, ``load_npz_spikes``, ``load_data``, ``build_model``, ``train``,
``evaluate``, ``predict``, ``time_train_step``, ``save_checkpoint`` / ``load_checkpoint`` and
``main(argv)``.

Time: every edge of an snnkern model is delayed by one step (SPEC §3), so in a model of L layers
the output lags the input by L-1 steps. The read-out is a leaky integrator (``SimpleLI``) whose
membrane, averaged over the steps from L-1 on, gives the class scores.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time
from typing import Dict, List, NamedTuple, Optional, Sequence

import numpy as np

# Defaults (tuned: ff reaches >= 0.95 test accuracy on digits over seeds 0, 1, 2; see docs/demo.md).
DEFAULTS = dict(epochs=30, hidden=128, T=32, batch_size=64, lr=5e-3, seed=0, model="ff",
                encoding="rate", out="demo_out")
# --quick: a tiny run for tests / smoke checks (still real training on the digits).
QUICK = dict(epochs=2, hidden=64, T=16, batch_size=32)
SPLIT_SEED = 0          # the train/test split is fixed, whatever --seed is
TEST_SIZE = 0.2
LIF_DECAY = (0.9, 0.8)  # [alpha (membrane), beta (synapse)]
LI_DECAY = (0.9,)
INPUT_GAIN = 2.0        # initial input-weight gain of build_model (main() computes one from the data)
GAIN_TARGET = 1.5       # auto_input_gain: aim the std of the input layer's mean current at this
TONIC_LIMIT = 4000      # samples loaded from a tonic dataset (train; test gets a quarter)


class DataError(ValueError):
    """Data that cannot be loaded (bad path or format); the message names the path and format."""


NPZ_FORMAT = (
    "an .npz file with arrays 'x' of shape (N, T, F) or (N, T, d1, d2, ...) (spike counts or "
    "events binned into dense frames; frames are flattened to F = d1*d2*... features) and 'y' of "
    "shape (N,) with integer class labels 0..C-1; optionally 'x_test' and 'y_test' for a fixed "
    "test split (otherwise a stratified 80/20 split is made); or a folder holding a tonic "
    "dataset (save_to=PATH, with an NMNIST/ or SHD/ subfolder; needs `pip install tonic`)")


# ----------------------------------------------------------------------------------------------
# Data


@dataclasses.dataclass
class SpikeData:
    """Spike trains, time-major per sample: ``x_*`` has shape (N, T, F), float32 in {0, 1, ...}.

    ``x_train`` is (re-)drawn by :meth:`resample` for rate coding (a fresh Bernoulli draw per epoch
    works as data augmentation); other sources are fixed.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    name: str
    encoding: str = "given"
    intensities_train: Optional[np.ndarray] = None  # for re-drawing rate-coded spikes

    @property
    def T(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[2])

    @property
    def in_shape(self) -> tuple:
        return (self.n_features,)

    def resample(self, rng: np.random.Generator) -> None:
        """Draw new rate-coded training spikes (no-op for other encodings)."""
        if self.encoding == "rate" and self.intensities_train is not None:
            self.x_train = rate_encode(self.intensities_train, self.T, rng)


def rate_encode(intensities: np.ndarray, T: int, rng: np.random.Generator, max_rate: float = 1.0) -> np.ndarray:
    """Bernoulli spikes: pixel value ``p`` in [0, 1] fires with probability ``p * max_rate`` per step.

    (N, F) -> (N, T, F) float32.
    """
    p = np.clip(intensities, 0.0, 1.0)[:, None, :] * max_rate
    return (rng.random((intensities.shape[0], T, intensities.shape[1])) < p).astype(np.float32)


def latency_encode(intensities: np.ndarray, T: int, window: Optional[int] = None) -> np.ndarray:
    """One spike per pixel, earlier for brighter pixels: value 1 fires at t = 0, values near 0 fire
    last (at t = window-1); pixels that are exactly 0 never fire. (N, F) -> (N, T, F) float32.

    ``window`` (default ``T * 3 // 4``) leaves the last steps free, so the spikes can still travel
    through the layers (each edge is delayed one step).
    """
    window = max(1, min(T, T * 3 // 4 if window is None else window))
    x = np.clip(intensities, 0.0, 1.0)
    t = np.round((1.0 - x) * (window - 1)).astype(np.int64)
    out = np.zeros((x.shape[0], T, x.shape[1]), np.float32)
    n, f = np.nonzero(x > 0)
    out[n, t[n, f], f] = 1.0
    return out


def _split(n_samples: int, y: np.ndarray, seed: int = SPLIT_SEED, test_size: float = TEST_SIZE):
    from sklearn.model_selection import train_test_split
    idx = np.arange(n_samples)
    try:
        return train_test_split(idx, test_size=test_size, stratify=y, random_state=seed)
    except ValueError:  # a class with a single sample cannot be stratified
        return train_test_split(idx, test_size=test_size, random_state=seed)


def load_digits_spikes(T: int = DEFAULTS["T"], encoding: str = "rate", seed: int = 0,
                       test_size: float = TEST_SIZE, split_seed: int = SPLIT_SEED) -> SpikeData:
    """scikit-learn's 8x8 digits as spike trains: (N, T, 64), 10 classes.

    The train/test split is stratified and fixed by ``split_seed``; ``seed`` draws the rate-coded
    spikes. ``encoding``: ``"rate"`` (Bernoulli, re-drawn each epoch by :meth:`SpikeData.resample`)
    or ``"latency"`` (one spike per pixel, brighter = earlier).
    """
    from sklearn.datasets import load_digits
    if encoding not in ("rate", "latency"):
        raise ValueError(f"encoding must be 'rate' or 'latency', got {encoding!r}")
    if T < 4:
        raise ValueError(f"T={T} is too short: the output lags the input by (layers - 1) steps; use T >= 8")
    digits = load_digits()
    X = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    tr, te = _split(len(y), y, split_seed, test_size)
    rng = np.random.default_rng(seed)
    if encoding == "rate":
        x_tr, x_te = rate_encode(X[tr], T, rng), rate_encode(X[te], T, rng)
    else:
        x_tr, x_te = latency_encode(X[tr], T), latency_encode(X[te], T)
    return SpikeData(x_tr, y[tr], x_te, y[te], 10, f"digits ({encoding}-coded, T={T})", encoding,
                     X[tr] if encoding == "rate" else None)


def _flat_frames(x: np.ndarray, what: str, path: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim < 3:
        raise DataError(f"{path}: array {what!r} has shape {x.shape}; expected (N, T, F) or "
                        f"(N, T, d1, d2, ...). Expected format: {NPZ_FORMAT}")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise DataError(f"{path}: array {what!r} has dtype {x.dtype}; expected numbers (spike counts)")
    return x.reshape(x.shape[0], x.shape[1], -1).astype(np.float32)


def _labels(y: np.ndarray, n: int, what: str, path: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != n:
        raise DataError(f"{path}: {what!r} has shape {y.shape}, expected ({n},) (one label per sample)")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise DataError(f"{path}: {what!r} must hold integer class labels, got dtype {y.dtype}")
    if y.size and y.min() < 0:
        raise DataError(f"{path}: {what!r} has negative labels; expected 0..C-1")
    return y.astype(np.int32)


def load_npz_spikes(path: str, test_size: float = TEST_SIZE, split_seed: int = SPLIT_SEED) -> SpikeData:
    """Spike data from an ``.npz`` file (format: :data:`NPZ_FORMAT`)."""
    try:
        f = np.load(path, allow_pickle=False)
    except Exception as e:
        raise DataError(f"{path}: cannot read it as an .npz file ({type(e).__name__}: {e}). "
                        f"Expected format: {NPZ_FORMAT}") from None
    with f:
        keys = set(f.files)
        if not {"x", "y"} <= keys:
            raise DataError(f"{path}: the .npz holds arrays {sorted(keys)}, but needs 'x' and 'y'. "
                            f"Expected format: {NPZ_FORMAT}")
        x = _flat_frames(f["x"], "x", path)
        y = _labels(f["y"], x.shape[0], "y", path)
        if ("x_test" in keys) != ("y_test" in keys):
            raise DataError(f"{path}: give both 'x_test' and 'y_test', or neither")
        if "x_test" in keys:
            x_te = _flat_frames(f["x_test"], "x_test", path)
            y_te = _labels(f["y_test"], x_te.shape[0], "y_test", path)
            if x_te.shape[1:] != x.shape[1:]:
                raise DataError(f"{path}: 'x_test' frames {x_te.shape[1:]} differ from 'x' frames "
                                f"{x.shape[1:]} (need the same T and features)")
            x_tr, y_tr = x, y
        else:
            if x.shape[0] < 4:
                raise DataError(f"{path}: only {x.shape[0]} samples; need at least 4 to split 80/20")
            tr, te = _split(x.shape[0], y, split_seed, test_size)
            x_tr, y_tr, x_te, y_te = x[tr], y[tr], x[te], y[te]
    n_classes = int(max(y_tr.max(initial=0), y_te.max(initial=0))) + 1
    return SpikeData(x_tr, y_tr, x_te, y_te, n_classes, f"{os.path.basename(path)} (npz)")


def load_tonic_spikes(path: str, T: int, limit: int = TONIC_LIMIT, seed: int = 0) -> SpikeData:
    """A tonic N-MNIST or SHD dataset already on disk under ``path`` (tonic's ``save_to``).

    Never downloads: if the files are not there, this raises :class:`DataError`. Events are binned
    into ``T`` dense frames with ``tonic.transforms.ToFrame``; at most ``limit`` training samples
    (and ``limit // 4`` test samples), chosen at random, are loaded.
    """
    try:
        import tonic
        import tonic.transforms as tt
    except ImportError:
        raise DataError(f"{path} is a folder: reading a neuromorphic dataset folder needs the optional "
                        f"package tonic (`pip install tonic`). Otherwise give {NPZ_FORMAT}") from None
    names = {"nmnist": "NMNIST", "shd": "SHD"}
    found = [v for k, v in names.items() if any(e.lower() == k for e in os.listdir(path))]
    if not found:
        raise DataError(f"{path}: no NMNIST/ or SHD/ subfolder (tonic's layout for save_to={path!r}). "
                        f"Expected {NPZ_FORMAT}")
    cls = getattr(tonic.datasets, found[0])

    def _no_download(self):  # never reach the network: a missing file is an error
        raise DataError(f"{path}: the tonic {found[0]} files are missing or incomplete under "
                        f"{os.path.join(path, found[0])} (this demo never downloads; fetch them with "
                        f"tonic yourself: tonic.datasets.{found[0]}(save_to={path!r}))")

    # same class name: tonic stores a data set under save_to/<class name>
    _NoDownload = type(cls.__name__, (cls,), {"download": _no_download})

    transform = tt.ToFrame(sensor_size=cls.sensor_size, n_time_bins=T)
    rng = np.random.default_rng(seed)

    def take(train: bool, n: int):
        ds = _NoDownload(save_to=path, train=train, transform=transform)
        idx = rng.permutation(len(ds))[:n]
        xs, ys = [], []
        for i in idx:
            frames, label = ds[int(i)]
            frames = np.asarray(frames, np.float32)
            if frames.shape[0] < T:  # ToFrame may give fewer bins for very short recordings
                frames = np.concatenate([frames, np.zeros((T - frames.shape[0],) + frames.shape[1:], np.float32)])
            xs.append(np.minimum(frames[:T].reshape(T, -1), 1.0))
            ys.append(int(label))
        return np.stack(xs), np.asarray(ys, np.int32)

    x_tr, y_tr = take(True, limit)
    x_te, y_te = take(False, max(1, limit // 4))
    n_classes = int(max(y_tr.max(), y_te.max())) + 1
    return SpikeData(x_tr, y_tr, x_te, y_te, n_classes, f"tonic {found[0]} (T={T}, {len(y_tr)} train)")


def load_data(data: Optional[str] = None, T: int = DEFAULTS["T"], encoding: str = "rate",
              seed: int = 0) -> SpikeData:
    """``data=None``: the digits; a path: an ``.npz`` file or a tonic folder (else DataError)."""
    if data is None:
        return load_digits_spikes(T=T, encoding=encoding, seed=seed)
    if os.path.isdir(data):
        return load_tonic_spikes(data, T=T, seed=seed)
    if not os.path.exists(data):
        raise DataError(f"--data {data}: no such file or folder. Expected {NPZ_FORMAT}")
    return load_npz_spikes(data)


# ----------------------------------------------------------------------------------------------
# Model


def build_model(n_in: int = 64, hidden: int = DEFAULTS["hidden"], n_out: int = 10, model: str = "ff",
                key=None, input_gain: float = INPUT_GAIN):
    """The demo network, written with the snnax-style API.

    ``"ff"``:  ``Sequential(Linear(n_in, H), LIF, Linear(H, n_out), SimpleLI)`` (output lags 3 steps)
    ``"rec"``: ``SequentialLocalFeedback(CompoundLayer(Parallel([Linear(n_in, H), Linear(H, H)]), LIF),
    Linear(H, n_out), SimpleLI, feedback_layers=None)`` - the compound gets a self-edge, so its
    Parallel receives ``[x_t, own spikes_{t-1}]`` (output lags 2 steps).

    The input layer's initial weights are multiplied by ``input_gain`` so that the hidden neurons
    spike from the first batch on (with equinox's default init few reach the threshold of 1, and
    the first epoch is spent on a plateau).
    """
    import equinox as eqx
    import jax
    from snnkern import snn

    key = jax.random.PRNGKey(0) if key is None else key
    k = jax.random.split(key, 3)
    inp = eqx.nn.Linear(n_in, hidden, key=k[0])
    inp = eqx.tree_at(lambda l: l.weight, inp, inp.weight * input_gain)
    if model == "ff":
        return snn.Sequential(
            inp,
            snn.LIF(list(LIF_DECAY)),
            eqx.nn.Linear(hidden, n_out, key=k[1]),
            snn.SimpleLI(list(LI_DECAY)),
        )
    if model == "rec":
        rec = eqx.nn.Linear(hidden, hidden, key=k[2])
        # keep the recurrent drive small at first (plain init would make the net chatter)
        rec = eqx.tree_at(lambda l: l.weight, rec, rec.weight * 0.5)
        return snn.SequentialLocalFeedback(
            snn.CompoundLayer(snn.Parallel([inp, rec]),
                              snn.LIF(list(LIF_DECAY))),
            eqx.nn.Linear(hidden, n_out, key=k[1]),
            snn.SimpleLI(list(LI_DECAY)),
            feedback_layers=None,
        )
    raise ValueError(f"model must be 'ff' or 'rec', got {model!r}")


def auto_input_gain(x: np.ndarray, target: float = GAIN_TARGET) -> float:
    """Gain for the input layer's initial weights so that the hidden neurons spike from the start.

    With equinox's init ``w ~ U(-1/sqrt(F), 1/sqrt(F))`` the time-averaged input current
    ``I = w . rate`` has ``E[I^2] = mean_f(rate_f^2) / 3`` over the weights (rate: spikes per step
    of each channel of a sample). Its std is set to ``target`` (in units of the threshold, 1), so a
    good share of the neurons crosses the threshold whatever the data's channel count and rates.
    """
    x = np.asarray(x, np.float32)
    rate = x.reshape(x.shape[0], x.shape[1], -1).mean(axis=1)          # (N, F)
    s = float(np.sqrt(np.mean(rate ** 2) / 3.0))
    return float(np.clip(target / s, 0.5, 100.0)) if s > 0 else 1.0


def readout_lag(model) -> int:
    """Steps by which the output lags the input: (number of layers - 1), every edge being delayed."""
    return max(0, len(model.layers) - 1)


def hidden_layer_id(model) -> int:
    """Index of the first spiking hidden layer (a LIF, or the recurrent compound)."""
    from snnkern import snn
    for i, layer in enumerate(model.layers):
        if isinstance(layer, (snn.LIF, snn.CompoundLayer)):
            return i
    return 0


def logits_fn(model, states, xb, key, lag: int):
    """Batched forward pass -> class scores (B, C): the read-out membrane averaged over t >= lag."""
    import equinox as eqx
    _, outs = eqx.filter_vmap(model, in_axes=(None, 0, None))(states, xb, key)
    mem = outs[-1]                      # (B, T, C)
    lag = min(lag, mem.shape[1] - 1)
    return mem[:, lag:].mean(axis=1)


def loss_fn(model, xb, yb, key, in_shape, lag):
    import optax
    states = model.init_state(in_shape, key)
    logits = logits_fn(model, states, xb, key, lag)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
    return loss, logits


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
    from tqdm import tqdm

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
        losses, accs = [], []
        bar = tqdm(range(n_batches), desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                   disable=not progress, dynamic_ncols=True)
        for b in bar:
            idx = perm[b * batch_size:(b + 1) * batch_size]
            key, sub = jax.random.split(key)
            model, opt_state, loss, acc = step(model, opt_state, data.x_train[idx], data.y_train[idx], sub)
            losses.append(float(loss))
            accs.append(float(acc))
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
        bar.close()
        test_acc = evaluate(model, data.x_test, data.y_test)
        history["loss"].append(float(np.mean(losses)))
        history["train_acc"].append(float(np.mean(accs)))
        history["test_acc"].append(test_acc)
        history["seconds"].append(time.perf_counter() - t0)
        if progress:
            print(f"epoch {epoch + 1:3d}/{epochs}  loss {history['loss'][-1]:.4f}  "
                  f"train acc {history['train_acc'][-1]:.3f}  test acc {test_acc:.3f}  "
                  f"({history['seconds'][-1]:.1f} s)", flush=True)
    return TrainResult(model, history, history["test_acc"][-1] if epochs else evaluate(model, data.x_test, data.y_test))


# ----------------------------------------------------------------------------------------------
# Plan, step timing, checkpoint, probing


def explain(model, in_shape) -> Optional[str]:
    """``str(snnkern.explain(model, in_shape))``, or None when this snnkern has no ``explain``."""
    import snnkern
    if not hasattr(snnkern, "explain"):
        return None
    return str(snnkern.explain(model, in_shape))


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

    if backend is None:
        ctx = contextlib.nullcontext()
    elif hasattr(snnkern, "backend"):
        ctx = snnkern.backend(backend)
    else:
        raise RuntimeError("this snnkern has no snnkern.backend(...)")
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


def save_checkpoint(path: str, model) -> None:
    import equinox as eqx
    eqx.tree_serialise_leaves(path, model)


def load_checkpoint(path: str, like):
    """Load leaves saved by :func:`save_checkpoint` into a model of the same architecture."""
    import equinox as eqx
    return eqx.tree_deserialise_leaves(path, like)


def probe(model, x: np.ndarray, key=None):
    """Run one sample (T, F); return (hidden spikes (T, H) or None, read-out membrane (T, C)).

    Uses a second StatefulModel over the same layers and graph with ``final_layer_ids`` set to
    [hidden layer, last layer] (SPEC §7), so the hidden spikes come out of the normal model call.
    """
    import jax
    import jax.numpy as jnp
    from snnkern import snn

    key = jax.random.PRNGKey(0) if key is None else key
    in_shape = tuple(x.shape[1:])
    x = jnp.asarray(x)
    last = len(model.layers) - 1
    try:
        g = model.graph_structure
        h = hidden_layer_id(model)
        probe_model = snn.StatefulModel(
            graph_structure=snn.GraphStructure(num_layers=g.num_layers, input_layer_ids=g.input_layer_ids,
                                               final_layer_ids=[h, last], input_connectivity=g.input_connectivity),
            layers=model.layers)
        _, outs = probe_model(probe_model.init_state(in_shape, key), x, key)
        hid, out = outs
        while isinstance(hid, (list, tuple)):  # a compound returns all its sub-layers' outputs
            hid = hid[-1]
        return np.asarray(hid), np.asarray(out)
    except Exception as e:  # keep the demo going; report it
        print(f"(could not probe the hidden layer: {type(e).__name__}: {e})")
        _, outs = model(model.init_state(in_shape, key), x, key)
        return None, np.asarray(outs[-1])


# ----------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m snnkern.demo",
        description="Train a spiking classifier with snnkern on the scikit-learn digits (or --data).")
    p.add_argument("--epochs", type=int, default=None, help=f"training epochs (default {DEFAULTS['epochs']}; "
                   f"--quick: {QUICK['epochs']})")
    p.add_argument("--hidden", type=int, default=None, help=f"hidden neurons (default {DEFAULTS['hidden']})")
    p.add_argument("--T", type=int, default=None, help=f"time steps per sample (default {DEFAULTS['T']}; "
                   f"an .npz from --data brings its own T)")
    p.add_argument("--batch-size", type=int, default=None, help=f"minibatch size (default {DEFAULTS['batch_size']})")
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"], help=f"Adam learning rate (default {DEFAULTS['lr']})")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"],
                   help="seed for the weights, spike encoding and batches (the train/test split is fixed)")
    p.add_argument("--model", choices=["ff", "rec"], default=DEFAULTS["model"],
                   help="ff: Sequential Linear-LIF-Linear-LI; rec: recurrent LIF layer (SequentialLocalFeedback)")
    p.add_argument("--encoding", choices=["rate", "latency"], default=DEFAULTS["encoding"],
                   help="how digit pixels become spikes (ignored with --data)")
    p.add_argument("--out", default=DEFAULTS["out"], help="folder for plots and the checkpoint (default demo_out)")
    p.add_argument("--data", default=None, metavar="PATH",
                   help="spike data on disk instead of the digits: an .npz with x (N, T, ...) and y (N,), or a "
                        "tonic NMNIST/SHD folder (see docs/demo.md)")
    p.add_argument("--quick", action="store_true", help="a tiny run (for tests): " +
                   ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    p.add_argument("--devices", type=int, default=1, metavar="N",
                   help="data-parallel training over N devices (the batch is split over them; "
                        "see docs/distributed.md)")
    p.add_argument("--no-timing", action="store_true", help="skip the planned-vs-reference step timing")
    args = p.parse_args(argv)
    for name in ("epochs", "hidden", "T", "batch_size"):
        if getattr(args, name) is None:
            setattr(args, name, (QUICK if args.quick else DEFAULTS)[name])
    for name, lo in (("epochs", 0), ("hidden", 1), ("T", 4), ("batch_size", 1), ("devices", 1)):
        if getattr(args, name) < lo:
            p.error(f"--{name.replace('_', '-')} must be >= {lo}, got {getattr(args, name)}")
    if not args.lr > 0:
        p.error(f"--lr must be > 0, got {args.lr}")
    return args


def check_devices(n: int) -> int:
    """Validate ``--devices``; returns how many devices training uses (n, or 1 if there are fewer)."""
    import jax
    available = jax.devices()
    if n > len(available):
        hint = (f" (on CPU: XLA_FLAGS=--xla_force_host_platform_device_count={n})"
                if available[0].platform == "cpu" else "")
        print(f"--devices {n}: only {len(available)} {available[0].platform} device(s) available "
              f"({', '.join(str(d) for d in available)}){hint}; training on 1 device")
        return 1
    if n > 1:
        print(f"--devices {n}: data-parallel training on {', '.join(str(d) for d in available[:n])}")
    return n


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Run the demo. Returns a dict with the results (used by the tests)."""
    args = parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")
    import equinox as eqx
    import jax
    import optax
    import snnkern
    from . import plots

    t_start = time.perf_counter()
    n_devices = check_devices(args.devices)
    if args.batch_size % n_devices:
        args.batch_size = max(n_devices, args.batch_size // n_devices * n_devices)
        print(f"--batch-size rounded to {args.batch_size}, a multiple of the {n_devices} devices")
    try:
        data = load_data(args.data, T=args.T, encoding=args.encoding, seed=args.seed)
    except DataError as e:
        raise SystemExit(f"error: {e}") from None
    os.makedirs(args.out, exist_ok=True)
    print(f"data: {data.name}: {len(data.y_train)} train / {len(data.y_test)} test samples, "
          f"T={data.T}, {data.n_features} input channels, {data.n_classes} classes; "
          f"mean input rate {data.x_train.mean():.3f} spikes/step/channel")

    key = jax.random.PRNGKey(args.seed)
    gain = auto_input_gain(data.x_train)
    model = build_model(data.n_features, args.hidden, data.n_classes, args.model, key=key, input_gain=gain)
    print(f"model: {args.model} ({len(model.layers)} layers, output lags the input by "
          f"{readout_lag(model)} steps), {sum(a.size for a in jax.tree.leaves(eqx.filter(model, eqx.is_array)))} "
          f"parameters, input weights initialised x{gain:.2f}")

    plan = explain(model, data.in_shape)
    if plan is None:
        print("plan: (snnkern.explain is not available in this snnkern)")
    else:
        print("plan:")
        print(plan)

    optim = optax.adam(args.lr)
    step = (make_train_step(optim, data.in_shape, readout_lag(model)) if n_devices == 1  # default backend;
            else make_sharded_train_step(optim, data.in_shape, readout_lag(model), n_devices))  # reused below
    timing = {}
    if not args.no_timing:
        reps = 3 if args.quick else 10
        timing["planned"] = time_train_step(model, data, args.batch_size, optim, None, reps, step=step)
        if hasattr(snnkern, "backend"):
            timing["reference"] = time_train_step(model, data, args.batch_size, optim, "reference", reps)
        for name, t in timing.items():
            print(f"train step ({name} path, batch {min(args.batch_size, len(data.y_train))}): "
                  f"{t['step_s'] * 1e3:.2f} ms median of {reps} (compile {t['compile_s']:.1f} s)")
        if n_devices > 1:
            print(f"(the planned step runs data-parallel on {n_devices} devices, the reference step on one)")
        if "reference" in timing:
            print(f"speed-up of the planned path over the reference path: "
                  f"{timing['reference']['step_s'] / timing['planned']['step_s']:.2f}x")
        else:
            print("(snnkern.backend is not available in this snnkern: no reference-path timing)")

    t_train = time.perf_counter()
    result = train(model, data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                   optim=optim, step=step)
    train_s = time.perf_counter() - t_train
    model = result.model
    print(f"training: {args.epochs} epochs in {train_s:.1f} s")
    print(f"test accuracy: {result.accuracy:.2f}")

    ckpt = os.path.join(args.out, "model.eqx")
    save_checkpoint(ckpt, model)
    like = build_model(data.n_features, args.hidden, data.n_classes, args.model, key=jax.random.PRNGKey(args.seed + 1000))
    reloaded = load_checkpoint(ckpt, like)
    before, after = predict(model, data.x_test), predict(reloaded, data.x_test)
    identical = bool(np.array_equal(before, after))
    if not identical:  # (not a bare assert: it must hold under python -O too)
        raise AssertionError(f"the model reloaded from {ckpt} predicts differently on "
                             f"{int((before != after).sum())} of {len(after)} test samples")
    print(f"checkpoint: saved to {ckpt} and reloaded: identical predictions on all {len(after)} test samples")

    sample = 0
    hidden, out = probe(model, data.x_test[sample])
    curves = plots.plot_history(result.history, os.path.join(args.out, "training_curves.png"))
    raster = plots.plot_raster(data.x_test[sample], hidden, out, int(data.y_test[sample]),
                               os.path.join(args.out, "spike_raster.png"), lag=readout_lag(model))
    print(f"plots: {curves}, {raster}")
    print(f"total: {time.perf_counter() - t_start:.1f} s")
    return {"accuracy": result.accuracy, "history": result.history, "checkpoint": ckpt,
            "identical_predictions": identical, "plots": [curves, raster], "timing": timing,
            "plan": plan, "train_seconds": train_s, "model": model, "data": data,
            "args": vars(args)}
