"""snnkern.plot: raster and rates return Figures that show what they were given (no display: Agg)."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

from snnkern import plot


def test_raster_marks_every_spike(tmp_path):
    s = np.zeros((6, 2, 3), bool)                # (T, 2, 3): neurons flattened row-major
    s[0, 0, 0] = s[2, 1, 2] = s[5, 0, 1] = True
    fig = plot.raster(s, t0=10)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    pts = sorted(map(tuple, ax.collections[0].get_offsets().tolist()))
    assert pts == [(10.0, 0.0), (12.0, 5.0), (15.0, 1.0)]         # (t0 + t, neuron) for each spike
    assert ax.get_xlim() == (9.5, 15.5) and ax.get_ylim() == (-0.5, 5.5)
    assert ax.get_title().startswith("3 spikes")
    path = tmp_path / "raster.png"
    fig.savefig(path)
    plt.close(fig)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_raster_into_given_axes():
    fig, axes = plt.subplots(2, 1)
    out = plot.raster(np.eye(4), ax=axes[1], title="hidden", color="red")
    assert out is fig and axes[1].get_title() == "hidden" and len(axes[1].collections) == 1
    assert not axes[0].collections
    plt.close(fig)


def test_rates_from_a_dict_and_from_spikes():
    fig = plot.rates({1: 0.25, 3: np.array([0.1, 0.3])})           # batched rates are averaged
    heights = [p.get_height() for p in fig.axes[0].patches]
    np.testing.assert_allclose(heights, [0.25, 0.2])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["layer 1", "layer 3"]
    plt.close(fig)
    s = np.array([[1, 0, 1], [1, 0, 0], [1, 1, 0], [1, 0, 0]])
    fig = plot.rates(s, labels=["a", "b", "c"])
    np.testing.assert_allclose([p.get_height() for p in fig.axes[0].patches], [1.0, 0.25, 0.25])
    plt.close(fig)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: plot.raster(np.array(["a"])), TypeError, "spikes must be a numeric or bool array"),
    (lambda: plot.raster(np.float32(1.0)), ValueError, r"shape \(T, ...\)"),
    (lambda: plot.rates({}), ValueError, "empty"),
    (lambda: plot.rates(np.ones((3, 2)), labels=["a"]), ValueError, "1 labels for 2 bars"),
])
def test_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
