"""Samplers on tiny pools: uniqueness, exact budgets, k-center coverage, k-means against
scikit-learn, ECOS allocation, near-duplicate removal against a brute-force loop, chaining."""
import jax
import numpy as np
import pytest
from sklearn.cluster import KMeans

from ecos_jax import samplers
from ecos_jax.samplers.kcenter import greedy_dense
from ecos_jax.samplers.kmeans import kmeans


def blobs(n_per, centers, scale, seed=0):
    rng = np.random.default_rng(seed)
    centers = np.asarray(centers, np.float32)
    x = np.concatenate([c + scale * rng.normal(size=(m, centers.shape[1]))
                        for c, m in zip(centers, n_per)]).astype(np.float32)
    labels = np.repeat(np.arange(len(n_per)), n_per)
    return x, labels


def covering_radius(x, idx):
    d = ((x[:, None, :] - x[np.asarray(idx)][None, :, :]) ** 2).sum(-1)
    return float(np.sqrt(d.min(1).max()))


def assert_valid(idx, n, budget):
    idx = np.asarray(idx)
    assert idx.shape == (budget,) and idx.dtype == np.int32
    assert len(np.unique(idx)) == budget
    assert idx.min() >= 0 and idx.max() < n


def test_random_sample_unique_and_from_candidates():
    idx = samplers.random_sample(jax.random.key(0), 500, 100)
    assert_valid(idx, 500, 100)
    cand = np.arange(0, 500, 5)
    idx = samplers.random_sample(jax.random.key(1), np.zeros((500, 3), np.float32), 20,
                                 candidates=cand)
    assert_valid(idx, 500, 20)
    assert np.isin(idx, cand).all()


def test_kcenter_covers_better_than_random_on_known_layout():
    # Ten far-apart groups on a line; one holds 91% of the points. Budget 10: k-center takes
    # one point per group (radius = a group's spread); uniform draws miss the small groups.
    centers = np.zeros((10, 2), np.float32)
    centers[:, 0] = np.arange(10) * 100.0
    x, labels = blobs([910] + [10] * 9, centers, 1.0)
    kc = samplers.kcenter_greedy(jax.random.key(0), x, 10)
    assert_valid(kc, len(x), 10)
    assert sorted(labels[np.asarray(kc)]) == list(range(10))
    r_kc = covering_radius(x, kc)
    assert r_kc < 10.0
    for seed in range(5):
        r_rand = covering_radius(x, samplers.random_sample(jax.random.key(seed), len(x), 10))
        assert r_rand > 5 * r_kc


def farthest_first_reference(x, first, budget):
    min_d = ((x - x[first]) ** 2).sum(1)
    picks = [first]
    min_d[first] = -1
    while len(picks) < budget:
        j = int(np.argmax(min_d))
        picks.append(j)
        min_d = np.minimum(min_d, ((x - x[j]) ** 2).sum(1))
        min_d[picks] = -1
    return picks


def test_kcenter_matches_reference_loop_and_never_repeats():
    x, _ = blobs([60, 40], [[0, 0, 0], [5, 5, 5]], 1.0)
    x[10:20] = x[3]  # exact duplicates of one point
    idx = np.asarray(samplers.kcenter_greedy(jax.random.key(3), x, 30))
    assert idx.tolist() == farthest_first_reference(x.copy(), int(idx[0]), 30)
    everything = samplers.kcenter_greedy(jax.random.key(3), x, len(x))
    assert_valid(everything, len(x), len(x))
    # `initial` seeds the distances and is excluded from the picks.
    seeded = np.asarray(samplers.kcenter_greedy(jax.random.key(0), x, 5, initial=[3, 70]))
    assert not np.isin(seeded, [3, 70]).any()
    min_d = np.minimum(((x - x[3]) ** 2).sum(1), ((x - x[70]) ** 2).sum(1))
    assert seeded[0] == int(np.argmax(min_d))


def test_greedy_dense_stops_at_steps():
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    min_d = np.full(10, np.finfo(np.float32).max, np.float32)
    min_d[0] = np.inf
    picks = np.asarray(greedy_dense(x, min_d, 3, 8))
    assert picks[:3].tolist() == [0, 9, 4] and (picks[3:] == -1).all()


