"""Greedy k-center over a pool that is not resident on the device: block-pruned and exact.

A plain farthest-first step reads the whole pool (10⁴ steps over 10⁶ × 128 floats is 5 TB of
traffic). Here the pool is first grouped spatially (a short streamed k-means into G groups)
and laid out on the host as blocks of `BLOCK_ROWS` rows, each inside one group. Every block b
keeps a ball (mean m_b, radius ρ_b) and the largest min-distance of its rows. When centre c is
added, a block whose every row is provably at least as far from c as from its current centre,

    (||m_b − c|| − ρ_b)² >= max_{x ∈ b} min_d(x)     (with a float-error margin),

cannot change and is skipped; only the remaining blocks are lowered, with the same block
distance function as the resident loop. Skipping only ever avoids computing a `min(old, new)`
whose answer is `old`, and ties still go to the lowest original row, so the picks are identical
to `kcenter._greedy_resident` on the same key. The grouping affects speed, never the result.

Two drivers share that arithmetic:
  * `device_loop`: the blocked pool is one device array and the whole greedy is one jitted
    loop. Used on the CPU backend, where "device" memory is host memory and the 64-byte aligned
    blocked copy is aliased, not copied.
  * host loop: for accelerators whose memory cannot hold the pool, the blocked copy stays on
    the host and each step transfers only its active blocks. Device memory: the [nb, B]
    min-distances, the per-block balls and one batch of active blocks.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ecos_jax.samplers.kcenter import block_sqdist, first_pick_min_d
from ecos_jax.samplers.kmeans import kmeans
from ecos_jax.samplers.pool import BLOCK_ROWS, Pool, aligned_empty

_TAU = 1e-4  # relative float-error margin of the pruning bound (float32 error ~ d * 6e-8)
_BIG = np.iinfo(np.int32).max


def _bucket(k: int) -> int:
    return 1 << max(0, int(k) - 1).bit_length()


class BlockedPool:
    """Host copy of the pool in group-major blocks: x [nb, B, d] float32 (64-byte aligned),
    ids [nb, B] int32 (original row, −1 = padding), each block's ball (mean [nb, d], radius
    [nb]) and slot [N] (original row -> flat position)."""

    def __init__(self, key, pool: Pool, num_groups: int | None = None, group_iters: int = 1):
        n = pool.n
        if num_groups is None:
            num_groups = int(np.clip(-(-n // BLOCK_ROWS), 1, 256))
        if num_groups > 1:
            groups = np.asarray(kmeans(key, pool.features, num_groups, iters=group_iters,
                                       chunk_size=pool.chunk_rows if pool.streamed else None,
                                       devices=pool.devices).assignments)
        else:
            groups = np.zeros(n, np.int64)
        order = np.argsort(groups, kind="stable")
        sizes = np.bincount(groups, minlength=num_groups)
        nb = int((-(-sizes // BLOCK_ROWS)).sum())
        ids = np.full((nb, BLOCK_ROWS), -1, np.int64)
        b, start = 0, 0
        for g in range(num_groups):
            rows = order[start:start + sizes[g]]
            start += sizes[g]
            for s in range(0, rows.size, BLOCK_ROWS):
                part = rows[s:s + BLOCK_ROWS]
                ids[b, :part.size] = part
                b += 1
        self.ids = ids.astype(np.int32)
        self.x = aligned_empty((nb, BLOCK_ROWS, pool.d))
        flat_ids, flat_x = ids.reshape(-1), self.x.reshape(-1, pool.d)
        for s in range(0, flat_ids.size, pool.chunk_rows):
            # Gather in sorted row order (what a memmap serves well), one row chunk at a time.
            sl = flat_ids[s:s + pool.chunk_rows]
            pos = np.flatnonzero(sl >= 0)
            srt = np.argsort(sl[pos])
            flat_x[s + pos[srt]] = pool.features[sl[pos][srt]]
            flat_x[s + np.flatnonzero(sl < 0)] = 0.0
        valid = self.ids >= 0
        count = valid.sum(1, keepdims=True)
        self.mean = (self.x.sum(1, dtype=np.float64) / count).astype(np.float32)
        self.radius = np.empty(nb, np.float32)
        for s in range(0, nb, 64):  # 64 blocks at a time: no pool-sized temporaries
            diff = self.x[s:s + 64] - self.mean[s:s + 64, None, :]
            dev = np.where(valid[s:s + 64], np.sqrt((diff * diff).sum(-1)), 0.0)
            self.radius[s:s + 64] = dev.max(1)
        self.num_blocks = nb
        self.slot = np.empty(n, np.int64)
        self.slot[flat_ids[flat_ids >= 0]] = np.flatnonzero(flat_ids >= 0)


def _active_blocks(block_max, mean, mean_norm, radius, c):
    """[nb] bool: blocks that the new centre c [d] may lower (a conservative bound)."""
    c_norm = jnp.sqrt(jnp.sum(c * c))
    gap = jnp.sqrt(jnp.sum((mean - c) ** 2, axis=1)) - radius
    lb = gap - _TAU * (mean_norm + c_norm + radius)
    prunable = (lb > 0) & (lb * lb * (1.0 - _TAU) >= block_max)
    return ~prunable


def _next_centre(block_max, block_best):
    """Block of the next centre and its original row: the largest min-distance, lowest row."""
    top = jnp.max(block_max)
    b = jnp.argmin(jnp.where(block_max == top, block_best, _BIG)).astype(jnp.int32)
    return b, block_best[b]


def _summary(rows_min_d, rows_ids):
    """[..., B] -> (max min-distance, lowest original row attaining it) per block."""
    top = jnp.max(rows_min_d, axis=-1)
    best = jnp.min(jnp.where(rows_min_d == top[..., None], rows_ids, _BIG), axis=-1)
    return top, best


def _lowered(x, old, ids, c, is_chosen):
    """One block: min(old, ||x − c||²) with the chosen row (bool mask) set to −1."""
    d = jax.lax.optimization_barrier(block_sqdist(x, None, c))
    return jnp.where(is_chosen, -1.0, jnp.minimum(old, d))


@partial(jax.jit, static_argnames=("budget",))
def _device_loop(xb, ids, min_d, mean, radius, budget: int):
    """The whole pruned greedy on a device-resident blocked pool xb [nb, B, d]."""
    nb = xb.shape[0]
    mean_norm = jnp.sqrt(jnp.sum(mean * mean, axis=1))
    lanes = jnp.arange(BLOCK_ROWS)

    def step(i, state):
        min_d, block_max, block_best, picks = state
        b, row = _next_centre(block_max, block_best)
        pos = jnp.argmax(ids[b] == row)
        c = xb[b, pos]
        active = _active_blocks(block_max, mean, mean_norm, radius, c).at[b].set(True)
        order = jnp.nonzero(active, size=nb, fill_value=0)[0]

        def lower(j, st):
            min_d, block_max, block_best = st
            k = order[j]
            new = _lowered(xb[k], min_d[k], ids[k], c, (k == b) & (lanes == pos))
            top, best = _summary(new, ids[k])
            return min_d.at[k].set(new), block_max.at[k].set(top), block_best.at[k].set(best)

        min_d, block_max, block_best = jax.lax.fori_loop(
            0, jnp.sum(active), lower, (min_d, block_max, block_best))
        return min_d, block_max, block_best, picks.at[i].set(row)

    state = (min_d, *_summary(min_d, ids), jnp.zeros((budget,), jnp.int32))
    return jax.lax.fori_loop(0, budget, step, state)[3]


_active_jit = jax.jit(_active_blocks)


@partial(jax.jit, donate_argnums=(0, 1, 2))
def _lower_batch(min_d, block_max, block_best, ids, xs, bids, c, chosen_block, chosen_pos):
    """Host-loop update: xs [k, B, d] are blocks bids [k] (== nb marks padding)."""
    nb = min_d.shape[0]
    safe = jnp.minimum(bids, nb - 1)
    is_chosen = (bids[:, None] == chosen_block) & (jnp.arange(BLOCK_ROWS)[None] == chosen_pos)
    new = jax.lax.map(lambda a: _lowered(a[0], a[1], a[2], c, a[3]),
                      (xs, min_d[safe], ids[safe], is_chosen))
    top, best = _summary(new, ids[safe])
    return (min_d.at[bids].set(new, mode="drop"), block_max.at[bids].set(top, mode="drop"),
            block_best.at[bids].set(best, mode="drop"))


def _host_loop(bp: BlockedPool, ids, state, mean, radius, budget: int):
    mean_norm = jnp.sqrt(jnp.sum(mean * mean, axis=1))
    nb = bp.num_blocks
    picks = np.empty(budget, np.int32)
    for i in range(budget):
        b, row = (int(v) for v in _next_centre(state[1], state[2]))
        p = int(bp.slot[row]) - b * BLOCK_ROWS
        picks[i] = row
        c = jnp.asarray(bp.x[b, p])
        active = np.array(_active_jit(state[1], mean, mean_norm, radius, c))
        active[b] = True
        active = np.flatnonzero(active)
        width = _bucket(active.size)  # few distinct shapes, few compilations
        bids = np.full(width, nb, np.int32)
        bids[:active.size] = active
        xs = bp.x[np.minimum(bids, nb - 1)]  # padding rows repeat a block; dropped on write
        state = _lower_batch(*state, ids, jnp.asarray(xs), jnp.asarray(bids), c,
                             jnp.int32(b), jnp.int32(p))
    return jnp.asarray(picks)


def kcenter_stream(key, pool: Pool, budget: int, initial, *,
                   device_loop: bool | None = None) -> jax.Array:
    """Same contract and picks as the resident greedy; see the module docstring.

    device_loop: None picks the jitted device loop on the CPU backend and the host loop on
    accelerators.
    """
    bp = BlockedPool(jax.random.fold_in(key, 1), pool)
    nb = bp.num_blocks
    ids = jnp.asarray(bp.ids)
    if initial is None:
        # Same values as the resident loop: +inf at the random first row, float32 max elsewhere.
        flat = first_pick_min_d(key, jnp.arange(pool.n), pool.n)
        min_d = jnp.where(ids >= 0, flat[jnp.maximum(ids, 0)], -1.0)
    else:
        min_d = jnp.where(ids >= 0, jnp.inf, -1.0).astype(jnp.float32)
    mean, radius = jnp.asarray(bp.mean), jnp.asarray(bp.radius)
    if initial is not None:
        # Seed with the already-chosen points, lowering every block, 64 blocks per call.
        state = (min_d, *_summary(min_d, ids))
        for r in initial:
            b, p = divmod(int(bp.slot[r]), BLOCK_ROWS)
            c = jnp.asarray(bp.x[b, p])
            for s in range(0, nb, 64):
                bids = np.arange(s, s + 64, dtype=np.int32)
                bids[bids >= nb] = nb
                state = _lower_batch(*state, ids, jnp.asarray(bp.x[np.minimum(bids, nb - 1)]),
                                     jnp.asarray(bids), c, jnp.int32(nb), jnp.int32(0))
        min_d = state[0]
        min_d = min_d.reshape(-1).at[jnp.asarray(bp.slot[initial])].set(-1.0)
        min_d = min_d.reshape(nb, BLOCK_ROWS)
    if device_loop is None:
        device_loop = jax.default_backend() == "cpu"
    if device_loop:
        xb = jax.device_put(bp.x, pool.device)  # aliased on CPU: no second copy
        return _device_loop(xb, ids, min_d, mean, radius, budget)
    return _host_loop(bp, ids, (min_d, *_summary(min_d, ids)), mean, radius, budget)
