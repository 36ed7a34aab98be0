"""pytest-benchmark suite of snnkern's loops and kernels at small sizes, for run-to-run regressions
(``make bench-micro``; docs/performance.md, "Regressions"). Not collected by ``make test``.

Each benchmark times one compiled call (``jax.block_until_ready``) on the shapes of the cpu-small
tier (B=8, T=100, N=128): the XLA neuron loop forward and forward+backward, the recurrent loop
forward+backward, one GEMM over T*B rows, and one planned training step (``value_and_grad`` of the
feed-forward model's loss under ``snnkern.backend("xla")``). The parts are bench/floor.py's, so the
suite times what the floor columns sum.
"""
import jax
import numpy as np
import pytest

from bench import floor, models, timing

B, T, N = 8, 100, 128


def _ready(fn):
    return lambda: jax.block_until_ready(fn())


def _scaled(kind):
    """The bench model of ``kind`` with its weights scaled so that each LIF layer fires ~8 %."""
    spec = models.build(kind, N)
    x = models.make_input(B, T, N)
    spec.model = models.scale_model(spec, spec.model, models.calibrate(spec, x)[0])
    return spec, x


@pytest.fixture(scope="module")
def ff_parts():
    spec, x = _scaled("ff")
    return spec, x, {p.name: p for p in floor.parts(spec, x)}


@pytest.fixture(scope="module")
def rec_parts():
    spec, x = _scaled("rec")
    return {p.name: p for p in floor.parts(spec, x)}


def test_neuron_loop_fwd(benchmark, ff_parts):
    benchmark(_ready(ff_parts[2]["loop1"].fwd))


def test_neuron_loop_fwdbwd(benchmark, ff_parts):
    benchmark(_ready(ff_parts[2]["loop1"].extra))


def test_recurrent_loop_fwdbwd(benchmark, rec_parts):
    benchmark(_ready(rec_parts["rec0"].extra))


def test_gemm_fwd(benchmark, ff_parts):
    benchmark(_ready(ff_parts[2]["gemm2"].fwd))


def test_gemm_bwd(benchmark, ff_parts):
    benchmark(_ready(ff_parts[2]["gemm2"].extra))


def test_planned_training_step(benchmark, ff_parts):
    spec, x, _ = ff_parts
    params, _, fwdbwd = models.make_fns(spec, spec.model)
    c = timing.compile_under("xla", fwdbwd, params, x).fn
    loss, _ = benchmark(lambda: jax.block_until_ready(c(params, x)))
    assert np.isfinite(float(loss)) and float(loss) > 0     # the last LIF spiked: real work was timed
