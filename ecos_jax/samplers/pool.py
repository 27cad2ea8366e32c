"""A feature pool streamed through the device in row blocks, optionally sharded over devices.

The arithmetic unit is a **block** of `BLOCK_ROWS` consecutive rows. Every per-row quantity is
computed by the same jitted block function, and every reduction over rows (centroid sums,
counts, inertia) is first taken per block and then combined block by block in row order with
a sequential loop. A **chunk** (what is transferred to the device at once) is a whole number of
blocks, and chunks are visited in row order with the running total passed along. Hence the
result of a pass does not depend on the chunk size, on whether the pool lives on the host (a
numpy array or np.memmap) or on the device, nor on how many devices share the blocks: chunking
and sharding are implementation details that never change the order of floating point
operations.

With several devices the blocks of a chunk are split over a 1-D mesh (axis "rows") with
`jax.shard_map`; each device maps the block function over its own blocks and only the small
per-block partials travel back.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ecos_jax.samplers import validation

# Rows per block; chunk sizes are rounded up to a multiple of this (x devices). 256 rows keep a
# block's [R, 256] distance tile in cache (what scikit-learn's Lloyd does too): on a 2-core CPU
# this is about twice as fast per row as 2048-row blocks.
BLOCK_ROWS = 256
# Pools are sharded over at most one device per this many rows (when devices is not given).
MIN_ROWS_PER_DEVICE = 1 << 14
AXIS = "rows"


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def aligned_empty(shape, dtype=np.float32, alignment: int = 4096) -> np.ndarray:
    """An uninitialised host array whose data starts on an `alignment`-byte boundary.

    On the CPU backend `jax.device_put` aliases (does not copy) host memory that is 64-byte
    aligned, so a pool allocated here (or a .npy memmap, whose header keeps 64-byte alignment)
    is streamed chunk by chunk without any copy. numpy's own allocations usually are not.
    """
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.empty(nbytes + alignment, np.uint8)
    offset = (-raw.ctypes.data) % alignment
    return raw[offset:offset + nbytes].view(dtype).reshape(shape)


class Pool:
    """Features `[N, d]` float32 plus how to stream them: chunk size and devices.

    Args:
      features: [N, d] float array; numpy / np.memmap (host, streamed) or jax.Array.
      chunk_size: rows per device transfer (rounded up to whole blocks on every device). None
        puts the whole pool on the device(s) once and keeps it there.
      devices: devices whose memory shares each chunk's rows. None uses the local devices of
        the default backend, at most one per MIN_ROWS_PER_DEVICE rows (one: no sharding).
    """

    def __init__(self, features, *, chunk_size: int | None = None,
                 devices: Sequence[jax.Device] | None = None, check: bool = True):
        if check:
            self.n, self.d = validation.check_features(features)
        else:
            self.n, self.d = (int(s) for s in features.shape)
        chunk_size = validation.check_chunk_size(chunk_size)
        self.features = features
        if devices is None:
            # Shard only pools big enough to give every device a couple of blocks: a tiny pool
            # gains nothing and would pay for a multi-device compilation.
            devices = jax.local_devices()
            devices = devices[:max(1, min(len(devices), self.n // MIN_ROWS_PER_DEVICE))]
        devices = list(devices)
        if not devices:
            raise ValueError("devices must not be empty")
        self.mesh = Mesh(np.array(devices), (AXIS,)) if len(devices) > 1 else None
        self.device = devices[0]
        self.devices = devices
        self.num_devices = len(devices)
        unit = BLOCK_ROWS * self.num_devices
        rows = self.n if chunk_size is None else min(chunk_size, self.n)
        # Spread the rows evenly over the chunks so the (zero-padded) last chunk wastes little.
        num_chunks = -(-self.n // rows)
        self.chunk_rows = _round_up(-(-self.n // num_chunks), unit)
        self.streamed = chunk_size is not None and self.chunk_rows < _round_up(self.n, unit)
        self._resident: jax.Array | None = None

    @property
    def sharding(self):
        if self.mesh is None:
            return jax.sharding.SingleDeviceSharding(self.device)
        return NamedSharding(self.mesh, P(AXIS))

    def replicate(self, tree):
        """Puts small arrays (centroids, running totals) on every device of the pool."""
        sharding = (jax.sharding.SingleDeviceSharding(self.device) if self.mesh is None
                    else NamedSharding(self.mesh, P()))
        return jax.device_put(tree, sharding)

    @property
    def num_chunks(self) -> int:
        return -(-self.n // self.chunk_rows)

    def _host_chunk(self, start: int) -> np.ndarray:
        x = np.asarray(self.features[start:start + self.chunk_rows], dtype=np.float32)  # a view
        if x.shape[0] < self.chunk_rows:
            padded = aligned_empty((self.chunk_rows, self.d))
            padded[:x.shape[0]] = x
            padded[x.shape[0]:] = 0.0
            x = padded
        return x

    def chunks(self) -> Iterator[tuple[int, jax.Array]]:
        """Yields (first row, chunk [chunk_rows, d] float32 on the device(s)); zero-padded rows
        past N are masked by the consumers (`rows >= n`)."""
        if not self.streamed:
            if self._resident is None:
                if isinstance(self.features, jax.Array):
                    x = jnp.pad(self.features.astype(jnp.float32),
                                ((0, self.chunk_rows - self.n), (0, 0)))
                else:
                    x = self._host_chunk(0)
                self._resident = jax.device_put(x, self.sharding)
            yield 0, self._resident
            return
        for start in range(0, self.n, self.chunk_rows):
            if isinstance(self.features, jax.Array):
                x = self.features[start:start + self.chunk_rows].astype(jnp.float32)
                x = jnp.pad(x, ((0, self.chunk_rows - x.shape[0]), (0, 0)))
            else:
                x = self._host_chunk(start)
            yield start, jax.device_put(x, self.sharding)

    def take(self, rows, size: int | None = None) -> jax.Array:
        """Gathers rows (any order) as a [len(rows), d] float32 device array.

        With `size` (>= len(rows)) the result has `size` rows, the extra ones repeating
        rows[0]; callers mask them. A fixed bucket size means one compilation for many calls.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if size is not None and size > rows.size:
            rows = np.concatenate([rows, np.full(size - rows.size, rows[0] if rows.size else 0)])
        if isinstance(self.features, jax.Array):
            return jnp.asarray(self.features[jnp.asarray(rows)], dtype=jnp.float32)
        # Sorted reads are what a memmap serves well; undo the sort afterwards.
        order = np.argsort(rows, kind="stable")
        out = np.empty((rows.size, self.d), np.float32)
        out[order] = self.features[rows[order]]
        return jnp.asarray(out)


