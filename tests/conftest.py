"""Shared fixtures for the snnkern test suite.

Everything random uses fixed PRNG keys / numpy seeds so failures are reproducible.
"""
import glob
import importlib.util
import os
import sys

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

# the numpy oracle (_np_reference.py) lives next to the tests; make it importable in any import mode
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


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
