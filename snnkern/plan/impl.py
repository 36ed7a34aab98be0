"""Which implementation runs a fused loop, and the record of every fallback.

An :class:`Impl` is per platform: the XLA loops run anywhere; the Pallas kernels are compiled for a
GPU (Triton) or a TPU (Mosaic), or interpreted on any host (tests). :func:`choose_impl` answers
from the requested backend and the platform planned for, resolved once per plan; the strategies
then check their shapes (docs/kernels.md). :func:`fallback` is the one place a fallback is logged,
or raised in strict mode.
"""
from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from typing import Optional, Tuple

from snnkern import settings
from snnkern.kernels.tiling import Tiling, layout_target

__all__ = ["Impl", "Choice", "fallback", "pallas_available", "choose_impl", "kernel_target", "native_choice"]

PALLAS_PLATFORMS = ("gpu", "cuda", "rocm", "tpu")


class Impl(str, enum.Enum):
    """The implementation of a time loop."""

    XLA = "xla"                              # lax.scan loops with a hand-written VJP
    PALLAS = "pallas"                        # compiled Pallas kernels (Triton on GPU, Mosaic on TPU)
    PALLAS_INTERPRET = "pallas-interpret"    # the same kernels in the Pallas interpreter (tests)
    NATIVE = "native"                        # C++ loops generated from the step, through XLA's FFI (CPU)

    @property
    def is_pallas(self) -> bool:
        return self in (Impl.PALLAS, Impl.PALLAS_INTERPRET)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Choice:
    """A path decision: ``impl`` that runs, and ``reason`` when it is not the one asked for."""

    impl: Impl
    reason: Optional[str] = None


def fallback(where: str, path: str, reason: str) -> str:
    """Record (log) a fallback to ``path``, returning ``reason``; in strict mode raise instead."""
    msg = f"{where}: {reason} -> {path}"
    if settings.is_strict():
        raise settings.FallbackError(f"strict mode (SNNKERN_STRICT): {msg}")
    settings.log.info("snnkern fallback: %s", msg)
    return reason


def pallas_available() -> Optional[str]:
    """None if the Pallas kernels can be used, else why not."""
    try:
        from snnkern.kernels import pallas_neuron, pallas_recurrent  # noqa: F401
    except ImportError as e:
        return f"the Pallas kernels cannot be imported here ({e})"
    return None


def _auto_pallas_off() -> bool:
    return os.environ.get("SNNKERN_AUTO_PALLAS", "1").strip().lower() in ("0", "false", "no", "off")


def choose_impl(where: str, platform: str) -> Choice:
    """The implementation of a recognised time loop before its shapes are looked at.

    ``auto``: the compiled Pallas kernels on GPU/TPU, the XLA loop on CPU (Pallas on CPU only runs
    interpreted: slow, for tests). ``SNNKERN_AUTO_PALLAS=0`` keeps ``auto`` on XLA everywhere (a
    logged choice, not a fallback)."""
    requested = settings.current_backend()
    platform = platform.lower()
    if requested == "xla" or (requested == "auto" and platform == "cpu"):
        return Choice(Impl.XLA)
    if requested == "auto":
        if _auto_pallas_off():
            settings.log.info("snnkern: %s: auto on %s -> xla (SNNKERN_AUTO_PALLAS=0)", where, platform)
            return Choice(Impl.XLA)
        why = pallas_available()
        if why is None and platform not in PALLAS_PLATFORMS:
            why = f"no Pallas lowering for platform {platform!r}"
        if why is None:
            return Choice(Impl.PALLAS)
        return Choice(Impl.XLA, fallback(where, "xla", f"auto on {platform}: {why}"))
    # pallas / pallas-interpret explicitly asked for
    why = pallas_available()
    if why is None and requested == "pallas" and layout_target(platform) == "any":
        why = (f"compiled Pallas kernels need a GPU or TPU (platform: {platform}); use 'pallas-interpret', "
               "or lower under jax.sharding.use_abstract_mesh with an accelerator device")
    if why is None:
        return Choice(Impl(requested))
    return Choice(Impl.XLA, fallback(where, "xla", f"backend {requested!r} requested but {why}"))


def kernel_target(impl: Impl, platform: str) -> Tuple[str, str]:
    """``(layout target, platform whose rules apply)`` of a Pallas implementation: interpreted, the
    GPU layout (small power-of-2 tiles) under the CPU's rules; compiled, the platform's own."""
    interpret = impl is Impl.PALLAS_INTERPRET
    target = "gpu" if interpret else layout_target(platform)
    return target, Tiling(target).rules_platform(interpret)


def native_on() -> bool:
    """``SNNKERN_NATIVE=1``: the native CPU loops are opt-in for now (read at trace time). They are faster
    than the XLA loop but short of issue 23's targets, and compile a kernel per neuron configuration
    at plan time (docs/kernels.md "Native CPU loops")."""
    return os.environ.get("SNNKERN_NATIVE", "0").strip().lower() in ("1", "true", "yes", "on")


def native_choice(choice: Choice, platform: str, why_not) -> Tuple[Impl, Optional[str]]:
    """The native CPU loop in place of the XLA loop (docs/kernels.md "Native CPU loops"): on CPU, when
    the XLA loop was chosen as asked (backend ``auto`` or ``xla``), the native loop runs if it can:
    ``why_not()`` is None. Otherwise ``(XLA, note)``: the XLA loop is what was asked for, so the
    reason is a note shown in explain(), not a fallback (not logged as one, never strict-mode fatal).
    Only with ``SNNKERN_NATIVE=1`` (:func:`native_on`); without it the XLA loop, as asked."""
    if choice.impl is not Impl.XLA or choice.reason is not None or platform.lower() != "cpu":
        return choice.impl, None
    if not native_on():
        return Impl.XLA, None
    why = why_not()
    return (Impl.NATIVE, None) if why is None else (Impl.XLA, f"native loop not used: {why}")
