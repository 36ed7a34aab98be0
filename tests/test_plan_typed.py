"""The plan is typed, decided once with the shapes, and what explain() returns is what runs.

For a family of models x backends x platforms (this CPU host, an abstract H200, an abstract TPU),
the plan a traced call made (recorded with ``snnkern.plan.recorded_plans``) must equal
``snnkern.explain``'s, fallback reasons included; a loop the kernels cannot take shows its reason
in explain() before anything is traced; and the kernels raise instead of choosing another path.
"""
from __future__ import annotations

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import snnkern
from snnkern import snn
from snnkern.kernels import pallas_neuron as PN
from snnkern.plan import Impl, recorded_plans
from helpers import CPU_LOOP_IMPL
from snnkern.plan.strategies import AutodiffScan, ComponentScan, DelayLoop, NeuronLoop, RecurrentLoop
from snnkern.plan.protocol import AbstractNeuron, is_neuron
from snnkern.snn.layers.stateful import Neuron

T, N_IN = 7, 5


def _keys(n=6):
    return jax.random.split(jax.random.PRNGKey(3), n)


class SummedGain(Neuron):
    """A neuron whose parameter does not broadcast against its state (it is summed): the XLA loop
    takes it, the Pallas kernels cannot (their per-neuron gradient tiles need broadcasting)."""

    gain: jax.Array
    state_names = ("mem",)
    spike_states = ()

    def __init__(self, width: int = 4):
        super().__init__(None, None)
        self.gain = jnp.linspace(0.1, 0.4, width)

    def params(self) -> dict:
        return {"gain": self.gain}

    def step(self, p, state, x):
        mem = 0.8 * state[0] + jnp.sum(p["gain"]) * x
        return [mem], mem


def seq_model():
    k = _keys()
    return snn.Sequential(eqx.nn.Linear(N_IN, 8, key=k[0]), snn.LIF([0.9, 0.8], threshold=0.2),
                          eqx.nn.Linear(8, 4, key=k[1]), snn.SimpleLI([0.9]))


def compound_model():
    k = _keys()
    return snn.Sequential(snn.CompoundLayer([eqx.nn.Linear(N_IN, 8, key=k[0]), eqx.nn.LayerNorm(8),
                                             snn.SimpleLIF([0.8], threshold=0.3)]),
                          eqx.nn.Linear(8, 3, key=k[1]), SummedGain())


def recurrent_model():
    k = _keys()
    rec = snn.CompoundLayer(snn.Parallel([eqx.nn.Linear(N_IN, 8, key=k[0]), eqx.nn.Linear(8, 8, key=k[1])]),
                            snn.LIFSoftReset([0.9, 0.8], threshold=0.3))
    return snn.SequentialLocalFeedback(rec, eqx.nn.Linear(8, 3, key=k[2]), snn.SimpleLIF([0.9]))


def cycle_model():
    k = _keys()
    return snn.SequentialLocalFeedback([eqx.nn.Linear(N_IN, 6, key=k[0]), snn.LIF([0.9, 0.8]),
                                        eqx.nn.Linear(6, 6, key=k[1]), snn.SimpleLIF([0.9])],
                                       feedback_layers={3: 2})


MODELS = [seq_model, compound_model, recurrent_model, cycle_model]
BACKENDS = ["auto", "xla", "pallas", "pallas-interpret", "reference"]
PLATFORMS = ["cpu", "cuda", "tpu"]


def _mesh(platform):
    from jax.sharding import AbstractDevice, AbstractMesh, AxisType
    dev = (AbstractDevice(device_kind="NVIDIA H200", num_cores=132, platform="gpu") if platform == "cuda"
           else AbstractDevice(device_kind="TPU v5 lite", num_cores=1, platform="tpu"))
    return AbstractMesh((1,), ("x",), axis_types=(AxisType.Explicit,), abstract_device=dev)


class _Context:
    """The backend block, plus the abstract device of ``platform`` (none on this CPU host)."""

    def __init__(self, backend, platform):
        self.backend, self.platform = backend, platform

    def __enter__(self):
        self._stack = [snnkern.backend(self.backend)]
        if self.platform != "cpu":
            self._stack.append(jax.sharding.use_abstract_mesh(_mesh(self.platform)))
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", DeprecationWarning)
        for c in self._stack:
            c.__enter__()

    def __exit__(self, *exc):
        for c in reversed(self._stack):
            c.__exit__(*exc)
        self._w.__exit__(*exc)


