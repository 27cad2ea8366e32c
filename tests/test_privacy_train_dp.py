"""The accuracy-vs-ε experiment: config validation before work, and a tiny end-to-end run."""
import json
import math
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))

import train_dp as train_dp_config  # noqa: E402

from ecos_jax.experiments import train_dp  # noqa: E402


def _config(**fields):
    """The quick config with `fields` ({"section.field": value}) set, as on the command line."""
    c = train_dp_config.get_config("quick")
    c.unlock()
    for k, v in fields.items():
        section, name = k.split(".") if "." in k else (None, k)
        setattr(c[section] if section else c, name, v)
    return c


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"epsilons": ("1,x",)}, "comma-separated"),
        ({"epsilons": (0.0, 8.0)}, "must be > 0"),
        ({"epsilons": ()}, "empty"),
        ({"privacy.delta": 1e-3}, "1/N"),
        ({"train.batch_size": 0}, "batch_size"),
        ({"dp.l2_norm_clip": 0.0}, "l2_norm_clip"),
        ({"dp.sampling": "fixed"}, "sampling"),
        ({"train.epochs": 0}, "epochs"),
    ],
)
def test_bad_config_is_refused_before_training(fields, match):
    with pytest.raises(ValueError, match=match):
        train_dp.validate(_config(**fields), n_train=5000)


def test_steps_and_epsilons_from_config():
    c = _config(**{"train.epochs": 2, "train.batch_size": 250})
    assert train_dp.validate(c, n_train=5000) == 40
    assert train_dp.target_epsilons("1, 8,inf") == [1.0, 8.0, math.inf]
    # --config.epsilons='(1,8,inf)' reaches the config as a one-string tuple (inf is no literal)
    assert train_dp.target_epsilons(("(1,8,inf)",)) == [1.0, 8.0, math.inf]
    assert train_dp.target_epsilons((1, 8.0, math.inf)) == [1.0, 8.0, math.inf]
    with pytest.raises(ValueError, match="variant"):
        train_dp_config.get_config("huge")


@pytest.mark.slow
def test_end_to_end_tiny(tmp_path):
    c = _config(**{"epsilons": (8.0, math.inf), "train.epochs": 1, "train.batch_size": 512})
    c.progress = False
    c.privacy.noise_seed = 0
    records = train_dp.run(c, tmp_path)
    assert [r["target_epsilon"] for r in records] == ["8", "inf"]
    # Truncated Poisson (M < N slots): only PLD accounts it, and σ was calibrated for it.
    assert records[0]["epsilon_rdp"] == "n/a" and records[1]["epsilon_pld"] == "inf"
    assert 7.5 < float(records[0]["epsilon_pld"]) <= 8.0
    for name in ("results.json", "results.md", "accuracy_vs_epsilon.png", "ledger_eps8.json",
                 "ledger_epsinf.json"):
        assert (tmp_path / name).stat().st_size > 0
    ledger = json.loads((tmp_path / "ledger_eps8.json").read_text())
    assert ledger["reproducible"] and ledger["total_epsilon"]["rdp"] is None
    assert ledger["total_epsilon"]["pld"] <= 8.0
    assert ledger["entries"][0]["event"]["event"]["class_name"] == "TruncatedSubsampledGaussianDpEvent"
    md = (tmp_path / "results.md").read_text()
    assert "∞" in md and "RDP n/a" in md


