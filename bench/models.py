"""The benchmark models (BENCH.md "Model"), their weight scaling, firing-rate probes and the
functions that are timed.

Weights are Equinox's default init, then each Linear that feeds a LIF layer is multiplied (weight and
bias) by a scale factor calibrated once per tier so that the LIF's mean firing rate is near
``TARGET_RATE`` (2-20 % is the accepted window). The calibration runs the reference path.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import snnkern
from snnkern import snn

__all__ = ["ModelSpec", "build", "make_input", "scale_model", "calibrate", "make_fns", "rate_fn",
           "TARGET_RATE", "RATE_WINDOW", "DECAYS"]

TARGET_RATE = 0.08
RATE_WINDOW = (0.02, 0.20)
DECAYS = [0.95, 0.9]
WEIGHT_KEY = 0        # PRNGKey for weights
INPUT_SEED = 0        # numpy seed for the Bernoulli(0.3) input
INPUT_P = 0.3


@dataclass
class ModelSpec:
    """A built model and what the harness needs to know about it."""

    kind: str                                   # "ff" | "rec" | "recmlp" | "conv"
    model: snn.StatefulModel
    N_in: int
    N: int
    N_out: int
    # Per scale group: paths (layer id, sub id | None, branch id | None) of the Linears it scales.
    groups: Tuple[Tuple[Tuple[int, Optional[int], Optional[int]], ...], ...]
    # Per LIF layer (same order as groups): (layer id, sub id | None) of its spikes in the outputs.
    lif_sites: Tuple[Tuple[int, Optional[int]], ...]
    input_shape: Tuple[int, ...] = ()           # one sample, one step; () means (N_in,)
    conv_macs: int = 0                          # conv: multiply-adds of one sample-step (all layers)

    @property
    def in_shape(self):
        return self.input_shape or (self.N_in,)

    def gemm_flops(self, B: int, T: int, mode: str) -> float:
        """A lower bound on the dense GEMM FLOPs one call must do (sanity check of timings).

        fwd: 2*B*T*(sum of in*out over Linears). fwdbwd: forward + the weight gradients (same count)
        + the input gradients of every Linear but the first one fed by the external input.
        """
        if self.kind == "conv":      # the first layer's input gradient is not needed
            fwd = 2.0 * B * T * self.conv_macs
            return fwd if mode == "fwd" else 2 * fwd
        if self.kind == "ff":
            macs = [self.N_in * self.N, self.N * self.N]
            dx = [self.N * self.N]
        elif self.kind == "recmlp":
            macs = [self.N_in * self.N, self.N * self.N, self.N * self.N, self.N * self.N, self.N * self.N_out]
            dx = macs[1:]
        else:
            macs = [self.N_in * self.N, self.N * self.N, self.N * self.N_out]
            dx = [self.N * self.N, self.N * self.N_out]
        fwd = 2.0 * B * T * sum(macs)
        if mode == "fwd":
            return fwd
        return 2 * fwd + 2.0 * B * T * sum(dx)


def build(kind: str, N: int, N_in: Optional[int] = None, N_out: Optional[int] = None) -> ModelSpec:
    """The feed-forward (``ff``) or recurrent (``rec``) model of BENCH.md with default weights."""
    N_in = N if N_in is None else N_in
    N_out = N if N_out is None else N_out
    k = jax.random.split(jax.random.PRNGKey(WEIGHT_KEY), 4)
    if kind == "ff":
        model = snn.Sequential(eqx.nn.Linear(N_in, N, key=k[0]), snn.LIF(DECAYS),
                               eqx.nn.Linear(N, N, key=k[1]), snn.LIF(DECAYS))
        return ModelSpec(kind, model, N_in, N, N, groups=(((0, None, None),), ((2, None, None),)),
                         lif_sites=((1, None), (3, None)))
    if kind == "rec":
        comp = snn.CompoundLayer(snn.Parallel([eqx.nn.Linear(N_in, N, key=k[0]),
                                               eqx.nn.Linear(N, N, key=k[1])]), snn.LIF(DECAYS))
        model = snn.SequentialLocalFeedback(comp, eqx.nn.Linear(N, N_out, key=k[2]), feedback_layers=None)
        return ModelSpec(kind, model, N_in, N, N_out, groups=(((0, 0, 0), (0, 0, 1)),),
                         lif_sites=((0, 1),))
    if kind == "recmlp":
        # snnax's recurrent MLP (examples/benchmarks/model/snn_recmlp.py, norm=True)
        def chain(n_in, n, k1, k2):
            return snn.CompoundLayer(
                snn.Parallel([eqx.nn.Linear(n_in, n, key=k1), eqx.nn.Linear(n, n, use_bias=False, key=k2)]),
                eqx.nn.LayerNorm((n,), use_weight=False, use_bias=False, eps=1e-4),
                snn.LIFSoftReset([0.95, 0.85], reset_val=1))
        k = jax.random.split(jax.random.PRNGKey(WEIGHT_KEY), 6)
        N_out = 10 if N_out == N else N_out
        model = snn.SequentialLocalFeedback(snn.Flatten(), chain(N_in, N, k[0], k[1]), chain(N, N, k[2], k[3]),
                                            eqx.nn.Linear(N, N_out, key=k[4]), feedback_layers=None)
        # the LayerNorm takes out a common scale: the recurrent weight's scale sets the rate
        return ModelSpec(kind, model, N_in, N, N_out, groups=(((1, 0, 1),), ((2, 0, 1),)),
                         lif_sites=((1, 2), (2, 2)))
    if kind == "conv":
        return _conv_net(k)
    raise ValueError(f"unknown model kind {kind!r} (ff | rec | recmlp | conv)")


CONV_IN = (2, 32, 32)       # event-camera input of snnax's tutorial net: 2 polarities, 32x32


def _conv_net(k) -> ModelSpec:
    """snnax's tutorial conv net (examples/tutorial_Introduction.ipynb), no biases."""
    k = jax.random.split(k[0], 4)
    d = [0.975, 0.95]
    model = snn.Sequential(
        eqx.nn.Conv2d(2, 32, 7, 2, use_bias=False, key=k[0]), snn.LIF(d), eqx.nn.Dropout(0.25),
        eqx.nn.Conv2d(32, 64, 7, use_bias=False, key=k[1]), snn.LIF(d), eqx.nn.Dropout(0.25),
        eqx.nn.Conv2d(64, 64, 7, use_bias=False, key=k[2]), snn.LIF(d), eqx.nn.Dropout(0.25),
        snn.Flatten(), eqx.nn.Linear(64, 11, use_bias=False, key=k[3]), snn.LIF(d))
    # (C_out, H_out, W_out, C_in, kernel area) per conv: 32x32 -> 13x13 -> 7x7 -> 1x1
    macs = 32 * 13 * 13 * 2 * 49 + 64 * 7 * 7 * 32 * 49 + 64 * 1 * 1 * 64 * 49 + 64 * 11
    return ModelSpec("conv", model, N_in=2 * 32 * 32, N=64, N_out=11,
                     groups=(((0, None, None),), ((3, None, None),), ((6, None, None),), ((10, None, None),)),
                     lif_sites=((1, None), (4, None), (7, None), (11, None)), input_shape=CONV_IN, conv_macs=macs)


