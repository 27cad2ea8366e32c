"""The CoOpt experiment's setting with a pool of one dataset and priors of another (Fashion-MNIST
against digits), its time-budget reading of the curves and its per-run resume fingerprint."""
import numpy as np
import pytest

from configs.coopt import get_config
from ecos_jax.data import ArrayDataset
from ecos_jax.experiments import coopt as coopt_experiment
from ecos_jax.utils.errors import ConfigError


def _dataset(domain_names, per_domain, id_offset, seed):
    rng = np.random.default_rng(seed)
    n = per_domain * len(domain_names)
    return ArrayDataset(images=rng.uniform(size=(n, 8, 8, 1)).astype(np.float32),
                        labels=np.tile(np.arange(10), n // 10).astype(np.int32),
                        domains=np.repeat(np.arange(len(domain_names)), per_domain).astype(np.int32),
                        domain_names=tuple(domain_names), num_classes=10, ids=np.arange(n) + id_offset)


def _fashion_config():
    config = get_config("fashion_quick")
    config.data.max_pool = 60
    config.data.max_test = 30
    config.anchors.num = 20
    return config


def test_fashion_pool_with_digits_priors_and_official_test_split():
    pool_ds = _dataset(("train", "test"), per_domain=100, id_offset=0, seed=0)
    digits = _dataset(("digits", "mnist", "mnist_rotate", "mnist_invert", "mnist_noise", "mnist_blur",
                       "mnist_texture"), per_domain=20, id_offset=10_000, seed=1)
    config = _fashion_config()
    s = coopt_experiment.make_setting(config, pool_ds, digits)
    assert len(s.train) == 60 and len(s.test) == 30
    assert set(s.train.domains) == {0} and set(s.test.domains) == {1}  # pool from train, test from test
    assert not set(s.train.ids) & set(s.test.ids)
    assert s.prior_data is digits and s.full is pool_ds
    # Anchors come from the pool (anchors.source = "pool"): shared unlabeled Fashion images.
    train_rows = {r.tobytes() for r in s.train.images}
    assert len(s.anchors) == 20 and all(a.tobytes() in train_rows for a in s.anchors)
    assert sorted(np.concatenate(s.shards).tolist()) == list(range(60))  # IID shards cover the pool
    config.anchors.source = "public"  # digits anchors: images of the priors' dataset
    digit_rows = {r.tobytes() for r in digits.images}
    assert all(a.tobytes() in digit_rows for a in coopt_experiment.make_setting(config, pool_ds, digits).anchors)


def test_test_domain_in_pool_and_shape_mismatch_raise():
    pool_ds = _dataset(("train", "test"), per_domain=100, id_offset=0, seed=0)
    config = _fashion_config()
    config.data.pool_domains = ("train", "test")
    config.data.public_domains = ("digits",)
    with pytest.raises(ConfigError, match="both pool and test"):
        coopt_experiment.make_setting(config, pool_ds, _dataset(("digits",), 20, 10_000, 1))
    config = _fashion_config()
    big = _dataset(("digits",), 20, 10_000, 1)
    big = ArrayDataset(images=np.zeros((20, 9, 9, 1), np.float32), labels=big.labels, domains=big.domains,
                       domain_names=big.domain_names, num_classes=10, ids=big.ids)
    config.data.public_domains = ("digits",)
    with pytest.raises(ConfigError, match="differ in shape"):
        coopt_experiment.make_setting(config, pool_ds, big)


def test_default_config_still_splits_one_dataset():
    ds = _dataset(("digits", "mnist", "mnist_texture"), per_domain=50, id_offset=0, seed=2)
    config = get_config("quick")
    config.data.pool_domains = ("mnist",)
    config.data.public_domains = ("digits", "mnist_texture")
    config.data.max_pool = 0
    config.anchors.num = 20
    s = coopt_experiment.make_setting(config, ds)
    assert len(s.train) + len(s.test) == 50 and s.prior_data is ds
    assert set(s.train.domains) == set(s.test.domains) == {1}


def _evals(points):
    return [{"epoch": i, "seconds": sec, "probe_accuracy": acc} for i, (sec, acc) in enumerate(points)]


def test_time_budgets_read_the_last_evaluation_within_each_seeds_budget():
    curves = {"coopt": [_evals([(0, 0.5), (2, 0.7), (4, 0.8)]), _evals([(0, 0.4), (3, 0.6), (6, 0.9)])],
              "simclr": [_evals([(0, 0.5), (5, 0.6), (10, 0.9)]), _evals([(0, 0.4), (5, 0.5)])]}
    got = coopt_experiment.time_budgets(curves, (0.5, 1.0, 2.0))
    # Seed 0's budgets are 2 / 4 / 8 s, seed 1's 3 / 6 / 12 s: CoOpt is defined up to 1x in every
    # seed, and nothing is said about a budget some seed's run did not reach.
    np.testing.assert_allclose(got["coopt"][:2], [0.65, 0.85])
    assert got["coopt"][2] is None
    assert got["simclr"][0] == pytest.approx(0.45)
    assert got["simclr"][1:] == [None, None]  # seed 1's SimCLR ended at 5 s, before its 6 s budget


def test_run_fingerprint_ignores_output_options_only():
    a, b = get_config("fashion_quick"), get_config("fashion_quick")
    b.progress = not a.progress
    b.num_seeds = 5
    assert coopt_experiment.run_fingerprint(a) == coopt_experiment.run_fingerprint(b)
    b.train.epochs = a.train.epochs + 1
    assert coopt_experiment.run_fingerprint(a) != coopt_experiment.run_fingerprint(b)
