"""The VoG release path of the data-valuation experiment on two neighbouring data sets.

Neighbours differ in one sample, replaced by the class's most extreme one. With the same noise
key on both, the two noisy releases differ by exactly the difference of the pre-noise vectors
(the noise cancels), so the test measures the sensitivity the ledger entries claim: L1 <= B
for the per-sample vector, B for the clipped sum. Per-class min-max before the release (the
old path) is the control: it moves every score of the class, far past the claimed bound.
"""
import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecos_jax.privacy.keys import noise_key
from ecos_jax.privacy.ledger import PrivacyLedger
from ecos_jax.valuation.normalize import per_class_minmax, per_class_zscore
from ecos_jax.valuation.release import release_scores, release_site_summary, release_vog
from ecos_jax.valuation.vog import vog_scores

N_PER_CLASS = 50


def _apply(params, x):
    """A one-hidden-layer tanh network: its input gradients depend on x, so VoG does too."""
    return jnp.tanh(x.reshape(x.shape[0], -1) @ params["w1"]) @ params["w2"]


def _checkpoints():
    return [{"w1": jnp.asarray(np.random.default_rng(s).normal(size=(16, 8)) / 4, jnp.float32),
             "w2": jnp.asarray(np.random.default_rng(s + 10).normal(size=(8, 2)), jnp.float32)}
            for s in range(3)]


