"""The two valuation experiments: removal semantics, and both drivers end to end on tiny data."""
import json
import math
import os

import numpy as np
import pytest

from ecos_jax.utils.overrides import override
from ecos_jax.valuation.pruning import removal_indices


def test_removal_indices():
    s = np.array([0.5, 3.0, 1.0, 2.0, 0.1])
    assert removal_indices(s, 0.4, "highest").tolist() == [1, 3]
    assert removal_indices(s, 0.4, "lowest").tolist() == [4, 0]
    with pytest.raises(ValueError, match="fraction"):
        removal_indices(s, 1.0, "highest")
    with pytest.raises(ValueError, match="direction"):
        removal_indices(s, 0.2, "middle")


def _tiny(config, **overrides):
    return override(config, overrides)


@pytest.mark.slow  # trains 4 small models (2 with DP-SGD) and scores them: ~1-2 min
def test_data_valuation_end_to_end(tmp_path):
    from configs.data_valuation import get_config
    from ecos_jax.experiments import data_valuation

    c = _tiny(get_config("quick"), **{"data.n_train": 80, "data.n_test": 60,
                                      "scores.plis_samples": 20, "scores.plis_max_iters": 10,
                                      "privacy.noise_seed": 0, "epsilons": (4.0, math.inf)})
    res = data_valuation.run(c, str(tmp_path))
    assert {(r["arch"], r["epsilon"]) for r in res["runs"]} == {
        (a, e) for a in ("cnn", "mlp") for e in ("4", "inf")}
    assert "not composed" in res["epsilon_note"] and "not composed" in open(tmp_path / "consistency.md").read()
    for r in res["runs"]:
        label = f"{r['arch']}_eps{r['epsilon']}"
        # the VoG releases: their own replace-one ledger, per-sample + sum + sum of squares
        releases = json.load(open(tmp_path / "ledgers" / f"{label}_releases.json"))
        assert releases["neighboring_relation"] == "replace_one"
        assert [e["name"] for e in releases["entries"]] == [
            f"vog/{label}/per_sample", f"vog/{label}_site/sum", f"vog/{label}_site/sum_of_squares"]
        assert all(e["relation"] == "replace_one" for e in releases["entries"])
        assert r["release_epsilon"]["relation"] == "replace_one"
        assert r["release_epsilon"]["pld"] == pytest.approx(2 * c.privacy.release_epsilon, rel=1e-2)
        assert "total_epsilon" not in r           # no single ε across the two relations
        # DP-SGD: add/remove-one, in its own ledger, at the target ε; none for the non-private run
        training_path = tmp_path / "ledgers" / f"{label}_training.json"
        if r["epsilon"] == "4":
            training = json.load(open(training_path))
            assert training["neighboring_relation"] == "add_or_remove_one"
            assert all(e["name"].startswith("dpsgd/") for e in training["entries"])
            assert r["training_epsilon"]["relation"] == "add_or_remove_one"
            eps = [v for k, v in r["training_epsilon"].items() if k != "relation" and v is not None]
            assert eps and all(3.5 < v <= 4.0 + 1e-3 for v in eps)
        else:
            assert not training_path.exists() and r["training_epsilon"]["rdp"] == "inf"
    kinds = {(p["kind"], p["metric"]) for p in res["consistency"]}
    assert ("epsilon", "vog") in kinds and ("architecture", "plis") in kinds
    for p in res["consistency"]:  # every cell is a number or an explicit "undefined: ..."
        for m in ("pearson", "spearman", "top_k_overlap", "ssim"):
            assert isinstance(p[m], float) and np.isfinite(p[m]) or str(p[m]).startswith("undefined")
    for name in ("grid_cnn_vog.png", "grid_mlp_plis.png", "hist_cnn.png"):
        assert os.path.getsize(tmp_path / "figures" / name) > 1000
    assert "| kind |" in open(tmp_path / "consistency.md").read()


