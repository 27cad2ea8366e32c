"""Samplers as composable transforms, optax-style.

A `Sampler` is a callable `sampler(key, features [N, d], budget, *, candidates=None, **arguments)`
returning unique int32 pool indices in priority order. A *generator* (random_sampler, kcenter_sampler, ecos_sampler)
chooses `budget` points from the pool, or from `candidates` when given; a *filter* (dedup_filter)
returns a subset of `candidates` in their order, whatever the budget. `arguments` are the
stage arguments: what a stage needs beyond the features (for ECOS: centroids, noisy_counts and
optionally assignments). Each stage declares the keyword arguments it takes in its `select`
signature (`Sampler.arguments`, `Sampler.required`); a name that no stage takes, or a required one
left out, raises a TypeError naming it before any work, so a misspelled argument is never
silently ignored. (The constructors carry a suffix so that they do not shadow the modules
random.py, kcenter.py, ecos.py and dedup.py in the package namespace.)

`chain(s1, s2, ..., oversample=1.5)`: every stage but the last asks for ceil(oversample · B)
points, the last for B; the output is cut to the first B. Stage i draws with
`fold_in(key, i)` and receives the stage arguments it declares. When filters leave fewer
than B, the chain re-runs with the over-selection doubled (same keys) up to the whole pool, and
as a last resort tops up with the earliest first-stage picks that were filtered out (so the
budget is always met and no index repeats).

Example:
  >>> sampler = chain(ecos_sampler(proximity=0.5), dedup_filter(threshold=0.02))
  >>> idx = sampler(key, features, 1000, centroids=c, noisy_counts=s, assignments=a)
"""
from __future__ import annotations

import difflib
import inspect
import math
import numbers
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from ecos_jax.samplers import validation
from ecos_jax.samplers.dedup import check_threshold, remove_near_duplicates
from ecos_jax.samplers.ecos import ecos_sample
from ecos_jax.samplers.kcenter import kcenter_greedy
from ecos_jax.samplers.pool import Pool
from ecos_jax.samplers.random import random_sample


class Sampler(NamedTuple):
    """select(key, features, budget, candidates, **arguments) -> [<= budget or any] int32 indices.

    arguments: the keyword stage arguments `select` takes; required: those it cannot do without.
    """
    select: Callable[..., jax.Array]
    name: str
    is_filter: bool = False
    arguments: frozenset[str] = frozenset()
    required: frozenset[str] = frozenset()

    def __call__(self, key, features, budget: int, *, candidates=None, **arguments) -> jax.Array:
        check_arguments(self, arguments)
        return self.select(key, features, budget, candidates, **arguments)


def check_arguments(sampler: Sampler, arguments) -> None:
    """TypeError for a stage argument `sampler` does not take, or a required one missing."""
    unknown = sorted(set(arguments) - sampler.arguments)
    if unknown:
        hints = [f" (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(u, sampler.arguments, 1))
                 else "" for u in unknown]
        raise TypeError(f"{sampler.name} got unknown stage argument(s) "
                        + ", ".join(f"{u!r}{h}" for u, h in zip(unknown, hints, strict=True))
                        + f"; it takes {sorted(sampler.arguments) or 'none'}.")
    missing = sorted(sampler.required - set(arguments))
    if missing:
        raise TypeError(f"{sampler.name} needs stage argument(s) {missing}.")


def stage(select: Callable[..., jax.Array], name: str, *, is_filter: bool = False) -> Sampler:
    """A Sampler whose stage arguments are the keyword-only parameters of `select`.

    `select(key, features, budget, candidates, *, arg1, arg2=None)`: arg1 is required, arg2 not.
    """
    params = [p for p in inspect.signature(select).parameters.values() if p.kind is p.KEYWORD_ONLY]
    return Sampler(select, name, is_filter, frozenset(p.name for p in params),
                   frozenset(p.name for p in params if p.default is p.empty))


def random_sampler() -> Sampler:
    """Uniform random sampling without replacement (no stage arguments)."""
    def select(key, features, budget, candidates):
        return random_sample(key, features, budget, candidates=candidates)
    return stage(select, "random")


