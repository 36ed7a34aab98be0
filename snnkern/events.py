"""Event data: event arrays binned into time-major frames, and batches from Tonic data sets
(docs/toolkit.md).

Events are numpy structured arrays in Tonic's layout: fields ``x, y, p, t`` for cameras (sensor
``(W, H, P)``), ``x, t, p`` for cochleas (sensor ``(W, 1, P)``, e.g. SHD's ``(700, 1, 1)``); the
field order does not matter. :func:`bin_events` gives Tonic's ``ToFrame`` layout, time first:
``(T, P, H, W)`` for cameras, ``(T, P, W)`` for cochleas. :func:`from_tonic` batches a Tonic data
set (the optional extra ``tonic``: ``pip install "snnkern[tonic]"``). Binning runs in numpy, on
the host, before the data reaches JAX (structured arrays are not JAX types).
"""
from __future__ import annotations

import numbers
from typing import Iterator, Optional, Tuple

import numpy as np

__all__ = ["bin_events", "from_tonic"]

_CAMERA = ("x", "y", "p", "t")
_COCHLEA = ("x", "t", "p")


def _sensor(sensor_size) -> Tuple[int, int, int]:
    try:
        size = tuple(int(s) for s in sensor_size)
    except (TypeError, ValueError):
        raise TypeError(f"bin_events: sensor_size must be (W, H, P) ints, got {sensor_size!r}") from None
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"bin_events: sensor_size must be (W, H, P) with every entry >= 1 (Tonic's layout; a "
                         f"cochlea is (W, 1, P)), got {sensor_size!r}")
    return size


def _layout(events) -> Tuple[str, ...]:
    """The fields of a camera or a cochlea event array (else a ValueError naming what it got)."""
    names = getattr(getattr(events, "dtype", None), "names", None)
    if not isinstance(events, np.ndarray) or names is None:
        raise TypeError(f"bin_events: events must be a numpy structured array with fields x, y, p, t (camera) or "
                        f"x, t, p (cochlea), as Tonic makes them, got {type(events).__name__}"
                        f"{' of dtype ' + str(events.dtype) if hasattr(events, 'dtype') else ''}")
    if events.ndim != 1:
        raise ValueError(f"bin_events: events must be one-dimensional (one entry per event), got shape {events.shape}")
    for layout in (_CAMERA, _COCHLEA):
        if set(layout) <= set(names):
            return layout
    raise ValueError(f"bin_events: unknown event layout with fields {names}; expected Tonic's x, y, p, t (camera) "
                     f"or x, t, p (cochlea)")


def _coordinate(events, field: str, size: int, what: str) -> np.ndarray:
    v = np.asarray(events[field])
    if v.dtype.kind not in "biu":
        if v.dtype.kind != "f" or not np.all(v == np.round(v)):
            raise TypeError(f"bin_events: events[{field!r}] must hold integers, got dtype {v.dtype}")
    v = v.astype(np.int64)
    if v.size and (v.min() < 0 or v.max() >= size):
        raise ValueError(f"bin_events: events[{field!r}] spans {v.min()}..{v.max()}, outside 0..{size - 1} of "
                         f"{what}")
    return v


def _polarity(events, P: int) -> np.ndarray:
    p = np.asarray(events["p"])
    if P == 1:   # single-polarity sensor (Tonic's rule): every event in channel 0
        if np.unique(p).size > 1:
            raise ValueError(f"bin_events: sensor_size has P=1 (one polarity) but events['p'] holds "
                             f"{np.unique(p).size} values {np.unique(p)[:4]}")
        return np.zeros(p.shape, np.int64)
    if p.dtype.kind == "f" or (p.size and p.min() < 0):
        raise ValueError(f"bin_events: events['p'] must be integer polarities 0..{P - 1}, got dtype {p.dtype} and "
                         f"values {np.unique(p)[:4]} (for -1/+1 use events['p'] = events['p'] > 0)")
    return _coordinate(events, "p", P, f"sensor_size's P={P}")


def _time_bins(t: np.ndarray, T: Optional[int], dt, t_start) -> Tuple[np.ndarray, int]:
    """The bin of every event and the number of bins (see :func:`bin_events`)."""
    t0 = (t.min() if t.size else 0) if t_start is None else t_start
    if dt is None:
        span = max(t.max() - t0, 0) if t.size else 0
        if t.dtype.kind in "iu":   # [t0, t_max] in T equal parts (integer timestamps: t_max included)
            b = (t.astype(np.int64) - int(t0)) * T // (int(span) + 1)
        else:
            b = np.floor((t - t0) / span * T).astype(np.int64) if span > 0 else np.zeros(t.shape, np.int64)
            b = np.minimum(b, T - 1)
        return b, T
    b = np.floor_divide(t - t0, dt).astype(np.int64)
    n = T if T is not None else (int(b.max()) + 1 if b.size else 0)
    return b, n


def _check_bins(T, dt) -> Optional[int]:
    if T is None and dt is None:
        raise ValueError("bin_events: give T (number of bins) or dt (bin width, in the events' time unit), or both")
    if T is not None:
        if isinstance(T, bool) or not isinstance(T, numbers.Integral):
            raise TypeError(f"bin_events: T must be an int, got {T!r}")
        if T < 1:
            raise ValueError(f"bin_events: T must be >= 1, got {T}")
        T = int(T)
    if dt is not None and not (isinstance(dt, numbers.Real) and dt > 0):
        raise ValueError(f"bin_events: dt must be a positive number, got {dt!r}")
    return T


