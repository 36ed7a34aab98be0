"""snnkern.events: bin_events on event arrays in Tonic's layout, and from_tonic batches.

The Tonic tests build their events with Tonic's own ``tonic.io.make_structured_array`` and Tonic's
data set dtypes (no download: nothing may be fetched at run time); Tonic is in the ``test`` extra, and
without it they skip with the reason. The other tests build the same structured layout by hand.
"""
import sys

import numpy as np
import pytest

from snnkern import events

try:
    import tonic
    from tonic.io import make_structured_array
except ImportError:   # pragma: no cover - tonic is in the test extra
    tonic = None
needs_tonic = pytest.mark.skipif(tonic is None, reason='tonic is not installed (pip install "snnkern[tonic]")')

CAMERA = np.dtype([("x", "<i8"), ("y", "<i8"), ("t", "<i8"), ("p", "<i8")])      # tonic.io.events_struct's layout
COCHLEA = np.dtype([("t", "<i8"), ("x", "<i8"), ("p", "<i8")])                   # tonic.datasets.SHD.dtype


def _struct(dtype, **fields):
    ev = np.zeros(len(next(iter(fields.values()))), dtype)
    for k, v in fields.items():
        ev[k] = v
    return ev


def _camera_events():
    # 5 events on a (W=3, H=2, P=2) sensor at t = 0, 10, 10, 25, 39
    return _struct(CAMERA, x=[0, 2, 2, 1, 0], y=[1, 0, 0, 1, 0], t=[0, 10, 10, 25, 39], p=[1, 0, 0, 1, 1])


def test_bin_camera_by_T_hand_case():
    f = events.bin_events(_camera_events(), (3, 2, 2), T=4)
    assert f.shape == (4, 2, 2, 3) and f.dtype == np.int32               # (T, P, H, W)
    # [0, 39] in 4 bins: bin = t * 4 // 40 -> 0, 1, 1, 2, 3
    want = np.zeros((4, 2, 2, 3), np.int32)
    want[0, 1, 1, 0] = 1
    want[1, 0, 0, 2] = 2          # two events at the same place and bin: a count of 2
    want[2, 1, 1, 1] = 1
    want[3, 1, 0, 0] = 1
    np.testing.assert_array_equal(f, want)
    b = events.bin_events(_camera_events(), (3, 2, 2), T=4, binary=True)
    assert b.dtype == np.bool_ and (b == (want > 0)).all()


def test_bin_by_dt_and_both():
    ev = _camera_events()
    f = events.bin_events(ev, (3, 2, 2), dt=10)               # bins [0,10) [10,20) [20,30) [30,40): T = 39 // 10 + 1
    assert f.shape == (4, 2, 2, 3) and f.sum(axis=(1, 2, 3)).tolist() == [1, 2, 1, 1]
    g = events.bin_events(ev, (3, 2, 2), T=2, dt=10)          # two bins: the events from t = 20 on are dropped
    assert g.shape == (2, 2, 2, 3) and g.sum(axis=(1, 2, 3)).tolist() == [1, 2]
    h = events.bin_events(ev, (3, 2, 2), T=6, dt=10, t_start=-20)   # bins start 20 before: 2 empty bins first
    assert h.sum(axis=(1, 2, 3)).tolist() == [0, 0, 1, 2, 1, 1]
    late = events.bin_events(ev, (3, 2, 2), T=2, t_start=10)  # [10, 39] in 2 bins; the event at t = 0 dropped
    assert late.sum(axis=(1, 2, 3)).tolist() == [2, 2]


def test_bin_cochlea_and_single_polarity():
    ev = _struct(COCHLEA, t=[0, 4, 9, 9], x=[3, 699, 3, 3], p=[1, 1, 1, 1])       # SHD-like: p = 1, P = 1
    f = events.bin_events(ev, (700, 1, 1), T=2)
    assert f.shape == (2, 1, 700)                             # (T, P, W)
    assert f[0, 0, 3] == 1 and f[0, 0, 699] == 1 and f[1, 0, 3] == 2 and f.sum() == 4
    two = _struct(COCHLEA, t=[0, 1], x=[0, 1], p=[0, 1])
    with pytest.raises(ValueError, match="P=1"):
        events.bin_events(two, (2, 1, 1), T=1)
    np.testing.assert_array_equal(events.bin_events(two, (2, 1, 2), T=1)[0], [[1, 0], [0, 1]])


