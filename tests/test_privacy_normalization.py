"""DP normalisation statistics (`ecos_jax.privacy.normalization`): the sensitivity of the
release, its post-processing, its noise, and the σ of a release composed after it."""

import math

import dp_accounting
import jax
import numpy as np
import pytest

from ecos_jax.privacy import accounting, normalization


def _features(n=40, seed=0):
    rng = np.random.default_rng(seed)
    scale = np.linspace(0.1, 2.0, 6)          # channels of different scales and offsets
    return (rng.normal(size=(n, 3, 3, 6)) * scale + np.arange(6)).astype(np.float32)


def test_adding_one_example_moves_the_sum_by_at_most_sqrt3():
    x = _features()
    base, _, _ = normalization.clipped_sum(x, 1.5, 4.0)
    rng = np.random.default_rng(1)
    worst = 0.0
    for scale in (1e-3, 1.0, 1e3):               # tiny to far beyond the clipping norms
        for _ in range(5):
            extra = (rng.normal(size=(1, 3, 3, 6)) * scale).astype(np.float32)
            more, _, _ = normalization.clipped_sum(np.concatenate([x, extra]), 1.5, 4.0)
            worst = max(worst, float(np.linalg.norm(more - base)))
    assert worst <= math.sqrt(3) + 1e-9
    assert worst > 1.7                           # the bound is reached by large examples
    # Removing one: the same bound (the sum loses that example's row).
    less, _, _ = normalization.clipped_sum(x[1:], 1.5, 4.0)
    assert np.linalg.norm(less - base) <= math.sqrt(3) + 1e-9


def test_exact_statistics_without_noise_or_clipping_standardise_the_training_features():
    x = _features()
    stats = normalization.release(jax.random.key(0), x, clip_mean=1e6, clip_square=1e6,
                                  noise_multiplier=0.0)
    np.testing.assert_allclose(stats.mean, x.mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(stats.var, x.var(axis=(0, 1, 2)), rtol=1e-4)
    assert stats.count == len(x) and stats.clipped_mean == 0.0
    z = normalization.normalize(x, stats)
    np.testing.assert_allclose(z.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(z.var(axis=(0, 1, 2)), 1.0, rtol=1e-3)
    # Clipping below the moments' norms is reported (a diagnostic, not released).
    clipped = normalization.release(jax.random.key(0), x, clip_mean=0.5, clip_square=0.5,
                                    noise_multiplier=0.0)
    assert clipped.clipped_mean == 1.0 and clipped.clipped_square == 1.0


def test_noise_is_sigma_sqrt3_on_every_entry_and_fresh_per_key():
    x = _features(n=40)
    exact, _, _ = normalization.clipped_sum(x, 1.0, 1.0)
    sigma = 2.0
    counts = []
    for k in range(300):
        stats = normalization.release(jax.random.key(k), x, clip_mean=1.0, clip_square=1.0,
                                      noise_multiplier=sigma)
        counts.append(stats.count)
    counts = np.array(counts)
    # The count is released with noise N(0, (σ√3)²), clamped at 1 (here never).
    assert abs(counts.mean() - exact[-1]) < 4 * sigma * math.sqrt(3) / math.sqrt(300)
    assert abs(counts.std() / (sigma * math.sqrt(3)) - 1) < 0.15
    assert len(set(counts.tolist())) == 300


def test_post_processing_floors_a_variance_that_drowns_in_the_noise():
    f = 4
    noisy = np.concatenate([np.full(f, 10.0), np.full(f, 0.0), [100.0]])  # E[x²] < mean²
    stats = normalization.from_noisy_sum(noisy, clip_mean=1.0, clip_square=2.0,
                                         noise_multiplier=5.0)
    np.testing.assert_allclose(stats.mean, 0.1)
    np.testing.assert_allclose(stats.var, 2.0 * 5.0 * math.sqrt(3) / 100.0)
    assert normalization.from_noisy_sum(np.array([1.0, 1.0, -3.0]), clip_mean=1.0,
                                        clip_square=1.0, noise_multiplier=1.0).count == 1.0


def test_event_sensitivity_and_bad_clips():
    assert normalization.event(3.0) == dp_accounting.GaussianDpEvent(3.0)
    assert isinstance(normalization.event(0.0), dp_accounting.NonPrivateDpEvent)
    text = normalization.sensitivity(3.0, 8.0)
    assert "sqrt(3)" in text and "adding or removing one example" in text
    with pytest.raises(ValueError, match="clip_mean"):
        normalization.clipped_sum(_features(), 0.0, 1.0)
    with pytest.raises(ValueError, match="features must be"):
        normalization.moments(np.zeros((3, 4)))


def test_calibrate_after_composes_to_the_target_checked_with_dp_accounting():
    delta, q, steps = 1e-5, 0.05, 50

    def sgd(s):
        return accounting.dpsgd_event(q, s, steps)

    prefix = normalization.event(8.0)
    # RDP here (fast); train_dp uses the same function with PLD for truncated Poisson.
    sigma = normalization.calibrate_after(prefix, sgd, 2.0, delta, accountant="rdp")
    # The statistics' share costs DP-SGD noise: alone, this σ would spend less than 2.
    assert accounting.epsilon(sgd(sigma), delta, "rdp") < 1.95

    def composed_eps(s):
        acc = dp_accounting.rdp.RdpAccountant()
        acc.compose(prefix).compose(sgd(s))
        return acc.get_epsilon(delta)

    assert 1.99 < composed_eps(sigma) <= 2.0 + 1e-6
    assert composed_eps(sigma * 0.99) > 2.0       # the smallest such σ, near enough
    assert normalization.calibrate_after(prefix, sgd, math.inf, delta) == 0.0
    with pytest.raises(ValueError, match="alone spend"):
        normalization.calibrate_after(normalization.event(0.5), sgd, 2.0, delta, "rdp")


def test_audit_bounds_the_release_below_its_claim_and_catches_the_broken_control():
    from ecos_jax.privacy import audit

    kw = dict(trials=300, confidence=0.99, control_factor=8)
    real, control = (audit.audit_normalization(1.0, control=c, **kw) for c in (False, True))
    assert real.claimed_epsilon == pytest.approx(1.0, abs=1e-3)
    assert real.relation == "add_or_remove_one"
    assert real.details["l2_sensitivity"] == pytest.approx(math.sqrt(3))
    assert real.epsilon_lower_bound <= real.claimed_epsilon
    assert control.epsilon_lower_bound > control.claimed_epsilon    # sensitivity x8 caught
    assert "feature_stats" in audit.AUDITS