def make_input(B: int, T: int, N_in, shape: Optional[Tuple[int, ...]] = None) -> np.ndarray:
    """Bernoulli(0.3) spikes, float32, (B, T, N_in) or (B, T, *shape), seed 0, made once on the host.
    For the conv net these are the per-pixel event counts of one step (0 or 1 here)."""
    rng = np.random.default_rng(INPUT_SEED)
    return (rng.random((B, T) + tuple(shape or (N_in,))) < INPUT_P).astype(np.float32)


def _linear(model, path):
    i, sub, branch = path
    layer = model.layers[i]
    if sub is not None:
        layer = layer.layers[sub]
    if branch is not None:
        layer = layer.layers[branch]
    return layer


def scale_model(spec: ModelSpec, model, scales):
    """``model`` with the Linears of group g multiplied (weight and bias) by ``scales[g]``.
    ``scales`` may be traced (one compile serves the whole calibration)."""
    for g, paths in enumerate(spec.groups):
        for path in paths:
            def where(m, path=path):
                lin = _linear(m, path)
                return (lin.weight, lin.bias) if lin.bias is not None else (lin.weight,)
            leaves = where(model)
            model = eqx.tree_at(where, model, tuple(a * scales[g] for a in leaves))
    return model


def probe_model(spec: ModelSpec, model):
    """The same layers and edges, returning every LIF layer's output (final_layer_ids changed)."""
    g = model.graph_structure
    ids = []
    for i, _ in spec.lif_sites:
        if i not in ids:
            ids.append(i)
    struct = snn.GraphStructure(g.num_layers, input_layer_ids=g.input_layer_ids, final_layer_ids=ids,
                                input_connectivity=g.input_connectivity)
    return snn.StatefulModel(struct, model.layers), ids


