"""A 1-D data mesh over the local devices, and batches padded and placed on it.

    >>> mesh = local_mesh()                           # all local devices, axis "data"
    >>> (x, y), mask = shard_batch(mesh, x, y)        # x [B_pad, ...] sharded on axis 0
    >>> params = replicate(mesh, params)              # a full copy on every device

A batch whose size is not a multiple of the device count is padded at the end with zero rows
up to the next multiple, and `mask` [B_pad] bool is False on the padding: rows are never
dropped. Whatever consumes the batch must honour the mask (the clipped-gradient sum and the
sharded scores do).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

PyTree = Any

DATA_AXIS = "data"


def local_mesh(num_devices: int | None = None, axis: str = DATA_AXIS) -> Mesh:
    """A 1-D mesh named `axis` over the first `num_devices` local devices.

    Args:
      num_devices: how many local devices; None or 0 means all of them. More than there are
        is an error (never silently fewer).
      axis: the mesh axis name.
    """
    devices = jax.local_devices()
    if num_devices is None or num_devices == 0:
        n = len(devices)
    else:
        if isinstance(num_devices, bool) or int(num_devices) != num_devices or num_devices < 0:
            raise ValueError(f"num_devices must be a non-negative integer or None, got {num_devices!r}.")
        n = int(num_devices)
        if n > len(devices):
            raise ValueError(
                f"num_devices={n} but only {len(devices)} local {devices[0].platform} device(s) "
                "are available (on CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N "
                "before jax is imported gives N host devices).")
    return Mesh(np.array(devices[:n]), (axis,))


def global_mesh(axis: str = DATA_AXIS) -> Mesh:
    """A 1-D mesh named `axis` over every device of every process (`jax.devices()`); the same as
    `local_mesh()` in a single process. Devices are in process order, so each process holds one
    contiguous block of a batch sharded on it."""
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    return Mesh(np.array(devices), (axis,))


def check_axis(mesh: Mesh, axis: str) -> int:
    """The size of mesh axis `axis`; a name the mesh lacks is a ValueError naming its axes."""
    if axis not in mesh.axis_names:
        raise ValueError(f"mesh has no axis {axis!r}; its axes are {tuple(mesh.axis_names)}.")
    return int(mesh.shape[axis])


def padded_size(batch: int, num_shards: int) -> int:
    """The smallest multiple of `num_shards` that is >= `batch` (and >= num_shards)."""
    return max(1, -(-batch // num_shards)) * num_shards


def shard_batch(mesh: Mesh, *arrays, axis: str = DATA_AXIS, mask=None):
    """Pads the arrays' leading (batch) axis to a multiple of the axis size and shards it.

    Args:
      mesh: the mesh; `axis` must be one of its axis names.
      *arrays: arrays (numpy or jax) with the same leading size B.
      axis: the mesh axis the batch is split over.
      mask: optional [B] bool/0-1 mask of the rows that count (e.g. a Poisson-padded batch's);
        None means every row counts. Padding rows are False whatever it says.

    Returns:
      (tuple of arrays [B_pad, ...] placed with NamedSharding(mesh, P(axis)), mask [B_pad]
      bool sharded the same way). Padding rows are zeros.
    """
    n = check_axis(mesh, axis)
    if not arrays:
        raise ValueError("shard_batch needs at least one array.")
    sizes = {int(np.shape(a)[0]) if np.ndim(a) else None for a in arrays}
    if None in sizes:
        raise ValueError("shard_batch needs arrays with a leading batch axis (got a scalar).")
    if len(sizes) != 1:
        raise ValueError(f"arrays must share their leading (batch) size, got sizes {sorted(sizes)}.")
    b = sizes.pop()
    b_pad = padded_size(b, n)
    if mask is None:
        mask = np.ones(b, bool)
    elif np.shape(mask) != (b,):
        raise ValueError(f"mask must have shape ({b},), got {np.shape(mask)}.")
    sharding = NamedSharding(mesh, P(axis))

    def pad(a):
        if b_pad != b:
            a = jnp.pad(jnp.asarray(a), [(0, b_pad - b)] + [(0, 0)] * (np.ndim(a) - 1))
        return place(a, sharding)

    out = tuple(pad(a) for a in arrays)
    m = pad(np.asarray(mask).astype(bool))
    return out, m


def place(a, sharding: NamedSharding) -> jax.Array:
    """`a` laid out as `sharding` says. In one process, `jax.device_put`; with several
    processes every process passes the same full value and contributes the blocks its own
    devices hold (`jax.make_array_from_callback`), so no process needs another's memory."""
    if jax.process_count() == 1:
        return jax.device_put(a, sharding)
    if isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
        # A typed PRNG key has no numpy form: place its raw words and wrap them again.
        data = place(jax.random.key_data(a), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(a))
    host = np.asarray(a)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def replicate(mesh: Mesh, tree: PyTree) -> PyTree:
    """Every array leaf of `tree` with a full copy on every device of `mesh` (P())."""
    sharding = NamedSharding(mesh, P())
    return jax.tree.map(lambda a: place(a, sharding), tree)


def device_report(mesh: Mesh | None = None) -> dict:
    """What a run ran on, for results.json: platform, device kinds, counts, process index/count.

    With a mesh, `mesh_devices` and `mesh_axes` say which part of the machine the run used.
    """
    local = jax.local_devices()
    report = {
        "platform": local[0].platform,
        "device_kinds": sorted({d.device_kind for d in jax.devices()}),
        "local_device_count": len(local),
        "device_count": jax.device_count(),
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "jax_version": jax.__version__,
    }
    if mesh is not None:
        report["mesh_devices"] = int(mesh.devices.size)
        report["mesh_axes"] = {str(k): int(v) for k, v in mesh.shape.items()}
    return report
