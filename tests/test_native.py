"""The native CPU neuron loops (kernels/native) against the XLA loop (kernels/neuron_loop.py).

Every neuron the generator takes: outputs, reads and final states within 1e-5 + 1e-5, gradients
(parameters, initial state, inputs) within 1e-5 + 1e-4 (tests/helpers.py), spikes equal, on an input
that fires 2-98 %; jit / vmap / grad combinations; an unsupported step names its primitive; no
compiler gives a reason; a second build is a cache hit. Kernels are compiled once into the user's
cache folder (~0.5-1 s each; the shared runtime ~4-8 s once per machine).
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import GRAD_ATOL, GRAD_RTOL, KERNEL_GRAD_TOL, OUT_ATOL, OUT_RTOL, assert_rate, assert_trees_close
from snnkern import snn
from snnkern.functional.surrogate import piecewise_surrogate, sigmoid_surrogate
from snnkern.kernels.native import (NativeUnavailable, NativeUnsupported, build, native_neuron_loop,
                                    native_unavailable, native_unsupported)
from snnkern.kernels.neuron_loop import neuron_loop
from snnkern.plan.seq import neuron_step

T, SHAPE = 24, (2, 40)   # 80 neurons: one full block of 64 and a partial one

pytestmark = pytest.mark.skipif(native_unavailable() is not None, reason=f"native loops: {native_unavailable()}")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh cache folder (the other tests share the user's: the runtime compiles once per machine)."""
    monkeypatch.setenv("SNNKERN_CACHE_DIR", str(tmp_path))
    return str(tmp_path)


NEURONS = {
    "SimpleLIF": lambda: snn.SimpleLIF([0.9]),
    "SimpleLIF-reset_val-sigmoid": lambda: snn.SimpleLIF([0.9], reset_val=0.3, spike_fn=sigmoid_surrogate(2.0)),
    "LIF": lambda: snn.LIF([0.9, 0.8]),
    "LIF-piecewise-reset_grad": lambda: snn.LIF([0.9, 0.8], spike_fn=piecewise_surrogate(0.5), stop_reset_grad=False),
    "LIFSoftReset": lambda: snn.LIFSoftReset([0.85, 0.7]),
    "AdaptiveLIF": lambda: snn.AdaptiveLIF([0.9]),
    "SimpleIAF": lambda: snn.SimpleIAF(leak=0.05),
    "IAF": lambda: snn.IAF([0.9]),
    "SimpleLI": lambda: snn.SimpleLI([0.9]),
    "SigmaDelta": lambda: snn.SigmaDelta([0.9, 0.8, 0.7], threshold=0.2),
    "SpikeCounter": lambda: snn.SpikeCounter(),
}
SPIKING = ("LIF", "IAF", "SimpleLIF", "SimpleIAF", "AdaptiveLIF", "LIFSoftReset")


def setup(name, seed=0):
    layer = NEURONS[name]()
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    xs = 2.0 * jax.random.normal(k1, (T,) + SHAPE) + 1.5
    state0 = [0.3 * jax.random.normal(jax.random.fold_in(k2, i), SHAPE) for i in range(len(layer.state_names))]
    spike_idx = layer.binary_state_entries()
    for k in spike_idx:
        state0[k] = (state0[k] > 0).astype(jnp.float32)
    return layer, neuron_step(layer), layer.params(), state0, xs, spike_idx


def weights(tree, seed):
    leaves = jax.tree.leaves(tree)
    return [jax.random.normal(jax.random.PRNGKey(seed + i), jnp.shape(a)) for i, a in enumerate(leaves)]


def loss_of(loop, step, static, spike_idx, flags):
    def loss(d, s0, xs):
        res = loop(step, eqx.combine(d, static), s0, xs, spike_idx, **flags)
        leaves = jax.tree.leaves(res)
        return sum(jnp.sum(w * a) for w, a in zip(weights(res, 7), leaves))
    return loss