def _traced_plans(model, st, B=3):
    """Trace value_and_grad of a batched call (nothing is compiled or run); the plans it made."""
    params, static = eqx.partition(model, eqx.is_array)

    def loss(params, xb):
        _, outs = jax.vmap(eqx.combine(params, static), in_axes=(None, 0, None))(st, xb, _keys()[5])
        return jnp.sum(outs[-1])

    with recorded_plans() as plans:
        jax.jit(jax.value_and_grad(loss)).trace(params, jax.ShapeDtypeStruct((B, T, N_IN), jnp.float32))
    return plans


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("build", MODELS)
def test_traced_plan_equals_explain(build, backend, platform):
    model = build()
    st = model.init_state((N_IN,), _keys()[4])     # eagerly, outside any abstract device
    with _Context(backend, platform):
        expected = snnkern.explain(model, (N_IN,), T=T)
        ran = _traced_plans(model, st)
    assert len(ran) == 1, f"one plan per traced call, got {len(ran)}"
    assert ran[0] == expected, f"traced:\n{ran[0]}\nexplain:\n{expected}"
    assert ran[0].fallbacks == expected.fallbacks
    assert expected.platform == {"cpu": jax.default_backend(), "cuda": "gpu", "tpu": "tpu"}[platform]
    if backend == "reference":
        assert expected.reference and not expected.components
        return
    assert not expected.reference
    loops = [s for s in expected.steps if s.spec.is_loop]
    assert loops
    for s in loops:
        assert isinstance(s.spec, (NeuronLoop, RecurrentLoop, DelayLoop))
        # a Pallas spec always carries its tiling; an XLA one never does; a fallback says why
        assert (getattr(s.spec, "tiling", None) is not None) == s.impl.is_pallas
        # (the delay loop is XLA on every platform: its planned path, not a fallback)
        if backend in ("pallas", "pallas-interpret") and s.impl is Impl.XLA and not isinstance(s.spec, DelayLoop):
            assert s.reason, f"{s.where}: fell back to XLA without a reason"
    kernels_possible = backend == "pallas-interpret" or (backend in ("pallas", "auto") and platform != "cpu")
    if kernels_possible:
        assert any(s.impl.is_pallas for s in loops), str(expected)
    else:
        # on CPU the neuron loops run natively where they can (kernels/native), the others on XLA
        assert all(s.impl in (Impl.XLA, Impl.NATIVE) for s in loops), str(expected)


@pytest.mark.parametrize("backend", ["pallas-interpret", "pallas"])
def test_ineligible_parameter_shows_in_explain_before_tracing(backend):
    """SummedGain's parameter does not broadcast against its state: the plan says so (without
    running or tracing the model), and the XLA loop is what runs."""
    model = compound_model()
    with _Context(backend, "cuda" if backend == "pallas" else "cpu"):
        plan = snnkern.explain(model, (N_IN,))
    step = [s for s in plan.steps if s.where.startswith("layer 2")][0]
    assert isinstance(step.spec, NeuronLoop) and step.impl is Impl.XLA
    assert "does not broadcast" in step.reason
    assert step.address == (2,)
    with _Context(backend, "cuda" if backend == "pallas" else "cpu"), snnkern.strict():
        with pytest.raises(snnkern.FallbackError, match="does not broadcast"):
            snnkern.explain(model, (N_IN,))
    # and the call (XLA loop for that neuron) equals the reference path
    st = model.init_state((N_IN,), _keys()[4])
    x = jax.random.normal(_keys()[3], (T, N_IN))
    if backend == "pallas-interpret":
        with snnkern.backend(backend):
            got = model(st, x, _keys()[5])
        with snnkern.backend("reference"):
            ref = model(st, x, _keys()[5])
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
            assert jnp.allclose(a, b, atol=1e-5), "planned path differs from the reference"


def test_kernel_raises_on_input_it_cannot_take():
    layer = SummedGain()
    from snnkern.plan.seq import neuron_step
    xs = jnp.ones((4, 3))
    with pytest.raises(ValueError, match="cannot take this loop: a parameter does not broadcast"):
        PN.neuron_loop(neuron_step(layer), layer.params(), layer.init_state((3,)), xs, interpret=True)


