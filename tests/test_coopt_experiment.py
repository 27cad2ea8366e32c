"""The CoOpt experiment driver end to end on the quick config (slow: minutes on a busy CPU)."""
import json

import pytest

from configs.coopt import get_config
from ecos_jax.data import fashion
from ecos_jax.experiments import coopt as coopt_experiment


@pytest.mark.slow
def test_quick_config_end_to_end(tmp_path):
    config = get_config("quick")
    config.cache_dir = str(tmp_path / "cache")
    config.progress = False
    config.ablation.num_participants = (2,)
    config.ablation.alignments = ("procrustes", "off")
    results = coopt_experiment.train_and_evaluate(config, str(tmp_path / "run"))
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(on_disk["methods"]) == set(config.methods)
    for stats in on_disk["methods"].values():
        assert 0.0 <= stats["final_mean"] <= 1.0
        assert [e["epoch"] for e in stats["curves"][0]] == [0, 2, 4]
    assert results["reuse"]["reload_identical"]
    assert results["inconsistency"]["aligned"] < results["inconsistency"]["raw"]
    assert {a["alignment"] for a in results["ablation"]} == {"procrustes", "off"}
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000
    assert "Linear-probe accuracy" in (tmp_path / "run" / "results.md").read_text()


def test_unknown_config_variant_and_methods(tmp_path):
    with pytest.raises(ValueError, match="unknown config variant"):
        get_config("huge")
    config = get_config("quick")
    config.methods = ("simclr",)
    with pytest.raises(ValueError, match="must include 'coopt'"):
        coopt_experiment.train_and_evaluate(config, str(tmp_path))


@pytest.mark.slow
@pytest.mark.skipif(bool(fashion.missing_files(fashion.source_dir())),
                    reason="Fashion-MNIST files not installed (make data)")
def test_fashion_quick_end_to_end_with_byol_and_resume(tmp_path):
    config = get_config("fashion_quick")
    config.cache_dir = str(tmp_path / "cache")
    config.progress = False
    config.methods = ("coopt", "simclr", "byol")
    config.train.epochs = 2
    workdir = tmp_path / "run"
    results = coopt_experiment.train_and_evaluate(config, str(workdir))
    assert results["data"]["name"] == "fashion_mnist" and results["data"]["prior_data"] == "digits_mnist_c"
    assert results["data"]["pool_test"] == 500 and results["data"]["test_domains"] == ["test"]
    for stats in results["methods"].values():
        assert 0.0 <= stats["final_mean"] <= 1.0
    assert 0.3 < results["pixel_probe_accuracy"] <= 1.0
    assert results["speedup"]["target_seconds"] > 0.0
    assert set(results["time_budgets"]["accuracy"]) == {"coopt", "simclr", "byol"}
    # A second call reads every finished (method, seed) run back instead of training it again.
    stored = {p.name: p.read_text() for p in (workdir / "runs").iterdir()}
    assert sorted(stored) == ["byol-seed0.json", "coopt-seed0.json", "simclr-seed0.json"]
    again = coopt_experiment.train_and_evaluate(config, str(workdir))
    assert again["methods"]["simclr"]["curves"] == results["methods"]["simclr"]["curves"]
    assert {p.name: p.read_text() for p in (workdir / "runs").iterdir()} == stored
