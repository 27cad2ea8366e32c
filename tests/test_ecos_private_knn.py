"""Private kNN labelling: votes against brute force, subsampling, noise, sensitivity, ε, bad input."""
import math

import dp_accounting
import jax
import numpy as np
import pytest
from dp_accounting import pld, rdp

from ecos_jax.ecos import private_knn as pk
from ecos_jax.privacy import accounting
from ecos_jax.privacy.ledger import PrivacyLedger

DELTA = 1e-5


def _brute_votes(queries, features, labels, k, num_classes):
    """Exact kNN votes in float64; equal distances go to the lower client index (stable sort)."""
    d2 = ((queries[:, None, :].astype(np.float64) - features[None, :, :]) ** 2).sum(-1)
    nn = np.argsort(d2, axis=1, kind="stable")[:, :k]
    return np.stack([np.bincount(labels[row], minlength=num_classes) for row in nn])


def _blobs(seed=0, per_class_client=40, per_class_query=50, num_classes=4, d=8):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (num_classes, d))
    def draw(m):
        y = np.repeat(np.arange(num_classes), m)
        return (centres[y] + rng.normal(0, 0.5, (len(y), d))).astype(np.float32), y.astype(np.int32)
    return draw(per_class_client) + draw(per_class_query)


@pytest.mark.parametrize("k", [5, 40])  # 40 > N = 23: every client point votes
def test_votes_match_brute_force_across_chunks(k):
    rng = np.random.default_rng(k)
    x = rng.normal(size=(23, 3)).astype(np.float32)
    y = rng.integers(0, 4, 23)
    q = rng.normal(size=(37, 3)).astype(np.float32)  # 37 = 4 chunks of 8 + 5
    expected = _brute_votes(q, x, y, k, 4)
    key = jax.random.key(0)
    chunked = np.asarray(pk.knn_votes(key, q, x, y, num_classes=4, k=k, chunk_size=8))
    whole = np.asarray(pk.knn_votes(key, q, x, y, num_classes=4, k=k))
    assert chunked.dtype == np.int32 and chunked.shape == (37, 4)
    np.testing.assert_array_equal(chunked, expected)
    np.testing.assert_array_equal(whole, expected)


def test_poisson_subsampling_rate_and_independence():
    rng = np.random.default_rng(1)
    n, q_rate, num_q = 200, 0.3, 300
    x = rng.normal(size=(n, 2)).astype(np.float32)
    y = rng.integers(0, 3, n)
    queries = rng.normal(size=(num_q, 2)).astype(np.float32)
    key = jax.random.key(7)
    # k = N: every sampled point votes, so a row sums to the size of that query's sample.
    everyone = np.asarray(pk.knn_votes(key, queries, x, y, num_classes=3, k=n,
                                       sampling_rate=q_rate, chunk_size=64))
    sizes = everyone.sum(1)
    mean, var = n * q_rate, n * q_rate * (1 - q_rate)
    assert abs(sizes.mean() - mean) < 5 * math.sqrt(var / num_q)
    # Independent draws per query: the sizes vary like Binomial(N, q), not like one shared draw.
    assert sizes.var(ddof=1) == pytest.approx(var, rel=0.3)
    assert (everyone <= np.bincount(y, minlength=3)[None, :]).all()
    # Other chunks, same key: the same coins per query (so the same sample sizes), and a query
    # with fewer than k points sampled gets the votes of its whole sample.
    few = np.asarray(pk.knn_votes(key, queries, x, y, num_classes=3, k=70,
                                  sampling_rate=q_rate, chunk_size=77))
    np.testing.assert_array_equal(few.sum(1), np.minimum(70, sizes))
    assert (sizes < 70).any() and (sizes > 70).any()  # both regimes occur
    np.testing.assert_array_equal(few[sizes <= 70], everyone[sizes <= 70])