def test_validation_carve_trains_on_the_first_n_and_never_reads_the_test_split(tmp_path, monkeypatch):
    import numpy as np

    train, _ = _tiny_datasets(monkeypatch, n_train=300, n_test=50)
    seen = []
    real = train_dp.training.evaluate

    def evaluate(model, params, x, y, **kw):
        seen.append((np.asarray(x), np.asarray(y)))
        return real(model, params, x, y, **kw)

    monkeypatch.setattr(train_dp.training, "evaluate", evaluate)
    c = _config(**{"epsilons": (math.inf,), "train.epochs": 1, "train.batch_size": 50,
                   "train.model": "linear", "data.validation_size": 100, "average_tail": 0.5})
    c.progress = False
    c.privacy.noise_seed = 0
    (record,) = train_dp.run(c, tmp_path)
    # The tail average is read on the same validation carve (one chunk end here).
    assert record["tail_average_points"] == 1
    assert record["test_accuracy_tail_average"] == record["test_accuracy"]
    # T = epochs · (N - n) / batch: trained on the first 200 only.
    assert record["steps"] == 4 and record["sampling_rate"] == 50 / 200
    assert record["eval_split"].startswith("validation")
    assert seen and all(np.array_equal(x, train.images[200:]) and np.array_equal(y, train.labels[200:])
                        for x, y in seen)
    assert "validation accuracy %" in (tmp_path / "results.md").read_text()
    with pytest.raises(ValueError, match="validation_size"):
        train_dp.carve_validation(train.images, train.labels, 300)


def _tiny_datasets(monkeypatch, n_train=200, n_test=20):
    """Random 28 x 28 train / test ArrayDatasets that `train_dp.load_split` returns; (train, test)."""
    import numpy as np

    from ecos_jax.data import ArrayDataset

    rng = np.random.default_rng(0)

    def dataset(n):
        return ArrayDataset(images=rng.uniform(size=(n, 28, 28, 1)).astype(np.float32),
                            labels=rng.integers(0, 10, n).astype(np.int32),
                            domains=np.zeros(n, np.int32), domain_names=("clean",),
                            num_classes=10, ids=np.arange(n))

    train, test = dataset(n_train), dataset(n_test)
    monkeypatch.setattr(train_dp, "load_split", lambda data: (train, test))
    return train, test


@pytest.mark.slow  # ~15 s idle (scattering and DP-SGD compiles, PLD of the composition)
def test_dp_normalisation_statistics_compose_with_dpsgd_in_one_ledger(tmp_path, monkeypatch):
    import dp_accounting

    _tiny_datasets(monkeypatch)
    # No truncation (M = N): plain Poisson, so RDP calibrates (fast) and can be checked.
    c = _config(**{"epsilons": (3.0,), "train.epochs": 1, "train.batch_size": 50,
                   "train.model": "linear", "dp.max_batch_size": 200,
                   "dp.l2_norm_clip": 0.1, "features.name": "scattering",
                   "features.normalization": "group_norm_dp_data",
                   "features.stats_noise_multiplier": 5.0, "features.batch_size": 100,
                   "features.cache_dir": None})
    c.progress = False
    c.privacy.noise_seed = 0
    (record,) = train_dp.run(c, tmp_path)
    ledger = json.loads((tmp_path / "ledger_eps3.json").read_text())
    assert [e["name"] for e in ledger["entries"]] == ["feature_stats", "linear_dpsgd"]
    assert {e["relation"] for e in ledger["entries"]} == {"add_or_remove_one"}
    # The total, composed by dp_accounting directly, meets the target: DP-SGD's σ was
    # calibrated for the composition.
    sigma = record["noise_multiplier"]
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(dp_accounting.GaussianDpEvent(5.0)).compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.25, dp_accounting.GaussianDpEvent(sigma)), 4))
    assert 2.99 < acc.get_epsilon(1e-5) <= 3.0 + 1e-6
    assert 2.99 < float(record["epsilon_rdp"]) <= 3.0 + 1e-6
    assert record["stats_noise_multiplier"] == 5.0
    assert "DP statistics" in (tmp_path / "results.md").read_text()
    saved = json.loads((tmp_path / "feature_stats_eps3.json").read_text())
    assert len(saved["stats"]["mean"]) == 81 and saved["settings"]["noise_multiplier"] == 5.0


