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

    from ecos_jax.data import ArrayDataset

    rng = np.random.default_rng(0)

    def dataset(n):
        return ArrayDataset(images=rng.uniform(size=(n, 28, 28, 1)).astype(np.float32),
                            labels=rng.integers(0, 10, n).astype(np.int32),
                            domains=np.zeros(n, np.int32), domain_names=("clean",),
                            num_classes=10, ids=np.arange(n))

    train, test = dataset(300), dataset(50)
    monkeypatch.setattr(train_dp, "load_split", lambda data: (train, test))
    seen = []
    real = train_dp.training.evaluate

    def evaluate(model, params, x, y, **kw):
        seen.append((np.asarray(x), np.asarray(y)))
        return real(model, params, x, y, **kw)

    monkeypatch.setattr(train_dp.training, "evaluate", evaluate)
    c = _config(**{"epsilons": (math.inf,), "train.epochs": 1, "train.batch_size": 50,
                   "train.model": "linear", "data.validation_size": 100})
    c.progress = False
    c.privacy.noise_seed = 0
    (record,) = train_dp.run(c, tmp_path)
    # T = epochs · (N - n) / batch: trained on the first 200 only.
    assert record["steps"] == 4 and record["sampling_rate"] == 50 / 200
    assert record["eval_split"].startswith("validation")
    assert seen and all(np.array_equal(x, train.images[200:]) and np.array_equal(y, train.labels[200:])
                        for x, y in seen)
    assert "validation accuracy %" in (tmp_path / "results.md").read_text()
    with pytest.raises(ValueError, match="validation_size"):
        train_dp.carve_validation(train.images, train.labels, 300)
