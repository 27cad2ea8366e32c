"""The CoOpt pipeline: participants' targets -> alignment -> optimised dataset.

The algorithm is docs/algorithms.md#coopt.

    >>> result = build_optimised_dataset(
    ...     images=pool.images, ids=pool.ids, shards=split_pool(...), priors=[p0, p1, p2],
    ...     anchors=anchor_images, alignment="procrustes", shared_dim=32, cache_dir="runs/targets",
    ...     check_images=held_out_images)
    >>> result.data.save("optimised.npz"); result.inconsistency
    {"raw": 0.61, "aligned": 0.18, "raw_cka": 0.55, ...}

`alignment` is one of
  * "procrustes": standardise, project to `shared_dim`, rotate (+ scale) onto a common frame,
  * "linear":     the same with a learned ridge linear map instead of a rotation,
  * "project":    standardise and project only (no basis alignment),
  * "off":        the priors' raw targets (CoOpt without alignment; needs one output dimension).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from jax.sharding import Mesh

from ecos_jax.coopt.alignment import (
    AlignmentTransform,
    disagreement,
    fit_alignment,
    mean_pairwise_cka,
)
from ecos_jax.coopt.optimised_data import OptimisedDataset
from ecos_jax.coopt.priors import Prior
from ecos_jax.coopt.targets import TargetStats, participant_targets

ALIGNMENTS = ("procrustes", "linear", "project", "off")


@dataclasses.dataclass(frozen=True, eq=False)
class CoOptResult:
    """data: the optimised dataset. target_stats: targets computed vs reused (participants'
    shards only). transforms: the per-participant A_p (empty for "off"). inconsistency: mean
    pairwise 1 - cos on `check_images` of the raw targets ("raw", None when the priors' output
    dimensions differ) and of the aligned targets ("aligned"), and the raw targets' mean
    pairwise linear CKA ("raw_cka"); all None with a single participant."""

    data: OptimisedDataset
    target_stats: TargetStats
    transforms: list[AlignmentTransform]
    inconsistency: dict[str, float | None]


def build_optimised_dataset(
    *,
    images: np.ndarray,
    ids: np.ndarray,
    shards: Sequence[np.ndarray],
    priors: Sequence[Prior],
    anchors: np.ndarray,
    alignment: str = "procrustes",
    shared_dim: int = 32,
    reference: str | int = "generalised",
    stats_on: str = "anchors",
    normalise: bool = True,
    check_images: np.ndarray | None = None,
    cache_dir: str | None = None,
    mesh: Mesh | None = None,
    batch_size: int = 512,
) -> CoOptResult:
    """Targets, alignment and the optimised dataset of CoOpt on a pool split among participants.

    The three steps: docs/algorithms.md#priors, docs/algorithms.md#alignment and
    docs/algorithms.md#optimised-data.

    Args:
      images: the pool `[N, H, W, C]`; ids: `[N]` stable ids. No labels are used.
      shards: P index arrays into the pool (see `participants.split_pool`).
      priors: P priors, participant p embeds its shard with `priors[p]`.
      anchors: the shared anchor images `[m, H, W, C]` every participant embeds.
      alignment, shared_dim, reference, stats_on, normalise: see the module docstring and
        `alignment.fit_alignment`.
      check_images: shared images on which the inconsistency is measured (default: anchors;
        held-out images measure it without the fit's optimism).
      cache_dir: the targets cache; mesh: devices the embedding is sharded over.
    """
    if alignment not in ALIGNMENTS:
        raise ValueError(f"unknown alignment {alignment!r}; choose one of {ALIGNMENTS}.")
    if len(shards) != len(priors):
        raise ValueError(f"{len(shards)} participants but {len(priors)} priors; need one prior each.")
    images, ids = np.asarray(images, np.float32), np.asarray(ids)
    if images.ndim != 4 or len(ids) != len(images):
        raise ValueError(f"images must be [N, H, W, C] with one id each; got {images.shape} and {ids.shape}.")
    anchors = np.asarray(anchors, np.float32)
    if anchors.ndim != 4 or anchors.shape[1:] != images.shape[1:]:
        raise ValueError(f"anchors must be images like the pool's {images.shape[1:]}; got {anchors.shape}.")
    for p, idx in enumerate(shards):
        if len(idx) == 0:
            raise ValueError(f"participant {p} has no data: every participant needs at least one example.")
    dims = [prior.embed_dim for prior in priors]
    if alignment == "off" and len(set(dims)) > 1:
        raise ValueError(f"the priors' output dimensions differ ({dims}); without alignment the targets "
                         "cannot form one dataset. Use an alignment that projects to a shared dimension.")
    if alignment != "off":
        if len(anchors) < shared_dim + 1:
            raise ValueError(f"the anchor set has {len(anchors)} images, smaller than the target dimension "
                             f"{shared_dim}: need at least {shared_dim + 1} anchors.")
        if shared_dim > min(dims):
            raise ValueError(f"a prior's output dimension differs: prior outputs {dims}, but the shared "
                             f"dimension {shared_dim} exceeds the smallest, {min(dims)}.")

    shard_images = [images[np.asarray(idx)] for idx in shards]
    kw = dict(cache_dir=cache_dir, mesh=mesh, batch_size=batch_size)
    raw, stats = participant_targets(priors, shard_images, **kw)
    anchor_targets, _ = participant_targets(priors, [anchors] * len(priors), **kw)
    check = anchors if check_images is None else np.asarray(check_images, np.float32)
    check_targets = anchor_targets if check_images is None else participant_targets(priors, [check] * len(priors), **kw)[0]

    transforms: list[AlignmentTransform] = []
    if alignment == "off":
        targets, check_aligned = raw, check_targets
    else:
        transforms = fit_alignment(anchor_targets, shared_dim=shared_dim,
                                   method="none" if alignment == "project" else alignment,
                                   reference=reference, stats_on=stats_on, own_targets=raw, normalise=normalise)
        targets = [tr(t) for tr, t in zip(transforms, raw)]
        check_aligned = [tr(t) for tr, t in zip(transforms, check_targets)]

    several = len(priors) > 1
    inconsistency = {
        "raw": disagreement(check_targets) if several and len(set(dims)) == 1 else None,
        "aligned": disagreement(check_aligned) if several else None,
        "raw_cka": mean_pairwise_cka(check_targets) if several else None,
    }
    meta = {
        "priors": [prior.spec.name for prior in priors],
        "prior_fingerprints": [prior.fingerprint for prior in priors],
        "alignment": alignment,
        "shared_dim": int(targets[0].shape[1]),
        "reference": reference,
        "stats_on": stats_on,
        "normalise": bool(normalise),
        "num_anchors": len(anchors),
        "inconsistency": inconsistency,
    }
    data = OptimisedDataset.from_participants(shard_images, [ids[np.asarray(i)] for i in shards], targets, meta)
    return CoOptResult(data=data, target_stats=stats, transforms=transforms, inconsistency=inconsistency)
