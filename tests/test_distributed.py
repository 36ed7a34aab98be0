"""Data-parallel training (snnkern.distributed): the sharded step equals the single-device step.

The device count must be fixed before JAX starts, and this pytest process may already run JAX on
one device, so the multi-device checks run in a subprocess: this file run as a script, with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (4 CPU devices). It prints one JSON line of
results; the tests below assert on it. Run the worker by hand with
``XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/test_distributed.py``.

Tolerances: the sharded step sums the same per-sample terms in another order (per-shard means,
then an all-reduce), so loss and gradients differ from the single-device step by float32
rounding only: loss rtol 1e-5; gradients, and model and optimizer state after three Adam steps,
rtol 1e-4 with atol 1e-6 (Adam divides by sqrt(v), which amplifies the rounding of tiny
gradients a little).
"""
import json
import os
import subprocess
import sys

import pytest

N_DEV = 4
RTOL_LOSS, RTOL, ATOL = 1e-5, 1e-4, 1e-6
DOC = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "docs", "distributed.md")
EXAMPLE_STEPS = ["--steps", "5"]   # the doc shows the output of step 5 (1 process, 4 devices)


def _doc_example() -> str:
    """The runnable example of docs/distributed.md: the first python block after its marker."""
    text = open(DOC).read()
    start = text.index("```python\n", text.index("<!-- runnable example")) + len("```python\n")
    return text[start:text.index("```", start)]


def _worker_env(n_devices):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNNKERN_")}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={n_devices}", JAX_PLATFORMS="cpu")
    return env


# ----------------------------------------------------------------------------------------------
# The worker (runs with 4 CPU devices)


def _mismatch(a, b, rtol=RTOL, atol=ATOL):
    """None if every array leaf of ``a`` equals ``b``'s within atol + rtol |b| (tests/helpers.py's
    tree comparison), else its message."""
    from helpers import assert_trees_close
    try:
        assert_trees_close(a, b, atol, rtol)
    except AssertionError as e:
        return str(e)[:2000]
    return None


