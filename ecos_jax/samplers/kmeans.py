"""k-means (Lloyd) over a pool streamed in row blocks: the cloud's compression step
(the pool summarised by R centroids that are sent to the client).

Distances use ||x||² − 2 x·c + ||c||² with one [B, d] x [d, R] matmul per block of B rows;
the nearest centroid is the first minimum (ties go to the lower centroid index). Centroid sums
are taken per block and combined in a fixed row order (see `pool.py`), so a chunked,
host-streamed, multi-device or multi-threaded run gives bit-identical centroids and assignments
to an in-memory run with the same key. On a multi-core CPU, chunks run on all cores at once.

Design choices (configurable or documented):
  * init "kmeans++" seeds by D² sampling on a uniform subsample of `init_sample_size` rows
    (default min(N, max(10_000, 50 R))), so seeding costs O(S R d) rather than O(N R d)
    and never needs the whole pool on the device; "random" takes R distinct rows; an explicit
    [R, d] array is used as given (this is how a scikit-learn comparison shares the init).
  * an empty cluster is re-seeded as scikit-learn's Lloyd does: after a pass, the rows
    farthest from the centroid they were assigned to (distance to the centroids of that pass)
    become the new centroids of the empty clusters, one row each, the farthest going to the
    lowest empty index; each such row is taken out of its old cluster's sum and count. Ties in
    distance go to the lower row index, so the rule depends on the rows alone and a streamed,
    sharded or threaded run re-seeds exactly as an in-memory one. It costs one extra pass over
    the pool, only in an update that left a cluster empty. A cluster that loses its only row
    this way keeps its previous centroid (and is re-seeded in the next update if it stays
    empty). Without re-seeding (`reseed=False`) an empty cluster keeps its centroid and
    usually stays dead: from 100 random rows of 50,000 Gaussian-blob rows three centroids
    died and the inertia ended 4 % above scikit-learn's.
    `reseed="split"` uses faiss's rule instead, made deterministic: an empty cluster takes a
    slightly perturbed copy of the largest cluster's centroid, so the two share that cluster
    from the next pass on (no extra pass). On the benchmark's blobs (50,000 x 128, 100 random
    rows as the start, 20 updates) it ended 15 % below the farthest-row rule (1.212e6 vs
    1.429e6, which is scikit-learn's) and 9 % below faiss's own (1.329e6), which splits a
    random large cluster. The default stays scikit-learn's rule, the one the speed
    comparison's "equal inertia" is read against.
  * iteration stops early once an update leaves every centroid bit-identical (a fixed point).

Example:
  >>> res = kmeans(jax.random.key(0), features, 100, iters=20, chunk_size=65536)
  >>> res.centroids.shape, res.assignments.shape   # (100, d), (N,)
"""
from __future__ import annotations

import numbers
from collections.abc import Sequence
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ecos_jax.samplers import validation
from ecos_jax.samplers.pool import (
    BLOCK_ROWS,
    SEGMENT_BLOCKS,
    Pool,
    map_blocks,
    map_segments,
    reduce_segments,
    segment_totals,
    sequential_sum,
)

_HIGHEST = jax.lax.Precision.HIGHEST  # no TF32 on GPUs: distances decide assignments


class KMeansResult(NamedTuple):
    centroids: jax.Array    # [R, d] float32
    assignments: jax.Array  # [N] int32, index of the nearest centroid (final centroids)
    inertia: float          # Σ_i ||x_i − c_{a_i}||², squared feature units
    iterations: int         # Lloyd updates actually run (<= iters)
    scored: float = 1.0     # fraction of the Lloyd passes' row-centroid scorings computed
    #                         (1.0 without pruning; the rest were skipped by the bounds)
    reseeded: int = 0       # empty clusters re-seeded on a far row, over all updates


