"""Targets: the sharded embedding matches the plain one, and targets are computed once."""
import jax
import numpy as np
import pytest

from ecos_jax.coopt import priors, targets
from ecos_jax.data import ArrayDataset


def _dataset(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return ArrayDataset(images=rng.uniform(size=(n, 8, 8, 1)).astype(np.float32),
                        labels=rng.integers(0, 3, n).astype(np.int32),
                        domains=(np.arange(n) % 2).astype(np.int32), domain_names=("a", "b"),
                        num_classes=3, ids=np.arange(n, dtype=np.int64))


@pytest.fixture(scope="module")
def prior(tmp_path_factory):
    spec = priors.PriorSpec(name="tiny_random", model="mlp", model_kwargs=(("hidden", (16, 12)),),
                            training="random", domains=())
    return priors.load_prior(spec, _dataset(), cache_dir=tmp_path_factory.mktemp("priors"))


def test_embedding_is_sharded_over_devices_and_matches_unsharded(prior):
    assert len(jax.devices()) == 4  # tests/conftest.py forces 4 host devices
    x = _dataset(n=37).images
    mesh = targets.data_mesh()
    out = targets.embed_batch(prior.model, prior.params, x[:8], mesh)
    assert len(out.sharding.device_set) == 4
    assert out.addressable_shards[0].data.shape == (2, 12)  # 8 rows over 4 devices
    sharded = targets.embed(prior.model, prior.params, x, batch_size=16, mesh=mesh)
    single = targets.embed(prior.model, prior.params, x, batch_size=16, mesh=targets.data_mesh(jax.devices()[:1]))
    reference = np.asarray(prior.model.apply(prior.params, x, features=True))
    assert sharded.shape == (37, 12)
    np.testing.assert_allclose(sharded, reference, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(single, reference, rtol=1e-5, atol=1e-6)


def test_targets_are_computed_once_and_reused(prior, tmp_path, monkeypatch):
    ds = _dataset()
    shards = [ds.images[:15], ds.images[15:]]
    first, stats = targets.participant_targets([prior, prior], shards, cache_dir=tmp_path)
    assert stats == targets.TargetStats(computed=2, reused=0)

    def no_recompute(*args, **kwargs):
        raise AssertionError("targets were recomputed")

    monkeypatch.setattr(targets, "embed", no_recompute)
    again, stats = targets.participant_targets([prior, prior], shards, cache_dir=tmp_path)
    assert stats == targets.TargetStats(computed=0, reused=2)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)


def test_participant_with_no_data_raises(prior):
    with pytest.raises(ValueError, match="participant 1 has no data"):
        targets.participant_targets([prior, prior], [np.zeros((3, 8, 8, 1), np.float32),
                                                     np.zeros((0, 8, 8, 1), np.float32)])


def test_one_prior_per_participant(prior):
    with pytest.raises(ValueError, match="need one each"):
        targets.participant_targets([prior], [np.zeros((3, 8, 8, 1), np.float32)] * 2)
