"""Input checks shared by the score functions, run on concrete arrays before any tracing.

A score that silently turns into NaN ends up in a table; these checks make bad input fail
loudly at the call site instead, with a message naming the problem.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

PyTree = Any
# Batched logits function: (params, x [B, ...]) -> logits [B, K]. `model.apply` is one.
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]


def check_examples(x: Any, y: Any, *, name: str = "x") -> None:
    """Checks `x: [N, ...]` float inputs and `y: [N]` integer labels agree and are finite."""
    x_shape, y_shape = np.shape(x), np.shape(y)
    if len(x_shape) < 2:
        raise ValueError(f"{name} must be [N, ...] with a batch axis, got shape {x_shape}.")
    if x_shape[0] == 0:
        raise ValueError(f"{name} is empty (N = 0): nothing to score.")
    if len(y_shape) != 1 or y_shape[0] != x_shape[0]:
        raise ValueError(f"labels must be [N] = [{x_shape[0]}], got shape {y_shape}.")
    if not np.issubdtype(np.asarray(y).dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {np.asarray(y).dtype}.")
    if np.any(np.asarray(y) < 0):
        raise ValueError("labels must be >= 0.")
    if not np.all(np.isfinite(np.asarray(x))):
        raise ValueError(f"{name} contains NaN or inf values.")


def check_microbatch(microbatch_size: int | None) -> None:
    if microbatch_size is not None and int(microbatch_size) < 1:
        raise ValueError(f"microbatch_size must be >= 1 or None, got {microbatch_size}.")


def check_scores(scores: Any, *, name: str = "scores") -> np.ndarray:
    """Returns `scores` as a 1-D float array; raises on NaN/inf, naming the first bad index."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"{name} must be a 1-D vector [N], got shape {s.shape}.")
    bad = np.flatnonzero(~np.isfinite(s))
    if bad.size:
        raise ValueError(
            f"{name} has {bad.size} non-finite value(s) (NaN/inf), first at index {bad[0]}; "
            "fix the score computation (e.g. a diverged model) before normalising or comparing."
        )
    return s
