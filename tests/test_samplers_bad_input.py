"""ECOS selection on bad input: a client smaller than R, R larger than the pool, a budget larger
than the pool, all-negative noisy counts. Each is a clear ValueError or the documented fallback."""
import jax
import numpy as np
import pytest

from ecos_jax import samplers
from ecos_jax.samplers.ecos import WITHIN_CLUSTER
from ecos_jax.samplers.kmeans import kmeans


@pytest.fixture(scope="module")
def clustered():
    """120 rows in 4 blobs of 3-d points, clustered into R = 4."""
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0, 0], [8, 0, 0], [0, 8, 0], [0, 0, 8]], np.float32)
    x = (centres[np.repeat(np.arange(4), 30)] + rng.normal(size=(120, 3))).astype(np.float32)
    res = kmeans(jax.random.key(0), x, 4, iters=10)
    return x, np.asarray(res.centroids), np.asarray(res.assignments)


@pytest.mark.parametrize("rule", WITHIN_CLUSTER)
def test_client_with_fewer_samples_than_r(clustered, rule):
    x, c, a = clustered
    client = x[[0, 1]]  # 2 samples, R = 4
    counts = np.bincount(np.asarray(samplers.assign(client, c)), minlength=4)
    assert counts.sum() == 2 and (counts > 0).sum() <= 2
    noisy = counts + np.array([0.4, -0.3, 0.2, -0.1])
    idx = np.asarray(samplers.ecos_sample(jax.random.key(0), x, 10, centroids=c,
                                          assignments=a, noisy_counts=noisy, rule=rule))
    assert len(np.unique(idx)) == 10
    expected = samplers.allocate(noisy, np.bincount(a, minlength=4), 10)
    assert np.bincount(a[idx], minlength=4).tolist() == expected.tolist()


def test_r_larger_than_the_pool(clustered):
    x, c, a = clustered
    with pytest.raises(ValueError, match=r"num_clusters must lie in \[1, N=120\]"):
        kmeans(jax.random.key(0), x, 121)
    # Centroids from elsewhere may outnumber the candidates: empty clusters get nothing.
    candidates = np.array([0, 1, 31])  # 3 candidates, R = 4
    idx = np.asarray(samplers.ecos_sample(jax.random.key(0), x, 3, centroids=c, assignments=a,
                                          noisy_counts=np.ones(4), candidates=candidates))
    assert sorted(idx.tolist()) == [0, 1, 31]


def test_budget_larger_than_the_pool(clustered):
    x, c, a = clustered
    kw = dict(centroids=c, assignments=a, noisy_counts=np.ones(4))
    with pytest.raises(ValueError, match="budget 121 exceeds the 120 points in the pool"):
        samplers.ecos_sample(jax.random.key(0), x, 121, **kw)
    with pytest.raises(ValueError, match="budget 4 exceeds the 3 points in the candidates"):
        samplers.ecos_sample(jax.random.key(0), x, 4, candidates=[0, 1, 2], **kw)


@pytest.mark.parametrize("rule", WITHIN_CLUSTER)
@pytest.mark.parametrize("threshold", [0.0, 2.0])
def test_all_negative_noisy_counts_fall_back_to_uniform(clustered, rule, threshold):
    x, c, a = clustered
    sizes = np.bincount(a, minlength=4)
    idx = np.asarray(samplers.ecos_sample(jax.random.key(0), x, 20, centroids=c, assignments=a,
                                          noisy_counts=np.array([-3.0, -0.5, -7.0, -1.0]), rule=rule,
                                          count_threshold=threshold))
    assert len(np.unique(idx)) == 20
    # Uniform over the non-empty clusters: 5 each from the four blobs.
    assert (sizes > 0).all()
    assert np.bincount(a[idx], minlength=4).tolist() == [5, 5, 5, 5]


@pytest.mark.parametrize("rule", WITHIN_CLUSTER)
def test_budget_of_the_whole_pool_takes_every_row(clustered, rule):
    x, c, a = clustered
    idx = np.asarray(samplers.ecos_sample(jax.random.key(0), x, 120, centroids=c, assignments=a,
                                          noisy_counts=np.array([5.0, -1.0, 0.0, 2.0]), rule=rule))
    assert sorted(idx.tolist()) == list(range(120))


@pytest.mark.slow  # imports the runner and loads the data: ~50 s under load here
def test_runner_refuses_r_or_a_budget_above_the_pool_before_any_work():
    from configs import selective_labeling as sl_config
    from ecos_jax import data as data_lib
    from ecos_jax.experiments import ecos_runner
    from ecos_jax.utils.errors import ConfigError
    from ecos_jax.utils.overrides import override

    ds = data_lib.load("digits_mnist_c")
    ds = ds.subset(np.flatnonzero(np.isin(ds.domains, [0, 1]))[::8])  # a small two-domain set

    config = override(sl_config.get_config("quick"), {
        "data.client_domains": (ds.domain_names[0],), "data.n_client_train": 20, "data.n_client_test": 20})
    pool = len(ecos_runner.validate(config, ds)[ds.domain_names[0]].pool)
    with pytest.raises(ConfigError, match=rf"num_centroids must be in \[1, pool size {pool}\]"):
        ecos_runner.validate(override(config, {"ecos.num_centroids": pool + 1}), ds)
    with pytest.raises(ConfigError, match=rf"budget\(s\) \[{pool + 1}\] larger than the pool \({pool} samples\)"):
        ecos_runner.validate(override(config, {"budgets": (100, pool + 1)}), ds)