def _worker():
    import time

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import snnkern
    from snnkern import distributed as dist
    from snnkern import snn

    from helpers import firing_rates

    t0 = time.perf_counter()
    res = {"n_devices": len(jax.devices()), "seconds": {}}

    def lap(what):
        nonlocal t0
        res["seconds"][what] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()

    nin, n, nout, T, B = 6, 16, 4, 12, 8
    k = jax.random.split(jax.random.PRNGKey(0), 8)
    # scaled so that both LIF layers spike (else the loss of 3 steps would not move)
    l1, l2 = eqx.nn.Linear(nin, n, key=k[0]), eqx.nn.Linear(n, nout, key=k[1])
    l1 = eqx.tree_at(lambda l: l.weight, l1, l1.weight * 3.0)
    l2 = eqx.tree_at(lambda l: (l.weight, l.bias), l2, (l2.weight * 4.0, l2.bias + 1.2))
    ff_rec = eqx.nn.Linear(nin, n, key=k[2])
    models = {
        "ff": snn.Sequential(l1, snn.LIF([0.7, 0.6]), l2, snn.LIF([0.7, 0.6])),
        # the feed-forward branch x2 and a threshold of 0.5: the recurrent LIF fires on ~9 % of its steps
        "rec": snn.SequentialLocalFeedback(
            snn.CompoundLayer(snn.Parallel([eqx.tree_at(lambda l: l.weight, ff_rec, ff_rec.weight * 2.0),
                                            eqx.nn.Linear(n, n, key=k[3])]),
                              snn.LIF([0.9, 0.8], threshold=0.5)),
            eqx.nn.Linear(n, nout, key=k[4]), feedback_layers=None),
    }
    xb = (jax.random.uniform(k[5], (B, T, nin)) < 0.6).astype(jnp.float32) * 4.0
    yb = jax.random.uniform(k[6], (B, nout))
    key = jax.random.PRNGKey(7)
    seen = []   # (plan, local batch shape) of every trace of loss_fn

    def out_seq(model, batch, key):
        xb, _ = batch
        seen.append((snnkern.explain(model), tuple(xb.shape)))
        states = model.init_state((nin,), key)
        _, outs = eqx.filter_vmap(model, in_axes=(None, 0, None))(states, xb, key)
        return outs[-1]                                    # (b, T, nout)

    def loss_mean_aux(model, batch, key):                 # aux: a per-batch mean (firing rate)
        o = out_seq(model, batch, key)
        return ((o.mean(1) * 3.0 - batch[1]) ** 2).mean() + 0.1 * (o ** 2).mean(), o.mean()

    def loss_batch_aux(model, batch, key):                # aux: per-sample values (b, nout)
        o = out_seq(model, batch, key)
        return ((o.mean(1) * 3.0 - batch[1]) ** 2).mean(), o.mean(1)

    opt = optax.adam(3e-2)

    def single_device(model, loss_fn, steps=3):
        @eqx.filter_jit
        def step(model, st):
            (loss, aux), g = eqx.filter_value_and_grad(loss_fn, has_aux=True)(model, (xb, yb), key)
            u, st = opt.update(g, st, eqx.filter(model, eqx.is_array))
            return eqx.apply_updates(model, u), st, loss, aux, g
        st = opt.init(eqx.filter(model, eqx.is_array))
        first, losses = None, []
        for _ in range(steps):
            model, st, loss, aux, g = step(model, st)
            first = first or (loss, aux, g)
            losses.append(float(loss))
        return first, losses, model, st

    def sharded(step, model, grads, steps=3):
        st = opt.init(eqx.filter(model, eqx.is_array))
        first, losses = None, []
        if grads:
            (loss0, aux0), g0 = step.value_and_grad(model, (xb, yb), key)
            first = (loss0, aux0, g0)
        for _ in range(steps):
            model, st, loss, aux = step(model, st, (xb, yb), key)
            first = first or (loss, aux, None)
            losses.append(float(loss))
        return first, losses, model, st

    def compare(name, step, model, ref, grads=True):
        """grads=False (to save a compile): the gradients are still checked through Adam's
        moments in the optimizer state (Adam's update alone would hide a gradient scale)."""
        (l1, a1, g1), losses1, m1, st1 = ref
        (l2, a2, g2), losses2, m2, st2 = sharded(step, model, grads)
        hlo = step.hlo(m2, st2, (xb, yb), key)
        res[name] = {
            "loss": [float(l2), float(l1)], "losses": [losses2, losses1],
            "aux_mismatch": _mismatch(a2, a1), "grad_mismatch": _mismatch(g2, g1) if grads else None,
            "grad_max": max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(g1)),
            "model_mismatch": _mismatch(m2, m1), "opt_state_mismatch": _mismatch(st2, st1),
            "all_reduce": "all-reduce" in hlo,
            "param_specs": [str(getattr(x.sharding, "spec", None))
                            for x in jax.tree.leaves(eqx.filter(m2, eqx.is_array))],
        }

    mesh = dist.make_mesh(N_DEV)
    refs = {}
    for name, model in models.items():
        # every spiking layer must fire, or the comparison of sharded and single-device steps is vacuous
        res[f"{name}_rates"] = firing_rates(model, model.init_state((nin,), key), xb, key, batched=True)
        loss_fn = loss_mean_aux if name == "ff" else loss_batch_aux
        refs[name] = single_device(model, loss_fn)
        seen.clear()
        step = dist.data_parallel_step(loss_fn, opt, mesh, has_aux=True, aux="mean" if name == "ff" else "batch")
        compare(name, step, model, refs[name])
        res[name]["plans"] = [(str(p.path), [s.describe() for s in p.steps], shape)
                              for p, shape in seen]
        lap(name)

    # GSPMD: plain jit with the batch sharded, recurrent model
    step = dist.data_parallel_step(loss_batch_aux, opt, mesh, mode="jit", has_aux=True, aux="batch")
    compare("rec_jit", step, models["rec"], refs["rec"], grads=False)
    lap("rec_jit")

    # Linear weights sharded over a "model" axis of a (2, 2) mesh, data-parallel over the other
    mesh2 = dist.make_mesh(N_DEV, model=2)
    psh = dist.param_shardings(models["rec"], mesh2, linear_axis="model")
    step = dist.data_parallel_step(loss_batch_aux, opt, mesh2, has_aux=True, aux="batch", param_sharding=psh)
    compare("rec_model_sharded", step, models["rec"], refs["rec"], grads=False)
    lap("rec_model_sharded")

    # a batch that does not divide over the devices
    step = dist.data_parallel_step(loss_mean_aux, opt, mesh, has_aux=True)
    try:
        step(models["ff"], opt.init(eqx.filter(models["ff"], eqx.is_array)), (xb[:6], yb[:6]), key)
        res["indivisible"] = None
    except ValueError as e:
        res["indivisible"] = str(e)

    # multi-host helpers on one process
    g = dist.global_batch((np.asarray(xb), np.asarray(yb)), mesh)
    s = dist.shard_batch((xb, yb), mesh)
    res["global_batch"] = {
        "equal": all(bool(jnp.array_equal(a, b)) for a, b in zip(g, s)),
        "spec": str(g[0].sharding.spec), "shape": list(g[0].shape),
        "shard_rows": sorted({sh.data.shape[0] for sh in g[0].addressable_shards}),
        "process_slice": [dist.process_slice(B).start, dist.process_slice(B).stop],
    }

    # a pallas_call (interpreted on CPU) inside shard_map, on the local batch
    lap("errors+global_batch")
    res["pallas"] = _pallas_in_shard_map(mesh)
    lap("pallas")
    print("RESULTS " + json.dumps(res))