def kcenter_sampler(*, chunk_size: int | None = None) -> Sampler:
    """Greedy k-center over the pool (or over the candidates); no stage arguments."""
    def select(key, features, budget, candidates):
        if candidates is None:
            return kcenter_greedy(key, features, budget, chunk_size=chunk_size)
        cand = np.asarray(candidates)
        validation.check_indices(cand, features.shape[0], "candidates")
        sub = Pool(features).take(cand)
        local = kcenter_greedy(key, sub, budget, chunk_size=chunk_size)
        return jnp.asarray(cand[np.asarray(local)], jnp.int32)
    return stage(select, "kcenter")


def ecos_sampler(*, proximity: float = 0.5, chunk_size: int | None = None) -> Sampler:
    """ECOS step 3 (see ecos.py). Stage arguments: centroids `[R, d]`, noisy_counts `[R]` (the
    client's release) and optionally assignments `[N]` (computed from the centroids when absent)."""
    def select(key, features, budget, candidates, *, centroids: ArrayLike, noisy_counts: ArrayLike,
               assignments: ArrayLike | None = None):
        return ecos_sample(key, features, budget, centroids=centroids,
                           noisy_counts=noisy_counts, assignments=assignments,
                           proximity=proximity, candidates=candidates, chunk_size=chunk_size)
    return stage(select, "ecos")


def dedup_filter(*, threshold: float, metric: str = "cosine") -> Sampler:
    """Filter: drop candidates within `threshold` of an earlier kept one (see dedup.py)."""
    check_threshold(threshold, metric)

    def select(key, features, budget, candidates):
        if candidates is None:
            candidates = np.arange(features.shape[0])
        return remove_near_duplicates(features, candidates, threshold=threshold, metric=metric)
    return stage(select, "dedup", is_filter=True)


def chain(*samplers: Sampler, oversample: float = 1.5, max_rounds: int = 4) -> Sampler:
    """Runs samplers in sequence, each on the previous stage's output (see module docstring).

    Args:
      *samplers: stages; the first sees the whole pool (or the chain's `candidates`).
      oversample: factor >= 1 by which every stage but the last over-selects.
      max_rounds: times the over-selection may double when filters remove too much.
    Returns:
      A Sampler returning exactly `budget` unique indices; its stage arguments are the union of
      its stages' (each stage receives only those it declares).
    """
    if not samplers or not all(isinstance(s, Sampler) for s in samplers):
        raise ValueError("chain needs one or more Sampler stages")
    if isinstance(oversample, bool) or not isinstance(oversample, numbers.Real) \
            or not oversample >= 1.0:
        raise ValueError(f"oversample must be a number >= 1, got {oversample!r}")
    if not isinstance(max_rounds, int) or max_rounds < 1:
        raise ValueError(f"max_rounds must be a positive int, got {max_rounds!r}")

    def select(key, features, budget, candidates, **arguments):
        validation.check_key(key)
        n, _ = validation.check_features(features)
        available = n if candidates is None else validation.check_indices(candidates, n).size
        budget = validation.check_budget(budget, available)
        mine = [{k: v for k, v in arguments.items() if k in s.arguments} for s in samplers]
        factor = float(oversample)
        for _ in range(max_rounds):
            wide = min(available, math.ceil(factor * budget))
            current, first = candidates, None
            for i, s in enumerate(samplers):
                want = budget if i == len(samplers) - 1 else wide
                size = available if current is None else len(current)
                if not s.is_filter:
                    want = min(want, size)
                if size == 0:
                    current = np.zeros((0,), np.int64)
                    break
                current = np.asarray(s.select(jax.random.fold_in(key, i), features, want,
                                              current, **mine[i]))
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

    return Sampler(select, "chain(" + ", ".join(s.name for s in samplers) + ")",
                   arguments=frozenset().union(*(s.arguments for s in samplers)),
                   required=frozenset().union(*(s.required for s in samplers)))
