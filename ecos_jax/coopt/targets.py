"""Prior targets t = ψ_p(x): embedded once, in batches, sharded over devices, cached.

What the targets are for: docs/algorithms.md#priors.

`embed` runs a prior over `[N, H, W, C]` images in fixed-shape batches (one compilation);
each batch is laid out over a 1-d device mesh along its batch axis (`NamedSharding` with
`PartitionSpec("data")`), the parameters are replicated, and the jitted apply runs on every
device at once. With one device this is plain batched `jit`.

`participant_targets` computes each participant's targets with its own prior and stores them
as `.npz` under `cache_dir`, keyed by the prior's fingerprint and a hash of the shard's
pixels: a second call (another method, another target architecture, a rerun) reuses them and
says so in its `TargetStats`.

    >>> mesh = data_mesh()  # all local devices
    >>> t = embed(prior.model, prior.params, x, mesh=mesh)  # [N, prior.embed_dim]
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ecos_jax.coopt.priors import Prior
from ecos_jax.utils.io import save_npz


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-d mesh with axis "data" over `devices` (default: every local device)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("data_mesh needs at least one device.")
    return Mesh(np.asarray(devices), ("data",))


@functools.lru_cache(maxsize=64)
def _sharded_apply(model: nn.Module, mesh: Mesh):
    data = NamedSharding(mesh, PartitionSpec("data"))
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(lambda p, x: model.apply(p, x, features=True),
                   in_shardings=(replicated, data), out_shardings=data)


def embed_batch(model: nn.Module, params: Any, batch: np.ndarray, mesh: Mesh) -> jax.Array:
    """Embeds one batch `[B, H, W, C]` (B a multiple of the mesh size) -> `[B, d]`, sharded on B."""
    if batch.shape[0] % mesh.size:
        raise ValueError(f"batch size {batch.shape[0]} is not a multiple of the {mesh.size} devices.")
    x = jax.device_put(np.asarray(batch, np.float32), NamedSharding(mesh, PartitionSpec("data")))
    return _sharded_apply(model, mesh)(params, x)


def embed(
    model: nn.Module,
    params: Any,
    x: np.ndarray,
    *,
    batch_size: int = 512,
    mesh: Mesh | None = None,
) -> np.ndarray:
    """`model`'s embedding of `x: [N, H, W, C]` float32 -> `[N, d]` float32.

    Batches have one fixed size per call, a power of two times the number of devices (capped
    near `batch_size`); the tail is padded with zeros and dropped, so a model compiles for a
    handful of sizes only.
    """
    x = np.asarray(x, np.float32)
    if x.ndim != 4 or x.shape[0] == 0:
        raise ValueError(f"embed takes a non-empty [N, H, W, C] array; got shape {x.shape}.")
    mesh = data_mesh() if mesh is None else mesh
    per = mesh.size
    # Batch sizes are powers of two (times the devices): shards of many sizes share few compilations.
    size = min(batch_size, (1 << max(0, int(np.ceil(np.log2(-(-x.shape[0] // per)))))) * per)
    size = -(-size // per) * per
    out = []
    for start in range(0, x.shape[0], size):
        chunk = x[start:start + size]
        n = chunk.shape[0]
        if n < size:
            chunk = np.concatenate([chunk, np.zeros((size - n, *chunk.shape[1:]), np.float32)])
        out.append(np.asarray(embed_batch(model, params, chunk, mesh))[:n])
    return np.concatenate(out)


@dataclasses.dataclass(frozen=True)
class TargetStats:
    """How many participants' targets were computed now and how many were read from the cache."""

    computed: int
    reused: int


def _shard_hash(x: np.ndarray) -> str:
    h = hashlib.sha256(str(x.shape).encode())
    h.update(np.ascontiguousarray(x, np.float32).tobytes())
    return h.hexdigest()[:16]


def participant_targets(
    priors: Sequence[Prior],
    shards: Sequence[np.ndarray],
    *,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 512,
    mesh: Mesh | None = None,
) -> tuple[list[np.ndarray], TargetStats]:
    """Participant p's targets `priors[p](shards[p])`, each `[n_p, d_p]`, computed at most once.

    Args:
      priors: one `Prior` per participant (the same prior may serve several).
      shards: each participant's images `[n_p, H, W, C]`; every n_p >= 1.
      cache_dir: where targets are stored and looked up; None computes without storing.
    """
    if len(priors) != len(shards):
        raise ValueError(f"got {len(priors)} priors for {len(shards)} participants; need one each.")
    for p, s in enumerate(shards):
        if len(s) == 0:
            raise ValueError(f"participant {p} has no data: every participant needs at least one example.")
    computed = reused = 0
    out = []
    for prior, shard in zip(priors, shards):
        path = None
        if cache_dir is not None:
            path = os.path.join(os.fspath(cache_dir), f"{prior.spec.name}-{prior.fingerprint}-{_shard_hash(shard)}.npz")
        if path is not None and os.path.exists(path):
            with np.load(path) as f:
                t = f["targets"]
            reused += 1
        else:
            t = embed(prior.model, prior.params, shard, batch_size=batch_size, mesh=mesh)
            computed += 1
            if path is not None:
                save_npz(path, targets=t)
        if t.shape != (len(shard), prior.embed_dim):
            raise ValueError(f"prior {prior.spec.name!r} gave targets of shape {t.shape}, expected "
                             f"({len(shard)}, {prior.embed_dim}).")
        out.append(t)
    return out, TargetStats(computed=computed, reused=reused)