def test_gnmax_noise_std_and_argmax():
    scores = np.asarray(pk.gnmax_scores(jax.random.key(0), np.zeros((4000, 3), np.int32), 3.0))
    # 12000 draws: the sample std is within ~2% of sigma with overwhelming probability.
    assert scores.std() == pytest.approx(3.0, rel=0.03)
    assert abs(scores.mean()) < 4 * 3.0 / math.sqrt(12000)
    # Two classes with votes (0, t): class 0 wins iff z_0 - z_1 > t, z_0 - z_1 ~ N(0, 2 sigma^2).
    sigma, t, num_q = 2.0, 2.0, 20000
    votes = np.tile(np.array([[0, t]], np.int32), (num_q, 1))
    wins = np.mean(np.asarray(pk.noisy_argmax(jax.random.key(1), votes, sigma)) == 0)
    expected = 0.5 * (1 + math.erf(-t / (sigma * math.sqrt(2)) / math.sqrt(2)))
    assert wins == pytest.approx(expected, abs=5 * math.sqrt(expected * (1 - expected) / num_q))
    exact = pk.noisy_argmax(jax.random.key(2), np.array([[1, 3, 3], [4, 0, 4]]), 0.0)
    np.testing.assert_array_equal(exact, [1, 0])  # sigma = 0: plain argmax, ties to lower class
    assert exact.dtype == np.int32


def test_add_or_remove_one_moves_votes_by_at_most_sqrt2():
    rng = np.random.default_rng(3)
    key = jax.random.key(0)
    worst = 0.0
    for _ in range(25):
        # Integer grid: many exact distance ties, so the index tie-break is exercised too.
        x = rng.integers(0, 4, (10, 2)).astype(np.float32)
        y = rng.integers(0, 3, 10)
        queries = rng.integers(0, 4, (16, 2)).astype(np.float32)
        i = int(rng.integers(0, 11))
        x_add = np.insert(x, i, rng.integers(0, 4, 2), axis=0)
        y_add = np.insert(y, i, rng.integers(0, 3))
        j = int(rng.integers(0, 10))
        x_del, y_del = np.delete(x, j, axis=0), np.delete(y, j)
        for k in (3, 12):  # 3: a new neighbour pushes one out; 12 > N: the sample only grows
            base = np.asarray(pk.knn_votes(key, queries, x, y, num_classes=3, k=k))
            np.testing.assert_array_equal(base, _brute_votes(queries, x, y, k, 3))
            for xs, ys in ((x_add, y_add), (x_del, y_del)):
                diff = np.asarray(pk.knn_votes(key, queries, xs, ys, num_classes=3, k=k)) - base
                assert np.abs(diff).sum(1).max() <= 2 and np.abs(diff).max() <= 1
                worst = max(worst, float(np.linalg.norm(diff, axis=1).max()))
    assert worst == pytest.approx(math.sqrt(2))  # the bound is attained, so it is tight


@pytest.mark.parametrize("rate", [1.0, 0.1])
def test_labeling_event_epsilon_matches_dp_accounting(rate):
    sigma, num_q = 20.0, 50
    one = dp_accounting.GaussianDpEvent(sigma / math.sqrt(2))
    if rate < 1:
        one = dp_accounting.PoissonSampledDpEvent(rate, one)
    hand = dp_accounting.SelfComposedDpEvent(one, num_q)
    event = pk.labeling_event(sigma, num_q, rate)
    assert event == hand
    for name, acc in (("rdp", rdp.RdpAccountant()), ("pld", pld.PLDAccountant())):
        direct = acc.compose(hand).get_epsilon(DELTA)
        assert accounting.epsilon(event, DELTA, name) == pytest.approx(direct, rel=1e-9)
    assert isinstance(pk.labeling_event(0.0, num_q, rate), dp_accounting.NonPrivateDpEvent)


@pytest.mark.parametrize("num_q, rate, acc", [(100, 1.0, "pld"), (50, 0.1, "rdp")])
def test_calibrate_sigma_hits_target(num_q, rate, acc):
    sigma = pk.calibrate_sigma(1.0, DELTA, num_q, rate, accountant=acc)
    eps = accounting.epsilon(pk.labeling_event(sigma, num_q, rate), DELTA, acc)
    assert 0.99 <= eps <= 1.0 + 1e-9
    assert pk.calibrate_sigma(math.inf, DELTA, num_q, rate, accountant=acc) == 0.0


