"""ecos_jax.scattering: the JAX scattering transform against kymatio 0.3.0's numpy frontend.

kymatio is a test-only reference (`pip install kymatio==0.3.0`); the comparisons skip where it
is missing. Its import reads `scipy.special.sph_harm` (for its 3-D transform), which scipy
1.17 removed; `_sph_harm_shim` puts it back from `sph_harm_y` with the argument order fixed,
and is itself tested against closed-form spherical harmonics.
"""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from ecos_jax import scattering

HAVE_KYMATIO = importlib.util.find_spec("kymatio") is not None


def _sph_harm_shim():
    """scipy.special.sph_harm(m, n, azimuth, polar) from sph_harm_y(n, m, polar, azimuth)."""
    if not hasattr(scipy.special, "sph_harm"):
        def sph_harm(m, n, theta, phi):
            return scipy.special.sph_harm_y(n, m, phi, theta)
        scipy.special.sph_harm = sph_harm
    return scipy.special.sph_harm


def test_sph_harm_shim_matches_closed_form():
    sph_harm = _sph_harm_shim()
    azimuth, polar = 0.7, 1.1
    # Y_1^0 = sqrt(3 / 4π) cos(polar);  Y_1^1 = -sqrt(3 / 8π) sin(polar) e^{i azimuth}.
    assert np.isclose(sph_harm(0, 1, azimuth, polar), np.sqrt(3 / (4 * np.pi)) * np.cos(polar))
    assert np.isclose(sph_harm(1, 1, azimuth, polar),
                      -np.sqrt(3 / (8 * np.pi)) * np.sin(polar) * np.exp(1j * azimuth))


def _kymatio(J, shape, L):
    _sph_harm_shim()
    from kymatio.numpy import Scattering2D
    return Scattering2D(J=J, shape=shape, L=L, max_order=2)


def _images(n, shape, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(size=(n, *shape)).astype(np.float32)


def test_shapes_and_path_count():
    bank = scattering.filter_bank((28, 28), J=2, L=8)
    assert bank.num_paths == 81 and bank.out_shape == (7, 7)
    out = jax.jit(scattering.scatter)(bank, jnp.zeros((3, 28, 28)))
    assert out.shape == (3, 81, 7, 7)
    feats = scattering.scatter_features(bank, jnp.zeros((2, 28, 28, 2)))
    assert feats.shape == (2, 7, 7, 162)


@pytest.mark.skipif(not HAVE_KYMATIO, reason="kymatio==0.3.0 not installed (test-only reference)")
@pytest.mark.parametrize("J,shape,L", [(2, (28, 28), 8), (3, (32, 24), 4)])
def test_matches_kymatio_numpy(J, shape, L):
    x = _images(4, shape)
    ref = _kymatio(J, shape, L)(x)                       # [B, K, h, w]
    bank = scattering.filter_bank(shape, J=J, L=L)
    ours = np.asarray(jax.jit(scattering.scatter)(bank, x))
    assert ours.shape == ref.shape
    scale = np.abs(ref).max()
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=2e-6 * scale)


@pytest.mark.skipif(not HAVE_KYMATIO, reason="kymatio==0.3.0 not installed (test-only reference)")
def test_channels_last_features_follow_kymatio_channel_layout():
    x = _images(2, (28, 28, 3), seed=1)                  # [B, H, W, C]
    ref = _kymatio(2, (28, 28), 8)(np.moveaxis(x, -1, 1))    # [B, C, 81, 7, 7]
    bank = scattering.filter_bank((28, 28), J=2, L=8)
    ours = np.asarray(scattering.scatter_features(bank, x))  # [B, 7, 7, C·81]
    ref = np.moveaxis(ref.reshape(2, 3 * 81, 7, 7), 1, -1)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=2e-6 * np.abs(ref).max())


def test_vmap_and_leading_axes_agree_with_batch():
    bank = scattering.filter_bank((28, 28), J=2, L=8)
    x = _images(4, (28, 28), seed=2)
    batch = np.asarray(scattering.scatter(bank, x))
    per_example = np.asarray(jax.vmap(lambda im: scattering.scatter(bank, im))(x))
    lead = np.asarray(scattering.scatter(bank, x.reshape(2, 2, 28, 28)))
    np.testing.assert_allclose(per_example, batch, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lead.reshape(batch.shape), batch, rtol=1e-6, atol=1e-7)


def test_order0_is_lowpass_of_mean_and_paths_are_nonnegative_for_constant():
    bank = scattering.filter_bank((28, 28), J=2, L=8)
    out = np.asarray(scattering.scatter(bank, np.full((1, 28, 28), 0.5, np.float32)))
    # A constant image: φ has unit DC gain, every Morlet wavelet has zero DC response.
    np.testing.assert_allclose(out[0, 0], 0.5, rtol=1e-3)
    assert np.abs(out[0, 1:]).max() < 1e-4


def test_group_normalize_per_example():
    rng = np.random.default_rng(0)
    f = rng.normal(3.0, 2.0, size=(2, 7, 7, 6)).astype(np.float32)
    g = np.asarray(scattering.group_normalize(jnp.asarray(f), num_groups=3))
    groups = g.reshape(2, 49, 3, 2)
    np.testing.assert_allclose(groups.mean(axis=(1, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(groups.var(axis=(1, 3)), 1.0, rtol=1e-3)
    # Each example is normalised by its own statistics only.
    g0 = np.asarray(scattering.group_normalize(jnp.asarray(f[:1]), num_groups=3))
    np.testing.assert_allclose(g0, g[:1], rtol=1e-6)
    with pytest.raises(ValueError):
        scattering.group_normalize(jnp.asarray(f), num_groups=4)


def test_batched_pads_the_last_block():
    x = np.arange(10, dtype=np.float32).reshape(10, 1)
    out = scattering.batched(lambda a: a * 2, x, batch_size=4)
    np.testing.assert_array_equal(out, x * 2)


def test_features_are_cached_by_content(tmp_path):
    x = _images(3, (28, 28, 1), seed=3)
    first = scattering.features(x, cache_dir=tmp_path, batch_size=2)
    assert first.shape == (3, 7, 7, 81) and len(list(tmp_path.iterdir())) == 1
    bank = scattering.filter_bank((28, 28))
    np.testing.assert_allclose(first, scattering.scatter_features(bank, x), rtol=1e-6, atol=1e-7)
    again = scattering.features(x, cache_dir=tmp_path)          # read back, not recomputed
    np.testing.assert_array_equal(again, first)
    scattering.features(x[:2], cache_dir=tmp_path)               # other images: another file
    assert len(list(tmp_path.iterdir())) == 2
