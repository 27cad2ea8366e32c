"""Accounting: ε equals dp_accounting called directly; calibration; bad input."""
import math

import dp_accounting
import pytest
from dp_accounting import pld, rdp

from ecos_jax.privacy import accounting

REF_Q, REF_SIGMA, REF_STEPS, REF_DELTA = 256 / 60000, 1.1, 14062, 1e-5


def _direct(event, delta, acc):
    a = rdp.RdpAccountant() if acc == "rdp" else pld.PLDAccountant()
    return a.compose(event).get_epsilon(delta)


def test_reference_value_matches_spec_and_direct_call():
    ev = accounting.dpsgd_event(REF_Q, REF_SIGMA, REF_STEPS)
    direct_ev = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(REF_Q, dp_accounting.GaussianDpEvent(REF_SIGMA)),
        REF_STEPS,
    )
    assert ev == direct_ev
    eps_rdp = accounting.epsilon(ev, REF_DELTA, "rdp")
    eps_pld = accounting.epsilon(ev, REF_DELTA, "pld")
    assert eps_rdp == _direct(direct_ev, REF_DELTA, "rdp")
    assert eps_pld == _direct(direct_ev, REF_DELTA, "pld")
    assert eps_rdp == pytest.approx(2.60, abs=0.005)
    assert eps_pld == pytest.approx(2.38, abs=0.005)


@pytest.mark.parametrize("acc", ["rdp", "pld"])
def test_calibrate_gaussian_hits_target(acc):
    sigma = accounting.calibrate_gaussian_sigma(0.58, 1e-5, accountant=acc)
    eps = _direct(dp_accounting.GaussianDpEvent(sigma), 1e-5, acc)
    assert eps <= 0.58 and eps == pytest.approx(0.58, abs=1e-3)
    # Direct calibration with dp_accounting finds the same noise.
    direct = dp_accounting.calibrate_dp_mechanism(
        rdp.RdpAccountant if acc == "rdp" else pld.PLDAccountant,
        dp_accounting.GaussianDpEvent, 0.58, 1e-5,
    )
    assert sigma == pytest.approx(direct, rel=1e-4)


def test_calibrate_dpsgd_hits_target_and_is_monotone():
    s3 = accounting.calibrate_dpsgd_sigma(3.0, 1e-5, q=0.01, steps=500)
    s1 = accounting.calibrate_dpsgd_sigma(1.0, 1e-5, q=0.01, steps=500)
    assert s1 > s3 > 0
    eps = _direct(accounting.dpsgd_event(0.01, s3, 500), 1e-5, "rdp")
    assert eps <= 3.0 and eps == pytest.approx(3.0, abs=1e-3)
    assert accounting.calibrate_dpsgd_sigma(math.inf, 1e-5, q=0.01, steps=500) == 0.0


@pytest.mark.slow  # ~30 PLD constructions, ~12 s
def test_calibrate_dpsgd_pld_small():
    s = accounting.calibrate_dpsgd_sigma(2.0, 1e-5, q=0.05, steps=20, accountant="pld")
    assert _direct(accounting.dpsgd_event(0.05, s, 20), 1e-5, "pld") <= 2.0


def test_shuffle_is_accounted_without_amplification():
    ev = accounting.dpsgd_event(0.1, 2.0, 25, sampling="shuffle")  # 10 steps/epoch -> 3 epochs
    assert ev == dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(1.0), 3)
    poisson = accounting.epsilon(accounting.dpsgd_event(0.1, 2.0, 25), 1e-5)
    assert accounting.epsilon(ev, 1e-5) > poisson


def test_sigma_zero_is_non_private():
    ev = accounting.dpsgd_event(0.01, 0.0, 10)
    assert accounting.epsilon(ev, 1e-5) == math.inf


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(q=0.0, sigma=1.0, steps=10), "q must be in"),
        (dict(q=1.5, sigma=1.0, steps=10), "q must be in"),
        (dict(q=0.1, sigma=-1.0, steps=10), "sigma must be >= 0"),
        (dict(q=0.1, sigma=1.0, steps=0), "steps"),
        (dict(q=0.1, sigma=1.0, steps=10, sampling="fixed"), "sampling"),
    ],
)
def test_dpsgd_event_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        accounting.dpsgd_event(**kwargs)