def test_dp_normalize_records_its_release_and_a_rerun_reads_it_back(tmp_path):
    import numpy as np

    from ecos_jax.privacy.ledger import PrivacyLedger

    c = _config(**{"features.name": "scattering", "features.normalization": "dp_data",
                   "features.stats_noise_multiplier": 5.0, "features.stats_clip_mean": 50.0,
                   "features.stats_clip_square": 5000.0})
    rng = np.random.default_rng(0)
    x_train = (rng.normal(size=(300, 2, 2, 3)) * [1.0, 2.0, 3.0] + [0.0, 5.0, -5.0])
    x_train = x_train.astype(np.float32)
    x_test = x_train[:7]
    ledger = PrivacyLedger(1e-5)
    path = tmp_path / "feature_stats.json"
    a, b, info = train_dp.dp_normalize(c.features, x_train, x_test, target=3.0, noise_seed=None,
                                       ledger=ledger, path=path)
    (entry,) = ledger.entries
    assert entry.name == "feature_stats" and entry.relation == "add_or_remove_one"
    assert entry.event == dp_event_gaussian(5.0) and "sqrt(3)" in entry.sensitivity
    assert info["stats_noise_multiplier"] == 5.0
    # Standardised per channel with noisy statistics (near 0 / 1 at N = 300), and the test
    # split with the same released values.
    np.testing.assert_allclose(a.mean(axis=(0, 1, 2)), 0.0, atol=0.5)
    np.testing.assert_allclose(b, a[:7], rtol=1e-6)
    # A rerun with the same settings trains on the same release (unseeded noise would differ).
    ledger2 = PrivacyLedger(1e-5)
    a2, _, _ = train_dp.dp_normalize(c.features, x_train, x_test, target=3.0, noise_seed=None,
                                     ledger=ledger2, path=path)
    np.testing.assert_array_equal(a, a2)
    assert len(ledger2.entries) == 1      # the run's ledger still holds the one release
    # Other settings: a new release (fresh OS noise), the file rewritten.
    a3, _, _ = train_dp.dp_normalize(c.features, x_train[:299], x_test, target=3.0,
                                     noise_seed=None, ledger=None, path=path)
    assert not np.array_equal(a3[:7], a[:7])
    assert json.loads(path.read_text())["settings"]["n"] == 299
    # ε = ∞: the exact statistics, non-private event.
    ledger3 = PrivacyLedger(1e-5)
    z, _, _ = train_dp.dp_normalize(c.features, x_train, x_test, target=math.inf,
                                    noise_seed=None, ledger=ledger3, path=None)
    np.testing.assert_allclose(z.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    assert ledger3.epsilon() == math.inf


def dp_event_gaussian(sigma):
    import dp_accounting

    return dp_accounting.GaussianDpEvent(sigma)

def test_dp_normalisation_is_refused_where_it_cannot_compose():
    with pytest.raises(ValueError, match="poisson"):
        train_dp.validate(_config(**{"features.name": "scattering", "dp.sampling": "shuffle",
                                     "features.normalization": "dp_data"}), n_train=5000)
    with pytest.raises(ValueError, match="scattering"):
        train_dp.validate(_config(**{"features.normalization": "dp_data"}), n_train=5000)
    with pytest.raises(ValueError, match="alone spend"):
        train_dp.validate(_config(**{"features.name": "scattering", "epsilons": (0.1,),
                                     "features.normalization": "dp_data"}), n_train=5000)


def test_tail_average_is_the_mean_of_the_chunk_end_parameters_after_its_start():
    import numpy as np

    hook = train_dp.TailAverage(start_step=20)
    assert hook.params() is None
    for step, w in ((10, 100.0), (20, 50.0), (30, 1.0), (40, 2.0), (50, 6.0)):
        state = type("S", (), {"params": {"w": np.full((2,), w, np.float32)}})()
        hook(state, {"step": step})
    assert hook.count == 3
    np.testing.assert_allclose(hook.params()["w"], [3.0, 3.0])
    with pytest.raises(ValueError, match="average_tail"):
        train_dp.validate(_config(average_tail=1.0), n_train=5000)
