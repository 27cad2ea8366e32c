"""Semi-supervised selective labelling: the labelled picks plus the unlabelled rest of the pool.

ECOS's first application optionally uses the pool's unlabelled remainder
(docs/algorithms.md#baselines). We use confidence-thresholded pseudo-labelling (Lee 2013),
the simplest member of the FixMatch family and one that needs no augmentation pipeline:

  1. train f on the labelled picks L (as plain selective labelling does);
  2. predict on U, a sample of the pool's unlabelled rest; keep x ∈ U with
     max_k softmax(f(x))_k ≥ τ and label it ŷ = argmax_k f(x)_k;
  3. continue training f on L ∪ {(x, ŷ)}, each pseudo-labelled example weighted by w.

Nothing here touches client data: U is public pool data and f was trained on pool labels, so
semi-supervision costs no privacy.

    >>> keep, labels = confident_pseudo_labels(logits, threshold=0.95)
"""

from __future__ import annotations

import jax
import numpy as np

MODES = ("none", "pseudo_label")


def confident_pseudo_labels(logits: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices of rows whose top softmax probability is ≥ `threshold`, and their argmax labels.

    Args:
      logits: `[N, K]` float, model outputs on unlabelled inputs.
      threshold: τ in [0, 1]; 0 keeps every row.
    Returns:
      (keep `[M]` int64 indices into the rows, labels `[M]` int32).
    """
    logits = np.asarray(logits, np.float32)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be [N, K] with K >= 2, got shape {logits.shape}.")
    if not np.isfinite(logits).all():
        raise ValueError("logits contain NaN or inf.")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"pseudo-label threshold must be in [0, 1], got {threshold}.")
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))
    keep = np.flatnonzero(probs.max(axis=-1) >= threshold)
    return keep, probs[keep].argmax(axis=-1).astype(np.int32)


def unlabeled_indices(key: jax.Array, pool_size: int, picked: np.ndarray, size: int) -> np.ndarray:
    """Up to `size` pool indices not in `picked`, uniformly at random (`size` < 0: all of them)."""
    rest = np.setdiff1d(np.arange(pool_size), np.asarray(picked))
    if size < 0 or size >= len(rest):
        return rest
    return rest[np.sort(np.asarray(jax.random.choice(key, len(rest), (size,), replace=False)))]
