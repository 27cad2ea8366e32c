"""Near-duplicate removal over a list of candidate indices, keeping the first occurrence.

Candidate j survives iff no *surviving* earlier candidate i < j lies within `threshold` of it
(a greedy pass in the given order, so the order encodes priority: feed it a sampler's output).
Candidates are processed in tiles of T: a tile is compared with every earlier tile's survivors
by one [T, d] x [d, T] matmul per earlier tile (O(M² d) work in total), then resolved inside
the tile by a short sequential loop over a [T, T] neighbour matrix.

Metrics: "cosine" — near iff 1 − cos(a, b) <= threshold (zero vectors are never near);
"l2" — near iff ||a − b||₂ <= threshold. threshold must be > 0; exact duplicates are within
any positive threshold.

Example:
  >>> kept = remove_near_duplicates(features, idx, threshold=0.02)   # cosine
"""
from __future__ import annotations

import numbers
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ecos_jax.samplers import validation
from ecos_jax.samplers.pool import Pool

_TILE = 256
_HIGHEST = jax.lax.Precision.HIGHEST


def _near(a, b, metric: str, threshold):
    """a: [T, d], b: [T, d] (already unit-normalised for cosine) -> [T, T] bool."""
    dots = jnp.dot(a, b.T, precision=_HIGHEST)
    if metric == "cosine":
        return 1.0 - dots <= threshold
    d2 = jnp.sum(a * a, 1)[:, None] + jnp.sum(b * b, 1)[None, :] - 2.0 * dots
    return d2 <= threshold * threshold


@partial(jax.jit, static_argnames=("metric",))
def _keep_mask(x, m, threshold, metric: str):
    """x: [M_pad, d] candidates in priority order, rows >= m are padding -> keep [M_pad] bool."""
    if metric == "cosine":
        norm = jnp.linalg.norm(x, axis=1, keepdims=True)
        # A zero vector has no direction: give it an impossible cosine so it is never near.
        x = jnp.where(norm > 0, x / jnp.where(norm > 0, norm, 1.0), jnp.nan)
    num_tiles = x.shape[0] // _TILE
    tiles = x.reshape(num_tiles, _TILE, -1)
    pos = jnp.arange(x.shape[0]).reshape(num_tiles, _TILE)

    def tile_step(t, keep):
        xt = tiles[t]

        def versus_earlier(s, dup):
            near = _near(xt, tiles[s], metric, threshold) & keep[s][None, :]
            return dup | near.any(axis=1)

        dup = jax.lax.fori_loop(0, t, versus_earlier, jnp.zeros((_TILE,), bool))
        inside = _near(xt, xt, metric, threshold) & jnp.tri(_TILE, k=-1, dtype=bool)

        def resolve(j, kt):
            ok = ~dup[j] & (pos[t, j] < m) & ~(inside[j] & kt).any()
            return kt.at[j].set(ok)

        kt = jax.lax.fori_loop(0, _TILE, resolve, jnp.zeros((_TILE,), bool))
        return keep.at[t].set(kt)

    keep = jax.lax.fori_loop(0, num_tiles, tile_step, jnp.zeros((num_tiles, _TILE), bool))
    return keep.reshape(-1)


def _bucket_tiles(t: int) -> int:
    """Tiles rounded up to a power of two: few distinct shapes, few compilations."""
    return 1 << max(0, t - 1).bit_length()


def check_threshold(threshold, metric) -> float:
    """Validates a near-duplicate threshold for `metric` ('cosine' or 'l2'); returns it."""
    if metric not in ("cosine", "l2"):
        raise ValueError(f"metric must be 'cosine' or 'l2', got {metric!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) \
            or not np.isfinite(threshold) or threshold <= 0:
        raise ValueError(f"threshold must be a positive finite number, got {threshold!r}")
    return float(threshold)


def remove_near_duplicates(features, indices, *, threshold: float,
                           metric: str = "cosine") -> jax.Array:
    """Drops every candidate within `threshold` of an earlier kept candidate.

    Args:
      features: [N, d] float pool (numpy / memmap / jax); only candidate rows are read.
      indices: [M] int pool indices in priority order (repeats count as duplicates).
      threshold: > 0; cosine distance (1 − cos) or Euclidean distance, per `metric`.
      metric: "cosine" or "l2".
    Returns:
      [M'] int32 surviving indices, in their original order (M' <= M).
    """
    threshold = check_threshold(threshold, metric)
    pool = Pool(features)
    idx = validation.check_indices(indices, pool.n)
    if idx.size == 0:
        return jnp.zeros((0,), jnp.int32)
    m = idx.size
    x = pool.take(idx, size=_TILE * _bucket_tiles(-(-m // _TILE)))  # rows >= m are masked
    keep = np.asarray(_keep_mask(x, m, threshold, metric))[:m]
    return jnp.asarray(idx[keep], jnp.int32)
