"""The snnax-compatible API: ``from snnkern import snn`` replaces ``from snnax import snn``."""
from . import composed
from .architecture import GraphStructure, StatefulModel, default_forward_fn, delayed_forward_fn
from .composed import CompoundLayer, Parallel, Sequential, SequentialLocalFeedback
from .layers import (IAF, LIF, AdaptiveLIF, Flatten, LIFSoftReset, RequiresStateLayer, SigmaDelta, SimpleIAF,
                     SimpleLI, SimpleLIF, SpikeCounter, SpikingMaxPool1d, SpikingMaxPool2d, SRM, StatefulLayer)
from .layers.residual import ResNetBlock

__all__ = ["StatefulModel", "GraphStructure", "default_forward_fn", "Sequential", "Parallel", "CompoundLayer",
           "SequentialLocalFeedback", "StatefulLayer", "RequiresStateLayer", "SimpleLIF", "LIF", "LIFSoftReset",
           "AdaptiveLIF", "SimpleIAF", "IAF", "SimpleLI", "SigmaDelta", "SpikeCounter", "Flatten",
           "SpikingMaxPool1d", "SpikingMaxPool2d", "composed", "delayed_forward_fn", "SRM", "ResNetBlock"]
