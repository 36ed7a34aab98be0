"""Demo models: the feed-forward and the recurrent spiking classifier, their input gain, read-out
lag, and which layer is the hidden spiking one (for the raster plot).

Time: every edge of an snnkern model is delayed by one step (docs/semantics.md, "Time"), so in a
model of L layers the output lags the input by L-1 steps. The read-out is a leaky integrator
(``SimpleLI``) whose membrane, averaged over the steps from L-1 on, gives the class scores.
"""
from __future__ import annotations

import numpy as np

from .defaults import DEFAULTS

LIF_DECAY = (0.9, 0.8)  # [alpha (membrane), beta (synapse)]
LI_DECAY = (0.9,)
INPUT_GAIN = 2.0        # initial input-weight gain of build_model (main() computes one from the data)
GAIN_TARGET = 1.5       # auto_input_gain: aim the std of the input layer's mean current at this


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
    """Index of the first spiking layer (the LIF, or the recurrent compound whose last sub-layer is
    the LIF; :func:`snnkern.activity.spiking_layers`)."""
    from snnkern import activity
    ids = activity.spiking_layers(model)
    if not ids:
        raise ValueError(f"the model has no spiking layer: {[type(l).__name__ for l in model.layers]}")
    return ids[0]
