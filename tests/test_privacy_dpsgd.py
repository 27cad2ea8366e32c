"""DP-SGD pieces: clipping bound, noise scale, Poisson rate, one compilation, non-private limit."""
from functools import partial

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ecos_jax.models import get_model
from ecos_jax.privacy import accounting, clipping, dpsgd
from ecos_jax.privacy.ledger import PrivacyLedger
from ecos_jax.privacy.noise import add_gaussian_noise
from ecos_jax.privacy.sampling import PoissonSampler, ShuffleSampler

N, B = 48, 8


def _per_example():
    rng = np.random.default_rng(0)
    return {"layer0": {"kernel": 3 * rng.normal(size=(16, 4, 3)).astype(np.float32),
                       "bias": rng.normal(size=(16, 3)).astype(np.float32)},
            "layer1": {"kernel": 0.01 * rng.normal(size=(16, 5)).astype(np.float32)}}


def test_clipped_norms_are_at_most_c():
    g = _per_example()
    clip = jax.jit(clipping.clip_per_example, static_argnames=("l2_norm_clip", "clipping"))
    for mode, bound in [("flat", 1.0), ("per_layer", 1.0 / np.sqrt(2))]:
        clipped, norms = clip(g, 1.0, clipping=mode)
        new_norms = np.asarray(clip(clipped, np.inf)[1])
        assert (new_norms <= 1.0 + 1e-5).all()
        for layer in clipped.values():  # per layer: each module within C/sqrt(L)
            layer_norm = np.sqrt(sum(np.sum(np.reshape(v, (16, -1)) ** 2, 1) for v in layer.values()))
            if mode == "per_layer":
                assert (layer_norm <= bound + 1e-5).all()
        small = np.asarray(norms) <= 1.0  # already-small gradients are untouched
        np.testing.assert_allclose(new_norms[small], np.asarray(norms)[small], rtol=1e-5)
    mask = np.arange(16) % 3 != 0
    tx = clipping.clip_and_sum(1.0)
    total, _ = jax.jit(partial(tx.update, mask=mask))(g, tx.init(None))
    want = jax.tree.map(lambda v: np.sum(v * mask.reshape(-1, *[1] * (v.ndim - 1)), 0),
                        clip(g, 1.0)[0])
    for a, b in zip(jax.tree.leaves(total), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_noise_std_matches_sigma_c_and_divides_by_expected_batch():
    zeros = {"w": jnp.zeros((300, 300)), "b": jnp.zeros(1000)}
    tx = add_gaussian_noise(1.5, 2.0, expected_batch_size=4.0, key=jax.random.key(3))
    state = tx.init(zeros)
    out, state = tx.update(zeros, state)
    out2, state = tx.update(zeros, state)
    z = np.concatenate([np.ravel(v) for v in jax.tree.leaves(out)]) * 4.0
    # std of the sample std ~ s/sqrt(2n) = 3/sqrt(182000) = 0.005: allow 5 of those.
    assert z.std() == pytest.approx(1.5 * 2.0, abs=0.035)
    assert abs(z.mean()) < 5 * 3.0 / np.sqrt(z.size)
    assert int(state.count) == 2 and not np.allclose(out["b"], out2["b"])
    for bad, match in [(dict(noise_multiplier=-1.0), "noise_multiplier"),
                       (dict(l2_sensitivity=0.0), "sensitivity"),
                       (dict(expected_batch_size=0.0), "expected_batch_size")]:
        kw = dict(noise_multiplier=1.0, l2_sensitivity=1.0, expected_batch_size=1.0) | bad
        with pytest.raises(ValueError, match=match):
            add_gaussian_noise(kw.pop("noise_multiplier"), kw.pop("l2_sensitivity"), key=jax.random.key(0), **kw)


def test_poisson_inclusion_rate_and_truncation():
    sampler = PoissonSampler(dataset_size=400, sampling_rate=0.05)
    keys = jax.random.split(jax.random.key(0), 300)
    batches = jax.vmap(sampler.sample)(keys)
    counts = np.zeros(400)
    for idx, m in zip(np.asarray(batches.indices), np.asarray(batches.mask)):
        assert len(set(idx[m])) == m.sum()  # no example twice
        np.add.at(counts, idx[m], 1)
    rate = counts.sum() / (300 * 400)
    assert rate == pytest.approx(0.05, abs=5 * np.sqrt(0.05 * 0.95 / (300 * 400)))
    np.testing.assert_array_equal(np.asarray(batches.mask).sum(1), np.asarray(batches.num_sampled))
    assert int(batches.truncated.sum()) == 0
    small = PoissonSampler(dataset_size=400, sampling_rate=0.5, max_batch_size=150)
    b = small.sample(jax.random.key(1))
    assert bool(b.mask.all()) and int(b.truncated) == int(b.num_sampled) - 150 > 0
    assert len(set(np.asarray(b.indices))) == 150


def test_shuffle_epoch_covers_dataset_once():
    s = ShuffleSampler(dataset_size=50, batch_size=8)
    idx = np.asarray(s.epoch(jax.random.key(0)))
    assert idx.shape == (6, 8) and len(set(idx.ravel())) == 48


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(noise_multiplier=-0.1), "sigma"),
        (dict(l2_norm_clip=0.0), "l2_norm_clip"),
        (dict(l2_norm_clip=-1.0), "l2_norm_clip"),
        (dict(batch_size=N + 1), "batch_size"),
        (dict(l2_norm_clip=float("inf")), "unbounded"),
        (dict(sampling="fixed"), "sampling"),
        (dict(max_batch_size=0), "max_batch_size"),
    ],
)
def test_config_bad_input(kw, match):
    with pytest.raises(ValueError, match=match):
        dpsgd.DPSGDConfig(**(dict(dataset_size=N, batch_size=B) | kw))
    with pytest.raises(ValueError, match="q must be in"):
        PoissonSampler(dataset_size=N, sampling_rate=1.5)


