"""Mechanisms: noise scale matches σ·Δ, keys come from OS entropy unless seeded."""
import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecos_jax.privacy import mechanisms
from ecos_jax.privacy.keys import noise_key

N = 200_000


def test_gaussian_std_matches_sigma_times_sensitivity():
    key, _ = noise_key(0)
    out = np.asarray(mechanisms.gaussian_mechanism(key, jnp.zeros(N), sigma=1.5, l2_sensitivity=2.0))
    # std of the sample std is ~ s / sqrt(2N): 3 / 632 ~ 0.005; allow 5 of those.
    assert out.std() == pytest.approx(3.0, abs=0.025)
    assert abs(out.mean()) < 5 * 3.0 / np.sqrt(N)


def test_laplace_scale_matches():
    key, _ = noise_key(1)
    out = np.asarray(mechanisms.laplace_mechanism(key, jnp.zeros(N), epsilon=0.5, l1_sensitivity=1.0))
    # Laplace(b): mean |x| = b = 2; its std is b, so the mean's std is 2/sqrt(N).
    assert np.abs(out).mean() == pytest.approx(2.0, abs=5 * 2.0 / np.sqrt(N))
    assert mechanisms.laplace_event(0.5) == dp_accounting.LaplaceDpEvent(2.0)


def test_sigma_zero_is_identity_and_ints_promote():
    key, _ = noise_key(0)
    x = jnp.arange(5)
    out = mechanisms.gaussian_mechanism(key, x, sigma=0.0)
    assert out.dtype == jnp.float32 and np.array_equal(out, x)
    assert mechanisms.gaussian_event(0.0) == dp_accounting.NonPrivateDpEvent()


@pytest.mark.parametrize(
    "fn, kw, match",
    [
        (mechanisms.gaussian_mechanism, dict(sigma=-1.0), "sigma"),
        (mechanisms.gaussian_mechanism, dict(sigma=1.0, l2_sensitivity=0.0), "l2_sensitivity"),
        (mechanisms.laplace_mechanism, dict(epsilon=0.0, l1_sensitivity=1.0), "epsilon"),
        (mechanisms.laplace_mechanism, dict(epsilon=1.0, l1_sensitivity=-2.0), "l1_sensitivity"),
        # Infinite parameters: exact values or +-inf would leave silently.
        (mechanisms.laplace_mechanism, dict(epsilon=float("inf"), l1_sensitivity=1.0), "finite"),
        (mechanisms.gaussian_mechanism, dict(sigma=float("inf")), "finite"),
        (mechanisms.gaussian_mechanism, dict(sigma=1.0, l2_sensitivity=float("inf")), "finite"),
        (mechanisms.laplace_mechanism, dict(epsilon=1.0, l1_sensitivity=float("inf")), "finite"),
    ],
)
def test_bad_mechanism_parameters(fn, kw, match):
    with pytest.raises(ValueError, match=match):
        fn(jax.random.key(0), jnp.zeros(3), **kw)


def test_noise_key_entropy_vs_seed():
    k1, r1 = noise_key(None)
    k2, r2 = noise_key(None)
    assert not r1 and not r2
    assert not np.array_equal(jax.random.key_data(k1), jax.random.key_data(k2))
    k3, r3 = noise_key(7)
    assert r3 and np.array_equal(jax.random.key_data(k3), jax.random.key_data(jax.random.key(7)))
    for bad in (-1, 1.5, True, "0"):
        with pytest.raises(ValueError, match="seed"):
            noise_key(bad)
