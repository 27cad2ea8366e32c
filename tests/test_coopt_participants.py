"""Pool splits partition the pool, follow the scheme, and never leave a participant empty."""
import numpy as np
import pytest

from ecos_jax.coopt.participants import split_pool


def _check_partition(shards, n):
    flat = np.concatenate(shards)
    assert sorted(flat.tolist()) == list(range(n))
    assert all(len(s) > 0 for s in shards)


def test_iid_is_balanced():
    shards = split_pool(num_examples=103, num_participants=4, scheme="iid", seed=0)
    _check_partition(shards, 103)
    assert {len(s) for s in shards} <= {25, 26}


def test_domain_split_gives_each_participant_one_domain():
    domains = np.repeat(np.arange(3), [10, 20, 30])
    shards = split_pool(num_examples=60, num_participants=3, scheme="domain", domains=domains, seed=1)
    _check_partition(shards, 60)
    assert all(len(np.unique(domains[s])) == 1 for s in shards)


def test_more_participants_than_domains_cut_domains():
    domains = np.repeat(np.arange(2), 50)
    shards = split_pool(num_examples=100, num_participants=5, scheme="domain", domains=domains, seed=0)
    _check_partition(shards, 100)
    assert all(len(np.unique(domains[s])) == 1 for s in shards)


def test_class_skew_is_skewed():
    labels = np.repeat(np.arange(10), 100)
    shards = split_pool(num_examples=1000, num_participants=4, scheme="class", labels=labels, seed=0,
                        dirichlet_alpha=0.1)
    _check_partition(shards, 1000)
    # With alpha=0.1 a participant's most common class dominates its shard.
    top_share = [np.bincount(labels[s]).max() / len(s) for s in shards]
    assert max(top_share) > 0.3


def test_participant_without_data_raises():
    with pytest.raises(ValueError, match="no data"):
        split_pool(num_examples=3, num_participants=5)
    labels = np.repeat(np.arange(2), 3)
    with pytest.raises(ValueError, match="received no data"):
        split_pool(num_examples=6, num_participants=6, scheme="class", labels=labels, dirichlet_alpha=0.01, seed=0)


def test_bad_scheme_and_missing_domains():
    with pytest.raises(ValueError, match="unknown split scheme"):
        split_pool(num_examples=10, num_participants=2, scheme="zipf")
    with pytest.raises(ValueError, match="needs `domains`"):
        split_pool(num_examples=10, num_participants=2, scheme="domain")