def _nearest(x, centroids, c_sqnorm):
    """x: [B, d] -> (scores [R, B] = ||c||² − 2 x·c, best [B] = min score, a [B] int32 first
    index attaining it). Every pass scores rows with this, so pruned and unpruned agree."""
    # [R, B] layout: reducing over the leading axis vectorises across the B rows on a CPU,
    # and "first index attaining the minimum" by comparison is several times faster there
    # than a variadic argmin reduction (same answer, ties to the lower index).
    scores = c_sqnorm[:, None] - 2.0 * jnp.dot(centroids, x.T, precision=_HIGHEST)  # [R, B]
    best = jnp.min(scores, axis=0)
    cluster = jnp.arange(scores.shape[0], dtype=jnp.int32)[:, None]
    a = jnp.min(jnp.where(scores == best[None, :], cluster, scores.shape[0]), axis=0)
    return scores, best, a


def _block_assign(x, rows, centroids, c_sqnorm, n):
    """x: [B, d]; rows: [B] int32 global row ids -> (assignments [B] int32, block inertia)."""
    _, best, a = _nearest(x, centroids, c_sqnorm)
    d2 = jnp.maximum(jnp.sum(x * x, axis=1) + best, 0.0)  # cancellation can dip below 0
    return a, jnp.sum(jnp.where(rows < n, d2, 0.0))


def _add_rows(sums, a, x):
    """sums [R, d] + the rows x [B, d] (zeros for masked rows) at their clusters a [B], one row
    after another in row order."""
    if jax.default_backend() == "cpu":
        # A CPU scatter-add applies its updates in order: deterministic, O(B d), in place.
        return sums.at[a].add(x)
    # Accelerator scatters use atomics (order varies); a one-hot matmul is deterministic.
    onehot = a[:, None] == jnp.arange(sums.shape[0])[None, :]
    return sums + jnp.dot(onehot.astype(x.dtype).T, x, precision=_HIGHEST)


def _accumulate_stats(total, x, rows, centroids, c_sqnorm, n):
    """Adds one block's Lloyd statistics into total = (sums [R, d], counts [R] int32)."""
    a, _ = _block_assign(x, rows, centroids, c_sqnorm, n)
    valid = rows < n
    sums, counts = total
    return (_add_rows(sums, a, jnp.where(valid[:, None], x, 0.0)),
            counts.at[a].add(valid.astype(jnp.int32)))


def _fold(carry, totals):
    return totals if carry is None else sequential_sum(carry, totals)


@partial(jax.jit, static_argnames=("mesh",))
def _lloyd_chunk(carry, chunk, row0, n, centroids, mesh):
    """Lloyd statistics of one chunk, per segment (sums [S, R, d], counts [S, R], rows scored
    [S]), or added into `carry` (see Pool.fold_chunks)."""
    c_sqnorm = jnp.sum(centroids * centroids, axis=1)
    zero = (jnp.zeros_like(centroids), jnp.zeros(centroids.shape[:1], jnp.int32))
    sums, counts = reduce_segments(_accumulate_stats, zero, chunk, row0,
                                   (centroids, c_sqnorm, n), mesh)
    scored = jnp.zeros(counts.shape[:1], jnp.int32)  # not tracked: every row is scored
    return _fold(carry, (sums, counts, scored)), None


# ----- pruned Lloyd pass (Hamerly bounds) -----
#
# Every row keeps its cluster a, an upper bound u on its distance to c_a and a lower bound l on
# its distance to every other centroid. When the centroids move by shift_r, u grows by
# shift_a and l shrinks by max_r shift_r (triangle inequality). While l > u the row's nearest
# centroid cannot have changed, so its distances are not computed again; only the other rows
# ("needy") are gathered into dense blocks and scored. Sums and counts are still accumulated
# over every row of the segment, block by block in row order, exactly as in the unpruned pass,
# so a pruned run gives the unpruned centroids. Float32 rounding is covered by a slack: the
# bounds are widened by _BOUND_SLACK * (||x||^2 + max_r ||c_r||^2) in squared distance, far
# above the rounding error of the scores (about d * 2^-24 of that), and by a relative 1e-6 at
# every update. A re-seeded centroid needs no special case: its shift is the whole jump to its
# new place, so max_r shift_r drops every lower bound (to 0, typically) and the next pass
# rescores every row; no row can have it as its own cluster, since the cluster was empty.
_BOUND_SLACK = 1e-4


