"""A neuron outside any cycle: one time loop over the whole sequence with a hand-written backward pass.

Implementations: the XLA loop (``kernels/neuron_loop.py``, any platform), the Pallas kernels
(``kernels/pallas_neuron.py``: Triton on GPU, Mosaic on TPU, interpreted in tests) and the native CPU
loops (``kernels/native``: C++ generated from the step), chosen from the backend asked for and the
platform planned for (:func:`~snnkern.plan.impl.choose_impl`, :func:`~snnkern.plan.impl.native_choice`);
a loop the kernels cannot take (shape, dtype, parameters) runs on XLA with the reason.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional, Tuple

from snnkern.kernels.tiling import NeuronTiling

from ..impl import Impl, choose_impl, fallback, kernel_target, native_choice
from ..protocol import is_compound, is_neuron
from ..seq import float_aval, float_input, neuron_step
from ..types import Step
from .base import LayerSite, LayerStrategy, Taken

__all__ = ["NeuronLoop"]


@dataclass(frozen=True)
class NeuronLoop(LayerStrategy):
    """One neuron's time loop. ``spike_idx``: state entries that are exactly 0/1 (stored compactly);
    ``want_out`` / ``want_read``: emit the step outputs / the one-step-shifted read sequence;
    ``out_is_last_state``: the step's output is its new state's last entry; ``tiling`` (Pallas only)."""

    impl: Impl
    spike_idx: Tuple[int, ...] = ()
    want_out: bool = True
    want_read: bool = False
    out_is_last_state: bool = False
    tiling: Optional[NeuronTiling] = None
    note: Optional[str] = None
    # the native kernel's FFI targets, made when planned (the step is not traced again to run it)
    native: Any = field(default=None, compare=False, repr=False)

    kind: ClassVar[str] = "neuron"
    is_loop: ClassVar[bool] = True

    @classmethod
    def take(cls, site: LayerSite) -> Taken:
        layer = site.layer
        if not is_neuron(layer) or is_compound(layer):
            return None
        platform, where = site.planner.platform, site.where
        xs = site.planner.seq(float_aval(site.x))
        choice = choose_impl(where, platform)
        reason, tiling = choice.reason, None

        kernel = []

        def why_not_native():
            from snnkern.kernels import native
            try:
                kernel.append(native.kernel_targets(neuron_step(layer), layer.params(), list(site.state), xs))
            except (native.NativeUnsupported, native.NativeUnavailable) as e:
                return str(e)
            return None

        impl, note = native_choice(choice, platform, why_not_native)
        if impl.is_pallas:
            from snnkern.kernels import pallas_neuron
            target, rules = kernel_target(impl, platform)
            why = pallas_neuron.unsupported(neuron_step(layer), layer.params(), list(site.state), xs, rules)
            if why is None:
                tiling = NeuronTiling.get_default(target)
            else:
                impl, reason = Impl.XLA, fallback(where, "xla", why)
        top = site.top
        spec = cls(impl, tuple(sorted(set(layer.binary_state_entries()))), site.want_out or not top,
                   site.want_read and top, top and layer.output_is_last_state, tiling, note,
                   kernel[0] if impl is Impl.NATIVE else None)
        return Step(where, spec, site.address, reason)

    def run(self, layer, state, inp, key):
        return self.loop(neuron_step(layer), layer.params(), list(state), float_input(inp))

    def loop(self, step, params, state0: list, xs):
        """The loop of ``step`` over ``xs`` (one sample, ``(T, *shape)``) as this spec says:
        ``(final_state, outs or None, reads or None)``."""
        kw = dict(want_out=self.want_out, want_read=self.want_read, out_is_last_state=self.out_is_last_state)
        if self.impl.is_pallas:
            from snnkern.kernels.pallas_neuron import neuron_loop
            return neuron_loop(step, params, state0, xs, self.spike_idx, interpret=self.impl is Impl.PALLAS_INTERPRET,
                               tiling=self.tiling, **kw)
        if self.impl is Impl.NATIVE:
            from snnkern.kernels.native import native_neuron_loop
            return native_neuron_loop(step, params, state0, xs, self.spike_idx, kernel=self.native, **kw)
        from snnkern.kernels.neuron_loop import neuron_loop
        return neuron_loop(step, params, state0, xs, self.spike_idx, **kw)

    def detail(self) -> str:
        """The implementation, with the kernels' tiling: ``xla``, ``native``, ``pallas, gpu tiling, block_n=512``."""
        if self.tiling is None:
            return str(self.impl)
        blocks = f", block_n={self.tiling.block_n}" if self.tiling.block_n else ""
        return f"{self.impl}, {self.tiling.target} tiling{blocks}"

    def describe(self) -> str:
        """With the note of why the native CPU loop does not run: ``[xla; native loop not used: ...]``."""
        return f"neuron loop (custom VJP) [{self.detail()}{'; ' + self.note if self.note else ''}]"

    def summary(self, layer=None) -> str:
        return f"fused neuron loop ({self.detail()})"