def map_blocks(block_fn: Callable[..., Any], chunk: jax.Array, row0, consts: tuple,
               mesh: Mesh | None):
    """Applies `block_fn(x [B, d], rows [B] int32, *consts)` to every block of a chunk.

    Returns the block outputs stacked on a leading [num_blocks] axis. Each device maps over its
    own blocks; the body is the same computation whatever the number of devices.
    """
    rows_per_chunk, d = chunk.shape
    nb = rows_per_chunk // BLOCK_ROWS
    xb = chunk.reshape(nb, BLOCK_ROWS, d)
    rows = (row0 + jnp.arange(rows_per_chunk, dtype=jnp.int32)).reshape(nb, BLOCK_ROWS)

    def run(xb, rows, *consts):
        # The barrier keeps XLA from folding a block's reduction into the running total (it
        # would, e.g. turn `total + scatter_add(0, ...)` into `scatter_add(total, ...)` when a
        # chunk holds a single block), which would change the order of additions.
        return jax.lax.map(
            lambda a: jax.lax.optimization_barrier(block_fn(a[0], a[1], *consts)), (xb, rows))

    if mesh is None:
        return run(xb, rows, *consts)
    specs = (P(AXIS), P(AXIS)) + (P(),) * len(consts)
    return jax.shard_map(run, mesh=mesh, in_specs=specs, out_specs=P(AXIS))(xb, rows, *consts)


def reduce_blocks(block_fn: Callable[..., Any], carry, chunk: jax.Array, row0, consts: tuple,
                  mesh: Mesh | None):
    """carry + block_fn(block 0) + block_fn(block 1) + ... in row order (pytrees).

    On one device this is a scan whose carry is the running total (nothing per block is kept);
    across devices each device maps over its blocks and the partials are then added in the
    same order. Both associate the additions identically, so the totals are bit-identical.
    """
    if mesh is not None:
        return sequential_sum(carry, map_blocks(block_fn, chunk, row0, consts, mesh))
    rows_per_chunk, d = chunk.shape
    nb = rows_per_chunk // BLOCK_ROWS
    xb = chunk.reshape(nb, BLOCK_ROWS, d)
    rows = (row0 + jnp.arange(rows_per_chunk, dtype=jnp.int32)).reshape(nb, BLOCK_ROWS)

    def body(total, a):
        part = jax.lax.optimization_barrier(block_fn(a[0], a[1], *consts))
        return jax.tree.map(jnp.add, total, part), None

    return jax.lax.scan(body, carry, (xb, rows))[0]


def sequential_sum(carry, partials):
    """carry + partials[0] + partials[1] + ... in that order (a fixed association)."""
    def add(c, p):
        return jax.tree.map(jnp.add, c, p), None
    return jax.lax.scan(add, carry, partials)[0]