def _data():
    model = get_model("mlp", 3, hidden=(8,))
    x = np.random.default_rng(1).normal(size=(N, 4, 4, 1)).astype(np.float32)
    y = np.arange(N) % 3
    return model, jax.jit(model.init)(jax.random.key(0), x[:1]), x, y


@pytest.mark.parametrize("grad_method", ["layers", "vmap"])
def test_c_inf_sigma_zero_equals_non_private_update(grad_method):
    model, params, x, y = _data()
    cfg = dpsgd.DPSGDConfig(dataset_size=N, batch_size=B, l2_norm_clip=float("inf"),
                            noise_multiplier=0.0, grad_method=grad_method)
    init, step = dpsgd.make_dp_step(model, optax.sgd(0.3), cfg, key=jax.random.key(0))
    state, _ = step(init(params), x[:B], y[:B], jnp.ones(B))

    @jax.jit
    def sgd_step(p):
        def mean_loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x[:B]), y[:B]).mean()

        return optax.apply_updates(p, jax.tree.map(lambda g: -0.3 * g, jax.grad(mean_loss)(p)))

    want = sgd_step(params)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_train_compiles_once_and_records_ledger():
    model, params, x, y = _data()
    cfg = dpsgd.DPSGDConfig(dataset_size=N, batch_size=B, l2_norm_clip=1.0, noise_multiplier=2.0)
    ledger = PrivacyLedger(1e-3, accountant="pld", reproducible_seed=5, dataset_size=N,
                           allow_large_delta=True)
    res = dpsgd.train(model, params, x, y, cfg, optax.sgd(0.1), steps=7, seed=5, ledger=ledger,
                      log_every=3)
    assert res.compilations == 1 and len(res.history) == 3 and res.history[-1]["step"] == 7
    assert res.reproducible and ledger.to_dict()["reproducible"]
    # The sampler has M = qN + 5 std + 1 = 22 < N slots: the event is truncated Poisson even
    # though no batch was cut in this run, and only PLD can account it.
    m = cfg.sampler().max_batch_size
    direct = dp_accounting.SelfComposedDpEvent(
        dp_accounting.TruncatedSubsampledGaussianDpEvent(N, B / N, m, 2.0), 7)
    assert m == 22 and res.truncated_examples == 0
    assert res.event == direct == cfg.event(7)
    assert ledger.composed_event() == dp_accounting.ComposedDpEvent([direct])
    assert res.epsilon["rdp"] is None and cfg.accountants(7) == ("pld",)
    assert res.epsilon["pld"] == accounting.epsilon(direct, 1e-3, "pld") == ledger.epsilon()
    entry = ledger.entries[0]
    assert entry.meta["truncated_examples"] == 0 and entry.relation == "add_or_remove_one"
    with pytest.raises(ValueError, match="reproducible_seed"):
        dpsgd.train(model, params, x, y, cfg, optax.sgd(0.1), steps=1, seed=5,
                    ledger=PrivacyLedger(1e-3, allow_large_delta=True))
    shuffle = dpsgd.DPSGDConfig(dataset_size=N, batch_size=B, sampling="shuffle")
    with pytest.raises(ValueError, match="replace_one"):  # refused before any training
        dpsgd.train(model, params, x, y, shuffle, optax.sgd(0.1), steps=1, seed=5,
                    ledger=PrivacyLedger(1e-3, reproducible_seed=5, allow_large_delta=True))


