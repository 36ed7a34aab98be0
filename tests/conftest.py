"""Shared fixtures for the snnkern test suite.

Everything random uses fixed PRNG keys / numpy seeds so failures are reproducible.
"""
import os
import sys

import jax
import numpy as np
import pytest

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
