"""DP release of scores: right noise, right clipping, and the right (replace-one) ledger entries."""
import dp_accounting
import numpy as np
import pytest

from ecos_jax.privacy import accounting
from ecos_jax.privacy.keys import noise_key
from ecos_jax.privacy.ledger import PrivacyLedger
from ecos_jax.valuation.release import release_scores, release_site_summary


def test_per_sample_release_noise_and_ledger():
    key, seeded = noise_key(0)
    ledger = PrivacyLedger(delta=1e-5, relation="replace_one", reproducible_seed=0)
    scores = np.linspace(-1.0, 3.0, 20_000)            # a quarter below 0, half above B = 1
    noisy = np.asarray(release_scores(key, scores, bound=1.0, epsilon=2.0, ledger=ledger, name="vog"))
    noise = noisy - np.clip(scores, 0.0, 1.0)
    assert abs(noise.mean()) < 0.02
    assert np.mean(np.abs(noise)) == pytest.approx(1.0 / 2.0, rel=0.05)   # Laplace scale B/ε
    (entry,) = ledger.entries
    assert entry.name == "vog/per_sample"
    assert entry.event == dp_accounting.LaplaceDpEvent(0.5)              # noise_multiplier = 1/ε
    assert "L1 = B = 1 under replace-one" in entry.sensitivity
    assert ledger.to_dict()["entries"][0]["relation"] == "replace_one"
    assert entry.meta["epsilon"] == 2.0 and entry.meta["num_scores"] == 20_000
    assert ledger.epsilon(accountant="pld") == pytest.approx(2.0, rel=1e-3)


def test_releases_stay_out_of_the_training_ledger():
    """DP-SGD (Poisson) is add/remove-one, the releases replace-one: one ledger cannot compose
    both, so the release refuses the training ledger and gets its own."""
    key, _ = noise_key(1)
    training = PrivacyLedger(delta=1e-5, relation="add_or_remove_one")
    training.record("dpsgd", accounting.dpsgd_event(q=0.01, sigma=1.0, steps=500),
                    sensitivity="L2 = C per example, add/remove-one")
    scores = np.random.default_rng(0).uniform(size=100)
    with pytest.raises(ValueError, match="replace_one"):
        release_scores(key, scores, bound=1.0, epsilon=1.0, ledger=training)
    assert [e.name for e in training.entries] == ["dpsgd"]
    releases = PrivacyLedger(delta=1e-5, relation="replace_one")
    release_scores(key, scores, bound=1.0, epsilon=1.0, ledger=releases)
    assert releases.to_dict()["total_epsilon"]["pld"] == pytest.approx(1.0, rel=1e-3)


@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
def test_site_summary(mechanism):
    rng = np.random.default_rng(3)
    scores = rng.beta(2.0, 5.0, size=5000)
    ledger = PrivacyLedger(delta=1e-5, relation="replace_one")
    key, _ = noise_key(2)
    summ = release_site_summary(key, scores, bound=1.0, epsilon=1.0, ledger=ledger,
                                mechanism=mechanism, name="site0")
    # noise on the sums is O(1/ε) against N = 5000: the estimates are close to the truth
    assert summ.mean == pytest.approx(scores.mean(), abs=0.01)
    assert summ.variance == pytest.approx(scores.var(), abs=0.01)
    assert [e.name for e in ledger.entries] == ["site0/sum", "site0/sum_of_squares"]
    if mechanism == "laplace":
        assert [e.event for e in ledger.entries] == [dp_accounting.LaplaceDpEvent(2.0)] * 2
        assert ledger.epsilon(accountant="pld") == pytest.approx(1.0, rel=1e-2)
    else:
        sigmas = {e.event.noise_multiplier for e in ledger.entries}
        assert len(sigmas) == 1
        assert ledger.epsilon(accountant="rdp") == pytest.approx(1.0, rel=1e-3)


def test_release_bad_input():
    key, _ = noise_key(0)
    ledger = PrivacyLedger(relation="replace_one")
    with pytest.raises(ValueError, match="non-finite"):
        release_scores(key, np.array([0.1, np.nan]), bound=1.0, epsilon=1.0, ledger=ledger)
    with pytest.raises(ValueError, match="epsilon"):
        release_scores(key, np.array([0.1]), bound=1.0, epsilon=float("inf"), ledger=ledger)
    with pytest.raises(ValueError, match="bound"):
        release_site_summary(key, np.array([0.1]), bound=0.0, epsilon=1.0, ledger=ledger)
    with pytest.raises(ValueError, match="ledger"):
        release_scores(key, np.array([0.1]), bound=1.0, epsilon=1.0, ledger=None)
    assert len(ledger) == 0                      # nothing recorded for refused releases
