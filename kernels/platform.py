"""The platform being traced for: the one place that resolves it (planner, tilings, kernels)."""
from __future__ import annotations

import jax

__all__ = ["tracing_platform"]


def tracing_platform() -> str:
    """The platform being traced for: an active abstract mesh's device (lowering for an
    accelerator from a CPU host), else the default backend."""
    try:
        dev = jax.sharding.get_abstract_mesh().abstract_device
    except Exception:  # noqa: BLE001 - JAX without abstract devices
        dev = None
    return dev.platform if dev is not None else jax.default_backend()