def bin_events(events, sensor_size, T: Optional[int] = None, dt=None, *, t_start=None,
               binary: bool = False) -> np.ndarray:
    """Event counts per time bin and sensor position: ``(T, P, H, W)`` for a camera, ``(T, P, W)``
    for a cochlea (Tonic's ``ToFrame`` layout), ``int32`` counts or ``bool`` with ``binary=True``.

    Bins start at ``t_start`` (default: the first event's time); events before it are dropped.
    ``T`` alone: ``[t_start, t_max]`` cut into ``T`` equal bins (integer timestamps: bin
    ``(t - t_start) * T // (t_max - t_start + 1)``). ``dt`` alone: bins of width ``dt`` up to the last
    event (``T = (t_max - t_start) // dt + 1``). Both: ``T`` bins of width ``dt``, events after them
    dropped (a fixed shape, for batches). ``sensor_size = (W, H, P)``; with ``P = 1`` every event
    goes to channel 0, else ``p`` must be in ``0..P-1``."""
    layout, (W, H, P) = _layout(events), _sensor(sensor_size)
    T = _check_bins(T, dt)
    if layout == _COCHLEA and "y" not in events.dtype.names and H != 1:
        raise ValueError(f"bin_events: the events have no 'y' field (a cochlea) but sensor_size {tuple(sensor_size)} "
                         f"has H={H}; a cochlea's sensor_size is (W, 1, P)")
    x = _coordinate(events, "x", W, f"sensor_size's W={W}")
    p = _polarity(events, P)
    t = np.asarray(events["t"])
    if t.dtype.kind not in "iuf":
        raise TypeError(f"bin_events: events['t'] must be numbers, got dtype {t.dtype}")
    b, n = _time_bins(t, T, dt, t_start)
    keep = (b >= 0) & (b < n)
    if layout == _CAMERA:
        y = _coordinate(events, "y", H, f"sensor_size's H={H}")
        frames = np.zeros((n, P, H, W), np.int32)
        np.add.at(frames, (b[keep], p[keep], y[keep], x[keep]), 1)
    else:
        frames = np.zeros((n, P, W), np.int32)
        np.add.at(frames, (b[keep], p[keep], x[keep]), 1)
    return frames > 0 if binary else frames


def _pad_to(frames: list, n: int) -> np.ndarray:
    return np.stack([np.concatenate([f, np.zeros((n - len(f),) + f.shape[1:], f.dtype)]) if len(f) < n else f
                     for f in frames])


def from_tonic(dataset, batch_size: int, T: Optional[int] = None, dt=None, *, t_start=None, binary: bool = False,
               shuffle: bool = False, seed: int = 0, drop_last: bool = False,
               sensor_size=None) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Batches ``(x, y)`` from a Tonic data set: ``x`` of shape ``(B, T, P, H, W)`` (cameras) or
    ``(B, T, P, W)`` (cochleas), each recording binned by :func:`bin_events` (``T``, ``dt``,
    ``t_start``, ``binary`` as there), and ``y`` the ``int32`` labels ``(B,)``.

    ``dataset``: any Tonic data set object (``len(ds)``, ``ds[i] -> (events, label)``,
    ``ds.sensor_size``), without a ``ToFrame`` transform (raw events). With ``dt`` alone the
    recordings of a batch are zero-padded at the end to the longest. ``shuffle`` draws the order
    from ``seed``; ``drop_last`` drops a last, smaller batch. Needs Tonic (``pip install
    "snnkern[tonic]"``); this function never downloads anything itself."""
    try:
        import tonic  # noqa: F401 (the data set objects are Tonic's)
    except ImportError:
        raise ImportError('events.from_tonic needs the optional package tonic: pip install "snnkern[tonic]"') \
            from None
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"from_tonic: batch_size must be an int >= 1, got {batch_size!r}")
    _check_bins(T, dt)
    size = sensor_size if sensor_size is not None else getattr(dataset, "sensor_size", None)
    if size is None:
        raise ValueError(f"from_tonic: {type(dataset).__name__} has no sensor_size (recordings of different "
                         f"sizes?); pass sensor_size=(W, H, P)")
    order = np.random.default_rng(seed).permutation(len(dataset)) if shuffle else np.arange(len(dataset))
    return _batches(dataset, order, int(batch_size), drop_last, size, dict(T=T, dt=dt, t_start=t_start, binary=binary))


def _batches(dataset, order, batch_size: int, drop_last: bool, size, kw: dict):
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        if drop_last and len(idx) < batch_size:
            return
        xs, ys = [], []
        for i in idx:
            events, label = dataset[int(i)]
            if not getattr(getattr(events, "dtype", None), "names", None):
                raise TypeError(f"from_tonic: sample {int(i)} of {type(dataset).__name__} is not a structured event "
                                f"array but {type(events).__name__} (a transform such as ToFrame?); give raw events")
            xs.append(bin_events(events, size, **kw))
            ys.append(int(label))
        yield _pad_to(xs, max(len(f) for f in xs)), np.asarray(ys, np.int32)
