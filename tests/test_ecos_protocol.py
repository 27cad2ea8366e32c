"""The ECOS protocol: coverage counts, their noise, ε against dp_accounting, bytes, bad input."""
import dp_accounting
import jax
import numpy as np
import pytest
from dp_accounting import pld

from ecos_jax.ecos import protocol
from ecos_jax.privacy.ledger import PrivacyLedger


def _layout(seed=0):
    """Pool: 6 well-separated blobs of 100 points in 4-d; client: 60 points from blob 2."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (6, 4))
    pool = np.concatenate([c + rng.normal(0, 0.5, (100, 4)) for c in centres]).astype(np.float32)
    client = (centres[2] + rng.normal(0, 0.5, (60, 4))).astype(np.float32)
    return pool, client, np.repeat(np.arange(6), 100)


def test_coverage_counts_by_hand():
    centroids = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], np.float32)
    client = np.array([[1, 0], [9, 1], [11, -1], [0, 8]], np.float32)
    np.testing.assert_array_equal(protocol.coverage_counts(client, centroids), [1, 2, 1])


def test_epsilon_matches_dp_accounting_and_ledger():
    _, client_f, _ = _layout()
    client = protocol.Client(client_f, epsilon=0.58, delta=1e-5, accountant="pld")
    acc = pld.PLDAccountant()
    acc.compose(dp_accounting.GaussianDpEvent(client.sigma))
    direct = acc.get_epsilon(1e-5)
    assert direct == pytest.approx(0.58, abs=0.01)  # calibrated to the target, not looser
    ledger = PrivacyLedger(1e-5, accountant="pld")
    client.respond(protocol.Centroids(np.zeros((5, 4), np.float32)), ledger)
    assert len(ledger) == 1
    assert ledger.epsilon() == pytest.approx(direct, rel=1e-6)


def test_noise_scale_matches_sigma():
    rng = np.random.default_rng(0)
    client_f = rng.normal(size=(50, 2)).astype(np.float32)
    centroids = rng.normal(size=(4000, 2)).astype(np.float32)
    client = protocol.Client(client_f, epsilon=1.0, delta=1e-5, noise_seed=3)
    resp = client.respond(protocol.Centroids(centroids))
    residual = resp.counts - protocol.coverage_counts(client_f, centroids)
    # 4000 draws: the sample std is within ~5% of sigma with overwhelming probability.
    assert np.std(residual) == pytest.approx(client.sigma, rel=0.06)
    assert abs(np.mean(residual)) < 4 * client.sigma / np.sqrt(4000)


def test_run_concentrates_on_client_blob_and_counts_bytes():
    pool, client_f, blob = _layout()
    ledger = PrivacyLedger(1e-5, accountant="pld", reproducible_seed=0)
    res = protocol.run(protocol.Cloud(pool, num_centroids=6), protocol.Client(client_f, epsilon=8.0, noise_seed=0),
                       budget=80, key=jax.random.key(0), ledger=ledger)
    assert len(np.unique(res.indices)) == 80
    assert np.mean(blob[res.indices] == 2) > 0.9
    assert res.bytes_down == 6 * 4 * 4 and res.bytes_up == 6 * 4
    assert ledger.to_dict()["entries"][0]["sensitivity"].startswith("L2 = 1")


def test_seeded_noise_is_reproducible_and_default_is_not():
    _, client_f, _ = _layout()
    msg = protocol.Centroids(np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32))
    a = protocol.Client(client_f, noise_seed=1).respond(msg).counts
    b = protocol.Client(client_f, noise_seed=1).respond(msg).counts
    c = protocol.Client(client_f).respond(msg).counts
    d = protocol.Client(client_f).respond(msg).counts
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(c, d)


def test_seeded_client_refuses_a_ledger_without_its_seed():
    """A seeded response in a ledger that does not carry the seed would claim a guarantee the
    seed voids; refused before anything is recorded."""
    _, client_f, _ = _layout()
    msg = protocol.Centroids(np.zeros((5, 4), np.float32))
    for ledger in (PrivacyLedger(1e-5), PrivacyLedger(1e-5, reproducible_seed=8)):
        with pytest.raises(ValueError, match="reproducible_seed"):
            protocol.Client(client_f, epsilon=1.0, noise_seed=7).respond(msg, ledger)
        assert len(ledger) == 0
    ledger = PrivacyLedger(1e-5, reproducible_seed=7)
    protocol.Client(client_f, epsilon=1.0, noise_seed=7).respond(msg, ledger)
    assert ledger.reproducible and ledger.to_dict()["entries"][0]["meta"]["reproducible_noise"]


def test_seeded_client_draws_fresh_noise_on_every_response():
    """One seeded client never reuses a draw (with or without a ledger), and the whole sequence
    is still reproducible from the seed."""
    _, client_f, _ = _layout()
    msg = protocol.Centroids(np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32))

    def three_responses():
        client = protocol.Client(client_f, epsilon=1.0, noise_seed=5)
        ledger = PrivacyLedger(1e-5, reproducible_seed=5)
        return [client.respond(msg, ledger).counts, client.respond(msg, ledger).counts,
                client.respond(msg).counts]

    first, second, unrecorded = three_responses()
    assert not np.array_equal(first, second)
    assert not np.array_equal(first, unrecorded) and not np.array_equal(second, unrecorded)
    for a, b in zip(three_responses(), (first, second, unrecorded)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kwargs, match", [
    ({"epsilon": 0.0}, "epsilon"),
    ({"epsilon": -1.0}, "epsilon"),
    ({"delta": 1.0}, "delta"),
    ({"features": np.zeros((0, 4), np.float32)}, "empty"),
    ({"features": np.full((3, 4), np.nan, np.float32)}, "NaN"),
    ({"features": np.zeros((3, 4, 1), np.float32)}, r"\[N, d\]"),
])
def test_client_bad_input(kwargs, match):
    args = {"features": np.zeros((3, 4), np.float32), **kwargs}
    with pytest.raises(ValueError, match=match):
        protocol.Client(**args)


def test_budget_larger_than_pool():
    pool, client_f, _ = _layout()
    with pytest.raises(ValueError, match="budget"):
        protocol.run(protocol.Cloud(pool, num_centroids=6), protocol.Client(client_f), budget=601,
                     key=jax.random.key(0))


def test_lean_encoding_halves_bytes_and_keeps_the_release():
    """float16 centroids + int16 counts: half the bytes; the counts are the float32 release
    rounded (post-processing, same ledger event), and the picks still find the client's blob."""
    pool, client_f, blob = _layout()
    assert protocol.message_bytes(30, 32) == (30 * 32 * 4, 30 * 4)
    assert protocol.message_bytes(30, 32, centroid_dtype="float16", count_dtype="int16") == (30 * 32 * 2, 30 * 2)
    cloud = protocol.Cloud(pool, num_centroids=6, centroid_dtype="float16")
    msg = cloud.compress(jax.random.key(0))
    assert msg.centroids.dtype == np.float16 and msg.nbytes == 6 * 4 * 2
    ledgers = [PrivacyLedger(1e-5, accountant="pld", reproducible_seed=4) for _ in range(2)]
    full = protocol.Client(client_f, epsilon=1.0, noise_seed=4).respond(msg, ledgers[0])
    lean = protocol.Client(client_f, epsilon=1.0, noise_seed=4, count_dtype="int16").respond(msg, ledgers[1])
    assert lean.counts.dtype == np.int16 and lean.nbytes == 6 * 2
    np.testing.assert_array_equal(lean.counts, np.rint(full.counts))
    assert ledgers[1].epsilon() == ledgers[0].epsilon()
    in_blob = [np.mean(blob[cloud.sample(jax.random.key(1), r, 80)] == 2) for r in (full, lean)]
    assert min(in_blob) > 0.8 and abs(in_blob[0] - in_blob[1]) <= 0.05
    np.testing.assert_array_equal(protocol.encode_counts(np.array([1e6, -1e6, 2.4]), "int16"), [32767, -32768, 2])


@pytest.mark.parametrize("make", [
    lambda p, c: protocol.Cloud(p, num_centroids=6, centroid_dtype="int8"),
    lambda p, c: protocol.Client(c, count_dtype="float64"),
    lambda p, c: protocol.message_bytes(6, 4, count_dtype="uint8"),
])
def test_unknown_wire_dtype_rejected(make):
    pool, client_f, _ = _layout()
    with pytest.raises(ValueError, match="dtype must be one of"):
        make(pool, client_f)
