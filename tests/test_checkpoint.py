"""Time checkpointing (``snnkern.time_checkpoint``): the planned path in chunks of K steps whose
forward the backward recomputes.

Results must not change at all beyond float rounding (the same operations in the same order per
chunk): outputs, final states and gradients equal the reference path's for every model kind
(feed-forward, recurrent compound, recurrent chain with a LayerNorm, a cross-layer cycle), K with and
without a remainder chunk, burn-in, vmap, and the Pallas kernels in interpret mode. The memory claim
is checked with XLA's deterministic ``memory_analysis`` (no timing in tests).
"""
from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import snnkern
from snnkern import snn
from snnkern.plan import checkpoint as ckpt

from helpers import assert_matches_reference, data, scale_linear
from test_plan import cycle_model, recurrent_model, seq_model
from test_recurrent_chains import recmlp


def _ff(n_in=3, n=6, seed=0, n_out=4):
    k = jax.random.split(jax.random.PRNGKey(seed), 2)
    return snn.Sequential(scale_linear(eqx.nn.Linear(n_in, n, key=k[0]), 3.0, 0.5), snn.LIF([0.8, 0.7], threshold=0.5),
                          scale_linear(eqx.nn.Linear(n, n_out, key=k[1]), 3.0, 0.6), snn.LIF([0.8, 0.7], threshold=0.5))


def _case(model, n_in, T=20, B=None, seed=0):
    key = jax.random.PRNGKey(7 + seed)
    st = model.init_state((n_in,), key)
    x = data((T, n_in) if B is None else (B, T, n_in), seed=seed, hi=2.0)
    return st, x, key


@pytest.mark.parametrize("every", [4, 7, "auto"])
@pytest.mark.parametrize("build,n_in", [(_ff, 3), (seq_model, 3), (recurrent_model, 3), (cycle_model, 3)],
                         ids=["ff", "seq-layernorm", "recurrent-compound", "cycle"])
def test_checkpointed_equals_reference(build, n_in, every):
    """Outputs, final states and gradients (wrt weights, states and input) equal the reference; K=4
    divides T=20, K=7 leaves a remainder chunk of 6."""
    model = build()
    st, x, key = _case(model, n_in)
    with snnkern.time_checkpoint(every):
        plan = snnkern.explain(model, x)
        assert plan.checkpoint_every == (5 if every == "auto" else every)
        assert any("time checkpointing every" in n for n in plan.notes)
        assert_matches_reference(model, st, x, key)


def test_checkpointed_recurrent_chain_batched_with_burnin():
    """snnax's recurrent MLP (LayerNorm inside both recurrences), vmapped, with a burn-in."""
    model = recmlp(jax.random.PRNGKey(3))
    st, x, key = _case(model, 12, T=24, B=3)
    with snnkern.time_checkpoint(5):
        assert_matches_reference(model, st, x, key, burnin=3, batched=True)


def test_checkpointed_pallas_interpret():
    """The Pallas neuron kernels run per chunk (interpret mode) and still equal the reference."""
    model = _ff()
    st, x, key = _case(model, 3, T=12, B=2)
    with snnkern.time_checkpoint(5):
        assert_matches_reference(model, st, x, key, batched=True, backend="pallas-interpret")


def _temp_bytes(model, x, st, key, every):
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loss(p, xx):
        m = eqx.combine(p, static)
        _, outs = eqx.filter_vmap(m, in_axes=(None, 0, None))(st, xx, key)
        return jnp.sum(outs[-1])

    with snnkern.backend("xla"), snnkern.time_checkpoint(every):
        c = jax.jit(jax.value_and_grad(loss)).lower(params, x).compile()
    return c.memory_analysis().temp_size_in_bytes


def test_checkpointing_cuts_training_memory():
    """fwd+bwd temp memory (XLA's buffer assignment, deterministic) at T=400: without checkpointing
    it grows with T (~11 sequences of (T, B, N) float32 for this model); with K=20 it holds the
    model's output sequence, its cotangent and O(T/K + K) states - under a third of it."""
    T, B, N = 400, 4, 32
    model = _ff(N, N, n_out=N)
    st, _, key = _case(model, N)
    x = data((B, T, N), hi=2.0)
    full, ckpt = _temp_bytes(model, x, st, key, None), _temp_bytes(model, x, st, key, 20)
    seq = T * B * N * 4
    assert full > 8 * seq, f"un-checkpointed temp {full / seq:.2f} sequences: expected O(T) residuals"
    assert ckpt < full / 3, f"checkpointed temp {ckpt / seq:.2f} vs {full / seq:.2f} sequences"


def test_checkpoint_not_needed_and_reference_notes():
    model = _ff()
    with snnkern.time_checkpoint(50):
        plan = snnkern.explain(model, (3,), T=20)
        assert plan.checkpoint_every is None and "not needed" in plan.notes[0]
    with snnkern.time_checkpoint(4), snnkern.backend("reference"):
        plan = snnkern.explain(model, (3,), T=20)
        assert plan.checkpoint_every is None and "planned path only" in plan.notes[0]
    plan = snnkern.explain(model, (3,), T=20)
    assert plan.checkpoint_every is None and not plan.notes


def test_default_on_cpu_for_long_sequences(monkeypatch):
    """No block, no variable: ``auto`` on CPU for T >= 500 (named in the note), off below, off
    for a GPU/TPU plan, off with ``time_checkpoint(None)``; the reference path gets no note."""
    monkeypatch.delenv("SNNKERN_TIME_CHECKPOINT", raising=False)
    model = _ff()
    plan = snnkern.explain(model, (3,), T=500)
    assert plan.checkpoint_every == 23 and "default on CPU" in plan.notes[0]
    assert snnkern.explain(model, (3,), T=499).checkpoint_every is None
    with snnkern.time_checkpoint(None):
        assert snnkern.explain(model, (3,), T=4000).checkpoint_every is None
    assert ckpt.checkpoint_every(4000, "gpu") == (None, None)
    with snnkern.backend("reference"):
        plan = snnkern.explain(model, (3,), T=4000)
        assert plan.checkpoint_every is None and not plan.notes


@pytest.mark.parametrize("bad", [0, -3, 2.5, "often", True])
def test_bad_checkpoint_values_raise(bad):
    with pytest.raises(ValueError, match="time_checkpoint"):
        with snnkern.time_checkpoint(bad):
            pass


def test_env_var_and_jit_cache_key(monkeypatch):
    """``SNNKERN_TIME_CHECKPOINT`` is read at trace time; the context manager is part of the jit key
    (the same jitted function traced inside and outside the block gets two plans)."""
    model = _ff()
    st, x, key = _case(model, 3)
    monkeypatch.setenv("SNNKERN_TIME_CHECKPOINT", "6")
    assert snnkern.explain(model, x).checkpoint_every == 6
    monkeypatch.delenv("SNNKERN_TIME_CHECKPOINT")
    f = jax.jit(lambda xx: model(st, xx, key)[1][0])
    with snnkern.plan.recorded_plans() as plans:
        a = f(x)
        with snnkern.time_checkpoint(4):
            b = f(x)
    assert [p.checkpoint_every for p in plans] == [None, 4]
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_auto_rule():
    assert [ckpt.auto_checkpoint_every(T) for T in (2, 100, 500, 8000)] == [2, 10, 23, 90]


def test_doc_example_runs():
    """The example of docs/plans.md's time-checkpointing section runs as written."""
    from pathlib import Path

    text = (Path(__file__).parent.parent / "docs" / "plans.md").read_text()
    section = text[text.index("## Time checkpointing"):]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "docs/plans.md", "exec"), {})
