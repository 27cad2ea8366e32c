"""The accuracy-vs-ε experiment: config validation before work, and a tiny end-to-end run."""
import json
import math
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))

import train_dp as train_dp_config  # noqa: E402

from ecos_jax.experiments import train_dp  # noqa: E402


def _config(**dp):
    c = train_dp_config.get_config("quick")
    c.unlock()
    for k, v in dp.items():
        setattr(c.dp, k, v)
    return c


@pytest.mark.parametrize(
    "dp, match",
    [
        (dict(target_epsilons="1,x"), "comma-separated"),
        (dict(target_epsilons="0,8"), "must be > 0"),
        (dict(target_epsilons=""), "empty"),
        (dict(delta=1e-3), "1/N"),
        (dict(batch_size=0), "batch_size"),
        (dict(l2_norm_clip=0.0), "l2_norm_clip"),
        (dict(sampling="fixed"), "sampling"),
        (dict(epochs=0), "epochs"),
    ],
)
def test_bad_config_is_refused_before_training(dp, match):
    with pytest.raises(ValueError, match=match):
        train_dp.validate(_config(**dp), n_train=5000)


def test_steps_and_epsilons_from_config():
    c = _config(epochs=2, batch_size=250)
    assert train_dp.validate(c, n_train=5000) == 40
    assert train_dp.target_epsilons("1, 8,inf") == [1.0, 8.0, math.inf]
    with pytest.raises(ValueError, match="variant"):
        train_dp_config.get_config("huge")


@pytest.mark.slow
def test_end_to_end_tiny(tmp_path):
    c = _config(target_epsilons="8,inf", epochs=1, batch_size=512)
    c.progress = False
    c.noise_seed = 0
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
