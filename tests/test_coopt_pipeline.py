"""A tiny CoOpt run end to end, priors' cache and leak guard, and the pipeline's bad-input errors."""
import jax
import numpy as np
import pytest

from ecos_jax.coopt import pipeline, priors
from ecos_jax.coopt.networks import HeadNet
from ecos_jax.coopt.optimised_data import OptimisedDataset
from ecos_jax.coopt.participants import split_pool
from ecos_jax.coopt.probe import linear_probe
from ecos_jax.coopt.training import regression_objective, train_epochs
from ecos_jax.data import ArrayDataset
from ecos_jax.models import get_model
from ecos_jax.training import cosine_regression, make_optimizer, predict


def _dataset(n=240, seed=0):
    """Three domains of 8x8 images; the class is a bright row, domain 2 is inverted."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n).astype(np.int32)
    d = (np.arange(n) % 3).astype(np.int32)
    x = rng.uniform(0, 0.3, (n, 8, 8, 1)).astype(np.float32)
    x[np.arange(n), 1 + 2 * y, :, 0] = 1.0
    x[d == 2] = 1.0 - x[d == 2]
    return ArrayDataset(images=x, labels=y, domains=d, domain_names=("public", "pool_a", "pool_b"),
                        num_classes=3, ids=np.arange(n, dtype=np.int64))


def _spec(name, hidden, training="random", **kw):
    return priors.PriorSpec(name=name, model="mlp", model_kwargs=(("hidden", hidden),), training=training,
                            domains=kw.pop("domains", ()), **kw)


POOL = ("pool_a", "pool_b")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    ds = _dataset()
    cache = tmp_path_factory.mktemp("cache")
    # Random priors of three widths keep this fast; supervised priors are ecos_jax.training.fit runs.
    specs = [_spec("rand_a", (32, 12), seed=0), _spec("rand_b", (24, 12), seed=1), _spec("rand_c", (16, 12), seed=2)]
    ps = [priors.load_prior(s, ds, cache_dir=cache / "priors", pool_domains=POOL) for s in specs]
    return ds, cache, ps


def test_priors_are_cached_and_reload_identically(setup):
    ds, cache, ps = setup
    assert not any(p.from_cache for p in ps)
    again = priors.load_prior(ps[0].spec, ds, cache_dir=cache / "priors", pool_domains=POOL)
    assert again.from_cache and again.embed_dim == 12
    for a, b in zip(jax.tree.leaves(ps[0].params), jax.tree.leaves(again.params)):
        np.testing.assert_array_equal(a, b)


def test_supervised_prior_on_a_pool_domain_is_refused(setup):
    ds, cache, _ = setup
    spec = _spec("leaky", (8,), training="supervised", domains=("pool_a",), epochs=1)
    with pytest.raises(ValueError, match="never see the pool's labels"):
        priors.load_prior(spec, ds, cache_dir=cache, pool_domains=POOL)


def test_tiny_end_to_end(setup, tmp_path):
    ds, cache, ps = setup
    pool, public = ds.select_domains(list(POOL)), ds.select_domains("public")
    train, test = pool.subset(np.arange(120)), pool.subset(np.arange(120, len(pool)))
    shards = split_pool(num_examples=len(train), num_participants=3, scheme="domain", domains=train.domains, seed=0)
    kw = dict(images=train.images, ids=train.ids, shards=shards, priors=ps, anchors=public.images[:40],
              shared_dim=8, check_images=test.images, cache_dir=str(cache / "targets"))
    res = pipeline.build_optimised_dataset(alignment="procrustes", **kw)
    assert res.target_stats.computed == 3
    assert res.inconsistency["aligned"] < res.inconsistency["raw"]
    assert res.data.targets.shape == (120, 8)
    again = pipeline.build_optimised_dataset(alignment="procrustes", **kw)
    assert again.target_stats.reused == 3 and again.target_stats.computed == 0
    np.testing.assert_array_equal(again.data.targets, res.data.targets)

    path = tmp_path / "optimised.npz"
    res.data.save(path)
    data = OptimisedDataset.load(path)
    # A target model trains from the file alone (no priors involved); the slow driver test
    # also trains a second architecture on a reloaded dataset.
    net = HeadNet(backbone=get_model("mlp", 3, hidden=(32, 16)), out_dim=data.target_dim)
    run = train_epochs(regression_objective(net, cosine_regression), net.init(jax.random.key(0), data.images[:1]),
                       data.images, data.targets, optimizer=make_optimizer("adam", 3e-3), epochs=3,
                       batch_size=32, seed=0)
    assert run.history[-1]["loss"] < run.history[0]["loss"]
    f_tr = predict(net, run.params, train.images, features=True)
    f_te = predict(net, run.params, test.images, features=True)
    acc = linear_probe(f_tr, train.labels, f_te, test.labels, num_classes=3).test_accuracy
    assert 0.0 <= acc <= 1.0


def test_pipeline_bad_input(setup):
    ds, cache, ps = setup
    x = ds.images[:30]
    base = dict(images=x, ids=np.arange(30), priors=ps[:2], anchors=x[:20], cache_dir=None)
    with pytest.raises(ValueError, match="participant 1 has no data"):
        pipeline.build_optimised_dataset(shards=[np.arange(30), np.zeros(0, int)], shared_dim=4, **base)
    with pytest.raises(ValueError, match="smaller than the target dimension"):
        pipeline.build_optimised_dataset(shards=[np.arange(15), np.arange(15, 30)], shared_dim=20, **base)
    other = priors.load_prior(_spec("narrow", (16, 6), seed=5), ds, cache_dir=cache / "priors")
    with pytest.raises(ValueError, match="output dimension differs"):
        pipeline.build_optimised_dataset(shards=[np.arange(15), np.arange(15, 30)], shared_dim=8,
                                         **{**base, "priors": [ps[0], other]})
    with pytest.raises(ValueError, match="output dimensions differ"):
        pipeline.build_optimised_dataset(shards=[np.arange(15), np.arange(15, 30)], alignment="off",
                                         **{**base, "priors": [ps[0], other]})
