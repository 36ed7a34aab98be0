"""Demo data: scikit-learn's digits as spike trains (rate or latency coding), or spike data on disk
(``--data PATH``: an ``.npz`` file, or a tonic N-MNIST / SHD folder when ``tonic`` is installed).

Every loader returns a :class:`SpikeData`; see docs/demo.md for the ``.npz`` format.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

import numpy as np

from .defaults import DEFAULTS

SPLIT_SEED = 0          # the train/test split is fixed, whatever --seed is
TEST_SIZE = 0.2
TONIC_LIMIT = 4000      # samples loaded from a tonic dataset (train; test gets a quarter)


class DataError(ValueError):
    """Data that cannot be loaded (bad path or format); the message names the path and format."""


NPZ_FORMAT = (
    "an .npz file with arrays 'x' of shape (N, T, F) or (N, T, d1, d2, ...) (spike counts or "
    "events binned into dense frames; frames are flattened to F = d1*d2*... features) and 'y' of "
    "shape (N,) with integer class labels 0..C-1; optionally 'x_test' and 'y_test' for a fixed "
    "test split (otherwise a stratified 80/20 split is made); or a folder holding a tonic "
    "dataset (save_to=PATH, with an NMNIST/ or SHD/ subfolder; needs `pip install tonic`)")


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


def _key(rng: np.random.Generator):
    import jax
    return jax.random.PRNGKey(int(rng.integers(0, 2 ** 31 - 1)))


def rate_encode(intensities: np.ndarray, T: int, rng: np.random.Generator) -> np.ndarray:
    """:func:`snnkern.encode.rate` of every sample (a key drawn from ``rng``): pixel value ``p`` in
    [0, 1] fires with probability ``p`` per step. (N, F) -> (N, T, F) float32."""
    from snnkern import encode
    spikes = encode.rate(np.asarray(intensities, np.float32), T, _key(rng))       # (T, N, F) bool
    return np.asarray(spikes, np.float32).transpose(1, 0, 2)


def latency_encode(intensities: np.ndarray, T: int, window: Optional[int] = None) -> np.ndarray:
    """:func:`snnkern.encode.latency`: one spike per pixel, earlier for brighter pixels (value 1 at
    t = 0, values near 0 at t = window-1; exactly 0 never fires). (N, F) -> (N, T, F) float32.

    ``window`` (default ``T * 3 // 4``) leaves the last steps free, so the spikes can still travel
    through the layers (each edge is delayed one step).
    """
    from snnkern import encode
    window = max(1, min(T, T * 3 // 4 if window is None else window))
    spikes = encode.latency(np.asarray(intensities, np.float32), T, window=window)   # (T, N, F) bool
    return np.asarray(spikes, np.float32).transpose(1, 0, 2)


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
