"""Stateless layers outside any cycle: one call over every step at once (docs/plans.md).

A plain vector ``eqx.nn.Linear`` is one GEMM over all T·B rows (:class:`Gemm`); any other stateless
layer is one ``vmap``'ed call over the T steps (:class:`Batched`), with the same key at every step
(docs/semantics.md "Keys")."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..protocol import is_stateful
from ..seq import is_vector_linear, stateless_seq
from ..types import Step
from .base import LayerSite, LayerStrategy, Taken

__all__ = ["Batched", "Gemm"]


@dataclass(frozen=True)
class Batched(LayerStrategy):
    """A stateless layer applied to all T steps in one batched call."""

    kind: ClassVar[str] = "stateless"

    @classmethod
    def take(cls, site: LayerSite) -> Taken:
        return None if is_stateful(site.layer) else Step(site.where, cls(), site.address)

    def run(self, layer, state, inp, key):
        out = stateless_seq(layer, inp, key)
        return [out[-1]], out, None

    def describe(self) -> str:
        return "batched over T (one call)"

    def summary(self, layer=None) -> str:
        return f"{type(layer).__name__} over all T·B rows"


@dataclass(frozen=True)
class Gemm(Batched):
    """A vector ``eqx.nn.Linear``: one GEMM over all T·B rows, in the sequence's layout."""

    @classmethod
    def take(cls, site: LayerSite) -> Taken:
        if is_stateful(site.layer) or not is_vector_linear(site.layer) or isinstance(site.x, (list, tuple)):
            return None
        return Step(site.where, cls(), site.address)

    def describe(self) -> str:
        return "one GEMM over all T·B rows"

    def summary(self, layer=None) -> str:
        return "GEMM over T·B rows"
