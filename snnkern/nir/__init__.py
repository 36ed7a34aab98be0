"""NIR (Neuromorphic Intermediate Representation) export and import: ``to_nir``, ``from_nir``.

Needs the optional ``nir`` package (``pip install "snnkern[nir]"``); it is imported when a
conversion runs, so ``import snnkern.nir`` and models that use :class:`Scale`,
:class:`Threshold` or :class:`Recurrent` work without it. The mapping, the time semantics and
what NIR cannot express: docs/nir.md.
"""
from ._common import NIRConversionError
from .export import to_nir
from .importer import from_nir
from .layers import Recurrent, Scale, Threshold

__all__ = ["to_nir", "from_nir", "NIRConversionError", "Scale", "Threshold", "Recurrent"]
