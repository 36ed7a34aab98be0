"""Neuron and helper layers of the snnax-compatible API."""
from .flatten import Flatten
from .iaf import IAF, SimpleIAF
from .li import SimpleLI
from .lif import LIF, AdaptiveLIF, LIFSoftReset, SimpleLIF
from .pooling import SpikingMaxPool1d, SpikingMaxPool2d
from .sigma_delta import SigmaDelta
from .spike_counter import SpikeCounter
from .srm import SRM
from .stateful import Neuron, RequiresStateLayer, StatefulLayer, default_init_fn

__all__ = ["StatefulLayer", "RequiresStateLayer", "Neuron", "default_init_fn", "SimpleLIF", "LIF",
           "LIFSoftReset", "AdaptiveLIF", "SimpleIAF", "IAF", "SimpleLI", "SigmaDelta", "SpikeCounter",
           "Flatten", "SpikingMaxPool1d", "SpikingMaxPool2d", "SRM"]