def _pruned_segment(zero, x, rows, state, centroids, c_sqnorm, shift, n):
    """One segment of a pruned Lloyd pass.

    x: [S, d]; rows: [S] global row ids; state: (a [S] int32, upper [S], lower [S]) from the
    previous pass (relative to the previous centroids; upper = inf on the first pass);
    shift: [R] distance each centroid moved since then. Returns ((sums [R, d], counts [R],
    rows scored), new state relative to `centroids`).
    """
    a, upper, lower = state
    valid = rows < n
    xx = jnp.sum(x * x, axis=1)
    slack = _BOUND_SLACK * (xx + jnp.max(c_sqnorm))
    upper = (upper + shift[a]) * (1.0 + 1e-6)
    lower = jnp.maximum(lower - jnp.max(shift), 0.0) * (1.0 - 1e-6)
    need = valid & ~(lower * lower - upper * upper > slack)  # upper = inf: needy
    count = jnp.sum(need)
    idx = jnp.nonzero(need, size=x.shape[0], fill_value=0)[0].astype(jnp.int32)
    cluster = jnp.arange(centroids.shape[0], dtype=jnp.int32)[:, None]

    def score_block(j, st):
        a, upper, lower = st
        pos = jax.lax.dynamic_slice_in_dim(idx, j * BLOCK_ROWS, BLOCK_ROWS)
        xb, xxb, sb = x[pos], xx[pos], slack[pos]
        scores, best, ab = _nearest(xb, centroids, c_sqnorm)
        second = jnp.min(jnp.where(cluster == ab[None, :], jnp.inf, scores), axis=0)
        live = j * BLOCK_ROWS + jnp.arange(BLOCK_ROWS) < count
        target = jnp.where(live, pos, x.shape[0])  # out of range: dropped
        return (a.at[target].set(ab, mode="drop"),
                upper.at[target].set(jnp.sqrt(jnp.maximum(best + xxb, 0.0) + sb), mode="drop"),
                lower.at[target].set(jnp.sqrt(jnp.maximum(second + xxb - sb, 0.0)), mode="drop"))

    # Usually one block holds all the needy rows of a segment: scoring it unconditionally
    # (outside a loop with a data-dependent trip count) is several times faster on a CPU.
    a, upper, lower = jax.lax.fori_loop(1, (count + BLOCK_ROWS - 1) // BLOCK_ROWS, score_block,
                                        score_block(0, (a, upper, lower)))
    xm = jnp.where(valid[:, None], x, 0.0).reshape(SEGMENT_BLOCKS, BLOCK_ROWS, -1)
    ab = a.reshape(SEGMENT_BLOCKS, BLOCK_ROWS)
    sums = jax.lax.fori_loop(0, SEGMENT_BLOCKS, lambda b, t: _add_rows(t, ab[b], xm[b]), zero[0])
    counts = zero[1].at[a].add(valid.astype(jnp.int32))
    return (sums, counts, zero[2] + count.astype(jnp.int32)), (a, upper, lower)


@partial(jax.jit, static_argnames=("mesh",))
def _lloyd_chunk_pruned(carry, chunk, row0, n, centroids, shift, state, mesh):
    """`_lloyd_chunk` with bounds: (statistics, new per-row state)."""
    c_sqnorm = jnp.sum(centroids * centroids, axis=1)
    zero = (jnp.zeros_like(centroids), jnp.zeros(centroids.shape[:1], jnp.int32),
            jnp.zeros((), jnp.int32))
    totals, state = map_segments(_pruned_segment, zero, chunk, row0, state,
                                 (centroids, c_sqnorm, shift, n), mesh)
    return _fold(carry, totals), state


