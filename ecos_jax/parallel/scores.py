"""The per-sample scores (loss, gradient norm, VoG, PLIS) over a batch sharded across devices.

    >>> mesh = local_mesh()
    >>> s = vog_scores(model.apply, checkpoints, x, y, mesh=mesh)      # [N] numpy, as one device

Every score is a function of one sample (and the shared, replicated parameters), so the batch
axis splits over devices with no communication: the rows are padded to a whole number of
blocks (zero images, label 0; their scores are computed and cut off again, never returned),
each block of `n · m` rows is laid out over the `n` devices of the mesh axis (`m` rows each)
and handed to the library's own score function (`ecos_jax.valuation`), which is jitted, so XLA
partitions it along the sharded batch axis (sharding-aware jit; PLIS's power iterations only
agree across devices on when every sample has converged). The result equals the one-device
scores to float tolerance: the same per-sample program, on the same rows.

`microbatch_size` m bounds the rows per device at once (memory); None puts every row of this
process on the devices at once. With several processes (`distributed.initialize`) each
process scores its own contiguous share of the rows on its own devices and the shares are
gathered (`multihost_utils.process_allgather`), so every process returns all N scores; every
process must pass the same full x and y.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from ecos_jax import valuation
from ecos_jax.parallel import mesh as mesh_lib
from ecos_jax.valuation.inputs import check_examples, check_microbatch

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]
BlockScore = Callable[[jax.Array, jax.Array], jax.Array]  # (x [b, ...], y [b]) -> [b]


def local_part(mesh: Mesh, axis: str = mesh_lib.DATA_AXIS) -> Mesh:
    """The devices of `mesh` that this process holds, as a 1-D mesh named `axis`."""
    mesh_lib.check_axis(mesh, axis)
    if len(mesh.axis_names) != 1:
        raise ValueError(f"sharded scores need a 1-D mesh; got axes {tuple(mesh.axis_names)}.")
    mine = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    return Mesh(np.array(mine), (axis,))


def sharded_scores(score_fn: BlockScore, x, y, *, mesh: Mesh | None = None,
                   axis: str = mesh_lib.DATA_AXIS, microbatch_size: int | None = None) -> np.ndarray:
    """`score_fn(x, y)` row by row over the devices of `mesh`; `[N]` (or `[N, ...]`) numpy.

    Args:
      score_fn: a batched per-sample score `(x [b, ...], y [b]) -> [b, ...]` that mixes no rows,
        e.g. `lambda x, y: valuation.vog_scores(apply, ckpts, x, y)`.
      x: `[N, ...]` inputs; y: `[N]` int labels (checked here, once, before any work).
      mesh: a 1-D mesh (None: `mesh.local_mesh()`); axis: its axis name.
      microbatch_size: rows per device per call (bounded memory); None: all of this
        process's rows at once.
    """
    check_examples(x, y)
    check_microbatch(microbatch_size)
    mesh = mesh_lib.local_mesh(axis=axis) if mesh is None else mesh
    local = local_part(mesh, axis)
    n_local = int(local.devices.size)
    procs = jax.process_count()
    x, y = np.asarray(x), np.asarray(y)
    b = x.shape[0]
    per_device = microbatch_size or -(-b // (procs * n_local))
    block = n_local * int(per_device)
    b_pad = mesh_lib.padded_size(b, procs * block)
    pad = b_pad - b
    if pad:
        x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
        y = np.concatenate([y, np.zeros(pad, y.dtype)])
    share = b_pad // procs
    lo = jax.process_index() * share
    devices = list(local.devices.flat)
    m = int(per_device)
    outs = []
    for i in range(lo, lo + share, block):
        # One call per device on its own m rows, all dispatched before any result is read, so
        # the devices compute at the same time.
        outs.extend(score_fn(jax.device_put(x[j:j + m], d), jax.device_put(y[j:j + m], d))
                    for d, j in zip(devices, range(i, i + block, m)))
    scores = np.concatenate([np.asarray(o) for o in outs])
    if procs > 1:
        from jax.experimental import multihost_utils  # only needed with several processes

        scores = np.asarray(multihost_utils.process_allgather(scores, tiled=True))
    return scores[:b]


def loss_scores(apply_fn: ApplyFn, params: PyTree, x, y, *, mesh: Mesh | None = None,
                axis: str = mesh_lib.DATA_AXIS, microbatch_size: int | None = None) -> np.ndarray:
    """`valuation.loss_scores` over `mesh`: softmax cross-entropy per sample, `[N]` (nats)."""
    return sharded_scores(lambda xs, ys: valuation.loss_scores(apply_fn, params, xs, ys),
                          x, y, mesh=mesh, axis=axis, microbatch_size=microbatch_size)


def grad_norm_scores(apply_fn: ApplyFn, params: PyTree, x, y, *, mesh: Mesh | None = None,
                     axis: str = mesh_lib.DATA_AXIS,
                     microbatch_size: int | None = None) -> np.ndarray:
    """`valuation.grad_norm_scores` over `mesh`: un-clipped per-sample gradient norm, `[N]`."""
    return sharded_scores(lambda xs, ys: valuation.grad_norm_scores(apply_fn, params, xs, ys),
                          x, y, mesh=mesh, axis=axis, microbatch_size=microbatch_size)


def vog_scores(apply_fn: ApplyFn, checkpoints: Sequence[PyTree], x, y, *,
               mesh: Mesh | None = None, axis: str = mesh_lib.DATA_AXIS,
               microbatch_size: int | None = None) -> np.ndarray:
    """`valuation.vog_scores` over `mesh`: VoG per sample from K >= 2 checkpoints, `[N]`."""
    return sharded_scores(lambda xs, ys: valuation.vog_scores(apply_fn, checkpoints, xs, ys),
                          x, y, mesh=mesh, axis=axis, microbatch_size=microbatch_size)


def plis_scores(apply_fn: ApplyFn, params: PyTree, x, y, *, mesh: Mesh | None = None,
                axis: str = mesh_lib.DATA_AXIS, microbatch_size: int | None = None,
                **plis_kwargs) -> np.ndarray:
    """`valuation.plis_scores` over `mesh`: matrix-free PLIS per sample, `[N]`.

    `plis_kwargs` (clip_norm, tol, max_iters, key) are passed through; the start vector of the
    power iteration is drawn from `key` the same on every device, as on one.
    """
    if plis_kwargs.get("return_iterations"):
        raise ValueError("return_iterations is not supported on a mesh; call valuation.plis_scores.")
    return sharded_scores(lambda xs, ys: valuation.plis_scores(apply_fn, params, xs, ys, **plis_kwargs),
                          x, y, mesh=mesh, axis=axis, microbatch_size=microbatch_size)