def test_truncated_poisson_is_what_the_ledger_accounts():
    # Few slots (M = 1.05 qN): the truncated sampler's ε is ~2.5x the plain Poisson one, and
    # the ledger must carry the former, computed here with dp_accounting directly. σ = 2: the PLDs
    # build 2.4x faster than at σ = 1.2, and the gap stays.
    model, params, x, y = _data()
    m = int(np.ceil(1.05 * B))
    tight = dpsgd.DPSGDConfig(dataset_size=N, batch_size=B, noise_multiplier=2.0,
                              max_batch_size=m)
    ledger = PrivacyLedger(1e-3, accountant="pld", reproducible_seed=5, dataset_size=N,
                           allow_large_delta=True)
    res = dpsgd.train(model, params, x, y, tight, optax.sgd(0.1), steps=7, seed=5,
                      ledger=ledger, log_every=7)
    pld = dp_accounting.pld.PLDAccountant
    truncated = pld().compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.TruncatedSubsampledGaussianDpEvent(N, B / N, m, 2.0), 7)).get_epsilon(1e-3)
    poisson = pld().compose(dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(
        B / N, dp_accounting.GaussianDpEvent(2.0)), 7)).get_epsilon(1e-3)
    assert ledger.epsilon() == pytest.approx(truncated, rel=1e-9) == res.epsilon["pld"]
    assert ledger.epsilon() > 2 * poisson
    assert ledger.accountants() == ("pld",) and ledger.to_dict()["total_epsilon"]["rdp"] is None
    meta = ledger.entries[0].meta
    assert res.truncated_examples > 0 and meta["truncated_batches"] > 0
    assert meta["max_batch_size"] == m


def test_calibration_targets_the_truncated_event():
    tight = dpsgd.DPSGDConfig(dataset_size=N, batch_size=B, max_batch_size=9)
    cal = tight.calibrated(2.0, 1e-3, steps=7, allow_large_delta=True)  # ε = 2 (not 4): fewer, faster PLDs
    assert cal.epsilon(7, 1e-3) == pytest.approx(2.0, rel=2e-2) and cal.epsilon(7, 1e-3) <= 2.0


@pytest.mark.slow
def test_seeded_runs_reproduce_and_unseeded_differ():
    model, params, x, y = _data()
    cfg = dpsgd.DPSGDConfig(dataset_size=N, batch_size=B, l2_norm_clip=1.0, noise_multiplier=2.0)

    def run(seed):
        return dpsgd.train(model, params, x, y, cfg, optax.sgd(0.1), steps=4, seed=seed).params

    a, b, c = run(5), run(5), run(None)
    for u, v, w in zip(jax.tree.leaves(a), jax.tree.leaves(b), jax.tree.leaves(c)):
        np.testing.assert_array_equal(u, v)
        assert not np.array_equal(u, w)