def test_kmeans_finds_blobs_and_matches_sklearn():
    x, labels = blobs([50, 80, 70], [[0, 0], [10, 0], [0, 10]], 0.5, seed=1)
    res = kmeans(jax.random.key(0), x, 3, iters=10)
    a = np.asarray(res.assignments)
    # Each blob maps to one cluster and each cluster to one blob.
    assert len({(int(p), int(q)) for p, q in zip(labels, a)}) == 3
    c = np.asarray(res.centroids)
    np.testing.assert_allclose(res.inertia, ((x - c[a]) ** 2).sum(), rtol=1e-4)
    assert np.array_equal(np.asarray(samplers.assign(x, c)), a)
    # Same init, same number of Lloyd steps as scikit-learn: same centroids.
    rng = np.random.default_rng(0)
    y = rng.normal(size=(400, 5)).astype(np.float32)
    init = y[:7].copy()
    ours = kmeans(jax.random.key(0), y, 7, iters=4, init=init)
    ref = KMeans(7, init=init, n_init=1, max_iter=4, tol=0.0, algorithm="lloyd").fit(y)
    assert ours.iterations == ref.n_iter_
    np.testing.assert_allclose(np.asarray(ours.centroids), ref.cluster_centers_, atol=1e-4)
    assert np.array_equal(np.asarray(ours.assignments), ref.labels_)


def test_kmeans_random_init_and_errors():
    # Same shapes as the blobs test above, so the compiled Lloyd step is reused.
    x, labels = blobs([50, 80, 70], [[0, 0], [10, 0], [0, 10]], 0.5, seed=1)
    res = kmeans(jax.random.key(2), x, 3, iters=10, init="random")
    assert res.centroids.shape == (3, 2) and res.iterations <= 10
    c, a = np.asarray(res.centroids), np.asarray(res.assignments)
    np.testing.assert_allclose(res.inertia, ((x - c[a]) ** 2).sum(), rtol=1e-4)
    assert (a == ((x[:, None] - c[None]) ** 2).sum(-1).argmin(1)).all()  # nearest centroid
    with pytest.raises(ValueError, match="num_clusters"):
        kmeans(jax.random.key(0), x, 201)
    with pytest.raises(ValueError, match="init"):
        kmeans(jax.random.key(0), x, 2, init="farthest")
    with pytest.raises(ValueError, match="centroids"):
        samplers.assign(x, np.zeros((3, 5), np.float32))


def test_allocate_largest_remainder_caps_and_fallbacks():
    counts = samplers.allocate([3.0, 1.0, -2.0, 0.0], [10, 10, 10, 10], 8)
    assert counts.tolist() == [6, 2, 0, 0]
    # 10 * (0.45, 0.35, 0.2) = 4.5, 3.5, 2: remainders tie, larger weight wins.
    assert samplers.allocate([4.5, 3.5, 2.0], [9, 9, 9], 10).tolist() == [5, 3, 2]
    # Cluster 0 can only give 2; its overflow goes to the other positive-weight cluster.
    assert samplers.allocate([3.0, 1.0, 0.0], [2, 10, 10], 8).tolist() == [2, 6, 0]
    # Positive-weight clusters exhausted: the rest is spread uniformly over clusters with room.
    assert samplers.allocate([5.0, 0.0, 0.0], [2, 3, 4], 8).tolist() == [2, 3, 3]
    # All weights <= 0: uniform over non-empty clusters.
    assert samplers.allocate([-3.0, -1.0, -2.0, 0.0], [2, 10, 10, 0], 8).tolist() == [2, 4, 2, 0]
    rng = np.random.default_rng(0)
    for _ in range(20):
        w, sizes = rng.normal(size=12) * 5, rng.integers(0, 30, size=12)
        b = int(rng.integers(1, sizes.sum() + 1))
        c = samplers.allocate(w, sizes, b)
        assert c.sum() == b and (c >= 0).all() and (c <= sizes).all()
    with pytest.raises(ValueError, match="exceeds"):
        samplers.allocate([1.0, 1.0], [2, 2], 5)
    with pytest.raises(ValueError, match="NaN"):
        samplers.allocate([np.nan, 1.0], [2, 2], 1)
    with pytest.raises(ValueError, match="shape"):
        samplers.allocate([1.0, 1.0], [2, 2, 2], 1)


