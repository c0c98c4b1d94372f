"""Data parallelism on JAX's own sharding: a device mesh, a sharded batch, replicated params.

funcnn invents nothing here. A data-parallel step is the ordinary jit-compiled step whose
inputs carry shardings:

* the batch is split along its leading axis over the mesh axis ``"data"``;
* params, model state, optimizer state and the PRNG key are replicated on every device.

XLA's SPMD partitioner (GSPMD) then partitions the whole step, hand-written backward
included: every per-example computation runs on the device that holds the example, and
a sum over the batch (a parameter gradient ``x^T dy``, a bias gradient, batchnorm's
statistics) becomes a per-device partial sum followed by an all-reduce. The loss is a
mean over the **global** batch, so the gradients, the batch statistics and the updated
params are those of one device running the whole batch, up to the order of the
additions.

The mesh is an ordinary ``jax.sharding.Mesh(devices, ("data",))``, whose axis is of
the *automatic* type: arrays carry shardings, the partitioner propagates them through
the program and chooses the collectives. We do not use the *explicit* axes that
``jax.make_mesh`` builds by default (sharding in types, under ``jax.set_mesh``): there
every reshape or dot whose operand is sharded must say the sharding of its result, and
a layer's backward folds the batch axes into one (``x.reshape(-1, d)``) and contracts
over them, which explicit mode rejects as ambiguous unless each layer names a
sharding. Automatic axes keep every layer free of sharding code. An explicit mesh
passed to :func:`funcnn.train.train_step` is converted to the automatic axis type
(same devices, same names).

Several processes (one per host, or several on one host) run the same program: after
``jax.distributed.initialize(...)`` ``jax.devices()`` lists the devices of every process,
:func:`data_mesh` spans them all, and each process feeds the part of the batch that
its own devices hold (:func:`shard_batch` cuts it out of a global host batch;
:func:`process_local_batch` assembles one from each process's own examples).

>>> import jax, numpy as np, funcnn as fn
>>> mesh = fn.sharding.data_mesh()
>>> x = fn.sharding.shard_batch(np.ones((4 * jax.device_count(), 3), np.float32), mesh)
>>> x.sharding.spec == jax.sharding.PartitionSpec("data")
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

PyTree = Any

AXIS = "data"

__all__ = [
    "AXIS",
    "batch_sharding",
    "check_batch",
    "data_mesh",
    "gather",
    "process_local_batch",
    "replicate",
    "replicated",
    "shard_batch",
]


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh named ``"data"`` over ``devices`` (default: every device of every
    process, ``jax.devices()``), with an automatic axis type (see the module docstring).

    >>> import funcnn as fn
    >>> fn.sharding.data_mesh().axis_names
    ('data',)
    """
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("data_mesh: devices must name at least one device, got none")
    return Mesh(np.array(devices), (AXIS,))


def _auto(mesh: Mesh) -> Mesh:
    """``mesh`` with every axis of the automatic type (the same devices and names)."""
    types = getattr(mesh, "axis_types", None)
    auto = getattr(jax.sharding, "AxisType", None)
    if types is None or auto is None or all(t == auto.Auto for t in types):
        return mesh
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(auto.Auto,) * len(mesh.axis_names))


def check_mesh(name: str, mesh) -> Mesh:
    """The mesh, with automatic axes, after checking it has a ``"data"`` axis."""
    if not isinstance(mesh, Mesh):
        raise TypeError(
            f"{name}: mesh must be a jax.sharding.Mesh (fn.sharding.data_mesh() makes one), "
            f"got {type(mesh).__name__}"
        )
    if AXIS not in mesh.axis_names:
        raise ValueError(
            f"{name}: the mesh must have an axis named {AXIS!r} to split the batch over, got "
            f"axes {tuple(mesh.axis_names)}"
        )
    return _auto(mesh)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis split over ``"data"``, every other axis whole (replicated over any other
    mesh axis)."""
    return NamedSharding(check_mesh("batch_sharding", mesh), PartitionSpec(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A whole copy on every device of the mesh."""
    return NamedSharding(check_mesh("replicated", mesh), PartitionSpec())


def _is_key(a) -> bool:
    return hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jax.dtypes.prng_key)


