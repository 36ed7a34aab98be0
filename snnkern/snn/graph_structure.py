"""The layer graph of a model: which layers get the external inputs and which feed which."""
from __future__ import annotations

__all__ = ["GraphStructure"]


def _as_id_tuple(value, what: str) -> tuple:
    try:
        return tuple(tuple(int(i) for i in ids) for ids in value)
    except TypeError:
        raise TypeError(f"GraphStructure: {what} must be a sequence of sequences of layer ids, "
                        f"got {value!r}") from None


def _sort_args(args: tuple, input_layer_ids, final_layer_ids, input_connectivity):
    """snnax's 3-field form ``(num_layers, input_layer_ids, input_connectivity)`` and the documented
    4-field form ``(num_layers, input_layer_ids, final_layer_ids, input_connectivity)``, positions or
    keywords, as ``(input_layer_ids, final_layer_ids, input_connectivity)``."""
    if len(args) > 3:
        raise TypeError(f"GraphStructure takes at most 4 positional arguments, got {1 + len(args)}")
    if len(args) == 3:
        input_layer_ids, final_layer_ids, input_connectivity = args
    elif len(args) == 2 and input_connectivity is None:
        input_layer_ids, input_connectivity = args
    elif len(args) == 2:
        input_layer_ids, final_layer_ids = args
    elif len(args) == 1:
        input_layer_ids = args[0]
    if input_layer_ids is None or input_connectivity is None:
        raise TypeError("GraphStructure needs num_layers, input_layer_ids and input_connectivity")
    return input_layer_ids, final_layer_ids, input_connectivity


def _validate(n: int, ilid: tuple, final: tuple, conn: tuple) -> None:
    """ValueError naming the layer for ids out of range, wrong lengths, a layer that receives nothing."""
    if n < 1:
        raise ValueError(f"GraphStructure: num_layers must be >= 1, got {n}")
    for name, v in (("input_layer_ids", ilid), ("input_connectivity", conn)):
        if len(v) != n:
            raise ValueError(f"GraphStructure: {name} has {len(v)} entries but num_layers is {n}; "
                             f"give one entry (a possibly empty list) per layer")
    for i in range(n):
        for j in conn[i]:
            if not 0 <= j < n:
                raise ValueError(f"GraphStructure: input_connectivity[{i}] names layer {j}, "
                                 f"out of range 0..{n - 1}")
        for e in ilid[i]:
            if e < 0:
                raise ValueError(f"GraphStructure: input_layer_ids[{i}] names external input {e}; "
                                 f"ids must be >= 0")
        if not conn[i] and not ilid[i]:
            raise ValueError(f"GraphStructure: layer {i} receives nothing (no external input and "
                             f"no source layer); give it an entry in input_layer_ids or "
                             f"input_connectivity")
    if not final:
        raise ValueError("GraphStructure: final_layer_ids must name at least one layer")
    for j in final:
        if not 0 <= j < n:
            raise ValueError(f"GraphStructure: final_layer_ids names layer {j}, out of range 0..{n - 1}")


class GraphStructure:
    """Which layers get the external inputs and which layers feed which.

    Accepts snnax's 3-field form ``GraphStructure(num_layers, input_layer_ids, input_connectivity)``
    and the documented 4-field form ``GraphStructure(num_layers, input_layer_ids, final_layer_ids,
    input_connectivity)`` (positions or keywords). Lists are stored as tuples, so the structure is
    hashable (a static field under ``eqx.filter_jit``).

    - ``input_layer_ids[i]``: ids of the external inputs layer i receives at the current step.
    - ``input_connectivity[i]``: ids of the layers whose previous-step output layer i receives.
    - ``final_layer_ids``: layers whose outputs the model returns, in that order (default: last).
    """

    __slots__ = ("num_layers", "input_layer_ids", "final_layer_ids", "input_connectivity")

    def __init__(self, num_layers: int, *args, input_layer_ids=None, final_layer_ids=None,
                 input_connectivity=None):
        input_layer_ids, final_layer_ids, input_connectivity = _sort_args(args, input_layer_ids, final_layer_ids,
                                                                           input_connectivity)
        n = int(num_layers)
        ilid = _as_id_tuple(input_layer_ids, "input_layer_ids")
        conn = _as_id_tuple(input_connectivity, "input_connectivity")
        final = (n - 1,) if final_layer_ids is None else tuple(int(i) for i in final_layer_ids)
        _validate(n, ilid, final, conn)
        for k, v in (("num_layers", n), ("input_layer_ids", ilid), ("final_layer_ids", final),
                     ("input_connectivity", conn)):
            object.__setattr__(self, k, v)

    def __setattr__(self, key, value):
        raise AttributeError("GraphStructure is immutable")

    @property
    def output_layer_ids(self) -> tuple:
        """snnax's name for ``final_layer_ids``."""
        return self.final_layer_ids

    @property
    def num_inputs(self) -> int:
        """How many external inputs the graph reads (largest id + 1)."""
        ids = [e for ids in self.input_layer_ids for e in ids]
        return max(ids) + 1 if ids else 0

    def _key(self):
        return (self.num_layers, self.input_layer_ids, self.final_layer_ids, self.input_connectivity)

    def __eq__(self, other):
        return isinstance(other, GraphStructure) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        return (f"GraphStructure(num_layers={self.num_layers}, input_layer_ids={self.input_layer_ids}, "
                f"final_layer_ids={self.final_layer_ids}, input_connectivity={self.input_connectivity})")
