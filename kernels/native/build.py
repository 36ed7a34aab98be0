"""Compile, cache and load the native kernels with the system C++ compiler.

Two kinds of shared objects, both cached in ``$SNNKERN_CACHE_DIR`` (default ``~/.cache/snnkern``)
under a hash of their source, the compiler and its flags:

- the runtime (``runtime.cc``: the XLA FFI handlers, one per direction; it includes the heavy FFI
  header, so it is compiled once per machine / JAX version, ~3 s);
- one small object per neuron (the generated loops, no FFI header: ~0.3 s), whose ``snn_fwd`` /
  ``snn_bwd`` entry points are registered as FFI targets named after the hash.

Nothing here raises at import; :func:`native_unavailable` says why the loops cannot be built.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Dict, Optional, Tuple

__all__ = ["native_unavailable", "NativeUnavailable", "load", "cache_dir", "FLAGS", "stats"]

HERE = Path(__file__).resolve().parent
# -ffp-contract=off: no FMA contraction, the rounding of the written operation order (docs/kernels.md);
# -fno-trapping-math: no FP exception is observed, so the selects of a step become vector blends (the
# block loop vectorizes); -march=native: the widest vectors of this CPU (measured 2-5x on the LIF loop;
# each operation is still one correctly rounded IEEE operation, no FMA, no vector libm: the same bits);
# the cache key holds the CPU (_cpu_id). Neither changes a result.
FLAGS = ("-O3", "-shared", "-fPIC", "-std=c++17", "-ffp-contract=off", "-fno-trapping-math", "-march=native", "-w",
         "-pthread")
stats = {"compiled": 0, "loaded": 0}   # counters the tests read (a cache hit loads without compiling)

_lock = threading.RLock()
_libs: Dict[str, Tuple[ctypes.CDLL, str, str]] = {}
_versions: Dict[str, str] = {}


class NativeUnavailable(RuntimeError):
    """The native loops cannot be built here (no compiler, no FFI header, a compile error)."""


def cache_dir() -> Path:
    return Path(os.environ.get("SNNKERN_CACHE_DIR") or Path.home() / ".cache" / "snnkern")


def _compiler() -> Optional[str]:
    return shutil.which(os.environ.get("SNNKERN_CXX", "g++"))


def _include_dir() -> Optional[str]:
    try:
        import jax
        inc = jax.ffi.include_dir()
    except Exception:  # noqa: BLE001 - an old jax without jax.ffi: reported, never raised
        return None
    return inc if (Path(inc) / "xla" / "ffi" / "api" / "ffi.h").exists() else None


def _cpu_id() -> str:
    """What -march=native compiles for: the CPU model and its feature flags."""
    import platform
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
        keep = [ln for ln in info if ln.split(":")[0].strip() in ("model name", "flags", "Features", "CPU part")]
        return platform.machine() + "\n" + "\n".join(sorted(set(keep)))
    except OSError:
        return platform.machine() + platform.processor()


def _version(cxx: str) -> str:
    if cxx not in _versions:
        r = subprocess.run([cxx, "-dumpfullversion", "-dumpversion"], capture_output=True, text=True, timeout=30)
        _versions[cxx] = r.stdout.strip()
    return _versions[cxx]


def native_unavailable() -> Optional[str]:
    """None if the native loops can be built here, else why not (never raises)."""
    cxx = _compiler()
    if cxx is None:
        return f"no C++ compiler ({os.environ.get('SNNKERN_CXX', 'g++')!r} is not on PATH)"
    if _include_dir() is None:
        return "jax.ffi's C++ header (xla/ffi/api/ffi.h) is not installed with this jaxlib"
    try:
        _runtime()
    except (NativeUnavailable, OSError, subprocess.SubprocessError) as e:
        return f"the native runtime does not build: {e}"
    return None


def _compile(src: str, tag: str, lib_global: bool = False) -> ctypes.CDLL:
    """The loaded shared object of ``src`` (C++), compiled into the cache unless it is there."""
    cxx = _compiler()
    if cxx is None:
        raise NativeUnavailable(f"no C++ compiler ({os.environ.get('SNNKERN_CXX', 'g++')!r} is not on PATH)")
    inc = _include_dir()
    header = (HERE / "snnkern_native.h").read_text()
    key = hashlib.sha256("\0".join([src, header, cxx, _version(cxx), str(inc), _cpu_id(), *FLAGS]).encode()).hexdigest()[:24]
    folder = cache_dir()
    so = folder / f"{tag}_{key}.so"
    if not so.exists():
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            cc, out = Path(tmp) / f"{tag}.cc", Path(tmp) / f"{tag}.so"
            cc.write_text(src)
            cmd = [cxx, *FLAGS, f"-I{HERE}", f"-I{inc}", str(cc), "-o", str(out)]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if r.returncode != 0:
                raise NativeUnavailable(f"{cxx} failed on {tag}: {r.stderr.strip()[-2000:]}")
            os.replace(out, so)   # atomic: a concurrent process sees the whole object or none
        stats["compiled"] += 1
    stats["loaded"] += 1
    return ctypes.CDLL(str(so), mode=ctypes.RTLD_GLOBAL if lib_global else ctypes.RTLD_LOCAL)


def _runtime() -> ctypes.CDLL:
    with _lock:
        if "runtime" not in _libs:
            lib = _compile((HERE / "runtime.cc").read_text(), "runtime", lib_global=True)
            _libs["runtime"] = (lib, "", "")
        return _libs["runtime"][0]


def load(src: str) -> Tuple[str, str]:
    """The FFI target names ``(forward, backward)`` of a generated kernel's source, compiled (or
    found in the cache), loaded and registered once per process."""
    import jax
    key = hashlib.sha256(src.encode()).hexdigest()[:16]
    with _lock:
        if key not in _libs:
            _runtime()
            lib = _compile(src, "neuron")
            names = f"snnkern_native_fwd_{key}", f"snnkern_native_bwd_{key}"
            for name, fn in zip(names, (lib.snn_fwd, lib.snn_bwd)):
                jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(fn), platform="cpu")
            _libs[key] = (lib, *names)
        return _libs[key][1], _libs[key][2]