def _poisoned(x, rows, value=np.nan):
    x = np.array(x)
    x[rows] = value
    return x


@pytest.mark.parametrize("grad_method", ["layers", "vmap"])
def test_padding_and_nonfinite_rows_add_exact_zeros(grad_method):
    # Padding slots point at dataset row 0; a NaN/inf there used to reach the sum through
    # 0 * NaN. Padded rows must add exact zeros whatever they hold, and a sampled example
    # with a non-finite gradient is zeroed (not clipped) and counted.
    model, params, x, y = _data()
    cfg = dpsgd.DPSGDConfig(dataset_size=N, batch_size=B, noise_multiplier=2.0,
                            grad_method=grad_method)
    init, step = dpsgd.make_dp_step(model, optax.sgd(0.5), cfg, key=jax.random.key(0))
    state = init(params)
    xb, yb = x[:B], y[:B]
    mask = np.arange(B) < 5  # rows 5.. are padding
    clean, m_clean = step(state, xb, yb, mask)
    nan_pad, m_nan = step(state, _poisoned(xb, [5, 6]), yb, mask)
    inf_pad, _ = step(state, _poisoned(xb, [7], np.inf), yb, mask)
    # A sampled NaN example (row 4) counts as a zero: same update as leaving it out, since
    # the noisy sum is divided by the expected batch size, not the realised one.
    sampled_nan, m_sampled = step(state, _poisoned(xb, [4]), yb, mask)
    without, _ = step(state, xb, yb, np.arange(B) < 4)
    for a, b, c, d, e in zip(*(jax.tree.leaves(s.params) for s in
                               (clean, nan_pad, inf_pad, sampled_nan, without))):
        assert all(np.isfinite(v).all() for v in (a, b, c, d, e))
        np.testing.assert_array_equal(b, a)
        np.testing.assert_array_equal(c, a)
        np.testing.assert_array_equal(d, e)
    assert float(m_clean["nonfinite"]) == float(m_nan["nonfinite"]) == 0.0
    assert float(m_sampled["nonfinite"]) == 1.0 and float(m_sampled["batch_size"]) == 5.0
    assert np.isfinite(float(m_sampled["loss"])) and np.isfinite(float(m_nan["loss"]))


def test_nan_at_row_zero_does_not_poison_training():
    # Before the fix every run with a NaN input at index 0 ended NaN, sampled or not.
    model, params, x, y = _data()
    cfg = dpsgd.DPSGDConfig(dataset_size=N, batch_size=4, noise_multiplier=2.0)

    def run(data, **kw):
        return dpsgd.train(model, params, data, y, cfg, optax.sgd(0.1), seed=0, log_every=5, **kw)

    clean, poisoned = run(x, steps=5), run(_poisoned(x, [0]), steps=5)
    # With this seed row 0 is never sampled: the run equals the one on clean data exactly.
    assert poisoned.nonfinite_examples == 0
    for a, b in zip(jax.tree.leaves(clean.params), jax.tree.leaves(poisoned.params)):
        assert np.isfinite(b).all()
        np.testing.assert_array_equal(a, b)
    # Sampled often (q = 1/2): zeroed and counted each time, the run stays finite.
    half = dpsgd.DPSGDConfig(dataset_size=N, batch_size=N // 2, noise_multiplier=2.0)
    res = dpsgd.train(model, params, _poisoned(x, [0]), y, half, optax.sgd(0.1), seed=0,
                      steps=4, log_every=2)
    assert res.nonfinite_examples == sum(h["nonfinite"] for h in res.history) > 0
    assert all(np.isfinite(v).all() for v in jax.tree.leaves(res.params))