def test_bad_delta_and_unreachable_target():
    ev = dp_accounting.GaussianDpEvent(1.0)
    for d in (0.0, 1.0, -1e-5):
        with pytest.raises(ValueError, match="delta"):
            accounting.epsilon(ev, d)
    with pytest.raises(ValueError, match="1/N"):
        accounting.calibrate_dpsgd_sigma(1.0, 1e-3, q=0.1, steps=10, dataset_size=10_000)
    s = accounting.calibrate_dpsgd_sigma(
        1.0, 1e-3, q=0.1, steps=10, dataset_size=10_000, allow_large_delta=True
    )
    assert s > 0
    with pytest.raises(ValueError, match="unreachable"):
        accounting.calibrate_gaussian_sigma(1e-3, 1e-5)  # below the RDP conversion floor
    with pytest.raises(ValueError, match="target_epsilon must be > 0"):
        accounting.calibrate_gaussian_sigma(0.0, 1e-5)
    with pytest.raises(ValueError, match="accountant"):
        accounting.epsilon(ev, 1e-5, "moments")
    with pytest.raises(ValueError, match="DpEvent"):
        accounting.epsilon(1.0, 1e-5)


def test_truncated_poisson_event_is_the_sampler_that_runs():
    n, q, steps = 6000, 256 / 6000, 200
    # sigma = 2 rather than 1: the same checks, and dp_accounting builds the truncated PLD 3x faster
    # (its grid follows epsilon).
    ev = accounting.dpsgd_event(q, 2.0, steps, dataset_size=n, max_batch_size=268)
    assert ev == dp_accounting.SelfComposedDpEvent(
        dp_accounting.TruncatedSubsampledGaussianDpEvent(n, q, 268, 2.0), steps)
    assert accounting.supported_accountants(ev) == ("pld",)
    # A tight cap costs far more than the plain Poisson analysis claims.
    assert accounting.epsilon(ev, 1e-5, "pld") > 2 * accounting.epsilon(
        accounting.dpsgd_event(q, 2.0, steps), 1e-5, "pld")
    assert accounting.epsilon(ev, 1e-5, "pld") == _direct(ev, 1e-5, "pld")
    # M = N cannot truncate: the Poisson event.
    assert accounting.dpsgd_event(q, 2.0, steps, dataset_size=n, max_batch_size=n) == \
        accounting.dpsgd_event(q, 2.0, steps)
    sigma = accounting.calibrate_dpsgd_sigma(1.0, 1e-5, q=q, steps=steps, dataset_size=n,
                                             max_batch_size=268)
    eps = _direct(accounting.dpsgd_event(q, sigma, steps, dataset_size=n, max_batch_size=268),
                  1e-5, "pld")
    assert eps <= 1.0 and eps == pytest.approx(1.0, rel=2e-3)
    with pytest.raises(ValueError, match="Poisson sampling only"):
        accounting.dpsgd_event(q, 1.0, steps, "shuffle", dataset_size=n, max_batch_size=268)
    with pytest.raises(ValueError, match="dataset_size"):
        accounting.dpsgd_event(q, 1.0, steps, max_batch_size=268)


@pytest.mark.parametrize("eps", [100.0, 1000.0, 1e4])
def test_calibration_at_large_epsilon_returns_a_valid_sigma(eps):
    # Used to run for minutes and gigabytes (PLD on a 1e-4 grid); the grid now widens with ε.
    for acc in ("rdp", "pld"):
        sigma = accounting.calibrate_gaussian_sigma(eps, 1e-5, accountant=acc)
        got = accounting.epsilon(dp_accounting.GaussianDpEvent(sigma), 1e-5, acc)
        assert got <= eps and got == pytest.approx(eps, rel=1e-3)
    sigma = accounting.calibrate_dpsgd_sigma(eps, 1e-5, q=0.01, steps=100, accountant="pld")
    assert accounting.epsilon(accounting.dpsgd_event(0.01, sigma, 100), 1e-5, "pld") <= eps
    with pytest.raises(ValueError, match="protects nothing"):
        accounting.calibrate_gaussian_sigma(2e4, 1e-5)


def test_pld_grid_is_the_default_at_moderate_epsilon_and_only_rounds_up():
    ev = dp_accounting.GaussianDpEvent(1.0)  # ε ≈ 4.4
    assert accounting.pld_interval(ev, 1e-5) == 1e-4
    big = dp_accounting.GaussianDpEvent(0.1)  # ε ≈ 92
    step = accounting.pld_interval(big, 1e-5)
    assert step > 1e-4
    fine = pld.PLDAccountant(value_discretization_interval=1e-4).compose(big).get_epsilon(1e-5)
    got = accounting.epsilon(big, 1e-5, "pld")
    assert fine <= got <= fine * (1 + 1e-4)  # pessimistic: never below the fine-grid ε
