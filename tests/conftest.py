"""Shared fixtures and the Hypothesis profiles of the snnkern test suite.

Everything random uses fixed PRNG keys / numpy seeds so failures are reproducible.

Hypothesis profiles (``pytest --hypothesis-profile=NAME``; default ``ci``):

- ``ci`` (``make test``): derandomized (the same examples every run), no example database, no
  deadline (the first example of a test compiles for seconds), and **no shrink phase**: a failing
  model is reported as drawn (``note`` prints its plan and run) instead of being shrunk by
  re-running hundreds of compiles, which would hang CI. ``max_examples`` 6: an example of the
  model-equivalence properties costs ~1-3 s (two compilations; a rejected, non-firing draw one),
  so the five of them compare 30 models in ~1.3 minutes on 2 cores (was 10).
- ``thorough``: random examples, 60 each, with shrinking (for a local hunt; ~15 minutes).
"""
import atexit
import glob
import importlib.util
import os
import shutil
import sys
import tempfile

# With jax-cuda12-plugin installed (`make test-gpu-compile`) on a machine without a GPU, JAX would
# try the CUDA backend first and log a failed plugin initialisation; the compile-only GPU devices
# of tests/test_gpu_compile.py also need JAX_PLATFORMS=cpu (the plugin skips its driver check only
# then). Same results as without the plugin; a machine with a GPU is left alone.
if ("JAX_PLATFORMS" not in os.environ and not glob.glob("/dev/nvidia[0-9]*")
        and importlib.util.find_spec("jax_plugins") is not None
        and importlib.util.find_spec("jax_plugins.xla_cuda12") is not None):
    os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, Phase, settings  # noqa: E402

# the helpers (helpers.py, _np_reference.py) live next to the tests; make them importable in any import mode
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile("ci", max_examples=6, deadline=None, derandomize=True, database=None, print_blob=True,
                          phases=(Phase.explicit, Phase.reuse, Phase.generate), suppress_health_check=_SLOW_OK)
settings.register_profile("thorough", max_examples=60, deadline=None, print_blob=True,
                          suppress_health_check=_SLOW_OK)
settings.load_profile("ci")   # the pytest option --hypothesis-profile (applied after this file) overrides it


@pytest.fixture
def key():
    """One fixed PRNG key."""
    return jax.random.PRNGKey(0)


@pytest.fixture
def keys():
    """Eight fixed, independent PRNG keys (k[0] ... k[7])."""
    return jax.random.split(jax.random.PRNGKey(42), 8)


@pytest.fixture
def rng():
    """A fixed numpy generator for input data."""
    return np.random.default_rng(1234)


def _session_compilation_cache():
    """A persistent compilation cache for this test process only (a fresh temporary folder, removed at
    exit; with pytest-xdist one per worker). The suite traces the same program many times on purpose
    (every comparison uses fresh function objects, see helpers.under; a parametrization or a rejected
    Hypothesis draw rebuilds the same model; each module starts from empty in-memory caches): XLA then
    compiles each distinct program once and loads it from this cache afterwards. The cache is keyed on
    the lowered program (HLO), the compile options and the JAX/XLA version, so a hit is the very
    executable a fresh compile would give; every trace still runs. ``SNNKERN_TEST_COMPILE_CACHE=0``
    turns it off; a cache folder the user configured is left as it is."""
    if os.environ.get("SNNKERN_TEST_COMPILE_CACHE", "1") == "0" or jax.config.jax_compilation_cache_dir:
        return
    path = tempfile.mkdtemp(prefix="snnkern-test-xla-cache-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


_session_compilation_cache()


@pytest.fixture(autouse=True, scope="module")
def _fresh_jax_caches():
    """Drop JAX's compiled programs and traces after each test module: one `make test` process
    compiles thousands of programs, and holding them all made XLA's compiler crash (a segfault while
    compiling a small scan, ~99 % through the suite, once); each module starts from empty caches."""
    yield
    jax.clear_caches()
