"""The platform a computation is being traced for, and compile-only accelerator devices.

:func:`tracing_platform` is what backend ``auto`` and the kernels' layout rules ask: on a CPU host
that compiles for an H200 (a compile-only device, see :func:`compile_only_gpu`) the answer must be
the GPU, not the host. It checks, in order:

1. the abstract device of an active abstract mesh (``jax.sharding.use_abstract_mesh(...)``, or
   ``jax.set_mesh(Mesh([device], ...))``, which sets one too);
2. the abstract device of the given arrays' shardings: arguments placed with a
   ``NamedSharding`` over a ``Mesh`` of the device carry it in their avals (``jax.typeof(x)``),
   and so does every value computed from them. A ``SingleDeviceSharding`` placement is *not*
   visible at trace time (the aval's sharding has an empty mesh), and nothing records the jitted
   function's arguments where the planner could find them: pass arrays, or use 3.;
3. ``jax.config.jax_default_device`` (``with jax.default_device(device):``), which is also the
   device ``jax.jit(f).lower(...)`` compiles for when the arguments are unplaced;
4. ``jax.default_backend()``.

:func:`compile_only_gpu` makes a compile-only NVIDIA device (H200 or H100) from the target
configurations that XLA ships inside the CUDA PJRT plugin (``jax-cuda12-plugin``, installed by
``make test-gpu-compile``): ``jax.jit(f).lower(...).compile()`` for it runs Triton, LLVM and ptxas
for sm_90a on a machine without a GPU (JAX_PLATFORMS=cpu, so the plugin skips its driver check).
:func:`compile_only_tpu` does the same for a TPU chip with libtpu (Mosaic's passes down to LLO run).
"""
from __future__ import annotations

import functools
import os
import pathlib
from typing import Optional

import jax

__all__ = ["tracing_platform", "compile_only_gpu", "compile_only_gpu_unavailable", "compile_only_tpu",
           "compile_only_tpu_unavailable", "GPU_TARGETS", "TPU_TARGETS"]

# name -> device_description_str of the target configuration embedded in the CUDA plugin
GPU_TARGETS = {"H200": "NVIDIA H200 141GB HBM3e", "H100": "NVIDIA H100 80GB HBM3"}
# name -> libtpu topology of one chip
TPU_TARGETS = {"v5e": "v5e:1x1", "v6e": "v6e:1x1"}


def _abstract_device_platform(mesh) -> Optional[str]:
    dev = getattr(mesh, "abstract_device", None)
    return None if dev is None else dev.platform


def tracing_platform(*arrays) -> str:
    """The platform being traced for (``cpu`` | ``gpu`` | ``cuda`` | ``rocm`` | ``tpu`` | ...): an
    active abstract mesh's device, else the device mesh of ``arrays``' shardings (values or
    tracers), else the default device (``jax.default_device``), else the default backend."""
    try:
        plat = _abstract_device_platform(jax.sharding.get_abstract_mesh())
    except Exception:  # noqa: BLE001 - JAX without abstract meshes
        plat = None
    if plat is not None:
        return plat
    for a in arrays:
        try:
            plat = _abstract_device_platform(jax.typeof(a).sharding.mesh)
        except Exception:  # noqa: BLE001 - not an array, or JAX without sharding in types
            plat = None
        if plat is not None:
            return plat
    dev = jax.config.jax_default_device
    if isinstance(dev, str) and dev:
        return dev
    if dev is not None and getattr(dev, "platform", None):
        return dev.platform
    return jax.default_backend()


# --------------------------------------------------------------------------------------------
# compile-only GPU devices

def _plugin_binary() -> pathlib.Path:
    import jax_plugins.xla_cuda12 as plugin   # ImportError: jax-cuda12-plugin is not installed
    path = pathlib.Path(plugin.__file__).parent / "xla_cuda_plugin.so"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the CUDA PJRT plugin (jax-cuda12-pjrt) is not installed")
    return path