def pool_with_clusters():
    x, labels = blobs([120, 80, 100, 60], [[0, 0, 0], [8, 0, 0], [0, 8, 0], [0, 0, 8]], 1.0, 2)
    res = kmeans(jax.random.key(0), x, 4, iters=10)
    return x, res


def test_ecos_sample_follows_allocation_and_proximity():
    x, res = pool_with_clusters()
    a = np.asarray(res.assignments)
    noisy = np.array([10.0, -1.0, 5.0, 5.0])
    idx = samplers.ecos_sample(jax.random.key(0), x, 40, centroids=res.centroids,
                               assignments=a, noisy_counts=noisy)
    assert_valid(idx, len(x), 40)
    expected = samplers.allocate(noisy, np.bincount(a, minlength=4), 40)
    assert np.bincount(a[np.asarray(idx)], minlength=4).tolist() == expected.tolist()
    # proximity=1: each cluster contributes its points nearest to the centroid.
    idx = np.asarray(samplers.ecos_sample(jax.random.key(0), x, 40, centroids=res.centroids,
                                          assignments=a, noisy_counts=noisy, proximity=1.0))
    c = np.asarray(res.centroids)
    d = ((x - c[a]) ** 2).sum(1)
    for r in np.flatnonzero(expected):
        members = np.flatnonzero(a == r)
        nearest = members[np.argsort(d[members], kind="stable")[:expected[r]]]
        assert set(idx[a[idx] == r]) == set(nearest)
    # A prefix of the output stays close to a proportional split (clusters interleave).
    head = np.bincount(a[idx[:20]], minlength=4)
    assert np.abs(head - expected / 2).max() <= 1


def test_select_within_rejects_too_many():
    x, res = pool_with_clusters()
    a = np.asarray(res.assignments)
    with pytest.raises(ValueError, match="exceeds"):
        samplers.select_within(jax.random.key(0), x, a, res.centroids,
                               np.array([1000, 0, 0, 0]))


def dedup_reference(x, order, thr, metric):
    kept = []
    for j in order:
        near = False
        for i in kept:
            if metric == "l2":
                near = np.linalg.norm(x[i] - x[j]) <= thr
            else:
                near = 1 - x[i] @ x[j] / np.linalg.norm(x[i]) / np.linalg.norm(x[j]) <= thr
            if near:
                break
        if not near:
            kept.append(j)
    return kept


@pytest.mark.parametrize("metric,thr", [("cosine", 0.4), ("l2", 2.5)])
def test_dedup_matches_reference_and_keeps_first(metric, thr):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6)).astype(np.float32)  # > one 256-row tile
    x[200] = x[7]
    order = rng.permutation(300)
    kept = np.asarray(samplers.remove_near_duplicates(x, order, threshold=thr, metric=metric))
    assert kept.tolist() == dedup_reference(x, order, thr, metric)
    assert not (np.isin(7, kept) and np.isin(200, kept))  # exact duplicates never both survive
    with pytest.raises(ValueError, match="threshold"):
        samplers.remove_near_duplicates(x, order, threshold=0.0)


def test_chain_ecos_then_dedup_exact_budget_without_duplicates():
    x, res = pool_with_clusters()
    x = np.concatenate([x, x[:100]])  # the pool now repeats 100 points exactly
    a = np.asarray(samplers.assign(x, res.centroids))
    sampler = samplers.chain(samplers.ecos_sampler(proximity=0.5),
                             samplers.dedup_filter(threshold=1e-4, metric="l2"))
    idx = np.asarray(sampler(jax.random.key(0), x, 60, centroids=res.centroids,
                             noisy_counts=np.array([3.0, 1.0, 1.0, 1.0]), assignments=a))
    assert_valid(idx, len(x), 60)
    assert len(np.unique(x[idx], axis=0)) == 60
    # random -> kcenter: k-center over a random candidate subset.
    two = samplers.chain(samplers.random_sampler(), samplers.kcenter_sampler(), oversample=3)
    assert_valid(two(jax.random.key(1), x, 10), len(x), 10)


