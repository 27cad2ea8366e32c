"""Samplers as composable transforms, optax-style.

A `Sampler` is a callable `sampler(key, features [N, d], budget, *, candidates=None, **state)`
returning unique int32 pool indices in priority order. A *generator* (random_sampler, kcenter_sampler, ecos_sampler)
chooses `budget` points from the pool, or from `candidates` when given; a *filter* (dedup_filter)
returns a subset of `candidates` in their order, whatever the budget. `state` carries what a
stage needs beyond the features (for ECOS: centroids, noisy_counts, assignments); each stage
ignores what it does not use. (The constructors carry a suffix so that they do not shadow the
modules random.py, kcenter.py, ecos.py and dedup.py in the package namespace.)

`chain(s1, s2, ..., oversample=1.5)`: every stage but the last asks for ceil(oversample · B)
points, the last for B; the output is cut to the first B. When filters leave fewer than B,
the chain re-runs with the over-selection doubled (same keys) up to the whole pool, and as a
last resort tops up with the earliest first-stage picks that were filtered out (so the budget
is always met and no index repeats).

Example:
  >>> sampler = chain(ecos_sampler(proximity=0.5), dedup_filter(threshold=0.02))
  >>> idx = sampler(key, features, 1000, centroids=c, noisy_counts=s, assignments=a)
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ecos_jax.samplers import validation
from ecos_jax.samplers.dedup import check_threshold, remove_near_duplicates
from ecos_jax.samplers.ecos import ecos_sample
from ecos_jax.samplers.kcenter import kcenter_greedy
from ecos_jax.samplers.pool import Pool
from ecos_jax.samplers.random import random_sample


class Sampler(NamedTuple):
    """select(key, features, budget, candidates, **state) -> [<= budget or any] int32 indices."""
    select: Callable[..., jax.Array]
    name: str
    is_filter: bool = False

    def __call__(self, key, features, budget: int, *, candidates=None, **state) -> jax.Array:
        return self.select(key, features, budget, candidates, **state)


def random_sampler() -> Sampler:
    """Uniform random sampling without replacement."""
    def select(key, features, budget, candidates, **_):
        return random_sample(key, features, budget, candidates=candidates)
    return Sampler(select, "random")


def kcenter_sampler(*, chunk_size: int | None = None) -> Sampler:
    """Greedy k-center over the pool (or over the candidates)."""
    def select(key, features, budget, candidates, **_):
        if candidates is None:
            return kcenter_greedy(key, features, budget, chunk_size=chunk_size)
        cand = np.asarray(candidates)
        validation.check_indices(cand, features.shape[0], "candidates")
        sub = Pool(features).take(cand)
        local = kcenter_greedy(key, sub, budget, chunk_size=chunk_size)
        return jnp.asarray(cand[np.asarray(local)], jnp.int32)
    return Sampler(select, "kcenter")


def ecos_sampler(*, proximity: float = 0.5, chunk_size: int | None = None) -> Sampler:
    """ECOS step 3; needs state `centroids`, `noisy_counts` and optionally `assignments`."""
    def select(key, features, budget, candidates, *, centroids=None, noisy_counts=None,
               assignments=None, **_):
        if centroids is None or noisy_counts is None:
            raise ValueError("the ecos sampler needs centroids= and noisy_counts= "
                             "(and optionally assignments=)")
        return ecos_sample(key, features, budget, centroids=centroids,
                           noisy_counts=noisy_counts, assignments=assignments,
                           proximity=proximity, candidates=candidates, chunk_size=chunk_size)
    return Sampler(select, "ecos")


def dedup_filter(*, threshold: float, metric: str = "cosine") -> Sampler:
    """Filter: drop candidates within `threshold` of an earlier kept one (see dedup.py)."""
    check_threshold(threshold, metric)

    def select(key, features, budget, candidates, **_):
        if candidates is None:
            candidates = np.arange(features.shape[0])
        return remove_near_duplicates(features, candidates, threshold=threshold, metric=metric)
    return Sampler(select, "dedup", is_filter=True)


def chain(*samplers: Sampler, oversample: float = 1.5, max_rounds: int = 4) -> Sampler:
    """Runs samplers in sequence, each on the previous stage's output (see module docstring).

    Args:
      *samplers: stages; the first sees the whole pool (or the chain's `candidates`).
      oversample: factor >= 1 by which every stage but the last over-selects.
      max_rounds: times the over-selection may double when filters remove too much.
    Returns:
      A Sampler returning exactly `budget` unique indices.
    """
    if not samplers or not all(isinstance(s, Sampler) for s in samplers):
        raise ValueError("chain needs one or more Sampler stages")
    if isinstance(oversample, bool) or not isinstance(oversample, numbers.Real) \
            or not oversample >= 1.0:
        raise ValueError(f"oversample must be a number >= 1, got {oversample!r}")
    if not isinstance(max_rounds, int) or max_rounds < 1:
        raise ValueError(f"max_rounds must be a positive int, got {max_rounds!r}")

    def select(key, features, budget, candidates, **state):
        validation.check_key(key)
        n, _ = validation.check_features(features)
        available = n if candidates is None else validation.check_indices(candidates, n).size
        budget = validation.check_budget(budget, available)
        factor = float(oversample)
        for _ in range(max_rounds):
            wide = min(available, math.ceil(factor * budget))
            current, first = candidates, None
            for i, stage in enumerate(samplers):
                want = budget if i == len(samplers) - 1 else wide
                size = available if current is None else len(current)
                if not stage.is_filter:
                    want = min(want, size)
                if size == 0:
                    current = np.zeros((0,), np.int64)
                    break
                current = np.asarray(stage.select(jax.random.fold_in(key, i), features, want,
                                                  current, **state))
                if first is None:
                    first = current
            if len(current) >= budget or wide == available:
                break
            factor *= 2
        current = np.asarray(current)[:budget]
        if len(current) < budget:  # filters removed too much even from the whole pool
            rest = first[~np.isin(first, current)]
            if len(rest) < budget - len(current):  # e.g. a filter was the first stage
                ids = np.arange(n) if candidates is None else np.unique(candidates)
                rest = np.concatenate([rest, ids[~np.isin(ids, np.concatenate([current, rest]))]])
            current = np.concatenate([current, rest[:budget - len(current)]])
        return jnp.asarray(current, jnp.int32)

    return Sampler(select, "chain(" + ", ".join(s.name for s in samplers) + ")")
