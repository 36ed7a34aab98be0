"""End-to-end demo: ``python -m snnkern.demo`` (or ``make demo``) trains a spiking classifier.

The logic lives in :mod:`snnkern.demo.train` (``load_digits_spikes``, ``build_model``, ``train``,
``evaluate``, ...) and the plots in :mod:`snnkern.demo.plots`; see docs/demo.md.
(``train`` is not re-exported here so that ``snnkern.demo.train`` stays the module.)
"""
from .train import (DataError, SpikeData, build_model, evaluate, load_data, load_digits_spikes,
                    load_npz_spikes, main, predict)

__all__ = ["main", "load_digits_spikes", "load_npz_spikes", "load_data", "build_model", "evaluate",
           "predict", "SpikeData", "DataError"]
