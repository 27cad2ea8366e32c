"""The optimised dataset {(x, A_p ψ_p(x))}: built once, saved, reloaded, reused.

See docs/algorithms.md#optimised-data.

Any target architecture trains on it with a regression loss, without the priors and without
recomputing targets. It is saved as one `.npz` (written atomically, so a crash never leaves
half a file) holding the images, the targets, the owning participant, the example ids and a
JSON metadata string (priors, alignment, shared dimension, ...).

    >>> data = OptimisedDataset.from_participants(images, ids, targets, meta={"alignment": "procrustes"})
    >>> data.save("runs/coopt/optimised.npz")
    >>> again = OptimisedDataset.load("runs/coopt/optimised.npz")
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ecos_jax.utils.io import save_npz

_FORMAT = "ecos_jax.coopt.optimised_data/1"


@dataclasses.dataclass(frozen=True, eq=False)
class OptimisedDataset:
    """images `[N, H, W, C]` float32, targets `[N, k]` float32, participant `[N]` int32 (who
    computed each target), ids `[N]` int64 (stable example ids), meta: JSON-able dict."""

    images: np.ndarray
    targets: np.ndarray
    participant: np.ndarray
    ids: np.ndarray
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        n = len(self.images)
        if n == 0:
            raise ValueError("an optimised dataset needs at least one example.")
        if self.images.ndim != 4 or self.images.dtype != np.float32:
            raise ValueError(f"images must be [N, H, W, C] float32; got {self.images.shape} {self.images.dtype}.")
        if self.targets.ndim != 2 or self.targets.shape[0] != n or self.targets.dtype != np.float32:
            raise ValueError(f"targets must be [{n}, k] float32; got {self.targets.shape} {self.targets.dtype}.")
        for name in ("participant", "ids"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{name} must have shape ({n},); got {getattr(self, name).shape}.")
        if not np.isfinite(self.targets).all():
            raise ValueError("targets contain NaN or inf.")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def target_dim(self) -> int:
        return int(self.targets.shape[1])

    @classmethod
    def from_participants(
        cls,
        images: Sequence[np.ndarray],
        ids: Sequence[np.ndarray],
        targets: Sequence[np.ndarray],
        meta: dict[str, Any] | None = None,
    ) -> OptimisedDataset:
        """Concatenates P participants' `(images [n_p, ...], ids [n_p], targets [n_p, k])`.

        Every participant's targets must share the dimension k: unaligned priors of different
        output dimensions raise (alignment projects them to a shared dimension first).
        """
        if not (len(images) == len(ids) == len(targets)) or len(images) == 0:
            raise ValueError("need images, ids and targets for the same (>= 1) participants.")
        dims = [np.shape(t)[1] if np.ndim(t) == 2 else None for t in targets]
        if len(set(dims)) != 1 or dims[0] is None:
            raise ValueError(f"participants' targets have output dimensions {dims}; they must all be one "
                             "[n_p, k] dimension. Align them (shared_dim) or use priors of one output dimension.")
        for p, (x, i, t) in enumerate(zip(images, ids, targets)):
            if len(x) == 0:
                raise ValueError(f"participant {p} has no data.")
            if not len(x) == len(i) == len(t):
                raise ValueError(f"participant {p}: {len(x)} images, {len(i)} ids, {len(t)} targets.")
        return cls(
            images=np.concatenate([np.asarray(x, np.float32) for x in images]),
            targets=np.concatenate([np.asarray(t, np.float32) for t in targets]),
            participant=np.concatenate([np.full(len(x), p, np.int32) for p, x in enumerate(images)]),
            ids=np.concatenate([np.asarray(i, np.int64) for i in ids]),
            meta=dict(meta or {}),
        )

    def save(self, path: str | os.PathLike) -> None:
        """Writes the dataset to `path` (.npz) atomically."""
        save_npz(path, images=self.images, targets=self.targets, participant=self.participant, ids=self.ids,
                 meta=np.asarray(json.dumps({"format": _FORMAT, **self.meta}, sort_keys=True)))

    @classmethod
    def load(cls, path: str | os.PathLike) -> OptimisedDataset:
        """Reads a dataset written by `save`; bit-identical arrays and equal metadata."""
        if not os.path.exists(path):
            raise ValueError(f"no optimised dataset at {path}.")
        with np.load(path, allow_pickle=False) as f:
            missing = {"images", "targets", "participant", "ids", "meta"} - set(f.files)
            if missing:
                raise ValueError(f"{path} is not an optimised dataset (missing {sorted(missing)}).")
            meta = json.loads(str(f["meta"]))
            if meta.pop("format", None) != _FORMAT:
                raise ValueError(f"{path} has an unknown optimised-dataset format.")
            return cls(images=f["images"], targets=f["targets"], participant=f["participant"], ids=f["ids"],
                       meta=meta)