@pytest.mark.slow  # 1 scoring model + 10 non-private retrains: ~1 min
def test_pruning_end_to_end(tmp_path):
    from configs.pruning import get_config
    from ecos_jax.experiments import pruning

    c = _tiny(get_config("quick"), **{"data.n_train": 60, "data.n_test": 60})
    res = pruning.run(c, str(tmp_path))
    rows = res["rows"]
    assert len(rows) == 1 + len(c.fractions) * (2 * len(c.metrics) + 1)
    assert {r["kept"] for r in rows} == {60, 48}
    assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in rows)
    assert "| ε |" in open(tmp_path / "pruning.md").read()


@pytest.mark.slow  # 3 linear runs on ScatterNet features (x3 calls) and a pruning run on their scores: ~1.5-5 min
def test_data_valuation_on_scattering_features_with_ceiling_and_resume(tmp_path):
    from configs.data_valuation import get_config
    from ecos_jax.experiments import data_valuation

    c = _tiny(get_config("fashion_quick"), **{
        "data.name": "digits_mnist_c", "data.official_split": False, "data.n_train": 150,
        "data.n_test": 60, "data.n_scored": 100, "train.models": ("linear",),
        "train.dp_batch_size": 75, "scores.plis_samples": 20, "scores.plis_max_iters": 5,
        "privacy.noise_seed": 0})
    res = data_valuation.run(c, str(tmp_path))
    assert [r["label"] for r in res["runs"]] == ["linear_eps3", "linear_epsinf", "linear_epsinf_seed1"]
    assert all(r["n_train"] == 150 and r["n_scored"] == 100 for r in res["runs"])
    vs_inf = [p for p in res["consistency"] if p["kind"] == "epsilon" and p["pair"] == "3 vs inf"]
    seed = {p["metric"]: p for p in res["consistency"] if p["kind"] == "seed"}
    assert vs_inf and set(seed) >= {"loss", "vog", "plis"}
    for p in vs_inf:   # each DP-vs-non-private figure carries its ceiling and chance
        assert p["ceiling"]["top_k_overlap"] == seed[p["metric"]]["top_k_overlap"]
        assert p["chance"]["top_k_overlap"] == pytest.approx(p["k"] / p["n"])
    text = open(tmp_path / "consistency.md").read()
    assert "ceiling" in text and "chance" in text and "relative to the seed ceiling" in text
    saved = np.load(tmp_path / "scores" / "linear_eps3.npz")
    assert len(saved["index"]) == 100 and len(saved["vog"]) == 100
    # resume: a second call reads every finished run back (a marked record proves it was not
    # retrained) and a changed setting trains again
    done = tmp_path / "done" / "linear_eps3.json"
    record = json.load(open(done))
    record["record"]["test_accuracy"] = 0.123
    json.dump(record, open(done, "w"))
    again = data_valuation.run(c, str(tmp_path))
    assert again["runs"][0]["test_accuracy"] == 0.123
    assert again["headline"] == res["headline"]
    changed = data_valuation.run(_tiny(c, **{"train.dp_learning_rate": 8.0}), str(tmp_path))
    assert changed["runs"][0]["test_accuracy"] != 0.123
    # pruning reuses these scores: the scored rows only, retrained without DP
    from configs.pruning import get_config as pruning_config
    from ecos_jax.experiments import pruning

    p = _tiny(pruning_config("fashion"), **{
        "data.name": "digits_mnist_c", "data.official_split": False, "data.n_train": 150,
        "data.n_test": 60, "data.n_scored": 100, "scores_from": str(tmp_path),
        "epsilons": (3.0, math.inf), "fractions": (0.2,), "retrain_epochs": 1,
        "features.cache_dir": None})
    out = pruning.run(p, str(tmp_path / "pruning"))
    assert {r["kept"] for r in out["rows"]} == {100, 80}
    assert all(r["epsilon_retrain"] == "inf" for r in out["rows"])
    assert len(out["rows"]) == 2 * (1 + 2 * 3 + 1)
    assert [s["epsilon"] for s in out["scoring"]] == ["3", "inf"]