def compare(name, flags, seed=0):
    layer, step, params, state0, xs, spike_idx = setup(name, seed)
    want = neuron_loop(step, params, state0, xs, spike_idx, **flags)
    got = native_neuron_loop(step, params, state0, xs, spike_idx, **flags)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    assert_trees_close(got, want, OUT_ATOL, OUT_RTOL, f"{name} outputs / reads / final state")
    for k in spike_idx:
        np.testing.assert_array_equal(got[0][k], want[0][k], err_msg=f"{name}: final spikes")
    if flags["want_out"] and type(layer).__name__ in SPIKING:
        assert_rate(want[1], name)
        np.testing.assert_array_equal(got[1], want[1], err_msg=f"{name}: spikes")
    check_grads(name, step, params, state0, xs, spike_idx, flags)


def check_grads(name, step, params, state0, xs, spike_idx, flags):
    """Gradients to the initial state and the inputs elementwise; to the parameters per neuron (a
    copy of each parameter per neuron: the terms before the reduction), with the leaf-relative
    tolerance of the kernels, and reduced, relative to the summed magnitude of the per-neuron terms
    (they cancel: the XLA loop's FMA contraction moves the states by an ulp, see docs/kernels.md)."""
    dyn, static = eqx.partition(params, eqx.is_array)
    per = jax.tree.map(lambda a: jnp.broadcast_to(a, SHAPE), dyn)
    want_f, got_f = (jax.grad(loss_of(f, step, static, spike_idx, flags), argnums=(0, 1, 2))
                     for f in (neuron_loop, native_neuron_loop))
    g_want, g_got = want_f(per, state0, xs), got_f(per, state0, xs)
    assert_trees_close(g_got[1:], g_want[1:], GRAD_ATOL, GRAD_RTOL, f"{name} state / input gradients")
    atol, rtol, rel_to = KERNEL_GRAD_TOL
    assert_trees_close(g_got[0], g_want[0], atol, rtol, f"{name} per-neuron parameter gradients", rel_to=rel_to)
    r_want, r_got = want_f(dyn, state0, xs)[0], got_f(dyn, state0, xs)[0]
    for a, b, terms in zip(jax.tree.leaves(r_got), jax.tree.leaves(r_want), jax.tree.leaves(g_want[0])):
        assert a.shape == b.shape and a.dtype == b.dtype
        tol = GRAD_ATOL + GRAD_RTOL * float(jnp.sum(jnp.abs(terms)))
        assert float(jnp.max(jnp.abs(a - b))) <= tol, f"{name} parameter gradient {a} vs {b} (tol {tol})"
    if jax.tree.leaves(dyn):
        assert any(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(g_want[0])), "vacuous: zero param grads"


@pytest.mark.parametrize("name", sorted(NEURONS))
def test_neuron_equals_xla_loop(name):
    compare(name, dict(want_out=True, want_read=False, out_is_last_state=NEURONS[name]().output_is_last_state))


@pytest.mark.parametrize("flags", [dict(want_out=False, want_read=True, out_is_last_state=True),
                                   dict(want_out=True, want_read=True, out_is_last_state=True),
                                   dict(want_out=True, want_read=False, out_is_last_state=False),
                                   dict(want_out=False, want_read=False, out_is_last_state=False)],
                         ids=["read", "out+read", "out-stored-last", "final-only"])
def test_residual_policies(flags):
    compare("LIF", flags, seed=1)


