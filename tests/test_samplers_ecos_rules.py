"""ECOS's within-cluster rules (samplers/ecos.py WITHIN_CLUSTER): each honours the allocation,
each does what its name says on a layout where the rules differ, and the config field reaches
the sampler; the rule comparison's validation split never touches the client's test split."""
import jax
import numpy as np
import pytest

from ecos_jax import samplers
from ecos_jax.samplers import ecos as ecos_lib


@pytest.fixture(scope="module")
def blobs():
    """4 well-separated blobs of 40 rows; each blob is its cluster (no k-means to compile)."""
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0, 0], [8, 0, 0], [0, 8, 0], [0, 0, 8]], np.float32)
    a = np.repeat(np.arange(4), 40)
    x = (centres[a] + rng.normal(size=(160, 3))).astype(np.float32)
    return x, np.stack([x[a == r].mean(0) for r in range(4)]), a


@pytest.fixture(scope="module")
def core_and_halo():
    """One cluster: a dense core of 16 rows (indices < 16) inside a wide halo of 48 (one
    64-row bucket, the same compiled shape as the blobs')."""
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(size=(16, 4)) * 0.1, rng.normal(size=(48, 4)) * 3]).astype(np.float32)
    return x, np.zeros(64, np.int64), np.zeros((1, 4), np.float32)


@pytest.fixture(scope="module")
def digits():
    from ecos_jax import data as data_lib

    return data_lib.load("digits_mnist_c")


@pytest.mark.parametrize("rule", ecos_lib.WITHIN_CLUSTER)
def test_every_rule_follows_the_allocation(blobs, rule):
    x, c, a = blobs
    noisy = np.array([10.0, 3.0, -2.0, 6.0])
    idx = np.asarray(samplers.ecos_sample(jax.random.key(0), x, 30, centroids=c, assignments=a,
                                          noisy_counts=noisy, rule=rule))
    assert len(idx) == 30 and len(np.unique(idx)) == 30 and idx.max() < len(x)
    expected = samplers.allocate(noisy, np.bincount(a, minlength=4), 30)
    assert np.bincount(a[idx], minlength=4).tolist() == expected.tolist()
    # A cluster asked for all its members gets all of them, whatever the rule.
    full = np.asarray(samplers.select_within(jax.random.key(1), x, a, c, np.bincount(a, minlength=4) * [1, 0, 0, 0],
                                             rule=rule))
    assert sorted(full.tolist()) == np.flatnonzero(a == 0).tolist()


def test_kcenter_and_proximity_rules_are_the_end_points_of_proximity(blobs):
    x, c, a = blobs
    counts = np.array([7, 5, 0, 9])

    def within(**kw):
        return np.asarray(samplers.select_within(jax.random.key(2), x, a, c, counts, **kw)).tolist()

    assert within(rule="kcenter") == within(rule="proximity_kcenter", proximity=0.0)
    assert within(rule="proximity") == within(rule="proximity_kcenter", proximity=1.0)
    assert within(rule="kcenter") != within(rule="proximity")


def test_rules_differ_where_they_should(core_and_halo):
    x, a, c = core_and_halo

    def core_share(rule, seed=0):
        idx = np.asarray(samplers.select_within(jax.random.key(seed), x, a, c, np.array([12]), rule=rule))
        return float((idx < 16).mean())

    assert core_share("proximity") == 1.0              # the 12 closest to the centroid: all core
    assert core_share("kcenter") <= 1 / 12             # farthest-first leaves the core after one pick
    uniform = np.mean([core_share("random", s) for s in range(6)])
    assert 0.1 < uniform < 0.45                        # about the core's 25 % share
    assert np.mean([core_share("density", s) for s in range(6)]) > 0.6  # density weights the core