def _pallas_in_shard_map(mesh):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import PartitionSpec as P

    from snnkern import distributed as dist
    from snnkern import snn
    from snnkern.kernels import neuron_loop as xla_loops
    from snnkern.kernels import pallas_neuron
    from snnkern.plan.seq import neuron_step as _neuron_step
    _spike_idx = snn.LIF.binary_state_entries
    lif = snn.LIF([0.9, 0.8])
    N, T, B = 8, 6, 8
    key = jax.random.PRNGKey(0)
    s0 = lif.init_state((N,), key)
    xs = jax.random.normal(key, (B, T, N)) * 8.0 + 2.0     # mean 2 > threshold 1: the LIF fires on ~6 % of 6 steps

    def make_loss(loop, **kw):
        def loss(params, xs):
            out = jax.vmap(lambda x: loop(_neuron_step(lif), params, s0, x, _spike_idx(lif), **kw)[1])(xs)
            return (out * jnp.arange(T)[:, None]).mean() + out.mean()
        return loss

    def local(p, x):
        loss, (gp, gx) = jax.value_and_grad(make_loss(pallas_neuron.neuron_loop, interpret=True), argnums=(0, 1))(p, x)
        return jax.lax.pmean(loss, "data"), jax.lax.pmean(gp, "data"), gx

    f = jax.jit(dist.shard_map(local, mesh, in_specs=(P(), P("data")), out_specs=(P(), P(), P("data"))))
    params = lif.params()
    jaxpr = str(jax.make_jaxpr(f)(params, xs))
    loss, gp, gx = f(params, xs)
    loss0, (gp0, gx0) = jax.jit(jax.value_and_grad(make_loss(xla_loops.neuron_loop), argnums=(0, 1)))(params, xs)
    # gx is d(local mean loss)/dx: N_DEV times d(global mean loss)/dx
    rate = float(jnp.mean(jax.vmap(lambda x: xla_loops.neuron_loop(_neuron_step(lif), params, s0, x,
                                                                   _spike_idx(lif))[1])(xs)))
    return {"pallas_call": "pallas_call" in jaxpr, "shard_map": "shard_map" in jaxpr, "rate": rate,
            "loss": [float(loss), float(loss0)],
            "param_grad_mismatch": _mismatch(gp, gp0), "x_grad_mismatch": _mismatch(np.asarray(gx) / N_DEV, gx0),
            "x_grad_max": float(jnp.max(jnp.abs(gx0)))}


