"""ECOS sampling on the cloud: allocate the budget over clusters from the client's noisy
coverage counts, then choose points within each cluster.

The protocol (messages, DP noise, byte counts) lives in `ecos_jax.ecos`; this module holds the
pure pieces it calls.

Design choices (configurable):
  * Allocation: weights max(s̃_r − t, 0) (`count_threshold=t`, default 0: the noisy counts
    themselves; see `threshold_counts`); largest-remainder rounding (ties: larger remainder, then
    larger weight, then lower cluster index); a cluster gives at most what it holds and the
    overflow is re-allocated to the others in proportion to their weights. If every weight is
    <= 0 (the noise swamped the counts) the budget is spread uniformly over the non-empty
    clusters; if every positive-weight cluster is exhausted, the rest is spread uniformly over
    clusters that still have points.
  * Within a cluster that receives k points, one of `WITHIN_CLUSTER` rules (`rule=`):
      "proximity_kcenter": the round(proximity · k) points closest to the centroid first, then
        k-center greedy inside the cluster, seeded by those points, for the rest (with
        proximity = 0 the greedy starts from a random member);
      "kcenter": k-center greedy from a random member (proximity_kcenter at proximity 0);
      "proximity": the k points closest to the centroid (proximity_kcenter at proximity 1);
      "random": k members uniformly without replacement;
      "density": k members without replacement with probability ∝ a kNN density estimate,
        1 / (distance to the κ-th nearest member), κ = min(10, m − 1) (Gumbel top-k);
      "coverage": greedy facility location, each pick maximising Σ_i max(0, s_ij − best_i)
        over the members i with similarity s_ij = D − d_ij (D the cluster's largest squared
        distance): k representative members, the k-medoids objective greedily.
    "density" and "coverage" build the [m, m] member distances; a cluster of more than
    `DENSE_MAX` members runs them on a uniform random subset of `DENSE_MAX` (documented
    fallback: memory stays O(DENSE_MAX²)). Near-duplicate removal is a separate stage:
    `chain(ecos_sampler(...), dedup_filter(...))`.
  * Output order interleaves clusters by rank fraction (j + ½)/k_r, so any prefix of the
    output is itself close to a proportional allocation (what `chain` truncates to).

Bad input (each a ValueError before any work, or a documented fallback):
  * a client with fewer samples than R: its coverage counts are still a histogram over the R
    centroids (at most n of them non-zero); nothing is refused, and once noise is added the
    allocation follows the noisy counts like any other (usually many are <= 0, see below).
  * R larger than the pool: `kmeans` refuses it (a pool of N rows has at most N clusters);
    centroids given from elsewhere may outnumber the pool or the candidates, and then the
    clusters without members simply receive nothing.
  * a budget larger than the pool (or than the candidates): ValueError naming both numbers.
  * all noisy counts <= 0 (the noise swamped the counts): the uniform fallback above, over the
    clusters that have points; the selection is then a diversity sample of the whole pool.
    With a threshold t > 0 and every count <= t, the weights fall back to max(s̃, 0) first
    (`threshold_counts`), and to uniform only if those are all 0 too.

Example:
  >>> counts = allocate(noisy_counts, np.bincount(assignments, minlength=R), budget=1000)
  >>> idx = ecos_sample(key, features, 1000, centroids=c, assignments=a, noisy_counts=s)
"""
from __future__ import annotations

import functools
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from ecos_jax.samplers import validation
from ecos_jax.samplers.kcenter import first_pick_min_d, greedy_dense
from ecos_jax.samplers.kmeans import assign
from ecos_jax.samplers.pool import Pool


