"""Greedy k-center over a pool streamed from the host in chunks.

Same picks as the resident loop in `kcenter.py`: min-distances stay on the device per chunk,
and each step lowers them chunk by chunk with the same block distance function.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ecos_jax.samplers.kcenter import _block_sqdist, first_pick_min_d
from ecos_jax.samplers.pool import Pool, map_blocks


@partial(jax.jit, static_argnames=("mesh",))
def _lower_chunk(min_d, chunk, c, mesh):
    d = map_blocks(_block_sqdist, chunk, jnp.int32(0), (c,), mesh).reshape(-1)
    return jnp.minimum(min_d, d)


def kcenter_stream(key, pool: Pool, budget: int, initial) -> jax.Array:
    starts = list(range(0, pool.n, pool.chunk_rows))
    rows = [s + np.arange(pool.chunk_rows) for s in starts]
    if initial is None:
        min_d = [pool.replicate(first_pick_min_d(key, jnp.asarray(r), pool.n)) for r in rows]
    else:
        min_d = [pool.replicate(jnp.asarray(np.where(r < pool.n, np.inf, -1.0), jnp.float32))
                 for r in rows]
        centers = pool.take(initial)
        for i, (_, chunk) in enumerate(pool.chunks()):
            for k in range(centers.shape[0]):
                min_d[i] = _lower_chunk(min_d[i], chunk, pool.replicate(centers[k]), pool.mesh)
        for i, s in enumerate(starts):
            local = initial[(initial >= s) & (initial < s + pool.chunk_rows)] - s
            min_d[i] = min_d[i].at[local].set(-1.0)
    picks = []
    for _ in range(budget):
        # Lowest row among the maxima: chunks are in row order and argmax takes the first.
        best = jnp.stack([jnp.max(m) for m in min_d])
        i = int(jnp.argmax(best))
        j = int(jnp.argmax(min_d[i]))
        row = starts[i] + j
        picks.append(row)
        c = pool.replicate(pool.take([row])[0])
        for k, (_, chunk) in enumerate(pool.chunks()):
            min_d[k] = _lower_chunk(min_d[k], chunk, c, pool.mesh)
        min_d[i] = min_d[i].at[j].set(-1.0)
    return jnp.asarray(np.array(picks, np.int32))
