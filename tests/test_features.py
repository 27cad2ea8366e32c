"""The public feature extractor: fitted on the pool once, then loaded from its cache."""
import numpy as np
import pytest

from ecos_jax import features
from ecos_jax import training as train
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
