"""The CoOpt experiment driver end to end on the quick config (slow: minutes on a busy CPU)."""
import json

import pytest

from configs.coopt import get_config
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