@partial(jax.jit, static_argnames=("mesh",))
def _assign_chunk(inertia, chunk, row0, n, centroids, mesh):
    """(per-segment inertia [S] or added into `inertia`, assignments [rows] int32)."""
    c_sqnorm = jnp.sum(centroids * centroids, axis=1)
    a, block_inertia = map_blocks(_block_assign, chunk, row0, (centroids, c_sqnorm, n), mesh)
    return _fold(inertia, segment_totals(block_inertia)), a.reshape(-1)


def _assign_pool(pool: Pool, centroids: jax.Array) -> tuple[jax.Array, jax.Array]:
    inertia, n, centroids = pool.replicate((jnp.zeros((), jnp.float32), jnp.int32(pool.n),
                                            centroids))
    inertia, parts = pool.fold_chunks(
        lambda carry, start, chunk: _assign_chunk(carry, chunk, jnp.int32(start), n, centroids,
                                                  pool.mesh), inertia)
    return jnp.concatenate([a for _, a in parts])[:pool.n], inertia


def _block_far(x, rows, centroids, c_sqnorm, n):
    """x: [B, d] -> squared distance [B] of every row to its nearest centroid (−1 for padding
    rows), taken directly as Σ_j (x_j − c_j)² so that the farthest rows are ranked by the
    same value on every path."""
    _, _, a = _nearest(x, centroids, c_sqnorm)
    d2 = jnp.sum((x - centroids[a]) ** 2, axis=1)
    return jnp.where(rows < n, d2, -1.0), a


@partial(jax.jit, static_argnames=("mesh",))
def _far_chunk(chunk, row0, n, centroids, mesh):
    """(distance [rows] of each row to its centroid, its cluster [rows] int32) for one chunk."""
    c_sqnorm = jnp.sum(centroids * centroids, axis=1)
    d2, a = map_blocks(_block_far, chunk, row0, (centroids, c_sqnorm, n), mesh)
    return d2.reshape(-1), a.reshape(-1)