def allocate(weights, cluster_sizes, budget: int) -> np.ndarray:
    """Splits `budget` over R clusters in proportion to max(weights, 0), capped by size.

    Args:
      weights: [R] float, e.g. the client's noisy counts s̃ (negative entries count as 0).
      cluster_sizes: [R] int, points available in each cluster.
      budget: total points to allocate, 1 <= budget <= Σ cluster_sizes.
    Returns:
      [R] int64 counts with Σ = budget and 0 <= counts <= cluster_sizes.
    """
    w = np.asarray(weights, dtype=np.float64)
    sizes = np.asarray(cluster_sizes)
    if w.ndim != 1 or w.size == 0:
        raise ValueError(f"weights must have shape [R] with R >= 1, got {w.shape}")
    if sizes.shape != w.shape:
        raise ValueError(f"cluster_sizes shape {sizes.shape} != weights shape {w.shape}")
    if not np.isfinite(w).all():
        raise ValueError("weights contain NaN or inf values")
    if sizes.size and (not np.issubdtype(sizes.dtype, np.integer) or sizes.min() < 0):
        raise ValueError("cluster_sizes must be non-negative integers")
    sizes = sizes.astype(np.int64)
    budget = validation.check_budget(budget, int(sizes.sum()), "clusters")

    w = np.maximum(w, 0.0)
    if w.sum() <= 0:
        w = (sizes > 0).astype(np.float64)  # uniform fallback, see module docstring
    counts = np.zeros_like(sizes)
    remaining = budget
    while remaining > 0:
        room = sizes - counts
        active = np.flatnonzero((room > 0) & (w > 0))
        if active.size == 0:  # every positive-weight cluster is full
            w = (room > 0).astype(np.float64)
            active = np.flatnonzero(room > 0)
        wa = w[active]
        share = remaining * wa / wa.sum()
        give = np.floor(share).astype(np.int64)
        while give.sum() > remaining:  # guards float rounding in `share`
            give[np.argmax(give)] -= 1
        extra = remaining - int(give.sum())
        order = np.lexsort((active, -wa, -(share - give)))  # last key sorts first
        give[order[:extra]] += 1
        give = np.minimum(give, room[active])
        counts[active] += give
        remaining -= int(give.sum())
    return counts


def threshold_counts(noisy_counts, threshold: float = 0.0) -> np.ndarray:
    """Allocation weights max(s̃_r − t, 0) from the client's noisy counts (soft threshold).

    With Gaussian noise N(0, σ²) on every count, a cluster the client does not occupy still gets
    a positive weight half the time (mean σ/√(2π) ≈ 0.4σ), which spends part of the budget
    outside the client's domain; shrinking every count by t = kσ removes most of that mass and
    keeps the large counts. Post-processing of the release (σ is public: a function of ε and δ
    only), so it costs no privacy.

    Args:
      noisy_counts: [R] float, the released s̃.
      threshold: t >= 0, in counts (the caller passes k·σ).
    Returns:
      [R] float64 weights >= 0. If every s̃_r <= t, max(s̃, 0) instead (documented fallback:
      thresholding must not turn a weak signal into no signal); `allocate` spreads uniformly
      only when those are all 0 too.
    """
    s = np.asarray(noisy_counts, np.float64)
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) \
            or not np.isfinite(threshold) or threshold < 0:
        raise ValueError(f"count threshold must be a finite number >= 0, got {threshold!r}")
    w = np.maximum(s - float(threshold), 0.0)
    return w if w.sum() > 0 else np.maximum(s, 0.0)