@pytest.fixture(scope="module")
def neighbours():
    """(vog_a, vog_b, y, j): raw VoG of a data set and of its replace-one neighbour, in which
    sample j (the maximum of class 0) is replaced by a saturating image (the new minimum)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2 * N_PER_CLASS, 4, 4, 1)).astype(np.float32)
    y = np.repeat([0, 1], N_PER_CLASS).astype(np.int32)
    ckpts = _checkpoints()
    vog_a = np.asarray(vog_scores(_apply, ckpts, x, y), np.float64)
    j = int(np.argmax(vog_a[:N_PER_CLASS]))
    x_b = x.copy()
    x_b[j] = 10.0 * x[j]
    vog_b = np.asarray(vog_scores(_apply, ckpts, x_b, y), np.float64)
    assert vog_b[j] < vog_a[:N_PER_CLASS].min()            # j went from class max to class min
    return vog_a, vog_b, y, j


def _releases():
    return PrivacyLedger(delta=1e-5, relation="replace_one", reproducible_seed=0)


def test_release_path_moves_only_the_replaced_score_by_at_most_B(neighbours):
    vog_a, vog_b, y, j = neighbours
    bound = 0.3   # public B in VoG units (raw VoG here is 0.1-0.4); a constant, not fitted
    key, _ = noise_key(0)
    ra, _, sa = release_vog(key, vog_a, y, bound=bound, epsilon=1.0, ledger=_releases(), name="v")
    rb, _, sb = release_vog(key, vog_b, y, bound=bound, epsilon=1.0, ledger=_releases(), name="v")
    diff = np.abs(ra - rb)
    assert diff.sum() <= bound * (1 + 1e-5)
    assert diff[j] > 0.05 and np.all(diff[np.arange(len(y)) != j] < 1e-6)
    assert abs(sa.mean - sb.mean) * sa.n <= bound * (1 + 1e-5)          # clipped sum: <= B


def test_normalise_then_release_breaks_the_bound(neighbours):
    """The old experiment's path, through a copy (which the refusal cannot see): the measured
    L1 is many times the claimed B = 1, which is why the release refuses normalised input."""
    vog_a, vog_b, y, _ = neighbours
    key, _ = noise_key(0)
    ra, rb = (np.asarray(release_scores(key, np.array(per_class_minmax(v, y)), bound=1.0,
                                        epsilon=1.0, ledger=_releases())) for v in (vog_a, vog_b))
    assert np.abs(ra - rb).sum() > 10.0          # 16.1 measured, against a claimed L1 <= 1
    assert np.sum(np.abs(ra - rb) > 1e-6) >= N_PER_CLASS - 2


@pytest.mark.parametrize("normalise", [per_class_minmax, per_class_zscore])
def test_release_refuses_per_class_normalised_scores(normalise):
    s = np.random.default_rng(1).uniform(size=20)
    y = np.repeat([0, 1], 10).astype(np.int32)
    key, _ = noise_key(0)
    ledger = _releases()
    with pytest.raises(ValueError, match="normalised"):
        release_scores(key, normalise(s, y), bound=1.0, epsilon=1.0, ledger=ledger)
    with pytest.raises(ValueError, match="normalised"):
        release_site_summary(key, normalise(s, y), bound=1.0, epsilon=1.0, ledger=ledger)
    assert len(ledger) == 0
    # the noisy release may be normalised afterwards (post-processing); raw input is accepted
    per_class_minmax(release_scores(key, s, bound=1.0, epsilon=1.0, ledger=ledger), y)
    assert len(ledger) == 1


def test_release_refuses_the_add_remove_training_ledger():
    key, _ = noise_key(0)
    training = PrivacyLedger(delta=1e-5, relation="add_or_remove_one")
    for release in (release_scores, release_site_summary):
        with pytest.raises(ValueError, match="replace_one"):
            release(key, np.array([0.1, 0.2]), bound=1.0, epsilon=1.0, ledger=training)
    assert len(training) == 0


def test_release_ledger_relation_and_epsilon_equal_dp_accounting(neighbours):
    vog_a, _, y, _ = neighbours
    ledger = _releases()
    key, _ = noise_key(0)
    eps = 0.7
    release_vog(key, vog_a, y, bound=0.3, epsilon=eps, ledger=ledger, name="vog/run")
    release_site_summary(key, vog_a, bound=0.3, epsilon=eps, ledger=ledger, name="g",
                         mechanism="gaussian")
    d = ledger.to_dict()
    assert d["neighboring_relation"] == "replace_one"
    assert [e["name"] for e in d["entries"]] == [
        "vog/run/per_sample", "vog/run_site/sum", "vog/run_site/sum_of_squares", "g/sum",
        "g/sum_of_squares"]
    assert all(e["relation"] == "replace_one" for e in d["entries"])
    assert all("replace-one" in e["sensitivity"] for e in d["entries"])
    assert "L1 = B = 0.3" in d["entries"][0]["sensitivity"]
    assert "L1 = 0.09" in d["entries"][2]["sensitivity"]                   # B² for the squares
    # the same events, composed by dp_accounting directly
    sigma = ledger.entries[3].event.noise_multiplier
    events = [dp_accounting.LaplaceDpEvent(1 / eps), dp_accounting.LaplaceDpEvent(2 / eps),
              dp_accounting.LaplaceDpEvent(2 / eps), dp_accounting.GaussianDpEvent(sigma),
              dp_accounting.GaussianDpEvent(sigma)]
    assert [e.event for e in ledger.entries] == events
    pld = dp_accounting.pld.PLDAccountant().compose(dp_accounting.ComposedDpEvent(events))
    assert ledger.epsilon(accountant="pld") == pytest.approx(pld.get_epsilon(1e-5), rel=1e-6)
    rdp = dp_accounting.rdp.RdpAccountant().compose(dp_accounting.ComposedDpEvent(events))
    assert ledger.epsilon(accountant="rdp") == pytest.approx(rdp.get_epsilon(1e-5), rel=1e-6)
    # and the Laplace part alone is pure 2ε: per-sample ε plus the two halves of the summary
    laplace = dp_accounting.pld.PLDAccountant().compose(dp_accounting.ComposedDpEvent(events[:3]))
    assert laplace.get_epsilon(1e-5) == pytest.approx(2 * eps, rel=1e-2)


def test_release_vog_normalises_only_the_noisy_release(neighbours):
    vog_a, _, y, _ = neighbours
    key = jax.random.key(3)
    released, normalised, summary = release_vog(key, vog_a, y, bound=0.3, epsilon=1.0,
                                                ledger=_releases(), name="v")
    np.testing.assert_allclose(normalised, per_class_minmax(released, y), rtol=1e-6)
    assert summary.n == len(y) and summary.bound == 0.3
    for c in (0, 1):
        assert normalised[y == c].min() == 0.0 and normalised[y == c].max() == 1.0