def top_rows(d2: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k largest entries of d2 [M], ties to the lower position, largest
    first. O(M) plus a sort of k entries."""
    k = min(k, d2.size)
    kth = np.partition(d2, d2.size - k)[d2.size - k]
    above = np.flatnonzero(d2 > kth)
    ties = np.flatnonzero(d2 == kth)[:k - above.size]
    pos = np.concatenate([above, ties])
    return pos[np.lexsort((pos, -d2[pos]))]


def farthest_rows(pool: Pool, centroids: jax.Array, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k rows farthest from their nearest centroid, farthest first (ties: lower row).

    Returns (rows [k] int64, their clusters [k] int64). Each chunk keeps its own top k, so only
    k candidates per chunk reach the host; the ranking uses per-row values alone, so it does
    not depend on the chunking.
    """
    n = pool.replicate(jnp.int32(pool.n))
    rows, dist, cluster = [], [], []
    for start, (d2, a) in pool.map_chunks(
            lambda start, chunk: _far_chunk(chunk, jnp.int32(start), n, centroids, pool.mesh)):
        d2, a = np.asarray(d2), np.asarray(a)
        pos = top_rows(d2, k)
        rows.append(start + pos)
        dist.append(d2[pos])
        cluster.append(a[pos])
    rows, dist, cluster = (np.concatenate(v) for v in (rows, dist, cluster))
    order = np.lexsort((rows, -dist))[:k]
    return rows[order].astype(np.int64), cluster[order].astype(np.int64)


def _reseed_empty(pool: Pool, centroids, sums, counts):
    """Moves the empty clusters of one Lloyd update onto the farthest rows (see the module
    docstring). centroids: [R, d] of the pass; sums [R, d], counts [R] its statistics.
    Returns the updated (sums, counts) as numpy, in the same dtypes."""
    sums, counts = np.array(sums), np.array(counts)
    empty = np.flatnonzero(counts == 0)
    rows, old = farthest_rows(pool, centroids, empty.size)
    x = np.asarray(pool.take(rows))
    # One row at a time, in a fixed order: the float32 sums come out the same on every path.
    for r, row_x, o in zip(empty, x, old):
        sums[o] -= row_x
        counts[o] -= 1
        sums[r] = row_x
        counts[r] = 1
    return sums, counts


# faiss's relative perturbation of a split centroid (its Clustering's EPS).
_SPLIT_EPS = 1.0 / 1024.0


def _split_largest(new: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """faiss's rule, made deterministic: each empty cluster r (ascending) takes a copy of the
    centroid of the currently largest cluster j (ties: lower index), the two are pushed
    apart by ±_SPLIT_EPS relative in alternating coordinates, and j's count is shared between
    them, so a later empty cluster splits another one. new: [R, d] float32 means; counts [R]."""
    new, counts = np.array(new), np.array(counts)
    sign = np.where(np.arange(new.shape[1]) % 2 == 0, 1.0, -1.0).astype(new.dtype)
    up, down = (1 + _SPLIT_EPS * sign).astype(new.dtype), (1 - _SPLIT_EPS * sign).astype(new.dtype)
    for r in np.flatnonzero(counts == 0):
        j = int(np.argmax(counts))
        new[r] = new[j] * up
        new[j] = new[j] * down
        counts[r] = counts[j] // 2
        counts[j] -= counts[r]
    return new


def _check_centroids(centroids, d: int) -> jax.Array:
    if not validation.is_array(centroids) or centroids.ndim != 2 or centroids.shape[1] != d:
        shape = getattr(centroids, "shape", None)
        raise ValueError(f"centroids must have shape [R, {d}], got {shape}")
    if centroids.shape[0] == 0:
        raise ValueError("centroids is empty: need at least one centroid")
    centroids = jnp.asarray(centroids, jnp.float32)
    if not bool(jnp.isfinite(centroids).all()):
        raise ValueError("centroids contain NaN or inf values")
    return centroids


def assign(features, centroids, *, chunk_size: int | None = None,
           devices: Sequence[jax.Device] | None = None, workers: int | None = None) -> jax.Array:
    """Index of the nearest centroid for every row (the client's coverage step).

    Args:
      features: [N, d] float array (numpy / memmap streamed in chunks, or jax).
      centroids: [R, d] float array.
      chunk_size: rows per device transfer; None keeps the pool on the device.
      devices: devices to shard rows over (default: all local devices).
      workers: chunks computed at once (default: one per core on a single CPU device).
    Returns:
      [N] int32 in [0, R); ties go to the lower centroid index. Identical for any chunk_size.
    """
    pool = Pool(features, chunk_size=chunk_size, devices=devices, workers=workers)
    centroids = _check_centroids(centroids, pool.d)
    return _assign_pool(pool, centroids)[0]


@partial(jax.jit, static_argnames=("num_clusters",))
def _kmeanspp(key, x, num_clusters: int):
    """D² seeding on x: [S, d] -> [R, d]. The first centre is uniform, then each next centre
    is drawn with probability proportional to its squared distance to the nearest centre."""
    first = jax.random.randint(jax.random.fold_in(key, 0), (), 0, x.shape[0])
    centers = jnp.zeros((num_clusters, x.shape[1]), x.dtype).at[0].set(x[first])
    min_d = jnp.sum((x - x[first]) ** 2, axis=1)

    def body(i, state):
        centers, min_d = state
        # All-zero distances (fewer distinct rows than R) fall back to a uniform draw.
        logits = jnp.where(min_d.sum() > 0, jnp.log(min_d), 0.0)
        j = jax.random.categorical(jax.random.fold_in(key, i), logits)
        c = x[j]
        return centers.at[i].set(c), jnp.minimum(min_d, jnp.sum((x - c) ** 2, axis=1))

    return jax.lax.fori_loop(1, num_clusters, body, (centers, min_d))[0]


def default_init_sample_size(n: int, num_clusters: int) -> int:
    return min(n, max(10_000, 50 * num_clusters))


def init_centroids(key, pool: Pool, num_clusters: int, init: str = "kmeans++",
                   init_sample_size: int | None = None) -> jax.Array:
    """Initial centroids [R, d] for a Pool by "kmeans++" (on a subsample) or "random" rows."""
    if init == "random":
        return pool.take(distinct_rows(key, pool.n, num_clusters))
    if init != "kmeans++":
        raise ValueError(f"init must be 'kmeans++', 'random' or an [R, d] array, got {init!r}")
    size = default_init_sample_size(pool.n, num_clusters) if init_sample_size is None \
        else int(init_sample_size)
    if not num_clusters <= size <= pool.n:
        raise ValueError(f"init_sample_size must lie in [num_clusters={num_clusters}, "
                         f"N={pool.n}], got {size}")
    k_rows, k_pp = jax.random.split(key)
    rows = np.arange(pool.n) if size == pool.n else np.sort(distinct_rows(k_rows, pool.n, size))
    return _kmeanspp(k_pp, pool.take(rows), num_clusters)


def distinct_rows(key, n: int, size: int) -> np.ndarray:
    """`size` distinct uniform rows of [0, n), in draw order, as int64.

    jax.random.choice(replace=False) permutes all n rows (seconds for n = 10⁶ on a CPU); for
    size <= n/2 this draws with replacement and keeps first occurrences, drawing again (with
    a folded key) until enough distinct rows have been seen: same distribution, O(size) work.
    """
    if 2 * size > n:
        return np.asarray(jax.random.choice(key, n, (size,), replace=False), np.int64)
    seen = np.zeros((0,), np.int64)
    for i in range(1_000):
        draw = np.asarray(jax.random.randint(jax.random.fold_in(key, i), (size + size // 8 + 16,),
                                             0, n), np.int64)
        allrows = np.concatenate([seen, draw])
        _, first = np.unique(allrows, return_index=True)
        seen = allrows[np.sort(first)]
        if seen.size >= size:
            return seen[:size]
    raise RuntimeError("could not draw distinct rows")  # unreachable for size <= n/2


def kmeans(key, features, num_clusters: int, *, iters: int = 20, chunk_size: int | None = None,
           init: str | np.ndarray | jax.Array = "kmeans++", init_sample_size: int | None = None,
           devices: Sequence[jax.Device] | None = None, workers: int | None = None,
           prune: bool = True, reseed: bool | str = True) -> KMeansResult:
    """Lloyd's k-means on features [N, d] into `num_clusters` centroids.

    Args:
      key: PRNG key for the initialisation.
      features: [N, d] float array; numpy or np.memmap pools are streamed `chunk_size` rows at
        a time, so only one chunk (plus [R, d] statistics) is on the device.
      num_clusters: R, 1 <= R <= N.
      iters: maximum Lloyd updates (stops early at a fixed point).
      chunk_size: rows per device transfer, None = whole pool resident on the device(s).
      init: "kmeans++", "random", or an initial [R, d] centroid array.
      init_sample_size: rows used for kmeans++ seeding (see module docstring).
      devices: devices to shard rows over (default all local devices).
      workers: chunks computed at once (default: one per core on a single CPU device); the
        result does not depend on it.
      prune: skip the distances of rows whose nearest centroid provably did not change
        (Hamerly bounds, see above); same centroids, far fewer distance computations once
        the clustering settles. Costs 12 bytes of device memory per row.
      reseed: True or "farthest": re-seed empty clusters on the farthest rows (scikit-learn's
        rule, see the module docstring); "split": split the largest cluster in two (faiss's
        rule, deterministic: the largest rather than a random large cluster, no extra pass);
        False keeps an empty cluster's centroid where it is.
    Returns:
      KMeansResult(centroids [R, d], assignments [N] int32, inertia, iterations, scored,
      reseeded); the
      assignments and inertia are for the returned centroids.
    """
    validation.check_key(key)
    if reseed not in (True, False, "farthest", "split"):
        raise ValueError(f"reseed must be True, False, 'farthest' or 'split', got {reseed!r}")
    pool = Pool(features, chunk_size=chunk_size, devices=devices, workers=workers)
    if isinstance(num_clusters, bool) or not isinstance(num_clusters, numbers.Integral):
        raise ValueError(f"num_clusters must be an int, got {num_clusters!r}")
    if not 1 <= num_clusters <= pool.n:
        raise ValueError(f"num_clusters must lie in [1, N={pool.n}] (R centroids need at least "
                         f"R pool rows), got {num_clusters}")
    if isinstance(iters, bool) or not isinstance(iters, numbers.Integral) or iters < 0:
        raise ValueError(f"iters must be a non-negative int, got {iters!r}")
    if validation.is_array(init):
        centroids = _check_centroids(init, pool.d)
        if centroids.shape[0] != num_clusters:
            raise ValueError(f"init has {centroids.shape[0]} centroids, expected {num_clusters}")
    else:
        centroids = init_centroids(key, pool, int(num_clusters), init, init_sample_size)

    n, centroids = pool.replicate((jnp.int32(pool.n), centroids))
    # Per chunk, the rows' (cluster, upper bound, lower bound), on the chunk's device(s).
    states = []
    if prune and iters > 0:
        rows = pool.chunk_rows
        states = [jax.device_put((jnp.zeros((rows,), jnp.int32), jnp.full((rows,), jnp.inf),
                                  jnp.zeros((rows,), jnp.float32)), pool.sharding)
                  for _ in range(pool.num_chunks)]
    shift = pool.replicate(jnp.zeros((num_clusters,), jnp.float32))

    def pass_stats(carry, start, chunk, c, shift):
        if not prune:
            return _lloyd_chunk(carry, chunk, jnp.int32(start), n, c, pool.mesh)
        return _lloyd_chunk_pruned(carry, chunk, jnp.int32(start), n, c, shift,
                                   states[start // pool.chunk_rows], pool.mesh)

    done = reseeded = 0
    scored = jnp.zeros((), jnp.float32)
    for _ in range(iters):
        carry = pool.replicate((jnp.zeros_like(centroids),
                                jnp.zeros((num_clusters,), jnp.int32), jnp.zeros((), jnp.int32)))
        carry, new_states = pool.fold_chunks(
            lambda carry, start, chunk, c=centroids, sh=shift:
                pass_stats(carry, start, chunk, c, sh), carry)
        if prune:
            for start, state in new_states:
                states[start // pool.chunk_rows] = state
        sums, counts, rows_scored = carry
        scored = scored + rows_scored
        empty = reseed is not False and bool(jnp.any(counts == 0))
        if empty:
            reseeded += int(jnp.sum(counts == 0))
        if empty and reseed != "split":
            sums, counts = pool.replicate(tuple(
                jnp.asarray(v) for v in _reseed_empty(pool, centroids, sums, counts)))
        new = jnp.where(counts[:, None] > 0,
                        sums / jnp.maximum(counts, 1)[:, None].astype(sums.dtype), centroids)
        if empty and reseed == "split":
            new = pool.replicate(jnp.asarray(_split_largest(new, counts)))
        done += 1
        converged = bool(jnp.array_equal(new, centroids))
        shift = jnp.sqrt(jnp.sum((new - centroids) ** 2, axis=1))
        centroids = new
        if converged:
            break
    assignments, inertia = _assign_pool(pool, centroids)
    fraction = float(scored) / (done * pool.n) if prune and done else 1.0
    return KMeansResult(centroids, assignments, float(inertia), done, fraction, reseeded)
