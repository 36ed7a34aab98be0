"""What no fused path takes: a plain ``lax.scan`` of the layers' own calls, differentiated by autodiff.

:class:`AutodiffScan` runs a stateful layer without a step function (a user's ``StatefulLayer``);
:class:`ComponentScan` a cycle whose layers the component loop cannot carry (a non-floating state
entry). Both are fallbacks: the plan says why, strict mode raises."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import jax

from ..protocol import call_layer, is_compound, is_neuron, is_stateful, keep_dtypes, layer_output, merge_inputs
from ..types import Step
from ..wiring import sources
from .base import CycleSite, CycleStrategy, LayerSite, LayerStrategy, Taken

__all__ = ["AutodiffScan", "ComponentScan", "scan_layers"]


def scan_layers(layers, states, inputs_of, xs, keys):
    """A per-step loop over ``layers``: ``inputs_of(step_xs, carry)`` gives each layer's merged input.
    Returns ``(final_states, outs, reads)``, one entry per layer (``reads`` unshifted)."""

    def body(carry, xt):
        new, outs = [], []
        for layer, st, inp, k in zip(layers, carry, inputs_of(xt, carry), keys):
            ns, out = call_layer(layer, st, inp, k)
            new.append(keep_dtypes(ns, st))
            outs.append(out)
        return new, (outs, [layer_output(lay, s) for lay, s in zip(layers, new)])

    final, (outs, reads) = jax.lax.scan(body, list(states), xs)
    return final, outs, reads


@dataclass(frozen=True)
class AutodiffScan(LayerStrategy):
    """A stateful layer with no step function to fuse: ``lax.scan`` of its calls."""

    kind: ClassVar[str] = "stateful"
    name: ClassVar[str] = "scan (autodiff)"
    is_fallback: ClassVar[bool] = True

    @classmethod
    def take(cls, site: LayerSite) -> Taken:
        if not is_stateful(site.layer) or is_neuron(site.layer) or is_compound(site.layer):
            return None
        return Step(site.where, cls(), site.address, f"{type(site.layer).__name__} has no step function to fuse")

    def run(self, layer, state, inp, key):
        final, outs, _ = scan_layers([layer], [state], lambda xt, carry: [xt], inp, [key])
        return final[0], outs[0], None

    def describe(self) -> str:
        return "scan (autodiff)"


@dataclass(frozen=True)
class ComponentScan(CycleStrategy):
    """A cycle as one ``lax.scan`` of its layers' calls: each reads the others' previous outputs from
    the carry and its outside inputs (whole sequences) at the current step."""

    name: ClassVar[str] = "scan"
    is_fallback: ClassVar[bool] = True

    @classmethod
    def take(cls, site: CycleSite) -> Taken:
        return Step(site.where, cls(), tuple(site.ids))

    def run_component(self, run, ids) -> None:
        layers, pos = run.layers, {i: k for k, i in enumerate(ids)}
        outside = {i: run.outside(i, ids) for i in ids}

        def inputs_of(xt, carry):
            merged = []
            for i in ids:
                vals = [layer_output(layers[s.index], carry[pos[s.index]]) if v is None else v
                        for s, v in zip(sources(run.struct, i), xt[i])]
                merged.append(merge_inputs(layers[i], vals))
            return merged

        f, o, r = scan_layers([layers[i] for i in ids], [run.states[i] for i in ids], inputs_of, outside,
                              [run.keys[i] for i in ids])
        for k, i in enumerate(ids):
            run.finals[i], run.outs[i], run.reads[i] = f[k], o[k], r[k]

    def describe(self) -> str:
        return "scan of the component (autodiff)"