def test_jit_vmap_grad():
    layer, step, params, state0, xs, spike_idx = setup("LIF", 2)
    flags = dict(want_out=True, want_read=True, out_is_last_state=True)
    dyn, static = eqx.partition(params, eqx.is_array)
    dyn = jax.tree.map(lambda a: jnp.broadcast_to(a, SHAPE), dyn)   # per-neuron terms (see check_grads)
    xb = jnp.stack([xs, xs * 0.8 + 0.2, xs * 1.1])
    s0b = [jnp.stack([s, s, s]) for s in state0]

    def batched(loop):
        return jax.vmap(lambda s, x: loop(step, params, s, x, spike_idx, **flags))(s0b, xb)

    got = jax.jit(batched, static_argnums=0)(native_neuron_loop)
    assert_trees_close(got, batched(neuron_loop), OUT_ATOL, OUT_RTOL, "jit(vmap)")

    def grad_of_vmap(loop):
        f = loss_of(loop, step, static, spike_idx, flags)
        return jax.grad(lambda d, s, x: jnp.sum(jax.vmap(f, in_axes=(None, 0, 0))(d, s, x)), argnums=(0, 1, 2))

    def vmap_of_grad(loop):
        return jax.vmap(jax.grad(loss_of(loop, step, static, spike_idx, flags), argnums=(0, 1, 2)),
                        in_axes=(None, 0, 0))

    for make, what in ((grad_of_vmap, "grad(vmap)"), (vmap_of_grad, "vmap(grad)")):
        want = make(neuron_loop)(dyn, s0b, xb)
        got = jax.jit(make(native_neuron_loop))(dyn, s0b, xb)
        assert_trees_close(got[1:], want[1:], GRAD_ATOL, GRAD_RTOL, what)
        assert_trees_close(got[0], want[0], KERNEL_GRAD_TOL[0], KERNEL_GRAD_TOL[1], what, rel_to="leaf")


def test_per_neuron_parameters():
    """A parameter array with one value per neuron (broadcast along the first axis)."""
    def step(p, s, x):
        mem = p["a"] * s[0] + (1.0 - p["a"]) * x
        spk = snn.LIF([0.9, 0.8]).spike_fn(mem - p["th"])
        return [mem - jax.lax.stop_gradient(mem * spk), spk], spk

    params = {"a": jnp.linspace(0.6, 0.95, SHAPE[1]), "th": jnp.full((SHAPE[0], 1), 0.8)}
    xs = 1.2 * jax.random.normal(jax.random.PRNGKey(3), (T,) + SHAPE) + 0.9
    s0 = [jnp.zeros(SHAPE), jnp.zeros(SHAPE)]
    flags = dict(want_out=True, want_read=False, out_is_last_state=True)
    got = native_neuron_loop(step, params, s0, xs, (1,), **flags)
    want = neuron_loop(step, params, s0, xs, (1,), **flags)
    assert_trees_close(got, want, OUT_ATOL, OUT_RTOL, "per-neuron parameters")
    static = eqx.partition(params, eqx.is_array)[1]
    g = [jax.grad(loss_of(f, step, static, (1,), flags), argnums=(0, 1, 2))(params, s0, xs)
         for f in (native_neuron_loop, neuron_loop)]
    assert g[0][0]["a"].shape == params["a"].shape and g[0][0]["th"].shape == params["th"].shape
    assert_trees_close(g[0][1:], g[1][1:], GRAD_ATOL, GRAD_RTOL, "state / input gradients")
    assert_trees_close(g[0][0], g[1][0], KERNEL_GRAD_TOL[0], KERNEL_GRAD_TOL[1], "parameter gradients", rel_to="leaf")


@pytest.mark.parametrize("body, primitive", [
    (lambda mem, x: mem + x - jnp.mean(x), "reduce_sum"),
    (lambda mem, x: jax.lax.erf(mem) + x, "erf"),
])
def test_unsupported_step_names_its_primitive(body, primitive):
    def step(p, s, x):
        m = body(s[0] * p["a"], x)
        return [m], m

    why = native_unsupported(step, {"a": jnp.float32(0.9)}, [jnp.zeros(SHAPE)], jnp.ones((T,) + SHAPE))
    assert why is not None and repr(primitive) in why, why
    with pytest.raises(NativeUnsupported, match=primitive):
        native_neuron_loop(step, {"a": jnp.float32(0.9)}, [jnp.zeros(SHAPE)], jnp.ones((T,) + SHAPE))


def test_unsupported_dtype():
    layer, step, params, state0, xs, spike_idx = setup("SimpleLIF")
    why = native_unsupported(step, params, [s.astype(jnp.bfloat16) for s in state0], xs.astype(jnp.bfloat16))
    assert why is not None and "bfloat16" in why, why