@functools.lru_cache(maxsize=None)
def gpu_target_config(name: str = "H200") -> str:
    """The ``stream_executor.GpuTargetConfigProto`` (text form) of GPU ``name`` (a key of
    :data:`GPU_TARGETS`), read from the installed CUDA plugin, where XLA embeds its target specs.
    Raises KeyError (unknown name), ImportError / FileNotFoundError (no plugin) or LookupError
    (the plugin has no such spec)."""
    desc = GPU_TARGETS[name]
    data = _plugin_binary().read_bytes()
    tail = f'device_description_str: "{desc}"'.encode()
    end = data.find(tail)
    if end < 0:
        raise LookupError(f"the CUDA plugin embeds no target config for {desc!r}")
    end += len(tail)
    start = data.rfind(b"gpu_device_info {", 0, end)
    text = data[start:end].decode("ascii", errors="replace") if start >= 0 else ""
    if "platform_name" not in text or "\x00" in text or "\ufffd" in text:
        raise LookupError(f"the CUDA plugin's target config for {desc!r} is not in the expected text form")
    return text


@functools.lru_cache(maxsize=None)
def compile_only_gpu(name: str = "H200"):
    """A compile-only device for GPU ``name`` (``"H200"`` | ``"H100"``): place arguments on it
    (``ShapeDtypeStruct(..., sharding=SingleDeviceSharding(dev))``) or make it the default device
    and ``jax.jit(f).lower(...).compile()`` compiles for it. Needs ``jax-cuda12-plugin`` /
    ``jax-cuda12-pjrt`` (same version as jax), ``nvidia-cuda-nvcc-cu12`` and
    ``nvidia-nvjitlink-cu12``, and JAX_PLATFORMS=cpu on a machine without a GPU."""
    from jax.experimental import topologies
    topo = topologies.get_topology_desc(platform="cuda", target_config=gpu_target_config(name), topology="1x1x1")
    return topo.devices[0]


def _unavailable(make, name: str, what: str, missing: str) -> Optional[str]:
    """None if ``make(name)`` works, else why not: ``missing`` (plus the ImportError) when a
    package is absent, else the first line of the error."""
    try:
        make(name)
    except ImportError as e:
        return f"{e}; {missing}"
    except Exception as e:  # noqa: BLE001 - the reason is the message
        msg = f"{type(e).__name__}: {e}".strip().splitlines()[0][:300]
        hint = ("" if os.environ.get("JAX_PLATFORMS", "").strip() == "cpu"
                else " (set JAX_PLATFORMS=cpu: the plugins skip their device checks only then)")
        return f"no compile-only {what} {name}: {msg}{hint}"
    return None


def compile_only_gpu_unavailable(name: str = "H200") -> Optional[str]:
    """None if :func:`compile_only_gpu` works here, else why not (a sentence, for a skip reason)."""
    return _unavailable(compile_only_gpu, name, "GPU",
                        f"`make test-gpu-compile` installs jax-cuda12-plugin/jax-cuda12-pjrt=={jax.__version__}, "
                        f"nvidia-cuda-nvcc-cu12 and nvidia-nvjitlink-cu12")


# --------------------------------------------------------------------------------------------
# compile-only TPU devices

def _libtpu_importable() -> None:
    """Make ``libtpu`` importable: installed normally, or (``make test-gpu-compile``) by
    ``pip install --target`` into ``$SNNKERN_LIBTPU_DIR`` / ``<venv>/libtpu-target``, a folder kept
    off the venv's path so that no other JAX program on the machine tries to start a TPU."""
    import importlib.util
    import sys
    if importlib.util.find_spec("libtpu") is not None:
        return
    folder = os.environ.get("SNNKERN_LIBTPU_DIR") or os.path.join(sys.prefix, "libtpu-target")
    if not os.path.isdir(os.path.join(folder, "libtpu")):
        raise ImportError(f"libtpu is not installed (nor in {folder})")
    sys.path.insert(0, folder)


@functools.lru_cache(maxsize=None)
def compile_only_tpu(name: str = "v5e"):
    """A compile-only TPU chip (``"v5e"`` | ``"v6e"``, :data:`TPU_TARGETS`) from libtpu's
    topology description: ``jax.jit(f).lower(...).compile()`` with it as the default device runs
    the TPU compiler, Mosaic's kernel passes included, without a TPU (JAX_PLATFORMS=cpu)."""
    from jax.experimental import topologies
    _libtpu_importable()
    return topologies.get_topology_desc(topology_name=TPU_TARGETS[name], platform="tpu").devices[0]


def compile_only_tpu_unavailable(name: str = "v5e") -> Optional[str]:
    """None if :func:`compile_only_tpu` works here, else why not."""
    return _unavailable(compile_only_tpu, name, "TPU", "`make test-gpu-compile` installs libtpu as jax[tpu] pins it "
                        "(pip install --target <venv>/libtpu-target)")
