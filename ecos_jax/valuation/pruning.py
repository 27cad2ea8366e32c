"""Which training samples a pruning run removes, given one score per sample.

Pure selection on a score vector: the experiment that trains, scores, removes and retrains is
`ecos_jax.experiments.pruning`.
"""

from __future__ import annotations

import numpy as np

DIRECTIONS = ("highest", "lowest")


def removal_indices(scores: np.ndarray, fraction: float, direction: str) -> np.ndarray:
    """Indices of the round(f·N) samples to remove: the highest or lowest scores (stable ties)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}.")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}.")
    m = int(round(fraction * len(scores)))
    order = np.argsort(-scores if direction == "highest" else scores, kind="stable")
    return order[:m]