def test_no_compiler(monkeypatch):
    monkeypatch.setenv("SNNKERN_CXX", "snnkern-no-such-compiler")
    why = native_unavailable()
    assert why is not None and "no C++ compiler" in why
    layer, step, params, state0, xs, spike_idx = setup("SimpleLIF")
    assert "no C++ compiler" in native_unsupported(step, params, state0, xs)
    with pytest.raises(NativeUnavailable, match="no C\\+\\+ compiler"):
        native_neuron_loop(step, params, state0, xs, spike_idx)
    monkeypatch.setenv("SNNKERN_CXX", "g++")
    monkeypatch.setenv("PATH", "")
    assert "no C++ compiler" in native_unavailable()


def test_cache_hit(cache):
    src = '#include "snnkern_native.h"\nextern "C" int snn_probe() { return 12345; }\n'
    before = dict(build.stats)
    lib = build._compile(src, "probe")
    assert lib.snn_probe() == 12345
    assert build.stats["compiled"] == before["compiled"] + 1
    assert len([f for f in os.listdir(cache) if f.startswith("probe_")]) == 1
    lib2 = build._compile(src, "probe")   # a new process would do this: load from the cache
    assert lib2.snn_probe() == 12345
    assert build.stats["compiled"] == before["compiled"] + 1 and build.stats["loaded"] == before["loaded"] + 2


BITWISE = """
import sys
sys.path.insert(0, "tests")
import equinox as eqx, jax, numpy as np
from test_native import setup, loss_of
from snnkern.kernels.native import native_neuron_loop
from snnkern.kernels.neuron_loop import neuron_loop
flags = dict(want_out=True, want_read=True, out_is_last_state=True)
for name in ("LIF", "SimpleLIF", "AdaptiveLIF"):
    layer, step, params, state0, xs, spike_idx = setup(name)
    dyn, static = eqx.partition(params, eqx.is_array)
    res = [jax.value_and_grad(loss_of(f, step, static, spike_idx, flags), argnums=(0, 1, 2))(dyn, state0, xs)
           for f in (neuron_loop, native_neuron_loop)]
    res = [(r, f(step, params, state0, xs, spike_idx, **flags)) for r, f in zip(res, (neuron_loop, native_neuron_loop))]
    for a, b in zip(jax.tree.leaves(res[0]), jax.tree.leaves(res[1])):
        assert np.array_equal(np.asarray(a), np.asarray(b)), name
print("bitwise")
"""


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="--xla_cpu_max_isa=AVX is an x86 setting")
def test_bitwise_without_fma():
    """With XLA:CPU kept off FMA instructions, the XLA loop rounds in the written order too: outputs,
    reads, final states and every gradient are bitwise equal (the differences above are its FMAs)."""
    env = dict(os.environ, XLA_FLAGS="--xla_cpu_max_isa=AVX", JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", BITWISE], env=env, capture_output=True, text=True, timeout=300,
                       cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 0 and "bitwise" in r.stdout, r.stderr[-3000:]


def test_planner_takes_the_native_loop(monkeypatch):
    """With SNNKERN_NATIVE=1 the neuron-loop strategy runs the native loop on CPU (explain() says so);
    without a compiler the XLA loop with the reason as a note (not a fallback); without the variable
    (the default for now) the XLA loop, as asked."""
    import equinox.nn as nn

    import snnkern
    key = jax.random.PRNGKey(0)
    model = snn.Sequential(nn.Linear(8, 16, key=key), snn.LIF([0.9, 0.8]))
    monkeypatch.delenv("SNNKERN_NATIVE", raising=False)
    plan = snnkern.explain(model, (8,), T=10)
    assert "[xla]" in str(plan) and "native" not in str(plan) and not plan.fallbacks, plan
    monkeypatch.setenv("SNNKERN_NATIVE", "1")
    plan = snnkern.explain(model, (8,), T=10)
    assert "[native]" in str(plan) and not plan.fallbacks, plan
    monkeypatch.setenv("SNNKERN_CXX", "snnkern-no-such-compiler")
    plan = snnkern.explain(model, (8,), T=10)
    assert "[xla; native loop not used: no C++ compiler" in str(plan) and not plan.fallbacks, plan
    monkeypatch.setenv("SNNKERN_NATIVE", "0")
    assert "native" not in str(snnkern.explain(model, (8,), T=10))
