"""A feature pool streamed through the device in row blocks, over devices and CPU cores.

Arithmetic units:
  * a **block** is `BLOCK_ROWS` consecutive rows; every per-row quantity is computed by the same
    jitted block function, so per-row outputs never depend on how rows are grouped.
  * a **segment** is `SEGMENT_BLOCKS` consecutive blocks. Every reduction over rows (centroid
    sums, counts, inertia) starts from zero at each segment, accumulates the segment's blocks
    in row order, and the segment totals are then added in row order (sequentially) into the
    running total. This association is fixed by the row index alone.
A **chunk** (what is transferred to the device at once) is a whole number of segments per
device, so the result of a pass does not depend on the chunk size, on whether the pool lives on
the host (a numpy array or np.memmap) or on the device, on how many devices share a chunk, nor
on how many chunks are in flight at once: those are implementation details that never change
the order of floating point operations.

Parallelism:
  * several devices: the segments of a chunk are split over a 1-D mesh (axis "rows") with
    `jax.shard_map`; only the small per-segment totals travel back.
  * one CPU device with several cores: XLA runs a computation on the thread that launches it,
    so `Pool.map_chunks` launches up to `workers` chunks at once from a small thread pool (one
    per core by default) and hands their segment totals back in row order.
"""
from __future__ import annotations

import collections
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
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
# Blocks per segment, the unit of every reduction's association: chunks are whole segments per
# device. Small enough that a small pool wastes little on zero padding, large enough that the
# per-segment totals (e.g. [R, d] centroid sums) are few.
SEGMENT_BLOCKS = 8
SEGMENT_ROWS = BLOCK_ROWS * SEGMENT_BLOCKS
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


def default_workers(devices: Sequence[jax.Device]) -> int:
    """Chunks in flight at once: one per CPU core for a single CPU device (XLA runs each
    computation on its launching thread), else 1 (accelerators and meshes are parallel already)."""
    if len(devices) != 1 or devices[0].platform != "cpu":
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 16))