def test_coverage_is_greedy_facility_location(core_and_halo):
    x, a, c = core_and_halo
    idx = np.asarray(samplers.select_within(jax.random.key(0), x, a, c, np.array([12]), rule="coverage"))
    d = ((x[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1)
    sim = d.max() - d
    best, ref = np.zeros(len(x)), []
    for _ in range(12):
        gain = np.maximum(sim - best[:, None], 0).sum(0)
        gain[ref] = -1
        j = int(np.argmax(gain))
        ref.append(j)
        best = np.maximum(best, sim[:, j])
    assert sorted(idx.tolist()) == sorted(ref)


def test_dense_rules_fall_back_to_a_subset_of_a_large_cluster(monkeypatch, core_and_halo):
    x, a, c = core_and_halo
    monkeypatch.setattr(ecos_lib, "DENSE_MAX", 32)
    for rule, k in (("density", 10), ("coverage", 10), ("density", 40)):  # 40 > DENSE_MAX: uniform
        idx = np.asarray(samplers.select_within(jax.random.key(0), x, a, c, np.array([k]), rule=rule))
        assert len(idx) == k and len(np.unique(idx)) == k and idx.max() < len(x)


def test_unknown_rule_is_refused(blobs):
    x, c, a = blobs
    with pytest.raises(ValueError, match="within-cluster rule must be one of"):
        samplers.ecos_sample(jax.random.key(0), x, 5, centroids=c, assignments=a, noisy_counts=np.ones(4),
                             rule="closest")


def test_config_field_reaches_the_sampler_and_is_checked_before_work(blobs, digits):
    from configs import selective_labeling as sl_config
    from ecos_jax.ecos import protocol
    from ecos_jax.experiments import ecos_runner, selective_labeling
    from ecos_jax.utils.overrides import override

    x, c, a = blobs
    config = override(sl_config.get_config("quick"), {"ecos.within_cluster": "density", "progress": False})
    task = ecos_runner.ClientTask(domain="d", domain_index=0, split=None, num_classes=10, pool_features=x,
                                  client_features=x[:20], extractor=None, oracle_indices=np.arange(10))
    clusters = samplers.KMeansResult(centroids=c, assignments=a, inertia=0.0, iterations=0)
    counts = np.array([5.0, 2.0, 0.0, 7.0], np.float32)
    ecos_round = ecos_runner.EcosRound(clusters, protocol.NoisyCoverage(counts=counts, sigma=1.0))
    key = jax.random.key(3)
    expected = samplers.ecos_sample(key, x, 12, centroids=c, assignments=a, noisy_counts=counts, rule="density")
    assert ecos_runner.pick(config, "ecos", task, 12, key, ecos_round).tolist() == np.asarray(expected).tolist()
    with pytest.raises(ValueError, match="within-cluster rule must be one of"):
        selective_labeling.validate(override(config, {"ecos.within_cluster": "closest"}), digits)


def test_validation_is_carved_from_the_clients_training_images(digits):
    from ecos_jax import data as data_lib
    from ecos_jax.experiments import ecos_runner

    split = data_lib.ecos_split(digits, "digits", n_client_train=100, n_client_test=300, seed=0)
    carved = ecos_runner.carve_validation(split, 40, seed=0)
    assert len(carved.client_test) == 40 and len(carved.client_train) == 60
    assert set(carved.client_test.ids) | set(carved.client_train.ids) == set(split.client_train.ids)
    assert not set(carved.client_test.ids) & set(carved.client_train.ids)
    assert not set(carved.client_test.ids) & set(split.client_test.ids)  # never the test split
    assert carved.pool is split.pool and carved.oracle_pool is split.oracle_pool
    with pytest.raises(ValueError, match="n_client_validation must be in"):
        ecos_runner.carve_validation(split, 100, seed=0)


def test_density_weights_by_the_kth_nearest_member(core_and_halo):
    """density's score is −log(distance to the κ-th nearest other member) + Gumbel noise; the
    picks equal a float64 reference with a full sort (κ = 10 here; κ = m − 1 for a tiny cluster)."""
    x, a, c = core_and_halo
    for m, k in ((64, 12), (6, 3)):
        key = jax.random.key(4)
        idx = np.asarray(samplers.select_within(key, x[:m], a[:m], c, np.array([k]), rule="density"))
        d = np.sort(((x[:m, None, :].astype(np.float64) - x[None, :m, :]) ** 2).sum(-1), axis=1)
        kappa = min(10, m - 1)
        gumbel = np.asarray(jax.random.gumbel(jax.random.fold_in(key, 0), (64,)))[:m]
        score = -np.log(np.sqrt(d[:, kappa]) + 1e-12) + gumbel
        assert idx.tolist() == np.argsort(-score, kind="stable")[:k].tolist()


def test_count_threshold_shrinks_the_counts_before_allocation(blobs):
    x, c, a = blobs
    noisy = np.array([20.0, 4.0, -3.0, 9.0])
    assert ecos_lib.threshold_counts(noisy, 5.0).tolist() == [15.0, 0.0, 0.0, 4.0]
    assert ecos_lib.threshold_counts(noisy, 0.0).tolist() == [20.0, 4.0, 0.0, 9.0]
    # Every count under the threshold: the unthresholded weights, not nothing.
    assert ecos_lib.threshold_counts(noisy, 25.0).tolist() == [20.0, 4.0, 0.0, 9.0]
    for bad in (-1.0, float("inf"), float("nan"), True):
        with pytest.raises(ValueError, match="count threshold"):
            ecos_lib.threshold_counts(noisy, bad)
    idx = np.asarray(samplers.ecos_sample(jax.random.key(0), x, 19, centroids=c, assignments=a,
                                          noisy_counts=noisy, rule="density", count_threshold=5.0))
    assert np.bincount(a[idx], minlength=4).tolist() == [15, 0, 0, 4]


def test_count_threshold_reaches_the_sampler_in_noise_stds(blobs):
    from configs import selective_labeling as sl_config
    from ecos_jax.ecos import protocol
    from ecos_jax.experiments import ecos_runner
    from ecos_jax.utils.overrides import override

    x, c, a = blobs
    task = ecos_runner.ClientTask(domain="d", domain_index=0, split=None, num_classes=10, pool_features=x,
                                  client_features=x[:20], extractor=None, oracle_indices=np.arange(10))
    clusters = samplers.KMeansResult(centroids=c, assignments=a, inertia=0.0, iterations=0)
    counts = np.array([20.0, 4.0, -3.0, 9.0], np.float32)
    ecos_round = ecos_runner.EcosRound(clusters, protocol.NoisyCoverage(counts=counts, sigma=2.5))
    for rule in ("density", "proximity_kcenter"):
        config = override(sl_config.get_config("quick"), {"ecos.within_cluster": rule, "ecos.count_threshold": 2.0})
        idx = ecos_runner.pick(config, "ecos", task, 19, jax.random.key(3), ecos_round)
        assert np.bincount(a[idx], minlength=4).tolist() == [15, 0, 0, 4], rule  # shrunk by 2 · 2.5


def test_dense_subset_of_clusters_of_different_sizes_is_reproducible(monkeypatch):
    """Two clusters above DENSE_MAX with different sizes: each pick stays in its cluster, and the
    same key gives the same picks (the subset is drawn at the bucketed shape, not per size)."""
    monkeypatch.setattr(ecos_lib, "DENSE_MAX", 32)
    rng = np.random.default_rng(2)
    a = np.repeat([0, 1], [50, 61])
    x = (rng.normal(size=(111, 3)) + 6 * a[:, None]).astype(np.float32)
    c = np.stack([x[a == r].mean(0) for r in range(2)])

    def picks(seed):
        return np.asarray(samplers.select_within(jax.random.key(seed), x, a, c, np.array([7, 9]), rule="density"))

    idx = picks(0)
    assert np.bincount(a[idx], minlength=2).tolist() == [7, 9] and len(np.unique(idx)) == 16
    assert idx.tolist() == picks(0).tolist() and idx.tolist() != picks(1).tolist()


def test_rule_comparison_points_cover_every_threshold():
    from configs import ecos_rules as rules_config
    from ecos_jax.experiments import ecos_rules
    from ecos_jax.utils.overrides import override

    config = override(rules_config.get_config("quick"), {"threshold_grid": (0.0, 1.5)})
    pts = ecos_rules.points(config)
    assert [n for n, _ in pts] == ["proximity_kcenter_R30", "proximity_kcenter_R30_t1.5", "random_R30", "random_R30_t1.5"]
    assert [c.ecos.count_threshold for _, c in pts] == [0.0, 1.5, 0.0, 1.5]
    assert all("threshold_grid" not in c and "rules" not in c for _, c in pts)
