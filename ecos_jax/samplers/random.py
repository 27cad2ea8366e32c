"""Uniform random sampling without replacement: the Random baseline."""
from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np

from ecos_jax.samplers import validation


def random_sample(key, features_or_n, budget: int, *, candidates=None) -> jax.Array:
    """`budget` distinct indices drawn uniformly from the pool (or from `candidates`).

    Args:
      key: PRNG key.
      features_or_n: the pool features [N, d] (checked, never read otherwise) or N itself.
      budget: 1 <= budget <= N (or <= len(candidates)).
      candidates: optional [M] indices to draw from instead of the whole pool.
    Returns:
      [budget] int32 indices into the pool, unique, in random order.

    Example:
      >>> random_sample(jax.random.key(0), 1000, 10).shape
      (10,)
    """
    validation.check_key(key)
    if isinstance(features_or_n, numbers.Integral) and not isinstance(features_or_n, bool):
        n = int(features_or_n)
        if n <= 0:
            raise ValueError(f"pool size must be positive, got {n}")
    else:
        n, _ = validation.check_features(features_or_n)
    if candidates is None:
        budget = validation.check_budget(budget, n)
        return jax.random.choice(key, n, (budget,), replace=False).astype(jnp.int32)
    cand = validation.check_indices(candidates, n, "candidates")
    budget = validation.check_budget(budget, cand.size, "candidates")
    pick = np.asarray(jax.random.choice(key, cand.size, (budget,), replace=False))
    return jnp.asarray(cand[pick], jnp.int32)