def test_plan_is_typed():
    plan = snnkern.explain(recurrent_model(), (N_IN,))
    assert [c.kind for c in plan.components] == ["recurrent-compound", "stateless", "neuron"]
    rec = plan.components[0]
    assert [type(s.spec) for s in rec.steps] == [RecurrentLoop]
    spec = rec.loop.spec
    assert spec == RecurrentLoop(Impl.XLA, spike_idx=(2,), want_out=False, want_cur=False)
    neuron = plan.components[2].loop.spec
    assert neuron == NeuronLoop(CPU_LOOP_IMPL, spike_idx=(1,), want_out=True, want_read=False, out_is_last_state=True)
    with snnkern.backend("pallas-interpret"):
        spec = snnkern.explain(recurrent_model(), (N_IN,)).components[0].loop.spec
    assert spec.impl is Impl.PALLAS_INTERPRET and spec.tiling.target == "gpu" and spec.resident_w is True
    assert "W_rec on chip" in spec.describe()


def test_neuron_protocol_is_declared():
    """A neuron missing a declaration fails when instantiated, not deep inside a trace."""
    assert is_neuron(snn.LIF([0.9, 0.8])) and isinstance(snn.SimpleLI([0.9]), AbstractNeuron)

    class NoStep(Neuron):
        state_names = ("mem",)
        spike_states = ()

        def params(self):
            return {}

    class NoNames(Neuron):
        spike_states = ()

        def params(self):
            return {}

        def step(self, p, s, x):
            return s, x

    with pytest.raises(TypeError, match="step"):
        NoStep(None, None)
    with pytest.raises(TypeError, match="state_names"):
        NoNames(None, None)


def test_constructors_reject_unknown_keywords():
    with pytest.raises(TypeError):
        snn.SimpleLIF([0.9], tresh=0.5)
    with pytest.raises(TypeError):
        snn.SpikeCounter(bogus=1)


# -- issue 14's patterns: no autodiff scan anywhere, no fallback for one-neuron recurrences -------

class _NoDiag(eqx.nn.Linear):
    """A recurrent branch with its own ``__call__`` (snnax's LinearNonDiag): not a plain Linear."""

    def __call__(self, x, *, key=None):
        return (self.weight - jnp.diag(jnp.diag(self.weight))) @ x + self.bias


def _feedback(fb):
    k = _keys()
    return snn.SequentialLocalFeedback([eqx.nn.Linear(N_IN, 6, key=k[0]), snn.LIF([0.9, 0.8]),
                                        eqx.nn.Linear(6, 6, key=k[1]), snn.LIF([0.9, 0.8]),
                                        eqx.nn.Linear(6, 2, key=k[2])], feedback_layers=fb)


def _recmlp(rec_cls=eqx.nn.Linear, n=128):
    # 128 neurons: a whole kernel row, so the LayerNorm inside the recurrence can run in the kernels
    k = _keys()

    def chain(i, n, k1, k2):
        return snn.CompoundLayer(snn.Parallel([eqx.nn.Linear(i, n, key=k1), rec_cls(n, n, key=k2)]),
                                 eqx.nn.LayerNorm((n,), use_weight=False, use_bias=False, eps=1e-4),
                                 snn.LIFSoftReset([0.95, 0.85], reset_val=1))
    return snn.SequentialLocalFeedback(snn.Flatten(), chain(N_IN, n, k[0], k[1]), chain(n, n, k[2], k[3]),
                                       eqx.nn.Linear(n, 3, key=k[4]), feedback_layers=None)


PATTERNS = {"recmlp": _recmlp, "rec": recurrent_model, "fb{3:2}": lambda: _feedback({3: 2}),
            "fb{1:1}": lambda: _feedback({1: 1}), "fb{3:1}": lambda: _feedback({3: 1}),
            "nondiag": lambda: _recmlp(_NoDiag, 8)}
ONE_NEURON = ("rec", "recmlp", "fb{3:2}", "fb{1:1}")


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("name", list(PATTERNS))
def test_issue14_patterns_plan_no_autodiff_scan(name, platform):
    """Every recurrent/feedback pattern of issue 14 is planned without an autodiff scan on this CPU
    and for an abstract H200 / TPU (backend auto); the one-neuron recurrences with no fallback at
    all, strict mode included; the others with their reason."""
    model = PATTERNS[name]()
    with _Context("auto", platform):
        plan = snnkern.explain(model, (N_IN,), T=T)
    paths = {type(s.spec) for s in plan.steps}
    assert not paths & {AutodiffScan, ComponentScan}, str(plan)
    assert any(c.cyclic for c in plan.components)
    if name in ONE_NEURON:
        assert plan.fallbacks == [], str(plan)
        with _Context("auto", platform), snnkern.strict():
            snnkern.explain(model, (N_IN,), T=T)
    else:
        assert plan.fallbacks and all(r for r in plan.fallbacks), str(plan)
