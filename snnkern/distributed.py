"""Data-parallel (and optionally parameter-sharded) training on many devices and hosts.

snnkern uses JAX's own distributed runtime, nothing else: a :class:`jax.sharding.Mesh` of devices,
the batch sharded over its ``"data"`` axis, parameters replicated (or sharded over a ``"model"``
axis), and one jitted training step in which every device runs the model - the planned path, with
its fused time loops - on its local part of the batch, after which loss and gradients are averaged
over the data axis (an all-reduce). Several hosts: call :func:`jax.distributed.initialize` first,
then everything here works on the global mesh (docs/distributed.md has the commands).

```python
from snnkern import distributed as dist

mesh = dist.make_mesh(4)                                    # 4 devices on the "data" axis

def loss_fn(model, batch, key):                             # mean loss over the batch it is given
    xb, yb = batch                                          # xb (B, T, *in_shape), yb (B, ...)
    states = model.init_state(in_shape, key)
    _, outs = eqx.filter_vmap(model, in_axes=(None, 0, None))(states, xb, key)
    return ((outs[-1].mean(1) - yb) ** 2).mean()

step = dist.data_parallel_step(loss_fn, optax.adam(1e-3), mesh)
model, opt_state = dist.replicate((model, opt_state), mesh)
model, opt_state, loss = step(model, opt_state, (xb, yb), key)   # batch: B divisible by 4
```

Two ways to split the work (``mode``):

- ``"shard_map"`` (default): :func:`jax.shard_map` over the data axis. Each device traces and runs
  ``loss_fn`` on its local batch ``B / n``, exactly as on one device - so the planned path, and a
  Pallas kernel where the backend picks one, runs per shard on local shapes - then
  ``lax.pmean`` averages loss and gradients. The optimizer update runs outside, under ``jit``.
- ``"jit"``: plain :func:`jax.jit` with the batch sharded (GSPMD): XLA partitions the batched
  model along the batch axis itself. Good for the XLA backend; a Pallas kernel has no partitioning
  rule, so XLA would gather its inputs to every device (correct, but not parallel) - use
  ``"shard_map"`` there.

Both give the single-device mean-loss step (the tests check loss, gradients and three optimizer
steps against it, for feed-forward and recurrent models).
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = ["make_mesh", "shard_batch", "replicate", "param_shardings", "shard_params", "global_batch",
           "process_slice", "data_parallel_step", "DataParallelStep", "shard_map"]

_MODES = ("shard_map", "jit")
_AUX = ("mean", "batch")


def _shard_map_fn():
    """``jax.shard_map`` (JAX >= 0.6) or ``jax.experimental.shard_map.shard_map`` (older)."""
    if hasattr(jax, "shard_map"):
        return jax.shard_map, "check_vma"
    from jax.experimental.shard_map import shard_map as sm  # pragma: no cover - older JAX
    return sm, "check_rep"


def shard_map(f, mesh: Mesh, in_specs, out_specs, axis_names=None):
    """``jax.shard_map`` with the replication/VMA check off (the neuron loops' scan carries start
    unvarying and become varying over the data axis, which the check rejects), manual over
    ``axis_names`` (default: all mesh axes; the others stay automatic, i.e. GSPMD)."""
    sm, check = _shard_map_fn()
    kw = {check: False}
    if axis_names is not None and set(axis_names) != set(mesh.axis_names):
        kw["axis_names"] = frozenset(axis_names)
    return sm(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, **kw)


# ----------------------------------------------------------------------------------------------
# Meshes and placement


def make_mesh(n_devices: Optional[int] = None, *, axis: str = "data", model: int = 1,
              model_axis: str = "model", devices: Optional[Sequence[Any]] = None) -> Mesh:
    """A device mesh: ``(n_devices,)`` over ``axis``, or ``(n_devices // model, model)`` over
    ``(axis, model_axis)`` when ``model > 1`` (for :func:`param_shardings`).

    ``devices`` defaults to ``jax.devices()`` - every device of every process after
    ``jax.distributed.initialize`` - and ``n_devices`` to all of them (use all of them on several
    hosts: every process must own a part of the mesh). Axis types are ``Auto`` (sharding by GSPMD
    propagation, as ``jax.jit`` expects by default).
    """
    devs = list(jax.devices() if devices is None else devices)
    n = len(devs) if n_devices is None else int(n_devices)
    if n < 1:
        raise ValueError(f"make_mesh: n_devices must be >= 1, got {n}")
    if n > len(devs):
        hint = (" (on CPU, simulate devices with XLA_FLAGS=--xla_force_host_platform_device_count="
                f"{n}, set before JAX starts)" if devs and devs[0].platform == "cpu" else "")
        raise ValueError(f"make_mesh: {n} devices requested but only {len(devs)} "
                         f"{devs[0].platform if devs else ''} device(s) are available{hint}")
    if model < 1 or n % model:
        raise ValueError(f"make_mesh: {n} devices cannot be split into a '{model_axis}' axis of {model}")
    shape, names = ((n,), (axis,)) if model == 1 else ((n // model, model), (axis, model_axis))
    if axis == model_axis and model > 1:
        raise ValueError(f"make_mesh: the data and model axes need different names, both are {axis!r}")
    try:
        from jax.sharding import AxisType
        return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(shape), devices=devs[:n])
    except (ImportError, TypeError):  # pragma: no cover - older JAX: no axis types / devices argument
        return Mesh(np.asarray(devs[:n]).reshape(shape), names)


def _axis_size(mesh: Mesh, axis: str) -> int:
    if axis not in mesh.axis_names:
        raise ValueError(f"mesh has no axis {axis!r} (its axes: {', '.join(map(repr, mesh.axis_names))})")
    return int(mesh.shape[axis])


def _batch_size(batch, n: int, axis: str, what: str = "batch") -> int:
    """The common leading size of ``batch``'s leaves; ValueError unless divisible by ``n``."""
    leaves = jax.tree.leaves(batch)
    if not leaves:
        raise ValueError(f"{what} is empty: give a pytree of arrays with a leading batch axis")
    sizes = []
    for x in leaves:
        shape = getattr(x, "shape", None)
        if shape is None or len(shape) == 0:
            raise TypeError(f"every {what} leaf needs a leading batch axis; got {type(x).__name__} "
                            f"with shape {shape} (pass scalars and keys as the extra, replicated "
                            f"arguments of the step instead)")
        sizes.append(int(shape[0]))
    if len(set(sizes)) != 1:
        raise ValueError(f"{what} leaves have different leading (batch) sizes {sizes}; they must agree")
    b = sizes[0]
    if b % n:
        lo, hi = (b // n) * n, -(-b // n) * n
        raise ValueError(f"{what} size {b} is not divisible by the {n} devices of mesh axis {axis!r}: "
                         f"each device must get the same number of samples (use a {what} size that is "
                         f"a multiple of {n}, e.g. {lo or n} or {hi})")
    return b


def shard_batch(batch, mesh: Mesh, axis: str = "data"):
    """Put a pytree of arrays (the full batch, leading axis B) on ``mesh``, sharded along B over
    ``axis`` (``NamedSharding(mesh, P(axis))``). B must be divisible by the axis size.

    One process holding the whole batch. Several hosts each loading their own samples: use
    :func:`global_batch`."""
    _batch_size(batch, _axis_size(mesh, axis), axis)
    return jax.device_put(batch, NamedSharding(mesh, P(axis)))


def replicate(tree, mesh: Mesh):
    """Put every array leaf of ``tree`` (a model, an optimizer state, a key, ...) on every device
    of ``mesh`` (``NamedSharding(mesh, P())``); other leaves are left as they are."""
    rep = NamedSharding(mesh, P())
    return jax.tree.map(lambda x: jax.device_put(x, rep) if eqx.is_array(x) else x, tree)


def param_shardings(model, mesh: Mesh, *, linear_axis: Optional[str] = None, min_features: int = 1):
    """One :class:`NamedSharding` per array leaf of ``model`` (``None`` elsewhere): the pytree that
    :func:`shard_params` and ``data_parallel_step(param_sharding=...)`` take.

    Default: everything replicated. ``linear_axis="model"``: every ``eqx.nn.Linear`` whose
    ``out_features`` is divisible by that axis's size (and at least ``min_features``) gets its
    weight ``(out, in)`` sharded along ``out`` and its bias along its only axis; GSPMD inserts the
    collectives around them. Edit the returned tree (``eqx.tree_at``) for other layouts.
    """
    rep = NamedSharding(mesh, P())
    k = _axis_size(mesh, linear_axis) if linear_axis is not None else 1

    def spec(node):
        if (linear_axis is not None and isinstance(node, eqx.nn.Linear) and node.out_features != "scalar"
                and node.out_features % k == 0 and node.out_features >= min_features):
            s = jax.tree.map(lambda _: rep, eqx.filter(node, eqx.is_array))
            s = eqx.tree_at(lambda l: l.weight, s, NamedSharding(mesh, P(linear_axis, None)))
            if node.bias is not None:
                s = eqx.tree_at(lambda l: l.bias, s, NamedSharding(mesh, P(linear_axis)))
            return s
        if isinstance(node, eqx.nn.Linear):
            return jax.tree.map(lambda _: rep, eqx.filter(node, eqx.is_array))
        return rep if eqx.is_array(node) else None

    return jax.tree.map(spec, model, is_leaf=lambda x: isinstance(x, eqx.nn.Linear))


def shard_params(model, shardings):
    """Place ``model``'s array leaves as ``shardings`` (from :func:`param_shardings`) says."""
    dyn, static = eqx.partition(model, eqx.is_array)
    return eqx.combine(jax.device_put(dyn, shardings), static)


# ----------------------------------------------------------------------------------------------
# Several hosts


def process_slice(global_batch_size: int) -> slice:
    """The rows of a global batch that this process loads: ``global_batch_size / process_count``
    consecutive ones, by ``jax.process_index()``. (For a mean loss the order of the samples in the
    global batch does not matter; each host only has to load different ones.)"""
    n, p = jax.process_count(), jax.process_index()
    if global_batch_size % n:
        raise ValueError(f"global batch size {global_batch_size} is not divisible by the {n} processes")
    per = global_batch_size // n
    return slice(p * per, (p + 1) * per)


def global_batch(local_batch, mesh: Mesh, axis: str = "data"):
    """Build the global, sharded batch from the samples *this process* loaded (a pytree of arrays
    with leading axis ``B / process_count``) with :func:`jax.make_array_from_process_local_data`.

    On one process this is :func:`shard_batch`. On several, each process passes its own
    ``B_local`` samples and gets the same global ``(B, ...)`` array, whose shards on this
    process's devices hold its samples."""
    n = _axis_size(mesh, axis)
    b_local = _batch_size(local_batch, 1, axis, "local batch")
    b = b_local * jax.process_count()
    if b % n:
        raise ValueError(f"global batch size {b} ({b_local} per process x {jax.process_count()} processes) "
                         f"is not divisible by the {n} devices of mesh axis {axis!r}")
    sharding = NamedSharding(mesh, P(axis))
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(
        sharding, np.asarray(x), (b,) + tuple(np.shape(x)[1:])), local_batch)


# ----------------------------------------------------------------------------------------------
# The training step


def _on_mesh(x, mesh: Mesh) -> bool:
    s = getattr(x, "sharding", None)
    return s is not None and set(s.device_set) == set(mesh.devices.flat)


def _place(tree, mesh: Mesh, shardings=None):
    """Arrays not yet on the mesh go there (replicated, or as ``shardings`` says)."""
    rep = NamedSharding(mesh, P())
    if shardings is None:
        return jax.tree.map(lambda x: x if not eqx.is_array(x) or _on_mesh(x, mesh)
                            else jax.device_put(x, rep), tree)
    dyn, static = eqx.partition(tree, eqx.is_array)
    dyn = jax.tree.map(lambda x, s: x if (_on_mesh(x, mesh) and x.sharding.is_equivalent_to(s, x.ndim))
                       else jax.device_put(x, s), dyn, shardings)
    return eqx.combine(dyn, static)


def _constrain(model, mesh: Mesh, shardings):
    dyn, static = eqx.partition(model, eqx.is_array)
    if shardings is None:
        dyn = jax.lax.with_sharding_constraint(dyn, NamedSharding(mesh, P()))
    else:
        dyn = jax.lax.with_sharding_constraint(dyn, shardings)
    return eqx.combine(dyn, static)


def _aux_mean(a, axis):
    def f(x):
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.inexact):
            x = x.astype(jnp.float32)
        return jax.lax.pmean(x, axis)
    return jax.tree.map(f, a)


