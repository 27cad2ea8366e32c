"""Per-class normalisation of scores.

Raw VoG / PLIS magnitudes differ between classes (some digits simply have larger gradients),
so rankings are made within each class:

    z-score:  (s − μ_c) / σ_c          μ_c, σ_c: mean and population std of class c
    min-max:  (s − min_c) / (max_c − min_c)  ∈ [0, 1]   (the seed paper's interpretable form)

Bad input is rejected before tracing: NaN/inf scores, mismatched shapes, and a class with a
single sample (its σ_c and range are undefined) raise `ValueError`. A class whose scores are
all equal (σ_c = 0, range 0) is documented handling, not an error: every sample of that class
gets 0 — none stands out from the others.

    >>> z = per_class_zscore(scores, labels)
    >>> m = per_class_minmax(scores, labels)   # each class spans exactly [0, 1]

Privacy. Both normalisations are data-dependent: μ_c, σ_c, min_c and max_c are computed from
every sample of the class, so one sample (e.g. the class maximum) moves every other normalised
score of its class. Their outputs therefore must not be passed to a DP release whose
sensitivity argument is "one sample changes only its own score"
(`ecos_jax.valuation.release`); the release refuses the arrays these functions return
(`is_data_normalised`). Normalising a NOISY release afterwards is post-processing and free:

    >>> noisy = release_scores(key, raw, bound=B, epsilon=1.0, ledger=ledger)
    >>> ranking = per_class_minmax(noisy, labels)
"""

from __future__ import annotations

import weakref
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ecos_jax.valuation.inputs import check_scores

# Arrays returned by the normalisations, keyed by id and held weakly (an entry goes when its
# array is freed, before the id can be reused): lets a release refuse them without heuristics.
# A copy (np.asarray, arithmetic) is a new object and is not tracked, so this catches the
# direct call `release_scores(key, per_class_minmax(s, y), ...)`, not every derived array.
_DATA_NORMALISED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def _mark(normalised: jax.Array) -> jax.Array:
    _DATA_NORMALISED[id(normalised)] = normalised
    return normalised


def is_data_normalised(array) -> bool:
    """True when `array` is an output of `per_class_zscore` / `per_class_minmax` (the object
    itself, not a copy of it)."""
    return _DATA_NORMALISED.get(id(array)) is array


def _check(scores, labels) -> int:
    s = check_scores(scores)
    y = np.asarray(labels)
    if y.shape != s.shape:
        raise ValueError(f"labels must have the scores' shape {s.shape}, got {y.shape}.")
    if not np.issubdtype(y.dtype, np.integer) or (y.size and y.min() < 0):
        raise ValueError("labels must be non-negative integers.")
    if s.size == 0:
        raise ValueError("scores are empty: nothing to normalise.")
    counts = np.bincount(y)
    singletons = np.flatnonzero(counts == 1)
    if singletons.size:
        raise ValueError(
            f"class(es) {singletons.tolist()} have a single sample: per-class normalisation is "
            "undefined there; drop those samples or normalise over a larger set."
        )
    return int(counts.size)


@partial(jax.jit, static_argnames="num_classes")
def _zscore(scores: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
    count = jax.ops.segment_sum(jnp.ones_like(scores), labels, num_classes)
    mean = jax.ops.segment_sum(scores, labels, num_classes) / jnp.maximum(count, 1)
    centred = scores - mean[labels]
    var = jax.ops.segment_sum(centred**2, labels, num_classes) / jnp.maximum(count, 1)
    std = jnp.sqrt(var)[labels]
    return jnp.where(std > 0, centred / jnp.where(std > 0, std, 1.0), 0.0)


@partial(jax.jit, static_argnames="num_classes")
def _minmax(scores: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
    lo = jax.ops.segment_min(scores, labels, num_classes)[labels]
    span = jax.ops.segment_max(scores, labels, num_classes)[labels] - lo
    return jnp.where(span > 0, (scores - lo) / jnp.where(span > 0, span, 1.0), 0.0)


def per_class_zscore(scores: jax.Array, labels: jax.Array) -> jax.Array:
    """(s − μ_c)/σ_c within each class, `[N] -> [N]` float32 (population σ; 0 if σ_c = 0)."""
    k = _check(scores, labels)
    return _mark(_zscore(jnp.asarray(scores, jnp.float32), jnp.asarray(labels, jnp.int32), k))


def per_class_minmax(scores: jax.Array, labels: jax.Array) -> jax.Array:
    """Min-max to [0, 1] within each class, `[N] -> [N]` float32 (0 for a constant class)."""
    k = _check(scores, labels)
    return _mark(_minmax(jnp.asarray(scores, jnp.float32), jnp.asarray(labels, jnp.int32), k))