def _place(a, sharding: NamedSharding):
    """One leaf on ``sharding``. An array already there is returned as it is; a global
    array on other devices is resharded; host data (NumPy, a Python number, an array on
    this process's devices) is taken to be the same in every process, and each process
    sends only the pieces its own devices hold."""
    if _is_key(a):  # typed keys: place the key data, wrap it again
        impl = jax.random.key_impl(a)
        return jax.random.wrap_key_data(_place(jax.random.key_data(a), sharding), impl=impl)
    if isinstance(a, jax.Array):
        if a.sharding == sharding:
            return a
        if jax.process_count() == 1 or not a.is_fully_addressable:
            return jax.device_put(a, sharding)
    host = np.asarray(a)
    if jax.process_count() == 1:
        return jax.device_put(host, sharding)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Every array leaf of ``tree`` replicated on the mesh (params, optimizer state, keys).

    Arrays already replicated on the mesh are returned unchanged (no copy). In several
    processes, host values must be the same in every process (the same seed gives the
    same init).
    """
    sharding = replicated(mesh)
    return jax.tree_util.tree_map(lambda a: _place(a, sharding), tree)


def _leading_sizes(batch: PyTree) -> list[tuple[int, ...]]:
    return [tuple(np.shape(a)) for a in jax.tree_util.tree_leaves(batch)]


def check_batch(name: str, batch: PyTree, mesh: Mesh) -> int:
    """The global batch size of ``batch`` after checking it splits evenly over the mesh.

    Every leaf must have a leading batch axis of the same size, a multiple of the number
    of devices along ``"data"``; the error names both numbers.
    """
    mesh = check_mesh(name, mesh)
    shapes = _leading_sizes(batch)
    if any(len(s) == 0 for s in shapes):
        raise ValueError(
            f"{name}: every leaf of a batch needs a leading batch axis to split over the "
            f"mesh, got shapes {shapes}"
        )
    sizes = {s[0] for s in shapes}
    if len(sizes) != 1:
        raise ValueError(
            f"{name}: the leaves of a batch must share the batch size (leading axis), got "
            f"shapes {shapes}"
        )
    size, devices = sizes.pop(), mesh.shape[AXIS]
    if size % devices:
        raise ValueError(
            f"{name}: a batch of {size} examples does not split evenly over the {devices} "
            f"devices of the mesh's {AXIS!r} axis; use a batch size that is a multiple of "
            f"{devices} (e.g. {max(devices, size - size % devices)} or "
            f"{size + devices - size % devices})"
        )
    return size


def shard_batch(batch: PyTree, mesh: Mesh, *, name: str = "shard_batch") -> PyTree:
    """A global batch split along its leading axis over the mesh's ``"data"`` axis.

    ``batch`` is a pytree of arrays of the **global** batch (NumPy, or JAX arrays). Every
    process passes the same values, and only the rows its devices hold are sent to them;
    a batch that is already a global array with this sharding is returned as it is. The
    batch size must be a multiple of the number of devices along ``"data"``.
    """
    check_batch(name, batch, mesh)
    sharding = batch_sharding(mesh)
    return jax.tree_util.tree_map(lambda a: _place(a, sharding), batch)


def process_local_batch(local_batch: PyTree, mesh: Mesh) -> PyTree:
    """A global batch assembled from every process's own examples.

    Each process passes the examples its devices will hold (its part of the global batch,
    the same size in every process); the global batch is their concatenation in process
    order (``jax.make_array_from_process_local_data``). In one process this is
    :func:`shard_batch`.
    """
    mesh = check_mesh("process_local_batch", mesh)
    shapes = _leading_sizes(local_batch)
    sizes = {s[0] if s else None for s in shapes}
    local_devices = mesh.shape[AXIS] // jax.process_count()
    if None in sizes or len(sizes) != 1:
        raise ValueError(
            f"process_local_batch: every leaf needs the same leading batch axis, got shapes "
            f"{shapes}"
        )
    size = sizes.pop()
    if local_devices and size % local_devices:
        raise ValueError(
            f"process_local_batch: this process's {size} examples do not split evenly over "
            f"its {local_devices} devices of the mesh's {AXIS!r} axis"
        )
    sharding = batch_sharding(mesh)
    return jax.tree_util.tree_map(
        lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), local_batch
    )


def gather(tree: PyTree) -> PyTree:
    """Every array leaf as one NumPy array on this host, whatever its sharding.

    A replicated or single-process array is read from this process's devices; an array
    split over several processes is all-gathered (every process must call this).
    """

    def one(a):
        if not isinstance(a, jax.Array):
            return a
        if _is_key(a):
            a = jax.random.key_data(a)
        if a.is_fully_addressable:
            return np.asarray(a)
        if a.is_fully_replicated:
            return np.asarray(a.addressable_data(0))
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(a, tiled=True))

    return jax.tree_util.tree_map(one, tree)