class DataParallelStep:
    """A jitted data-parallel training step (see :func:`data_parallel_step`).

    ``step(model, opt_state, batch, *rest)`` returns ``(model, opt_state, loss)``, plus ``aux``
    when ``has_aux``; ``step.value_and_grad(model, batch, *rest)`` the all-reduced loss and
    gradients alone. ``batch`` is a pytree of arrays with a common leading batch axis ``B``
    (divisible by the data-axis size; host arrays are sharded onto the mesh here), ``rest`` are
    extra arguments given to ``loss_fn`` unsharded (the key, ...). ``step.lower(...)`` gives the
    :class:`jax.stages.Lowered` computation (``.compile().as_text()`` shows its HLO).
    """

    def __init__(self, loss_fn, optimizer, mesh: Mesh, *, axis: str, mode: str, has_aux: bool, aux: str,
                 loss_reduction: str, param_sharding):
        self.loss_fn, self.optimizer, self.mesh = loss_fn, optimizer, mesh
        self.axis, self.mode, self.has_aux, self.aux = axis, mode, has_aux, aux
        self.loss_reduction, self.param_sharding = loss_reduction, param_sharding
        self.n_data = _axis_size(mesh, axis)
        self.jitted = eqx.filter_jit(self._step)
        self._jitted_grads = eqx.filter_jit(self._grads)

    def _value_and_grad(self, model, batch, rest):
        """``(loss, aux, grads)`` of the global batch: per shard + all-reduce, or GSPMD."""
        mesh, axis = self.mesh, self.axis
        vg = eqx.filter_value_and_grad(self.loss_fn, has_aux=self.has_aux)
        if self.mode == "jit":
            batch = jax.lax.with_sharding_constraint(batch, NamedSharding(mesh, P(axis)))
            out, grads = vg(model, batch, *rest)
            loss, aux = out if self.has_aux else (out, None)
            return loss, aux, grads
        dyn, static = eqx.partition(model, eqx.is_array)
        rdyn, rstatic = eqx.partition(rest, eqx.is_array)
        reduce = jax.lax.pmean if self.loss_reduction == "mean" else jax.lax.psum

        def local(dyn, batch, rdyn):
            # one device and its B/n samples: the model traces and runs exactly as on one device
            out, grads = vg(eqx.combine(dyn, static), batch, *eqx.combine(rdyn, rstatic))
            loss, aux = out if self.has_aux else (out, None)
            if aux is not None and self.aux == "mean":
                aux = _aux_mean(aux, axis)
            return reduce(loss, axis), aux, reduce(grads, axis)

        aux_spec = P(axis) if self.aux == "batch" else P()
        return shard_map(local, mesh, in_specs=(P(), P(axis), P()), out_specs=(P(), aux_spec, P()),
                         axis_names={axis})(dyn, batch, rdyn)

    # traced once per (model structure, shapes, backend) by eqx.filter_jit
    def _step(self, model, opt_state, batch, rest):
        loss, aux, grads = self._value_and_grad(model, batch, rest)
        updates, opt_state = self.optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        model = _constrain(eqx.apply_updates(model, updates), self.mesh, self.param_sharding)
        return (model, opt_state, loss, aux) if self.has_aux else (model, opt_state, loss)

    def _grads(self, model, batch, rest):
        loss, aux, grads = self._value_and_grad(model, batch, rest)
        return ((loss, aux), grads) if self.has_aux else (loss, grads)

    def _args(self, model, opt_state, batch, rest):
        _batch_size(batch, self.n_data, self.axis)
        bs = NamedSharding(self.mesh, P(self.axis))

        def put(x):
            if not getattr(x, "is_fully_addressable", True):
                return x  # a global batch (global_batch() on several hosts): already in place
            if _on_mesh(x, self.mesh) and x.sharding.is_equivalent_to(bs, x.ndim):
                return x
            return jax.device_put(x, bs)

        return (_place(model, self.mesh, self.param_sharding), _place(opt_state, self.mesh),
                jax.tree.map(put, batch), _place(tuple(rest), self.mesh))

    def __call__(self, model, opt_state, batch, *rest):
        return self.jitted(*self._args(model, opt_state, batch, rest))

    def value_and_grad(self, model, batch, *rest):
        """The all-reduced ``(loss, grads)`` (``((loss, aux), grads)`` with ``has_aux``) without
        the update, as ``eqx.filter_value_and_grad(loss_fn)`` would give on the whole batch on
        one device. For gradient accumulation, clipping, or checking."""
        model, _, batch, rest = self._args(model, None, batch, rest)
        return self._jitted_grads(model, batch, rest)

    def lower(self, model, opt_state, batch, *rest) -> "jax.stages.Lowered":
        """The step lowered for these arguments (``.as_text()``: StableHLO; ``.compile()``)."""
        return self.jitted.lower(*self._args(model, opt_state, batch, rest)).lowered

    def hlo(self, model, opt_state, batch, *rest) -> str:
        """The optimised HLO of the compiled step (look for ``all-reduce`` of the gradients)."""
        return self.lower(model, opt_state, batch, *rest).compile().as_text()


