"""The end-to-end demo (`make demo` = `python -m snnkern.demo`), as a tiny run on real data.

The digits run uses --quick (T=16, hidden=64, batch 32) for 2 epochs. Chance level is 0.10; after
2 epochs the quick run reaches 0.88-0.90 (seeds 0-4, measured), so the test asks for > 0.5:
far above chance, with a wide margin for float / library-version noise.
"""
import os
import re

import jax
import numpy as np
import pytest


from snnkern.demo.cli import main, parse_args
from snnkern.demo.data import (DataError, latency_encode, load_data, load_digits_spikes, load_npz_spikes,
                               load_tonic_spikes)
from snnkern.demo.defaults import QUICK
from snnkern import activity
from snnkern.demo.models import build_model, hidden_layer_id
from snnkern.demo.training import load_checkpoint, predict

CHANCE = 0.10
MIN_QUICK_ACC = 0.5


@pytest.mark.slow
def test_demo_quick_digits_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo_out"
    res = main(["--quick", "--epochs", "2", "--out", str(out), "--seed", "0"])
    printed = capsys.readouterr().out
    data, model = res["data"], res["model"]

    # outputs written
    for name in ("training_curves.png", "spike_raster.png", "model.eqx"):
        f = out / name
        assert f.is_file() and f.stat().st_size > 0, f"missing {f}"
    with open(out / "training_curves.png", "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"

    # accuracy: printed exactly as "test accuracy: 0.xx", and well above chance
    lines = [l for l in printed.splitlines() if l.startswith("test accuracy:")]
    assert len(lines) == 1 and re.fullmatch(r"test accuracy: \d\.\d\d", lines[0]), lines
    assert float(lines[0].split(":")[1]) == pytest.approx(res["accuracy"], abs=0.006)
    assert res["accuracy"] > MIN_QUICK_ACC, f"accuracy {res['accuracy']:.3f} (chance {CHANCE})"
    assert len(res["history"]["loss"]) == 2
    assert res["history"]["loss"][-1] < res["history"]["loss"][0]

    # checkpoint round trip: identical predictions (checked by main, and again here)
    assert res["identical_predictions"]
    assert "identical predictions" in printed
    like = build_model(data.n_features, res["args"]["hidden"], data.n_classes, "ff",
                       key=jax.random.PRNGKey(123))
    reloaded = load_checkpoint(res["checkpoint"], like)
    np.testing.assert_array_equal(predict(reloaded, data.x_test), predict(model, data.x_test))
    assert not np.array_equal(predict(like, data.x_test), predict(model, data.x_test))

    # the activity summary (snnkern.activity on the test set) is printed, and the raster written
    with open(out / "spike_raster.png", "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    act = res["activity"]
    assert list(act["rates"]) == [1] and list(act["ops"]) == [(0,), (2,)]      # the LIF; both Linears
    rate = float(np.mean(act["rates"][1]))
    assert 0.01 < rate < 0.9, rate                                            # a trained, spiking hidden layer
    ops0 = act["ops"][(0,)]
    n_test = min(len(data.y_test), 512)
    # input Linear: each input spike reaches the 64 hidden neurons; the dense layer does 64 x 64 MACs per step
    np.testing.assert_allclose(np.asarray(ops0["synaptic_ops"]), data.x_test[:n_test].sum(axis=(1, 2)) * 64, rtol=1e-6)
    assert float(ops0["dense_macs"][0]) == 64 * 64 * data.T
    for line in act["summary"].splitlines():
        assert "  " + line in printed
    assert "firing rates" in printed and "synaptic ops" in printed and "dense MACs" in printed
    assert "estimated energy per sample" in printed and "Horowitz" in printed

    # plan and step timings are printed (planned vs reference path)
    assert res["plan"] and "plan:" in printed
    assert "planned" in res["timing"] and res["timing"]["planned"]["step_s"] > 0
    assert "reference" in res["timing"] and "speed-up" in printed


def test_data_wrong_path_is_a_clear_error(tmp_path):
    missing = tmp_path / "no_such_dataset.npz"
    with pytest.raises(SystemExit) as e:
        main(["--data", str(missing), "--out", str(tmp_path / "o"), "--no-timing"])
    msg = str(e.value.code)
    assert str(missing) in msg and ".npz" in msg and "'x'" in msg and "'y'" in msg


def test_data_npz_missing_array_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, x=np.zeros((10, 5, 3), np.float32))          # no "y"
    with pytest.raises(SystemExit) as e:
        main(["--data", str(path), "--out", str(tmp_path / "o"), "--no-timing"])
    assert str(path) in str(e.value.code) and "'y'" in str(e.value.code)
    np.savez(path, x=np.zeros((10, 5), np.float32), y=np.zeros(10, int))   # no time axis
    with pytest.raises(DataError, match=r"\(N, T, F\)"):
        load_npz_spikes(str(path))


def _synthetic_events(n=150, T=12, frame=(2, 4), n_classes=3, seed=0):
    """Dense event frames (N, T, 2, 4): class c makes pixels 2c, 2c+1 fire often, the rest rarely."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    p = np.full((n, int(np.prod(frame))), 0.05)
    for c in range(n_classes):
        p[y == c, 2 * c:2 * c + 2] = 0.7
    x = rng.random((n, T, p.shape[1])) < p[:, None, :]
    return x.reshape((n, T) + frame).astype(np.uint8), y


@pytest.mark.slow
def test_data_npz_trains(tmp_path, capsys):
    x, y = _synthetic_events()
    path = tmp_path / "events.npz"
    np.savez_compressed(path, x=x, y=y)
    out = tmp_path / "o"
    res = main(["--data", str(path), "--quick", "--epochs", "4", "--batch-size", "16", "--out", str(out),
                "--no-timing", "--devices", "64"])
    printed = capsys.readouterr().out
    data = res["data"]
    assert data.T == 12 and data.n_features == 8 and data.n_classes == 3      # frames flattened
    assert len(data.y_train) == 120 and len(data.y_test) == 30               # stratified 80/20
    assert np.bincount(data.y_test).tolist() == [10, 10, 10]
    assert res["accuracy"] > 0.8                                           # an easy task (chance 1/3)
    assert res["identical_predictions"]
    assert (out / "spike_raster.png").is_file() and (out / "training_curves.png").is_file()
    assert "--devices 64" in printed and "1 device" in printed                # validated, not fatal


def test_npz_with_given_test_split(tmp_path):
    x, y = _synthetic_events(n=40)
    path = tmp_path / "split.npz"
    np.savez(path, x=x[:30], y=y[:30], x_test=x[30:], y_test=y[30:])
    data = load_npz_spikes(str(path))
    assert data.x_train.shape == (30, 12, 8) and data.x_test.shape == (10, 12, 8)
    assert data.x_train.dtype == np.float32
    np.testing.assert_array_equal(data.y_test, y[30:])


def test_digits_encodings():
    rate = load_digits_spikes(T=10, encoding="rate", seed=0)
    assert rate.x_train.shape == (1437, 10, 64) and rate.x_test.shape == (360, 10, 64)
    assert set(np.unique(rate.x_train)) <= {0.0, 1.0}
    assert set(np.bincount(rate.y_test).tolist()) <= {35, 36, 37}            # stratified 80/20
    # the split is fixed, whatever the seed
    other = load_digits_spikes(T=10, encoding="rate", seed=5)
    np.testing.assert_array_equal(rate.y_test, other.y_test)
    lat = load_digits_spikes(T=10, encoding="latency")
    # one spike per non-zero pixel, brighter pixels earlier, none in the last quarter of T
    assert lat.x_train.sum(axis=1).max() == 1.0
    assert lat.x_train[:, 10 * 3 // 4:].sum() == 0
    x = np.array([[1.0, 0.5, 0.0]], np.float32)
    spikes = latency_encode(x, 9, window=9)
    assert np.argmax(spikes[0, :, 0]) == 0 and np.argmax(spikes[0, :, 1]) == 4 and spikes[0, :, 2].sum() == 0


def test_cli_validation():
    with pytest.raises(SystemExit):
        parse_args(["--model", "cnn"])
    with pytest.raises(SystemExit):
        parse_args(["--T", "2"])
    a = parse_args(["--quick"])
    assert (a.epochs, a.hidden, a.T, a.batch_size) == tuple(QUICK[k] for k in ("epochs", "hidden", "T", "batch_size"))
    a = parse_args([])
    assert (a.epochs, a.T, a.model, a.encoding, a.out) == (30, 32, "ff", "rate", "demo_out")


def test_recurrent_model_runs():
    """--model rec builds the SequentialLocalFeedback recurrent net and gives class scores."""
    model = build_model(64, 16, 10, "rec", key=jax.random.PRNGKey(0))
    data = load_digits_spikes(T=8)
    pred = predict(model, data.x_test[:5])
    assert pred.shape == (5,) and pred.dtype.kind == "i"
    key = jax.random.PRNGKey(0)
    layers = activity.record(model, model.init_state((64,), key), data.x_test[0], key)
    hidden, out = layers[hidden_layer_id(model)], layers[-1]
    assert hidden_layer_id(model) == 0                              # the compound (its LIF's spikes)
    assert hidden.shape == (8, 16) and out.shape == (8, 10)
    assert set(np.unique(np.asarray(hidden))) <= {0.0, 1.0}


def test_data_folder_without_dataset_is_a_clear_error(tmp_path):
    """A folder is read as a tonic data set; without tonic, or without NMNIST/ or SHD/, a clear error."""
    with pytest.raises(SystemExit) as e:
        main(["--data", str(tmp_path), "--out", str(tmp_path / "o"), "--no-timing"])
    assert str(tmp_path) in str(e.value.code) and ".npz" in str(e.value.code)


def _fake_tonic(monkeypatch):
    """A stand-in for the optional package tonic (its dataset/ToFrame protocol, no files, no network)."""
    import sys
    import types

    class SHD:
        sensor_size = (700, 1, 1)

        def __init__(self, save_to, train=True, transform=None):
            # like tonic: files live under save_to/<class name>; missing -> self.download()
            self.location_on_system = os.path.join(save_to, type(self).__name__)
            self.transform, self.n = transform, (12 if train else 8)
            if not os.path.exists(os.path.join(self.location_on_system, "shd_train.h5")):
                self.download()

        def download(self):
            raise AssertionError("tried to download")

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            return self.transform(i), i % 2

    class ToFrame:
        def __init__(self, sensor_size, n_time_bins):
            self.shape, self.T = sensor_size, n_time_bins

        def __call__(self, i):
            T = self.T - (i == 3)                       # one short recording: fewer bins
            frames = np.zeros((T, 1, 1, 700), np.int16)
            frames[:, 0, 0, (i % 2) * 100:(i % 2) * 100 + 50] = 2   # counts > 1 are clipped to 1
            return frames

    tonic = types.ModuleType("tonic")
    tonic.datasets = types.SimpleNamespace(SHD=SHD)
    tonic.transforms = types.ModuleType("tonic.transforms")
    tonic.transforms.ToFrame = ToFrame
    monkeypatch.setitem(sys.modules, "tonic", tonic)
    monkeypatch.setitem(sys.modules, "tonic.transforms", tonic.transforms)


def test_tonic_folder_loader(tmp_path, monkeypatch):
    _fake_tonic(monkeypatch)
    (tmp_path / "SHD").mkdir()
    with pytest.raises(DataError, match="never downloads"):           # files missing: no download
        load_data(str(tmp_path), T=6)
    (tmp_path / "SHD" / "shd_train.h5").write_bytes(b"")
    data = load_tonic_spikes(str(tmp_path), T=6, limit=10)
    assert data.x_train.shape == (10, 6, 700) and data.x_test.shape == (2, 6, 700)
    assert data.x_train.max() == 1.0 and data.n_classes == 2
    for x, y in zip(data.x_train, data.y_train):
        assert x[:5, y * 100:y * 100 + 50].min() == 1.0 and x[:, 200:].max() == 0.0
