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