def test_float_times_and_empty():
    ev = _struct(np.dtype([("x", "<i8"), ("t", "<f8"), ("p", "<i8")]), x=[0, 1, 1], t=[0.0, 0.5, 1.0], p=[0, 0, 0])
    f = events.bin_events(ev, (2, 1, 1), T=2)                # [0, 1] in 2 bins; t = 1.0 goes to the last
    assert f[:, 0].tolist() == [[1, 0], [0, 2]]
    empty = np.zeros(0, CAMERA)
    assert events.bin_events(empty, (3, 2, 2), T=3).shape == (3, 2, 2, 3)
    assert events.bin_events(empty, (3, 2, 2), dt=5).shape == (0, 2, 2, 3)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: events.bin_events(np.zeros(3), (3, 2, 2), T=2), TypeError, "structured array"),
    (lambda: events.bin_events(np.zeros(2, [("x", int), ("q", int)]), (3, 2, 2), T=2), ValueError,
     r"unknown event layout with fields \('x', 'q'\)"),
    (lambda: events.bin_events(_camera_events(), (3, 2), T=2), ValueError, r"\(W, H, P\)"),
    (lambda: events.bin_events(_camera_events(), (3, 2, 2)), ValueError, "give T"),
    (lambda: events.bin_events(_camera_events(), (3, 2, 2), T=-1), ValueError, "T must be >= 1, got -1"),
    (lambda: events.bin_events(_camera_events(), (3, 2, 2), T=2.0), TypeError, "T must be an int"),
    (lambda: events.bin_events(_camera_events(), (3, 2, 2), dt=0), ValueError, "dt must be a positive"),
    (lambda: events.bin_events(_camera_events(), (2, 2, 2), T=2), ValueError, r"'x'.*0..2.*outside 0..1"),
    (lambda: events.bin_events(_struct(CAMERA, x=[0], y=[0], t=[0], p=[-1]), (3, 2, 2), T=1), ValueError,
     "-1/\\+1"),
    (lambda: events.bin_events(_struct(COCHLEA, t=[0], x=[0], p=[0]), (3, 2, 1), T=1), ValueError, "H=2"),
])
def test_errors_name_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ------------------------------------------------------------------------------------------------
# with Tonic


@needs_tonic
def test_tonic_structured_arrays_and_to_frame():
    """Events from Tonic's make_structured_array with Tonic's own dtypes; T bins of dt match Tonic's
    ToFrame(time_window=dt) (on a recording whose length is not a multiple of dt: there Tonic drops
    the events at the end of the last window; see docs/toolkit.md)."""
    rng = np.random.default_rng(0)
    n, sensor = 300, tonic.datasets.NMNIST.sensor_size                       # (34, 34, 2)
    t = np.sort(rng.integers(0, 3050, n))
    t[0], t[-1] = 0, 3050
    ev = make_structured_array(rng.integers(0, 34, n), rng.integers(0, 34, n), t, rng.integers(0, 2, n),
                               dtype=tonic.datasets.NMNIST.dtype)
    mine = events.bin_events(ev, sensor, dt=500)
    theirs = tonic.transforms.ToFrame(sensor_size=sensor, time_window=500, include_incomplete=True)(ev)
    assert mine.shape == theirs.shape == (7, 2, 34, 34)
    np.testing.assert_array_equal(mine, theirs)
    shd = make_structured_array(np.array([0, 400, 900]), np.array([5, 5, 699]), np.array([1, 1, 1]),
                                dtype=tonic.datasets.SHD.dtype)
    f = events.bin_events(shd, tonic.datasets.SHD.sensor_size, T=3)
    assert f.shape == (3, 1, 700) and f[0, 0, 5] == 1 and f[1, 0, 5] == 1 and f[2, 0, 699] == 1


class _TonicLike:
    """A Tonic-style data set (len, [i] -> (events, label), sensor_size) of N-MNIST-dtype events."""

    sensor_size = (4, 3, 2)

    def __init__(self, n=5):
        rng = np.random.default_rng(1)
        self.items = []
        for i in range(n):
            k = 3 + i
            ev = make_structured_array(rng.integers(0, 4, k), rng.integers(0, 3, k), np.arange(k) * 10,
                                       rng.integers(0, 2, k), dtype=tonic.datasets.NMNIST.dtype)
            self.items.append((ev, i % 3))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


@needs_tonic
def test_from_tonic_batches():
    ds = _TonicLike()
    batches = list(events.from_tonic(ds, 2, T=4, binary=True))
    assert [b[0].shape for b in batches] == [(2, 4, 2, 3, 4), (2, 4, 2, 3, 4), (1, 4, 2, 3, 4)]
    assert [b[1].tolist() for b in batches] == [[0, 1], [2, 0], [1]] and batches[0][1].dtype == np.int32
    np.testing.assert_array_equal(batches[1][0][1], events.bin_events(ds[3][0], ds.sensor_size, T=4, binary=True))
    assert len(list(events.from_tonic(ds, 2, T=4, drop_last=True))) == 2
    # dt alone: recordings of 3..7 events (t up to 60) give 3..7 bins; each batch padded to its longest
    padded = list(events.from_tonic(ds, 2, dt=10))
    assert [b[0].shape[1] for b in padded] == [4, 6, 7]
    assert padded[0][0][0, 3].sum() == 0 and padded[0][0][0].sum() == 3
    shuffled = [y for _, yb in events.from_tonic(ds, 5, T=2, shuffle=True, seed=3) for y in yb]
    assert sorted(shuffled) == [0, 0, 1, 1, 2] and shuffled != [0, 1, 2, 0, 1]


def test_from_tonic_without_tonic_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "tonic", None)
    with pytest.raises(ImportError, match=r'pip install "snnkern\[tonic\]"'):
        events.from_tonic([], 2, T=4)


@needs_tonic
def test_from_tonic_errors():
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        events.from_tonic(_TonicLike(), 0, T=2)
    ds = _TonicLike()
    ds.sensor_size = None
    with pytest.raises(ValueError, match="pass sensor_size"):
        events.from_tonic(ds, 2, T=2)
    dense = _TonicLike()
    dense.items = [(np.zeros((4, 2, 3, 4)), 0)]
    with pytest.raises(TypeError, match="ToFrame"):
        next(events.from_tonic(dense, 1, T=2))
