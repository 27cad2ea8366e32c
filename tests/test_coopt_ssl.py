"""SimCLR pieces: NT-Xent ranks aligned views above mismatched ones; augmentations are random views."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecos_jax.coopt.ssl import Augment, nt_xent


def test_nt_xent_prefers_matching_views():
    z = jax.random.normal(jax.random.key(0), (8, 16))
    matched = nt_xent(jnp.concatenate([z, z + 0.01]), temperature=0.2)
    shuffled = nt_xent(jnp.concatenate([z, z[::-1]]), temperature=0.2)
    assert float(matched) < 0.5 and float(shuffled) > 3.0


def test_nt_xent_value_for_two_pairs():
    # Two pairs of orthogonal unit vectors: each row has one positive (cos 1) and two negatives (cos 0).
    z = jnp.asarray([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    t = 0.5
    expected = -np.log(np.exp(1 / t) / (np.exp(1 / t) + 2.0))
    np.testing.assert_allclose(float(nt_xent(z, t)), expected, rtol=1e-5)


def test_augment_gives_valid_distinct_views():
    x = np.zeros((4, 12, 12, 1), np.float32)
    x[:, 3:9, 5:7] = 1.0
    aug = Augment()
    a, b = aug(jax.random.key(1), x), aug(jax.random.key(2), x)
    assert a.shape == x.shape and float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert float(jnp.abs(a - b).mean()) > 0.01
    np.testing.assert_array_equal(a, aug(jax.random.key(1), x))  # a key fixes the view


def test_bad_augment_raises():
    with pytest.raises(ValueError, match="noise_std"):
        Augment(noise_std=-1.0)