def _bucket(m: int) -> int:
    """m rounded up to a multiple of 2^(bits(m) − 2) (at least 64): at most 4 shapes per
    octave, so few compilations, and at most 25 % padding."""
    step = max(64, 1 << max(0, int(m).bit_length() - 2))
    return max(step, -(-int(m) // step) * step)


_PROX_GROUP = 64  # proximity picks whose distances are taken in one [M, 64] matmul

# The within-cluster rules (module docstring); the first is the default.
WITHIN_CLUSTER = ("proximity_kcenter", "kcenter", "proximity", "random", "density", "coverage")
DENSE_MAX = 4096  # members a "density" / "coverage" cluster is cut to (its [m, m] distances)
_DENSITY_K = 10   # κ of the kNN density estimate


@jax.jit
def _select_cluster(key, x, m, centroid, n_prox, steps):
    """One cluster. x: [M, d] members (rows >= m are padding); centroid: [d].

    Returns (members by distance to the centroid [M] int32, k-center picks [M] int32 (−1 past
    `steps`)), both as row positions in x. Only M is static, so one compilation serves every
    cluster whose size rounds up to the same power of two.
    """
    rows = jnp.arange(x.shape[0])
    valid = rows < m
    d_c = jnp.where(valid, jnp.sum((x - centroid) ** 2, axis=1), jnp.inf)
    by_proximity = jnp.argsort(d_c, stable=True).astype(jnp.int32)

    x_sqnorm = jnp.sum(x * x, axis=1)

    def lower(g, md):
        # Distances to proximity picks g*64 .. g*64+63 in one matmul; picks past n_prox masked.
        rank = g * _PROX_GROUP + jnp.arange(_PROX_GROUP)
        p = by_proximity[jnp.minimum(rank, x.shape[0] - 1)]
        d = (x_sqnorm[:, None] + x_sqnorm[p][None, :]
             - 2.0 * jnp.dot(x, x[p].T, precision=jax.lax.Precision.HIGHEST))
        d = jnp.where(rank[None, :] < n_prox, jnp.maximum(d, 0.0), jnp.inf)
        return jnp.minimum(md, d.min(axis=1))

    min_d = jnp.where(valid, jnp.finfo(jnp.float32).max, -1.0).astype(jnp.float32)
    min_d = jax.lax.fori_loop(0, -(-n_prox // _PROX_GROUP), lower, min_d)
    rank = jnp.zeros(x.shape[0], jnp.int32).at[by_proximity].set(rows.astype(jnp.int32))
    min_d = jnp.where(rank < n_prox, -1.0, min_d)
    min_d = jnp.where(n_prox == 0, first_pick_min_d(key, rows, m), min_d)
    return by_proximity, greedy_dense(x, min_d, steps, x.shape[0])


def _member_sqdist(x, valid):
    """[M, M] squared distances between the rows of x, +inf where either row is padding."""
    sq = jnp.sum(x * x, axis=1)
    d = sq[:, None] + sq[None, :] - 2.0 * jnp.dot(x, x.T, precision=jax.lax.Precision.HIGHEST)
    d = jnp.maximum(d, 0.0)
    return jnp.where(valid[:, None] & valid[None, :], d, jnp.inf)


@functools.partial(jax.jit, static_argnames=("rule",))
def _rule_cluster(key, x, m, k, rule: str):
    """One cluster under rule "random" | "density" | "coverage". x: [M, d] (rows >= m padding).

    Returns [M] int32 row positions in x, the first k of which are the picks (all < m).
    """
    rows = jnp.arange(x.shape[0])
    valid = rows < m
    if rule == "random":
        score = jax.random.uniform(key, (x.shape[0],))
        return jnp.argsort(jnp.where(valid, -score, jnp.inf), stable=True).astype(jnp.int32)
    d = _member_sqdist(x, valid)
    if rule == "density":
        # Distance to the κ-th nearest other member (index κ of the sorted row: index 0 is the
        # member itself); density ∝ 1 / that distance, sampled without replacement by Gumbel top-k.
        # lax.top_k of the κ + 1 smallest gives the sorted row's first values exactly, and at
        # M = 4096 it took 0.19 s against 2.8 s for a full sort per row (2-core CPU).
        kappa = jnp.clip(m - 1, 1, _DENSITY_K)
        nearest = -jax.lax.top_k(-d, _DENSITY_K + 1)[0]  # [M, κ_max + 1] ascending
        r_k = jnp.sqrt(jnp.take_along_axis(nearest, jnp.full((x.shape[0], 1), kappa), 1)[:, 0])
        logw = -jnp.log(jnp.where(jnp.isfinite(r_k), r_k, 1.0) + 1e-12)
        score = logw + jax.random.gumbel(key, (x.shape[0],))
        return jnp.argsort(jnp.where(valid, -score, jnp.inf), stable=True).astype(jnp.int32)
    # coverage: greedy facility location on s = D − d over the valid members.
    big = jnp.max(jnp.where(jnp.isfinite(d), d, 0.0))
    sim = jnp.where(valid[:, None] & valid[None, :], big - d, 0.0)

    def body(t, state):
        best, order, taken = state
        gain = jnp.sum(jnp.maximum(sim - best[:, None], 0.0), axis=0)
        gain = jnp.where(valid & ~taken, gain, -1.0)  # a gain of 0 still beats taken/padding
        j = jnp.argmax(gain).astype(jnp.int32)
        return jnp.maximum(best, sim[:, j]), order.at[t].set(j), taken.at[j].set(True)

    state = (jnp.zeros(x.shape[0], jnp.float32), jnp.zeros(x.shape[0], jnp.int32),
             jnp.zeros(x.shape[0], bool))
    _, order, _ = jax.lax.fori_loop(0, k, body, state)
    return order


def check_rule(rule) -> str:
    """`rule` if it is one of `WITHIN_CLUSTER`, else ValueError listing them."""
    if rule not in WITHIN_CLUSTER:
        raise ValueError(f"within-cluster rule must be one of {WITHIN_CLUSTER}, got {rule!r}")
    return rule


def _check_assignments(assignments, n: int, num_clusters: int) -> np.ndarray:
    a = np.asarray(assignments)
    if a.shape != (n,):
        raise ValueError(f"assignments must have shape [N={n}], got {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"assignments must be integers, got dtype {a.dtype}")
    if a.size and (a.min() < 0 or a.max() >= num_clusters):
        raise ValueError(f"assignments must lie in [0, R={num_clusters})")
    return a.astype(np.int64)


def _check_centroids(centroids, d: int) -> np.ndarray:
    c = np.asarray(centroids, np.float32)
    if c.ndim != 2 or c.shape[1] != d or c.shape[0] == 0:
        raise ValueError(f"centroids must have shape [R, {d}], got {c.shape}")
    if not np.isfinite(c).all():
        raise ValueError("centroids contain NaN or inf values")
    return c


def _check_proximity(proximity) -> float:
    if isinstance(proximity, bool) or not isinstance(proximity, numbers.Real) \
            or not 0.0 <= float(proximity) <= 1.0:
        raise ValueError(f"proximity must be a float in [0, 1], got {proximity!r}")
    return float(proximity)


def select_within(key, features, assignments, centroids, counts, *, proximity: float = 0.5,
                  rule: str = "proximity_kcenter", candidates=None,
                  chunk_size: int | None = None) -> jax.Array:
    """Picks counts[r] points inside every cluster r by `rule` (see the module docstring).

    Args:
      key: PRNG key (proximity_kcenter uses it only for clusters with no proximity pick).
      features: [N, d] float pool (numpy / memmap / jax); only member rows are read.
      assignments: [N] int cluster of every pool row.
      centroids: [R, d] float.
      counts: [R] int points to pick per cluster, counts[r] <= members of r.
      proximity: fraction in [0, 1] of each cluster's picks taken closest to the centroid
        (rule "proximity_kcenter" only).
      rule: one of `WITHIN_CLUSTER`.
      candidates: optional [M] pool indices to restrict the selection to.
      chunk_size: unused for the gather (members are read directly); accepted for symmetry.
    Returns:
      [Σ counts] int32 unique pool indices, clusters interleaved by rank fraction.
    """
    del chunk_size
    validation.check_key(key)
    pool = Pool(features, check=True)
    centroids = _check_centroids(centroids, pool.d)
    num_clusters = centroids.shape[0]
    a = _check_assignments(assignments, pool.n, num_clusters)
    proximity = _check_proximity(proximity)
    rule = check_rule(rule)
    proximity = {"kcenter": 0.0, "proximity": 1.0}.get(rule, proximity)
    counts = np.asarray(counts)
    if counts.shape != (num_clusters,) or not np.issubdtype(counts.dtype, np.integer) \
            or (counts.size and counts.min() < 0):
        raise ValueError(f"counts must be [R={num_clusters}] non-negative ints, got {counts!r}")
    ids = np.arange(pool.n) if candidates is None else \
        np.unique(validation.check_indices(candidates, pool.n, "candidates"))
    order = ids[np.argsort(a[ids], kind="stable")]
    bounds = np.searchsorted(a[order], np.arange(num_clusters + 1))
    sizes = np.diff(bounds)
    if (counts > sizes).any():
        r = int(np.argmax(counts > sizes))
        raise ValueError(f"counts[{r}]={counts[r]} exceeds the {sizes[r]} points of cluster {r}")

    picks, fractions, cluster_of = [], [], []
    for r in np.flatnonzero(counts):
        members = order[bounds[r]:bounds[r + 1]]
        k, m = int(counts[r]), members.size
        rkey = jax.random.fold_in(key, int(r))
        if rule in ("random", "density", "coverage"):
            if rule != "random" and m > DENSE_MAX:  # the documented subset fallback
                # The DENSE_MAX members with the smallest uniform draws: a uniform subset. The
                # draw has the bucketed shape, not m: jax.random.choice(m, ...) compiled once
                # per distinct cluster size (54 compilations, ~30 CPU s, at 1M rows, R = 100).
                u = np.asarray(jax.random.uniform(jax.random.fold_in(rkey, 1), (_bucket(m),)))[:m]
                keep = np.sort(np.argsort(u, kind="stable")[:DENSE_MAX])
                if k > DENSE_MAX:  # more picks than the subset: uniform instead
                    keep = np.arange(m)
                    rule_r = "random"
                else:
                    rule_r = rule
                members, m = members[keep], keep.size
            else:
                rule_r = rule
            x = pool.take(members, size=_bucket(m))
            local = np.asarray(_rule_cluster(rkey, x, m, k, rule_r))[:k]
            picks.append(members[local])
            fractions.append((np.arange(k) + 0.5) / k)
            cluster_of.append(np.full(k, r))
            continue
        n_prox = int(np.floor(proximity * k + 0.5))
        x = pool.take(members, size=_bucket(m))  # rows >= m are masked in _select_cluster
        by_prox, greedy = _select_cluster(rkey, x, m,
                                          jnp.asarray(centroids[r]), n_prox, k - n_prox)
        local = np.concatenate([np.asarray(by_prox)[:n_prox], np.asarray(greedy)[:k - n_prox]])
        picks.append(members[local])
        fractions.append((np.arange(k) + 0.5) / k)
        cluster_of.append(np.full(k, r))
    picks, fractions, cluster_of = (np.concatenate(v) for v in (picks, fractions, cluster_of))
    return jnp.asarray(picks[np.lexsort((cluster_of, fractions))], jnp.int32)


def ecos_sample(key, features, budget: int, *, centroids, noisy_counts, assignments=None,
                proximity: float = 0.5, rule: str = "proximity_kcenter", count_threshold: float = 0.0,
                candidates=None, chunk_size: int | None = None) -> jax.Array:
    """The cloud's selection end to end, given the client's noisy coverage counts.

    Args:
      key: PRNG key.
      features: [N, d] float pool.
      budget: points to select, 1 <= budget <= N (or len(candidates)).
      centroids: [R, d] the centroids sent to the client.
      noisy_counts: [R] float, the client's released s̃.
      assignments: [N] int cluster of each pool row; computed with `assign` when None.
      proximity, rule: see `select_within`.
      count_threshold: t >= 0 in counts; the budget follows max(s̃ − t, 0) (`threshold_counts`).
      candidates: optional pool indices to restrict the selection to.
      chunk_size: rows per device transfer when `assignments` must be computed.
    Returns:
      [budget] int32 unique pool indices.
    """
    validation.check_key(key)
    n, d = validation.check_features(features)
    centroids = _check_centroids(centroids, d)
    if assignments is None:
        assignments = assign(features, centroids, chunk_size=chunk_size)
    a = _check_assignments(assignments, n, centroids.shape[0])
    ids = np.arange(n) if candidates is None else \
        np.unique(validation.check_indices(candidates, n, "candidates"))
    validation.check_budget(budget, ids.size, "candidates" if candidates is not None else "pool")
    s = np.asarray(noisy_counts)
    if s.shape != (centroids.shape[0],):
        raise ValueError(f"noisy_counts must have shape [R={centroids.shape[0]}], got {s.shape}")
    weights = threshold_counts(s, count_threshold)
    sizes = np.bincount(a[ids], minlength=centroids.shape[0])
    counts = allocate(weights, sizes, budget)
    return select_within(key, features, a, centroids, counts, proximity=proximity, rule=rule,
                         candidates=ids)
