"""Input checks shared by the samplers: fail with a clear ValueError before any JAX tracing."""
from __future__ import annotations

import numbers

import jax
import numpy as np

# Rows checked for NaN/inf per step, so a memory-mapped pool is never read into memory whole.
_CHECK_ROWS = 65536


def is_array(x) -> bool:
    return isinstance(x, (np.ndarray, jax.Array))


def check_features(features, name: str = "features") -> tuple[int, int]:
    """Checks a pool `features: [N, d]` float array (numpy, np.memmap or jax) and returns (N, d).

    Raises ValueError for a non-array, wrong rank, an empty pool, a non-float dtype, or any
    NaN / inf entry (scanned in row chunks, so a memmap is streamed, not loaded).
    """
    if not is_array(features):
        raise ValueError(f"{name} must be a numpy or jax array of shape [N, d], "
                         f"got {type(features).__name__}")
    if features.ndim != 2:
        raise ValueError(f"{name} must have shape [N, d], got shape {tuple(features.shape)}")
    n, d = features.shape
    if n == 0 or d == 0:
        raise ValueError(f"{name} is empty: shape {tuple(features.shape)}")
    if not np.issubdtype(features.dtype, np.floating):
        raise ValueError(f"{name} must be floating point, got dtype {features.dtype}")
    if n >= 2**31:
        raise ValueError(f"{name} has {n} rows; indices are int32, so at most 2**31 - 1")
    if isinstance(features, jax.Array):
        finite = bool(jax.numpy.isfinite(features).all())
    else:
        finite = all(np.isfinite(features[s:s + _CHECK_ROWS]).all()
                     for s in range(0, n, _CHECK_ROWS))
    if not finite:
        raise ValueError(f"{name} contains NaN or inf values")
    return int(n), int(d)


def check_budget(budget, available: int, what: str = "pool") -> int:
    """A budget is a positive integer no larger than the number of points available."""
    if isinstance(budget, bool) or not isinstance(budget, numbers.Integral):
        raise ValueError(f"budget must be an int, got {budget!r}")
    budget = int(budget)
    if budget <= 0:
        raise ValueError(f"budget must be positive, got {budget}")
    if budget > available:
        raise ValueError(f"budget {budget} exceeds the {available} points in the {what}")
    return budget


def check_indices(indices, n: int, name: str = "indices") -> np.ndarray:
    """Indices into a pool of n rows: 1-D integers in [0, n). Returns them as int64 numpy."""
    idx = np.asarray(indices)
    if idx.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {idx.shape}")
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got dtype {idx.dtype}")
    idx = idx.astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"{name} must lie in [0, {n}), got range [{idx.min()}, {idx.max()}]")
    return idx


def check_chunk_size(chunk_size) -> int | None:
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    return int(chunk_size)


def check_key(key) -> None:
    if not isinstance(key, jax.Array):
        raise ValueError(f"key must be a jax PRNG key (jax.random.key(seed)), got {type(key).__name__}")
