"""dpsgd.train(padding="buckets"): the padded run's batches, parameters and ledger entry, on
shorter static prefixes; resumes bit for bit; bad options refused."""
import jax
import numpy as np
import optax
import pytest

from ecos_jax.models import get_model
from ecos_jax.parallel import mesh as mesh_lib
from ecos_jax.privacy import dpsgd
from ecos_jax.privacy.ledger import PrivacyLedger

# M = 18 slots for q·N = 16 (std 3.3): about one batch in four is over-full and truncated.
# The default buckets need 64 padding slots, so the tiny runs give their own prefix lengths.
N, B, M = 48, 16, 18
LENGTHS = (14,)


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def setup():
    model = get_model("mlp", 3, hidden=(4,))
    x = np.random.default_rng(1).normal(size=(N, 4, 4, 1)).astype(np.float32)
    y = np.arange(N) % 3
    return model, jax.jit(model.init)(jax.random.key(0), x[:1]), x, y


def _train(setup, cfg, padding, *, steps=6, ledger=None, **kw):
    model, params, x, y = setup
    return dpsgd.train(model, params, x, y, cfg, optax.adam(0.05), steps=steps, seed=3,
                       ledger=ledger, log_every=3, padding=padding, **kw)


def _ledger():
    return PrivacyLedger(1e-3, accountant="pld", reproducible_seed=3, dataset_size=N,
                         allow_large_delta=True)


def _close(a, b):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)


def test_default_buckets_at_dp_batch_sizes():
    # q·N = 5000 of 20,000 with M = 5080: q·N - 0.5 std and + 0.5 std (std 61) rounded up to
    # multiples of 8, then M; 1.5 std would be past M. Too few padding slots: M alone.
    kw = dict(expected_batch_size=5000, dataset_size=20_000)
    assert dpsgd.prefix_lengths("buckets", max_batch_size=5080, **kw) == (4976, 5032, 5080)
    assert dpsgd.prefix_lengths("buckets", max_batch_size=5080, multiple=3, **kw) == (
        4992, 5040, 5082)
    assert dpsgd.prefix_lengths("buckets", max_batch_size=5050, **kw) == (5050,)
    assert dpsgd.prefix_lengths((9, 13), max_batch_size=18, multiple=4, **kw) == (12, 16, 20)


# sigma 8: the truncated-Poisson PLD each run computes costs 0.35 s CPU (1 s at 3, 4 s at 1.1).
CFG = dpsgd.DPSGDConfig(dataset_size=N, batch_size=B, noise_multiplier=8.0, max_batch_size=M)


@pytest.fixture(scope="module")
def runs(setup):
    """The padded and the bucketed run of the same seed, each with its ledger."""
    ledgers = {"full": _ledger(), "buckets": _ledger()}
    results = {name: _train(setup, CFG, p, ledger=ledgers[name])
               for name, p in (("full", "full"), ("buckets", LENGTHS))}
    return results, ledgers


def test_buckets_run_the_padded_batches_and_record_the_same_event(runs):
    (full, buckets), ledgers, cfg = runs[0].values(), runs[1], CFG
    assert buckets.lengths == (*LENGTHS, M) and full.lengths == (M,)
    assert 2 <= buckets.compilations <= len(buckets.lengths)  # more than one length ran
    # The same draws: sampled rows, truncation, then the same update to float tolerance.
    # A prefix that cut a sampled row would change batch_size and the parameters.
    assert full.truncated_examples == buckets.truncated_examples > 0
    for f, b in zip(full.history, buckets.history, strict=True):
        assert f["batch_size"] == pytest.approx(b["batch_size"], rel=1e-6)
        assert f["truncated_examples"] == b["truncated_examples"]
        assert f["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert f["slots"] == M and b["batch_size"] <= b["slots"] <= M
    assert np.mean([h["slots"] for h in buckets.history]) < M
    _close(full.params, buckets.params)
    # Only weight-0 padding slots are skipped: the sampler, and so the event, is unchanged.
    assert buckets.event == full.event == cfg.event(6)
    fe, be = ledgers["full"].entries[0], ledgers["buckets"].entries[0]
    assert fe.event == be.event and fe.meta == be.meta and full.epsilon == buckets.epsilon


@pytest.mark.slow
def test_buckets_on_a_mesh_with_accumulation_match_one_device(setup, runs):
    # 2 devices x 2 micro-batches: every length a multiple of 4, split over both.
    ref = runs[0]["full"]
    res = _train(setup, CFG, LENGTHS, mesh=mesh_lib.local_mesh(2), accumulation_steps=2)
    assert res.lengths == (16, 20)
    assert [h["batch_size"] for h in res.history] == pytest.approx(
        [h["batch_size"] for h in ref.history], rel=1e-6)
    _close(ref.params, res.params)


def test_interrupted_bucketed_run_resumes_bitwise(setup, runs, tmp_path):
    cfg, ref = CFG, runs[0]["buckets"]

    def stop(state, record):
        if record["step"] == 6:
            raise Stop

    with pytest.raises(Stop):  # killed in step 6's hooks: step 3's checkpoint is the latest
        _train(setup, cfg, LENGTHS, checkpoint_dir=tmp_path, hooks=[stop])
    with pytest.raises(ValueError, match="padding"):  # the other path would not be bitwise
        _train(setup, cfg, "full", checkpoint_dir=tmp_path)
    res = _train(setup, cfg, LENGTHS, checkpoint_dir=tmp_path)
    assert res.resumed_from == 3
    for u, v in zip(jax.tree.leaves(res.params), jax.tree.leaves(ref.params), strict=True):
        np.testing.assert_array_equal(u, v)
    assert res.history == ref.history


def test_bad_padding_is_refused(setup):
    cfg = CFG
    with pytest.raises(ValueError, match="padding must be one of"):
        _train(setup, cfg, "bucket")
    for lengths in [(16, 12), (0, 8), (8, M), (8.5,), ()]:
        with pytest.raises(ValueError, match="increasing ints"):
            _train(setup, cfg, lengths)
    shuffle = dpsgd.DPSGDConfig(dataset_size=N, batch_size=B, sampling="shuffle")
    with pytest.raises(ValueError, match="padding must be one of"):
        _train(setup, shuffle, "bucket")
    with pytest.raises(ValueError, match="Poisson sampling only"):
        _train(setup, shuffle, "buckets")
    with pytest.raises(ValueError, match="Poisson sampling only"):
        _train(setup, shuffle, LENGTHS)