def data_parallel_step(loss_fn: Callable, optimizer, mesh: Mesh, *, axis: str = "data", mode: str = "shard_map",
                       has_aux: bool = False, aux: str = "mean", loss_reduction: str = "mean",
                       param_sharding=None) -> DataParallelStep:
    """A jitted training step with the batch sharded over ``mesh``'s ``axis``.

    ``loss_fn(model, batch, *rest) -> loss`` (or ``(loss, aux)`` with ``has_aux``) is written for
    one device: ``batch`` is whatever part of the batch it is given (a pytree of arrays, leading
    axis = samples) and ``loss`` its **mean** over those samples (``loss_reduction="sum"`` for a
    sum). ``optimizer`` is an optax ``GradientTransformation``.

    ``mode="shard_map"`` (default): each device runs ``loss_fn`` on its ``B / n`` samples (the
    planned path and its kernels run per shard), then loss and gradients are ``lax.pmean``-ed over
    ``axis`` (``psum`` for ``loss_reduction="sum"``). ``mode="jit"``: one ``jax.jit`` over the
    global batch, sharded by GSPMD.

    ``aux``: ``"mean"`` averages each aux leaf over the devices (right for per-batch means such as
    an accuracy); ``"batch"`` concatenates per-sample leaves along their leading axis (e.g. logits
    ``(B, C)``). With ``mode="jit"`` aux is computed on the global batch either way.

    ``param_sharding``: ``None`` (parameters replicated) or a pytree from :func:`param_shardings`
    (e.g. Linear weights sharded over a ``"model"`` axis; the data axis stays manual in
    ``shard_map``, the model axis automatic). The updated model keeps that layout.

    Returns a :class:`DataParallelStep`: ``step(model, opt_state, batch, *rest)``.
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if aux not in _AUX:
        raise ValueError(f"aux must be one of {_AUX}, got {aux!r}")
    if loss_reduction not in ("mean", "sum"):
        raise ValueError(f"loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}")
    return DataParallelStep(loss_fn, optimizer, mesh, axis=axis, mode=mode, has_aux=has_aux, aux=aux,
                            loss_reduction=loss_reduction, param_sharding=param_sharding)