def _rates_of(spec: ModelSpec, probe, ids, x, key):
    states = probe.init_state(spec.in_shape, key)
    _, outs = eqx.filter_vmap(probe, in_axes=(None, 0, None))(states, x, key)
    rates = []
    for i, sub in spec.lif_sites:
        o = outs[ids.index(i)]
        o = o[sub] if sub is not None else o
        rates.append(jnp.mean(o))
    return jnp.stack(rates)


def rate_fn(spec: ModelSpec, model) -> Callable:
    """``f(x) -> rates`` (one per LIF layer) for ``model``; jit it under the backend to probe."""
    probe, ids = probe_model(spec, model)
    key = jax.random.PRNGKey(0)
    params, static = eqx.partition(probe, eqx.is_inexact_array)

    def f(params, x):
        return _rates_of(spec, eqx.combine(params, static), ids, x, key)

    return params, f


def calibrate(spec: ModelSpec, x: np.ndarray, target: float = TARGET_RATE, iters: int = 18,
              lo: float = 1e-2, hi: float = 1e3) -> Tuple[List[float], List[float]]:
    """Scale factors (one per group, in order) putting each LIF layer's rate near ``target``, by
    bisection in log-scale on the reference forward; returns (scales, rates at those scales)."""
    key = jax.random.PRNGKey(0)
    probe, ids = probe_model(spec, spec.model)
    params, static = eqx.partition(probe, eqx.is_inexact_array)

    def rates(scales, params, x):
        m = scale_model(spec, eqx.combine(params, static), scales)
        return _rates_of(spec, m, ids, x, key)

    with snnkern.backend("reference"):
        f = jax.jit(rates).lower(jnp.ones(len(spec.groups)), params, x).compile()
    scales = np.ones(len(spec.groups), np.float32)
    for g in range(len(spec.groups)):
        a, b = np.log(lo), np.log(hi)
        best = None
        for _ in range(iters):
            mid = 0.5 * (a + b)
            scales[g] = np.exp(mid)
            r = float(np.asarray(f(jnp.asarray(scales), params, x))[g])
            if best is None or abs(r - target) < abs(best[1] - target):
                best = (scales[g], r)
            if r < target:
                a = mid
            else:
                b = mid
        scales[g] = best[0]
    final = [float(r) for r in np.asarray(f(jnp.asarray(scales), params, x))]
    return [float(s) for s in scales], final


def make_fns(spec: ModelSpec, model):
    """``params`` and the two timed functions of ``(params, x)``: the batched forward (the last
    layer's output, (B, T, ...)) and ``value_and_grad`` of the loss (sum of that output) w.r.t. every
    float array of the model. The static part is closed over, so plain ``jax.jit`` gives a
    ``Compiled`` with ``memory_analysis()``."""
    key = jax.random.PRNGKey(0)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    in_shape = spec.in_shape

    def forward(params, x):
        m = eqx.combine(params, static)
        states = m.init_state(in_shape, key)
        _, outs = eqx.filter_vmap(m, in_axes=(None, 0, None))(states, x, key)
        return jax.tree.leaves(outs[-1])[-1]

    def loss(params, x):
        return jnp.sum(forward(params, x))

    return params, forward, jax.value_and_grad(loss)
