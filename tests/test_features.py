"""The public feature extractor: fitted on the pool once, then loaded from its cache."""
import json

import numpy as np
import pytest

from configs import selective_labeling as sl_config
from ecos_jax import features
from ecos_jax import training as train
from ecos_jax.experiments import ecos_budgets
from ecos_jax.utils import io


@pytest.mark.parametrize("kind", ["autoencoder", "pca"])
def test_second_fit_loads_the_cache_and_gives_identical_features(tmp_path, monkeypatch, kind):
    images = np.random.default_rng(0).uniform(size=(64, 28, 28, 1)).astype(np.float32)
    first = features.fit_extractor(kind, images, dim=8, epochs=1, batch_size=32, cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("a cached extractor was trained again")

    monkeypatch.setattr(train, "fit", no_training)
    again = features.fit_extractor(kind, images, dim=8, epochs=1, batch_size=32, cache_dir=tmp_path)
    np.testing.assert_array_equal(first(images), again(images))
    assert first(images).shape == (64, 8)


def test_content_hash_names_the_data_and_settings():
    x = np.zeros((4, 2, 2, 1), np.float32)
    key = io.content_hash("k", x, None, {"dim": 8})
    assert key == io.content_hash("k", x.copy(), None, {"dim": 8}) and len(key) == 20
    assert key != io.content_hash("k", x + 1, None, {"dim": 8})
    assert key != io.content_hash("k", x, None, {"dim": 9})
    assert key != io.content_hash("k", x, np.zeros(4, np.int32), {"dim": 8})


def _images(n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 28, 28, 1), np.float32)
    x[:, 8:20, 10:18] = rng.uniform(0.5, 1.0, size=(n, 12, 8, 1))  # a bright upright blob
    return x


def test_image_statistics_are_per_image_and_tell_corruptions_apart():
    x = _images()
    s = features.image_statistics(x)
    assert s.shape == (40, len(features.STATISTICS)) and s.dtype == np.float32
    # A row depends on its own image only: the same image gives the same row in any batch.
    np.testing.assert_allclose(features.image_statistics(x[5:6])[0], s[5], rtol=1e-6)
    names = features.STATISTICS
    noisy = np.clip(x + np.random.default_rng(1).normal(0, 0.3, x.shape), 0, 1).astype(np.float32)
    assert (features.image_statistics(noisy)[:, names.index("residual_mad")] > s[:, names.index("residual_mad")]).all()
    blurred = np.stack([np.convolve(r, np.ones(5) / 5, "same") for r in x.reshape(-1, 28)]).reshape(x.shape)
    lap = names.index("laplacian_energy")
    assert (features.image_statistics(blurred.astype(np.float32))[:, lap] < s[:, lap]).all()
    inverted = features.image_statistics(1 - x)
    assert (inverted[:, names.index("border_mean")] > 0.9).all() and (s[:, names.index("border_mean")] == 0).all()
    rotated = features.image_statistics(np.rot90(x, axes=(1, 2)).copy())
    cos = names.index("orientation_cos")
    assert (s[:, cos] < 0).all() and (rotated[:, cos] > 0).all()  # tall blob -> wide blob
    assert np.isfinite(features.image_statistics(np.zeros((2, 28, 28, 3), np.float32))).all()


def test_stats_weight_appends_the_scaled_block_and_reuses_the_base_cache(tmp_path, monkeypatch):
    x = _images(64)
    base = features.fit_extractor("autoencoder", x, dim=8, epochs=1, batch_size=32, cache_dir=tmp_path)
    calls = []
    real_fit = train.fit
    monkeypatch.setattr(train, "fit", lambda *a, **k: calls.append(1) or real_fit(*a, **k))
    f1 = features.fit_extractor("autoencoder", x, dim=8, epochs=1, batch_size=32, cache_dir=tmp_path,
                                stats_weight=1.0)
    f2 = features.fit_extractor("autoencoder", x, dim=8, epochs=1, batch_size=32, cache_dir=tmp_path,
                                stats_weight=2.0)
    assert not calls and len(list(tmp_path.iterdir())) == 1  # the same autoencoder, from its cache
    assert (f1.kind, f1.dim) == ("autoencoder+stats", 8 + len(features.STATISTICS))
    z0, z1, z2 = base(x), f1(x), f2(x)
    np.testing.assert_array_equal(z1[:, :8], z0)
    np.testing.assert_array_equal(f1(x), z1)  # deterministic
    # weight 1: the block's total pool variance equals the base's; weight 2 doubles the block.
    np.testing.assert_allclose(z1[:, 8:].var(0).sum(), z0.var(0).sum(), rtol=1e-3)
    np.testing.assert_allclose(z2[:, 8:], 2 * z1[:, 8:], rtol=1e-5, atol=1e-6)
    # The client applies the pool's standardisation, not its own: one image gives its pool row.
    np.testing.assert_allclose(f1(x[3:4])[0], z1[3], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="stats_weight"):
        features.fit_extractor("pca", x, dim=4, stats_weight=-1.0)


def _finished_run(path, methods, stats_weight):
    """A finished selective-labelling workdir (results.json, state.json): 1 domain x 1 seed."""
    config = sl_config.get_config("quick")
    with config.unlocked():
        config.methods = tuple(methods)
        config.features.stats_weight = stats_weight
    records = [{"method": m, "domain": "digits", "budget": 0 if m == "local" else 100, "seed": 0,
                "accuracy": 0.5, "epsilon": 0.58 if m == "ecos" else 0.0} for m in methods]
    path.mkdir()
    (path / "results.json").write_text(json.dumps({"config": config.to_dict(), "records": records,
                                                   "communication": {}}))
    (path / "state.json").write_text(json.dumps({"config_hash": "x", "records": records}))


def test_ecos_on_new_features_joins_only_the_baselines_that_read_no_features(tmp_path):
    _finished_run(tmp_path / "base", ("random", "kcenter", "local"), stats_weight=0.0)
    _finished_run(tmp_path / "ecos", ("ecos",), stats_weight=3.0)
    # K-Center reads the features, so neither the whole base run nor its K-Center fits.
    for base in (tmp_path / "base", f"{tmp_path / 'base'}:random,kcenter"):
        with pytest.raises(ValueError, match=r"differs in \['features'\]"):
            ecos_budgets.combine(tmp_path / "out", [base, tmp_path / "ecos"])
    records = ecos_budgets.combine(tmp_path / "out", [f"{tmp_path / 'base'}:random,local", tmp_path / "ecos"])
    assert sorted(r["method"] for r in records) == ["ecos", "local", "random"]
    with pytest.raises(ValueError, match="no records of"):
        ecos_budgets.combine(tmp_path / "out", [f"{tmp_path / 'base'}:oracle", tmp_path / "ecos"])