def test_ledger_entry_epsilon_and_composition():
    x, y, q, _ = _blobs()
    q = q[:20]
    ledger = PrivacyLedger(DELTA, accountant="pld", reproducible_seed=5)
    ecos_event = dp_accounting.GaussianDpEvent(6.0)
    ledger.record("ecos_client_response", ecos_event, sensitivity="L2 = 1")
    # Calibrated with RDP (fast); the ledger re-derives ε with both accountants.
    out = pk.private_knn_labels(q, x, y, num_classes=4, k=10, epsilon=1.0, delta=DELTA,
                                accountant="rdp", noise_seed=5, ledger=ledger)
    hand = dp_accounting.SelfComposedDpEvent(
        dp_accounting.GaussianDpEvent(out.sigma / math.sqrt(2)), 20)
    assert out.event == hand and out.num_queries == 20
    summary = ledger.to_dict()  # per-entry and total ε, both accountants
    entry = summary["entries"][1]
    assert entry["name"] == "ecos_private_knn_labels"
    assert entry["sensitivity"] == pk.SENSITIVITY and "sqrt(2)" in entry["sensitivity"]
    assert entry["meta"]["num_queries"] == 20 and entry["meta"]["k"] == 10
    assert entry["meta"]["sigma"] == out.sigma and entry["meta"]["reproducible_noise"] is True
    assert entry["meta"]["target_epsilon"] == 1.0 and entry["meta"]["sampling_rate"] == 1.0
    for name, make in (("rdp", rdp.RdpAccountant), ("pld", pld.PLDAccountant)):
        alone = make().compose(hand).get_epsilon(DELTA)
        assert entry["epsilon"][name] == pytest.approx(alone, rel=1e-9)
        both = make().compose(dp_accounting.ComposedDpEvent([ecos_event, hand])).get_epsilon(DELTA)
        assert summary["total_epsilon"][name] == pytest.approx(both, rel=1e-9)
    assert entry["epsilon"]["pld"] <= entry["epsilon"]["rdp"] <= 1.0 + 1e-9
    assert out.bytes_up == 20 and out.bytes_down == 20 * 8 * 4  # uint8 labels; float32 features


@pytest.mark.parametrize("epsilon, rate, acc, check", [
    (math.inf, 1.0, "pld", lambda a: a == 1.0),
    (math.inf, 0.5, "pld", lambda a: a >= 0.98),
    (50.0, 1.0, "rdp", lambda a: a >= 0.95),
    (0.05, 1.0, "pld", lambda a: abs(a - 0.25) < 0.12),  # 4 classes: chance
])
def test_accuracy_on_separated_blobs(epsilon, rate, acc, check):
    x, y, q, truth = _blobs()
    ledger = PrivacyLedger(DELTA, accountant=acc)
    out = pk.private_knn_labels(q, x, y, num_classes=4, k=15, epsilon=epsilon, delta=DELTA,
                                sampling_rate=rate, accountant=acc, ledger=ledger)
    assert out.labels.shape == (200,) and out.labels.dtype == np.int32
    assert check(np.mean(out.labels == truth))
    if math.isinf(epsilon):
        assert out.sigma == 0.0 and math.isinf(ledger.epsilon())
        assert isinstance(ledger.entries[0].event, dp_accounting.NonPrivateDpEvent)
    elif epsilon < 1:  # unseeded noise: two releases differ
        again = pk.private_knn_labels(q, x, y, num_classes=4, k=15, epsilon=epsilon, delta=DELTA,
                                      accountant=acc)
        assert not np.array_equal(out.labels, again.labels)
    else:  # seeded noise: reproducible from the seed and the ledger position
        a, b = (pk.private_knn_labels(q, x, y, num_classes=4, k=15, epsilon=epsilon, delta=DELTA,
                                      accountant=acc, noise_seed=3,
                                      ledger=PrivacyLedger(DELTA, reproducible_seed=3)).labels
                for _ in range(2))
        np.testing.assert_array_equal(a, b)


def _noisy_labels(ledger, noise_seed, sampling_rate=1.0):
    """Labels at ε = 0.05 on 200 queries: nearly all noise, so two draws differ visibly."""
    x, y, q, _ = _blobs()
    return pk.private_knn_labels(q, x, y, num_classes=4, k=15, epsilon=0.05, delta=DELTA,
                                 sampling_rate=sampling_rate, accountant="rdp",
                                 noise_seed=noise_seed, ledger=ledger).labels


def test_seeded_labels_refuse_a_ledger_without_their_seed():
    for ledger in (PrivacyLedger(DELTA), PrivacyLedger(DELTA, reproducible_seed=4)):
        with pytest.raises(ValueError, match="reproducible_seed"):
            _noisy_labels(ledger, noise_seed=3)
        assert len(ledger) == 0
    with pytest.raises(ValueError, match="needs the ledger"):
        _noisy_labels(None, noise_seed=3)