# ----------------------------------------------------------------------------------------------
# The tests (this process)


def _free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def example_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("dist") / "train_dp.py"
    path.write_text(_doc_example())
    return str(path)


@pytest.fixture(scope="module")
def runs(example_path):
    """Start the 4-device worker and the doc example as 2 processes x 2 devices, all at once
    (their compiles overlap), and wait for all three."""
    env = _worker_env(N_DEV)
    env["SNNKERN_STRICT"] = "1"   # the planned path, and any fallback is an error
    procs = {"worker": subprocess.Popen([sys.executable, os.path.abspath(__file__)], env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)}
    port = _free_port()
    for i in range(2):
        procs[f"host{i}"] = subprocess.Popen(
            [sys.executable, example_path, "--coordinator", f"localhost:{port}", "--num-processes", "2",
             "--process-id", str(i)] + EXAMPLE_STEPS, env=_worker_env(2),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = {}
    try:
        for name, p in procs.items():
            stdout, stderr = p.communicate(timeout=600)
            out[name] = (p.returncode, stdout, stderr)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    return out


@pytest.fixture(scope="module")
def results(runs):
    rc, stdout, stderr = runs["worker"]
    lines = [l for l in stdout.splitlines() if l.startswith("RESULTS ")]
    assert rc == 0 and lines, f"worker failed (rc {rc}):\n{stdout[-3000:]}\n{stderr[-6000:]}"
    return json.loads(lines[-1][len("RESULTS "):])


def test_worker_has_four_devices(results):
    assert results["n_devices"] == N_DEV


def grads_compared(name):
    return name in ("ff", "rec")   # rec_jit / rec_model_sharded save a compile (see compare)


@pytest.mark.parametrize("name", ["ff", "rec", "rec_jit", "rec_model_sharded"])
def test_sharded_step_equals_single_device(results, name):
    r = results[name]
    l_sharded, l_single = r["loss"]
    assert l_sharded == pytest.approx(l_single, rel=RTOL_LOSS)
    assert r["grad_max"] > 1e-3, "gradients are ~0: the comparison would prove nothing"
    if grads_compared(name):   # else checked through Adam's moments (opt_state) below
        assert r["grad_mismatch"] is None, r["grad_mismatch"]
    assert r["aux_mismatch"] is None, r["aux_mismatch"]
    # three Adam steps: same losses, same parameters, same optimizer state
    assert r["losses"][0] == pytest.approx(r["losses"][1], rel=RTOL_LOSS)
    assert r["model_mismatch"] is None, r["model_mismatch"]
    assert r["opt_state_mismatch"] is None, r["opt_state_mismatch"]
    assert len(set(r["losses"][1])) > 1, "the loss did not move in 3 steps: no training happened"
    model = "ff" if name == "ff" else "rec"
    assert results[f"{model}_rates"], "no spiking layer"
    for where, rate in results[f"{model}_rates"]:
        assert 0.02 <= rate <= 0.98, f"{model}: {where} fires at {rate:.3f}: the comparison would be vacuous"


@pytest.mark.parametrize("name", ["ff", "rec", "rec_jit", "rec_model_sharded"])
def test_compiled_step_all_reduces(results, name):
    assert results[name]["all_reduce"], "no all-reduce in the compiled step's HLO"


# the neuron loop: XLA, or on CPU the native loop where it can run (kernels/native; under shard_map it
# is refused with a note, the XLA loop runs)
@pytest.mark.parametrize("name,loop", [("ff", ("neuron loop (custom VJP) [xla]", "neuron loop (custom VJP) [xla; ",
                                               "neuron loop (custom VJP) [native]")),
                                       ("rec", "recurrent loop (custom VJP) [xla]")])
def test_planned_path_runs_per_shard(results, name, loop):
    """Inside shard_map the model is traced on its local batch (B/4 samples) and takes the
    planned path with its fused XLA loops (strict mode: a fallback would have raised)."""
    plans = results[name]["plans"]
    assert plans, "loss_fn was never traced"
    local = [p for p in plans if p[2][0] == 8 // N_DEV]
    assert local, f"no trace on the local batch of {8 // N_DEV} samples: {[p[2] for p in plans]}"
    for path, steps, shape in local:
        assert path == "planned"
        assert any(s.startswith(loop) for s in steps), steps


def test_model_axis_sharding_kept(results):
    specs = results["rec_model_sharded"]["param_specs"]
    assert any("model" in s for s in specs), specs
    assert all(s in ("PartitionSpec()", "P()") for s in results["rec"]["param_specs"])


def test_indivisible_batch_error_names_both_numbers(results):
    msg = results["indivisible"]
    assert msg is not None, "no ValueError for a batch of 6 on 4 devices"
    assert "6" in msg and "4 devices" in msg and "'data'" in msg, msg


def test_global_batch_single_process(results):
    g = results["global_batch"]
    assert g["equal"] and g["shape"] == [8, 12, 6]
    assert g["spec"] in ("PartitionSpec('data',)", "P('data',)")
    assert g["shard_rows"] == [8 // N_DEV]
    assert g["process_slice"] == [0, 8]


def test_pallas_call_inside_shard_map(results):
    r = results["pallas"]
    assert r["pallas_call"] and r["shard_map"]
    assert 0.02 <= r["rate"] <= 0.98, f"the LIF fires at {r['rate']:.3f}: the comparison would be vacuous"
    assert r["loss"][0] == pytest.approx(r["loss"][1], rel=RTOL_LOSS)
    assert r["x_grad_max"] > 1e-4
    assert r["param_grad_mismatch"] is None, r["param_grad_mismatch"]
    assert r["x_grad_mismatch"] is None, r["x_grad_mismatch"]


def test_doc_example_on_two_processes(runs):
    """The doc's script as 2 processes x 2 CPU devices (jax.distributed over localhost, Gloo
    collectives), each loading only its half of the batch: it prints the loss that the doc shows
    for 1 process with 4 devices (the step is the same computation; 4 printed decimals)."""
    import re
    for i in range(2):
        rc, stdout, stderr = runs[f"host{i}"]
        assert rc == 0, f"process {i} failed (rc {rc}):\n{stdout[-2000:]}\n{stderr[-4000:]}"
    out = runs["host0"][1]
    assert "2 process(es), mesh {'data': 4}, global batch 32" in out, out
    pat = r"step 5: loss ([0-9.]+)  batch accuracy ([0-9.]+)"
    doc = re.search(pat, open(DOC).read())
    got = re.search(pat, out)
    assert doc and got, out
    assert float(got.group(1)) == pytest.approx(float(doc.group(1)), abs=2e-4)
    assert got.group(2) == doc.group(2)
    assert runs["host1"][1].strip() == "" or "step" not in runs["host1"][1]   # only process 0 prints


# in-process checks (any device count)

def test_make_mesh_too_many_devices():
    import jax
    from snnkern import distributed as dist
    n = len(jax.devices())
    with pytest.raises(ValueError, match=rf"{n + 1} devices requested but only {n}"):
        dist.make_mesh(n + 1)


def test_bad_arguments():
    import jax.numpy as jnp
    import optax
    from snnkern import distributed as dist
    mesh = dist.make_mesh(1)
    with pytest.raises(ValueError, match="different leading"):
        dist.shard_batch((jnp.zeros((4, 3)), jnp.zeros((2,))), mesh)
    with pytest.raises(ValueError, match="no axis 'batch'"):
        dist.shard_batch(jnp.zeros((4, 3)), mesh, axis="batch")
    with pytest.raises(ValueError, match="mode"):
        dist.data_parallel_step(lambda m, b: 0.0, optax.sgd(0.1), mesh, mode="pmap")


if __name__ == "__main__":
    _worker()