def test_chain_tops_up_when_filter_removes_too_much():
    x = np.ones((50, 4), np.float32)
    x[:5] += np.arange(5)[:, None]  # only 5 distinct rows (1..5) plus 45 copies of row 0
    sampler = samplers.chain(samplers.random_sampler(), samplers.dedup_filter(threshold=0.1,
                                                                              metric="l2"))
    idx = np.asarray(sampler(jax.random.key(0), x, 12))
    assert_valid(idx, 50, 12)
    assert len(np.unique(x[idx], axis=0)) == 5  # every distinct row made it before top-up


@pytest.mark.parametrize("bad,match", [
    (np.zeros((0, 3), np.float32), "empty"),
    (np.zeros((5,), np.float32), r"shape \[N, d\]"),
    (np.array([[0.0, np.nan]] * 4, np.float32), "NaN"),
    (np.zeros((4, 2), np.int32), "floating"),
])
def test_bad_features_raise(bad, match):
    for call in (lambda: samplers.kcenter_greedy(jax.random.key(0), bad, 1),
                 lambda: kmeans(jax.random.key(0), bad, 1),
                 lambda: samplers.random_sample(jax.random.key(0), bad, 1)):
        with pytest.raises(ValueError, match=match):
            call()


@pytest.mark.parametrize("budget,match", [(0, "positive"), (-3, "positive"), (11, "exceeds"),
                                          (2.5, "int")])
def test_bad_budget_raises(budget, match):
    x = np.zeros((10, 2), np.float32)
    for call in (lambda: samplers.kcenter_greedy(jax.random.key(0), x, budget),
                 lambda: samplers.random_sample(jax.random.key(0), x, budget),
                 lambda: samplers.chain(samplers.random_sampler())(jax.random.key(0), x, budget)):
        with pytest.raises(ValueError, match=match):
            call()


def test_stage_arguments_are_declared_and_checked():
    x, res = pool_with_clusters()
    a = np.asarray(res.assignments)
    noisy = np.array([3.0, 1.0, 1.0, 1.0])
    ecos = samplers.ecos_sampler()
    assert ecos.arguments == {"centroids", "noisy_counts", "assignments"}
    assert ecos.required == {"centroids", "noisy_counts"}
    assert samplers.random_sampler().arguments == frozenset()
    sampler = samplers.chain(ecos, samplers.dedup_filter(threshold=1e-4, metric="l2"))
    assert sampler.arguments == ecos.arguments
    key = jax.random.key(0)
    # A misspelled stage argument is refused by name, with the closest one it takes.
    with pytest.raises(TypeError, match=r"'centroid' \(did you mean 'centroids'\?\)"):
        sampler(key, x, 20, centroid=res.centroids, noisy_counts=noisy)
    with pytest.raises(TypeError, match=r"'assignment' \(did you mean 'assignments'\?\)"):
        ecos(key, x, 20, centroids=res.centroids, noisy_counts=noisy, assignment=a)
    with pytest.raises(TypeError, match="unknown stage argument.*'noisy_counts'.*takes none"):
        samplers.random_sampler()(key, x, 20, noisy_counts=noisy)
    with pytest.raises(TypeError, match=r"needs stage argument\(s\) \['noisy_counts'\]"):
        sampler(key, x, 20, centroids=res.centroids)
    # Each stage receives only what it declares: the chain equals its ECOS stage followed by
    # the filter on the stage's own key, fold_in(key, 0).
    idx = np.asarray(sampler(key, x, 20, centroids=res.centroids, noisy_counts=noisy, assignments=a))
    first = np.asarray(ecos(jax.random.fold_in(key, 0), x, 30, centroids=res.centroids,
                            noisy_counts=noisy, assignments=a))
    kept = np.asarray(samplers.remove_near_duplicates(x, first, threshold=1e-4, metric="l2"))
    assert idx.tolist() == kept[:20].tolist()