@pytest.mark.parametrize("sampling_rate", [1.0, 0.5])
def test_seeded_labellings_draw_fresh_noise_each_call(sampling_rate):
    """Two labellings recorded in one seeded ledger use different coins and noise; a fresh
    ledger with the same seed replays both."""
    def two():
        ledger = PrivacyLedger(DELTA, reproducible_seed=3)
        return [_noisy_labels(ledger, 3, sampling_rate) for _ in range(2)]

    first, second = two()
    assert np.mean(first != second) > 0.3
    for a, b in zip(two(), (first, second)):
        np.testing.assert_array_equal(a, b)


def test_wire_bytes_per_label():
    assert [pk._wire_itemsize(c) for c in (2, 256, 257, 65536, 65537)] == [1, 1, 2, 2, 4]


_X = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
_Y = np.array([0, 1, 2, 0, 1, 2])
_Q = np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32)


@pytest.mark.parametrize("override, match", [
    ({"k": 0}, "k must"),
    ({"sampling_rate": 0.0}, "sampling_rate"),
    ({"sampling_rate": 1.5}, "sampling_rate"),
    ({"epsilon": 0.0}, "epsilon"),
    ({"epsilon": -1.0}, "epsilon"),
    ({"epsilon": math.nan}, "epsilon"),
    ({"delta": 0.0}, "delta"),
    ({"delta": 1.0}, "delta"),
    ({"client_features": np.zeros((0, 3), np.float32), "client_labels": np.zeros(0, int)},
     "client_features is empty"),
    ({"queries": np.zeros((0, 3), np.float32)}, "queries is empty"),
    ({"client_features": np.where(np.eye(6, 3) > 0, np.nan, _X).astype(np.float32)}, "NaN"),
    ({"queries": np.full((4, 3), np.inf, np.float32)}, "NaN or inf"),
    ({"queries": np.zeros((4, 2), np.float32)}, "dimension mismatch"),
    ({"client_labels": np.array([0, 1, 3, 0, 1, 2])}, r"client_labels must lie in \[0, num_classes=3\)"),
    ({"client_labels": np.array([0, 1, -1, 0, 1, 2])}, "client_labels must lie"),
    ({"client_labels": np.array([0, 1, 2])}, r"client_labels must have shape \[N\]"),
    ({"client_labels": np.zeros((6, 1), int)}, r"client_labels must have shape \[N\]"),
    ({"client_labels": _Y.astype(np.float32)}, "client_labels must be integers"),
    ({"accountant": "exact"}, "accountant"),
])
def test_bad_input_raises(override, match):
    kwargs = dict(queries=_Q, client_features=_X, client_labels=_Y, num_classes=3, k=2,
                  epsilon=1.0, delta=DELTA, accountant="rdp")
    kwargs.update(override)
    with pytest.raises(ValueError, match=match):
        pk.private_knn_labels(**kwargs)


def test_bad_mechanism_parameters_raise():
    votes = np.zeros((2, 3), np.int32)
    for sigma in (-1.0, math.nan):
        with pytest.raises(ValueError, match="sigma"):
            pk.noisy_argmax(jax.random.key(0), votes, sigma)
        with pytest.raises(ValueError, match="sigma"):
            pk.labeling_event(sigma, 10)
    with pytest.raises(ValueError, match="votes"):
        pk.noisy_argmax(jax.random.key(0), np.zeros(3), 1.0)
    with pytest.raises(ValueError, match="sampling_rate"):
        pk.labeling_event(1.0, 10, 0.0)
    with pytest.raises(ValueError, match="num_queries"):
        pk.labeling_event(1.0, 0)
    with pytest.raises(ValueError, match="epsilon"):
        pk.calibrate_sigma(0.0, DELTA, 10)
    with pytest.raises(ValueError, match="delta"):
        pk.calibrate_sigma(1.0, 1.5, 10)
    with pytest.raises(ValueError, match="k must"):
        pk.knn_votes(jax.random.key(0), _Q, _X, _Y, num_classes=3, k=0)
    with pytest.raises(ValueError, match="chunk_size"):
        pk.knn_votes(jax.random.key(0), _Q, _X, _Y, num_classes=3, k=2, chunk_size=0)
    with pytest.raises(ValueError, match="key"):
        pk.knn_votes(0, _Q, _X, _Y, num_classes=3, k=2)
