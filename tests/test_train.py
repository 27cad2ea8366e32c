"""The train loop learns a separable toy problem, compiles once, snapshots and rejects bad input."""
import jax
import numpy as np
import pytest

from ecos_jax import models, train


def _toy(n=96, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n).astype(np.int32)
    x = rng.normal(0, 0.3, (n, 6, 6, 1)).astype(np.float32)
    x[y == 1, :3] += 1.0  # class 1 has a bright top half
    return x, y


def test_fit_learns_and_snapshots():
    x, y = _toy()
    model = models.get_model("mlp", num_classes=2, hidden=(16,))
    res = train.fit(model, x, y, epochs=6, batch_size=32, learning_rate=1e-2, seed=0,
                    snapshot_every=2, eval_data=(x, y), progress=False)
    assert [e for e, _ in res.snapshots] == [2, 4, 6]
    # Snapshots survive buffer donation by later steps, and differ from one another.
    first, last = (jax.tree.leaves(p)[0] for _, p in (res.snapshots[0], res.snapshots[-1]))
    assert not np.allclose(np.asarray(first), np.asarray(last))
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    assert train.evaluate(model, res.params, x, y) > 0.9


def test_epoch_compiles_once():
    x, y = _toy()
    model = models.get_model("mlp", num_classes=2, hidden=(8,))
    train._train_step.clear_cache()
    train.fit(model, x, y, epochs=4, batch_size=40, learning_rate=1e-2, seed=0, progress=False)
    assert train._train_step._cache_size() == 1


def test_weights_zero_out_examples():
    x, y = _toy()
    model = models.get_model("mlp", num_classes=2, hidden=(8,))
    w = np.zeros(len(x), np.float32)
    w[:10] = 1.0
    a = train.fit(model, x, y, epochs=1, batch_size=96, learning_rate=1e-2, seed=0, weights=w, progress=False)
    init = model.init(jax.random.fold_in(jax.random.key(0), 0), x[:1])
    b = train.fit(model, x[:10], y[:10], epochs=1, batch_size=10, learning_rate=1e-2, seed=0, progress=False,
                  init_params=init)
    jax.tree.map(np.asarray, init)  # the caller's init params are still alive (not donated)
    for p, q in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-6)


def test_kl_distillation_is_zero_for_equal_logits_and_positive_otherwise():
    logits = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    np.testing.assert_allclose(train.kl_distillation(2.0)(logits, logits), 0.0, atol=1e-6)
    assert (train.kl_distillation(2.0)(logits, np.roll(logits, 1, axis=0)) > 0).all()


@pytest.mark.parametrize("bad, match", [
    (dict(x=np.zeros((0, 6, 6, 1), np.float32), y=np.zeros(0, np.int32)), "empty"),
    (dict(x=np.full((4, 6, 6, 1), np.nan, np.float32), y=np.zeros(4, np.int32)), "NaN"),
    (dict(x=np.zeros((4, 6, 6, 1), np.float32), y=np.zeros(3, np.int32)), "examples"),
])
def test_bad_input(bad, match):
    model = models.get_model("mlp", num_classes=2)
    with pytest.raises(ValueError, match=match):
        train.fit(model, bad["x"], bad["y"], epochs=1, batch_size=2, learning_rate=1e-2, seed=0, progress=False)
