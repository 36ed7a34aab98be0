"""snnkern.settings: the user's settings are JAX config states in the jit cache key (docs/api.md).

JAX has no public way to add a key to the jit cache, so snnkern uses its private config states
(``jax._src.config``). If a JAX release moves them, snnkern keeps working with thread-local values,
but a function jitted once would keep the path it was first traced with: these tests fail first.
"""
import jax
import jax.numpy as jnp
import pytest

import snnkern
from snnkern import settings


def test_settings_are_jax_config_states():
    assert settings.JIT_KEYED, "JAX's config states moved: backend/strict/time_checkpoint lost the jit cache key"
    for state in (settings._backend_state, settings._strict_state, settings._ckpt_state):
        assert type(state).__module__.startswith("jax"), type(state)


@pytest.mark.parametrize("block, read", [
    (lambda: snnkern.backend("reference"), lambda: settings.current_backend() == "reference"),
    (lambda: snnkern.strict(), settings.is_strict),
    (lambda: snnkern.time_checkpoint(7), lambda: settings.checkpoint_setting() == 7),
])
def test_each_block_retraces_a_jitted_function(block, read):
    """A function jitted outside a block is traced again inside it, and sees the block's value."""
    seen = []
    f = jax.jit(lambda x: seen.append(read()) or x + 1)
    f(jnp.float32(0))
    with block():
        f(jnp.float32(0))
        f(jnp.float32(0))           # cached inside the block
    f(jnp.float32(0))               # cached outside it
    assert seen == [False, True]


def test_environment_variables_are_read_at_trace_time(monkeypatch):
    monkeypatch.setenv("SNNKERN_BACKEND", " XLA ")
    monkeypatch.setenv("SNNKERN_STRICT", "yes")
    monkeypatch.setenv("SNNKERN_TIME_CHECKPOINT", "auto")
    assert settings.current_backend() == "xla" and settings.is_strict()
    assert settings.checkpoint_setting() == settings.CKPT_AUTO
    with snnkern.backend("reference"), snnkern.strict(False), snnkern.time_checkpoint(None):
        assert settings.current_backend() == "reference" and not settings.is_strict()
        assert settings.checkpoint_setting() == settings.CKPT_OFF


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "often"])
def test_bad_time_checkpoint_values_raise(bad):
    with pytest.raises(ValueError, match="time_checkpoint"):
        with snnkern.time_checkpoint(bad):
            pass


def test_unknown_backend_names_the_choices():
    with pytest.raises(ValueError, match="auto, reference, xla, pallas, pallas-interpret"):
        with snnkern.backend("cuda"):
            pass