class Pool:
    """Features `[N, d]` float32 plus how to stream them: chunk size, devices and workers.

    Args:
      features: [N, d] float array; numpy / np.memmap (host, streamed) or jax.Array.
      chunk_size: rows per device transfer (rounded up to whole segments on every device). None
        puts the whole pool on the device(s) once and keeps it there (as `workers` resident
        chunks, so that they can be processed concurrently).
      devices: devices whose memory shares each chunk's rows. None uses the local devices of
        the default backend, at most one per MIN_ROWS_PER_DEVICE rows (one: no sharding).
      workers: chunks processed at once by `map_chunks`; None = `default_workers(devices)`.
        Results do not depend on it.
    """

    def __init__(self, features, *, chunk_size: int | None = None,
                 devices: Sequence[jax.Device] | None = None, workers: int | None = None,
                 check: bool = True):
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
        if workers is None:
            workers = default_workers(devices)
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive int, got {workers!r}")
        if workers > 1 and len(devices) > 1:
            # Programs with collectives launched from several threads can leave the devices'
            # rendezvous out of step; the devices of a mesh already run in parallel.
            raise ValueError(f"workers={workers} needs a single device; got {len(devices)} "
                             "devices (pass workers=1 or one device)")
        self.workers = workers
        self.mesh = Mesh(np.array(devices), (AXIS,)) if len(devices) > 1 else None
        self.device = devices[0]
        self.devices = devices
        self.num_devices = len(devices)
        unit = SEGMENT_ROWS * self.num_devices
        # A resident pool is split into one chunk per worker (when it has a segment for each).
        rows = self.n if chunk_size is None else min(chunk_size, self.n)
        if chunk_size is None and workers > 1:
            rows = max(-(-self.n // workers), min(self.n, unit))
        # Spread the rows evenly over the chunks so the (zero-padded) last chunk wastes little.
        num_chunks = -(-self.n // rows)
        self.chunk_rows = _round_up(-(-self.n // num_chunks), unit)
        self.streamed = chunk_size is not None and self.chunk_rows < _round_up(self.n, unit)
        self._resident: list[tuple[int, jax.Array]] | None = None

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

    def _device_chunk(self, start: int) -> jax.Array:
        if isinstance(self.features, jax.Array):
            x = self.features[start:start + self.chunk_rows].astype(jnp.float32)
            x = jnp.pad(x, ((0, self.chunk_rows - x.shape[0]), (0, 0)))
        else:
            x = self._host_chunk(start)
        return jax.device_put(x, self.sharding)

    def chunks(self) -> Iterator[tuple[int, jax.Array]]:
        """Yields (first row, chunk [chunk_rows, d] float32 on the device(s)) in row order;
        zero-padded rows past N are masked by the consumers (`rows >= n`)."""
        if self.streamed:
            for start in range(0, self.n, self.chunk_rows):
                yield start, self._device_chunk(start)
            return
        if self._resident is None:
            self._resident = [(s, self._device_chunk(s)) for s in range(0, self.n, self.chunk_rows)]
        yield from self._resident

    def map_chunks(self, fn: Callable[[int, jax.Array], Any]) -> Iterator[tuple[int, Any]]:
        """Yields (first row, fn(first row, chunk)) for every chunk, in row order.

        Up to `workers` calls run at once, each on its own thread (and so, on a CPU device, on
        its own core); at most `workers` chunks are on the device at a time beyond the one
        being handed out, so memory stays bounded. `fn` must not depend on other chunks'
        results; combine them in the order they are yielded.
        """
        if self.workers == 1:
            for start, chunk in self.chunks():
                yield start, fn(start, chunk)
            return

        def work(start, chunk):
            return start, jax.block_until_ready(fn(start, chunk))

        with ThreadPoolExecutor(self.workers, thread_name_prefix="pool") as executor:
            pending = collections.deque()
            for start, chunk in self.chunks():
                pending.append(executor.submit(work, start, chunk))
                if len(pending) >= self.workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    def fold_chunks(self, fn: Callable[..., tuple[Any, Any]], carry):
        """Runs a row reduction over the chunks: returns (carry, [(first row, aux), ...]).

        `fn(carry, start, chunk) -> (out, aux)`. With one worker, chunks are visited in order
        and `out` is the new running total (fn adds its segment totals into `carry` inside its
        own program; on a mesh, one program per chunk is what keeps the devices' collectives
        in step). With several workers, fn is called with carry=None on the worker threads,
        `out` is the chunk's segment totals, and they are added into `carry` here, in row
        order, by `sequential_sum`: the same additions in the same order.
        """
        auxes = []
        if self.workers == 1:
            for start, chunk in self.chunks():
                carry, aux = fn(carry, start, chunk)
                auxes.append((start, aux))
            return carry, auxes
        for start, (totals, aux) in self.map_chunks(lambda s, c: fn(None, s, c)):
            carry = sequential_sum(carry, totals)
            auxes.append((start, aux))
        return carry, auxes

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


def reduce_segments(accumulate: Callable[..., Any], zero, chunk: jax.Array, row0,
                    consts: tuple, mesh: Mesh | None):
    """Per-segment totals of a row reduction, stacked on a leading [num_segments] axis.

    `accumulate(total, x [B, d], rows [B] int32, *consts) -> total` adds one block into a
    running total (a pytree shaped like `zero`, e.g. a scatter-add of the block's rows into
    [R, d] sums). Segment s is `zero` accumulated with its SEGMENT_BLOCKS blocks in row order.
    Each device loops over its own segments; nothing per block is kept. Add the totals into a
    running total with `sequential_sum`, in row order.
    """
    rows_per_chunk, d = chunk.shape
    nb = rows_per_chunk // BLOCK_ROWS
    xb = chunk.reshape(nb, BLOCK_ROWS, d)
    rows = (row0 + jnp.arange(rows_per_chunk, dtype=jnp.int32)).reshape(nb, BLOCK_ROWS)

    def run(xb, rows, *consts):
        start = jnp.zeros((), jnp.int32)
        init = zero
        if mesh is not None:  # the running total differs per device
            init = jax.lax.pcast(zero, (AXIS,), to="varying")
            start = jax.lax.pcast(start, (AXIS,), to="varying")

        def segment(s):
            # Blocks are read by index straight from the chunk (no per-segment copy).
            first = s * SEGMENT_BLOCKS + start
            return jax.lax.fori_loop(
                0, SEGMENT_BLOCKS,
                lambda j, total: accumulate(total, xb[first + j], rows[first + j], *consts),
                init)

        return jax.lax.map(segment, jnp.arange(xb.shape[0] // SEGMENT_BLOCKS))

    if mesh is None:
        return run(xb, rows, *consts)
    specs = (P(AXIS), P(AXIS)) + (P(),) * len(consts)
    return jax.shard_map(run, mesh=mesh, in_specs=specs, out_specs=P(AXIS))(xb, rows, *consts)


def map_segments(fn: Callable[..., Any], zero, chunk: jax.Array, row0, state, consts: tuple,
                 mesh: Mesh | None):
    """Applies `fn(zero, x [S, d], rows [S] int32, state_s, *consts) -> (total, new state_s)` to
    every segment of a chunk (S = SEGMENT_ROWS rows), for reductions that carry per-row state.

    state: pytree of [rows_per_chunk, ...] arrays laid out like the chunk (sharded with it);
    `state_s` is the segment's [S, ...] slice. Returns (totals stacked on a leading
    [num_segments] axis, new state [rows_per_chunk, ...]). `zero` is handed to `fn` as the
    starting value of its total (made device-varying under shard_map). The totals follow the
    segment contract of `reduce_segments` when `fn` accumulates its rows in order.
    """
    rows_per_chunk, d = chunk.shape
    ns = rows_per_chunk // SEGMENT_ROWS
    xs = chunk.reshape(ns, SEGMENT_ROWS, d)
    rows = (row0 + jnp.arange(rows_per_chunk, dtype=jnp.int32)).reshape(ns, SEGMENT_ROWS)
    st = jax.tree.map(lambda v: v.reshape((ns, SEGMENT_ROWS) + v.shape[1:]), state)

    def run(xs, rows, st, *consts):
        init = zero if mesh is None else jax.lax.pcast(zero, (AXIS,), to="varying")
        return jax.lax.map(
            lambda i: fn(init, xs[i], rows[i], jax.tree.map(lambda v: v[i], st), *consts),
            jnp.arange(xs.shape[0]))

    if mesh is None:
        totals, new = run(xs, rows, st, *consts)
    else:
        specs = (P(AXIS), P(AXIS), P(AXIS)) + (P(),) * len(consts)
        totals, new = jax.shard_map(run, mesh=mesh, in_specs=specs, out_specs=P(AXIS))(
            xs, rows, st, *consts)
    return totals, jax.tree.map(lambda v: v.reshape((rows_per_chunk,) + v.shape[2:]), new)


def segment_totals(per_block):
    """[num_blocks, ...] per-block partials -> [num_segments, ...] segment totals, each
    (block 0 + block 1) + block 2 + ... in row order (the association of `reduce_segments`)."""
    split = jax.tree.map(lambda p: p.reshape((-1, SEGMENT_BLOCKS) + p.shape[1:]), per_block)
    return jax.lax.map(lambda parts: sequential_sum(jax.tree.map(lambda p: p[0], parts),
                                                    jax.tree.map(lambda p: p[1:], parts)), split)


@jax.jit
def sequential_sum(carry, partials):
    """carry + partials[0] + partials[1] + ... in that order (a fixed association)."""
    def add(c, p):
        return jax.tree.map(jnp.add, c, p), None
    return jax.lax.scan(add, carry, partials)[0]
