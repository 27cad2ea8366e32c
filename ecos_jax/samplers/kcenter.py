"""Greedy k-center (farthest-first traversal): the K-Center baseline and ECOS's diversity step.

Each step picks the point farthest from everything chosen so far, i.e. the row maximising
min_j ||x − c_j||², then lowers every row's min-distance with the new centre. The whole loop
is one jitted `lax.fori_loop`; the min-distances live on the device as [N] float32.

Squared distances are Σ_k (x_k − c_k)² (no norm expansion), so a duplicate of a chosen point
is at distance exactly 0 and is never preferred to a distinct point. Ties go to the lowest row.
Chosen and padding rows carry min-distance −1, so an index is never picked twice, even when
only duplicates remain.

Example:
  >>> idx = kcenter_greedy(jax.random.key(0), features, 1000)   # [1000] int32, unique
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ecos_jax.samplers import validation
from ecos_jax.samplers.pool import Pool, map_blocks


def block_sqdist(x, rows, c):
    """x: [B, d], c: [d] -> [B] squared distances."""
    del rows
    return jnp.sum((x - c) ** 2, axis=1)


def _sqdist_all(x, c, mesh):
    return map_blocks(block_sqdist, x, jnp.int32(0), (c,), mesh).reshape(-1)


@partial(jax.jit, static_argnames=("budget", "mesh"))
def _greedy_resident(x, min_d, budget: int, mesh):
    """x: [C, d] resident (padded) pool; min_d: [C] initial min-distances (−1 = unpickable).
    Returns the `budget` picks in order, [budget] int32."""
    def body(i, state):
        min_d, picks = state
        j = jnp.argmax(min_d).astype(jnp.int32)  # first maximum: lowest row wins ties
        d = _sqdist_all(x, x[j], mesh)
        return jnp.minimum(min_d, d).at[j].set(-1.0), picks.at[i].set(j)

    picks = jnp.zeros((budget,), jnp.int32)
    return jax.lax.fori_loop(0, budget, body, (min_d, picks))[1]


@partial(jax.jit, static_argnames=("mesh",))
def _lower_min_d(min_d, x, centers, mesh):
    """min over centres of the squared distance, folded into min_d; centers: [K, d]."""
    def body(k, m):
        return jnp.minimum(m, _sqdist_all(x, centers[k], mesh))
    return jax.lax.fori_loop(0, centers.shape[0], body, min_d)


def first_pick_min_d(key, rows, n: int):
    """[len(rows)] float32: +inf at a uniformly drawn row < n, float32 max at the other rows
    < n, −1 at padding rows (>= n)."""
    first = jax.random.randint(key, (), 0, n)
    big = jnp.finfo(jnp.float32).max
    return jnp.where(rows == first, jnp.inf, jnp.where(rows < n, big, -1.0)).astype(jnp.float32)


def _initial_min_d(pool: Pool, x, key, initial):
    """Min-distances before the first pick. Without `initial`, a uniformly random first
    centre (drawn from key) gets the only infinite entry, so the first argmax takes it."""
    rows = jnp.arange(pool.chunk_rows)
    if initial is None:
        return pool.replicate(first_pick_min_d(key, rows, pool.n))
    min_d = jnp.where(rows < pool.n, jnp.inf, -1.0).astype(jnp.float32)
    min_d = _lower_min_d(pool.replicate(min_d), x, pool.take(initial), pool.mesh)
    return min_d.at[jnp.asarray(initial)].set(-1.0)


def kcenter_greedy(key, features, budget: int, *, chunk_size: int | None = None,
                   initial=None, devices: Sequence[jax.Device] | None = None) -> jax.Array:
    """Greedy k-center over features [N, d].

    Args:
      key: PRNG key; draws the first centre when `initial` is None.
      features: [N, d] float array (numpy / memmap / jax).
      budget: number of new points to pick, 1 <= budget <= N − len(initial).
      chunk_size: None keeps the pool resident and every step scans all N rows (fine for small
        pools). An int selects the block-pruned streamed driver (kcenter_stream.py): the pool
        is grouped and blocked on the host and a step only touches blocks the new centre can
        change, which is far faster for large N and budgets. The picks do not depend on it.
      initial: optional indices [K] of points already chosen; they seed the min-distances and
        are never returned.
      devices: devices to shard rows over (default all local devices).
    Returns:
      [budget] int32 indices in farthest-first order, unique, none in `initial`.
    """
    validation.check_key(key)
    # One resident chunk: the in-memory greedy scans the whole pool at every step.
    pool = Pool(features, chunk_size=chunk_size, devices=devices, workers=1)
    if initial is not None:
        initial = np.unique(validation.check_indices(initial, pool.n, "initial"))
        if initial.size == 0:
            initial = None
    budget = validation.check_budget(budget, pool.n - (0 if initial is None else initial.size),
                                     "pool outside `initial`")
    if pool.streamed:
        from ecos_jax.samplers.kcenter_stream import kcenter_stream
        return kcenter_stream(key, pool, budget, initial)
    _, x = next(pool.chunks())
    min_d = _initial_min_d(pool, x, key, initial)
    return _greedy_resident(x, min_d, budget, pool.mesh)


# ----- dense variant for small sub-pools (ECOS within-cluster diversity) -----

@partial(jax.jit, static_argnames=("max_steps",))
def greedy_dense(x, min_d, steps, max_steps: int):
    """Farthest-first on a small dense array.

    x: [M, d]; min_d: [M] initial min-distances (−1 = unpickable); steps: traced int <= max_steps.
    Returns [max_steps] int32 picks, −1 past `steps`.
    """
    def body(i, state):
        min_d, picks = state
        j = jnp.argmax(min_d).astype(jnp.int32)
        d = jnp.sum((x - x[j]) ** 2, axis=1)
        return jnp.minimum(min_d, d).at[j].set(-1.0), picks.at[i].set(j)

    picks = jnp.full((max_steps,), -1, jnp.int32)
    return jax.lax.fori_loop(0, steps, body, (min_d, picks))[1]
