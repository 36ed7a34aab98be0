"""Native CPU loops generated from a neuron's step function (docs/kernels.md "Native CPU loops").

The step and its VJP are traced at scalar shapes and emitted as C++ (``generate.py``,
``codegen.py``), compiled with the system compiler into a cache (``build.py``) and called through
XLA's FFI (``runtime.cc``; ``loop.py`` wraps it with a custom VJP). Importing this package never
raises: :func:`native_unavailable` says why the loops cannot be built here.
"""
from .build import NativeUnavailable, native_unavailable
from .codegen import NativeUnsupported
from .loop import kernel_targets, native_neuron_loop, native_unsupported

__all__ = ["native_neuron_loop", "native_unavailable", "native_unsupported", "kernel_targets", "NativeUnsupported",
           "NativeUnavailable"]
