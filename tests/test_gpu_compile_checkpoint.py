"""Time checkpointing compiled for an H200 (sm_90a) on this CPU machine, no GPU needed
(``make test-gpu-compile``): the bench models' training steps under ``snnkern.time_checkpoint``
hold the Pallas kernels of their plan inside the chunk loop - the forward kernels twice (the
forward pass and the backward pass's recomputation of each chunk), the backward kernels once -
and compile without spills or shared memory over the limit. Skipped with the reason where the
CUDA plugin is not installed."""
from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.gpu_compile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from bench import gpu_compile as G  # noqa: E402
from test_gpu_compile import h200  # noqa: E402,F401,F811  (the compile-only H200 fixture, skipped with the reason)


@pytest.mark.parametrize("cid", ["model:ff:256:16", "model:rec:128:16"])
def test_checkpointed_training_step_compiles_for_h200(cid, h200):  # noqa: F811
    import jax

    import snnkern
    from bench import models

    kind, N = cid.split(":")[1], int(cid.split(":")[2])
    model = models.build(kind, N).model          # concrete weights: made on the host
    with snnkern.time_checkpoint(8):                 # T = 32: 4 chunks
        case = G.build_case(cid, h200)
        _, text, _ = G.compile_case(case, h200, fail_on_spill=True)
        with jax.default_device(h200):
            assert snnkern.explain(model, None, T=32).checkpoint_every == 8
    assert case.expect, f"{cid}: the plan has no Pallas loop on the H200"
    want = {k: (2 * v if k.endswith("_fwd") else v) for k, v in case.expect.items()}
    got = {}
    for c in G.kernel_calls(text):
        if c["name"].startswith("snnkern_"):
            got[c["name"]] = got.get(c["name"], 0) + 1
    assert got == want, f"{cid}: expected the kernels {want} (forward recomputed per chunk), got {got}"
