"""End-to-end demo: ``python -m snnkern.demo`` (or ``make demo``) trains a spiking classifier.

Modules: :mod:`~snnkern.demo.data` (digits as spike trains, ``--data`` loaders),
:mod:`~snnkern.demo.models` (the networks), :mod:`~snnkern.demo.training` (train step, training
loop, evaluation, step timing, checkpoints), :mod:`~snnkern.demo.cli` (the command line, ``main``)
and :mod:`~snnkern.demo.plots`; see docs/demo.md.
"""
from .cli import main
from .data import DataError, SpikeData, load_data, load_digits_spikes, load_npz_spikes
from .models import build_model
from .training import evaluate, predict, train

__all__ = ["main", "load_digits_spikes", "load_npz_spikes", "load_data", "build_model", "train", "evaluate",
           "predict", "SpikeData", "DataError"]
