"""The main job end to end on the quick config, its resume, and its errors on bad input."""
import json
import os
import subprocess
import sys

import dp_accounting
import pytest

from configs import selective_labeling as sl_config
from ecos_jax.ecos import protocol
from ecos_jax.experiments import selective_labeling
from ecos_jax.privacy import accounting
from ecos_jax.utils.overrides import override

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**overrides):
    c = sl_config.get_config("quick")
    c.progress = False
    return override(c, overrides)


@pytest.mark.parametrize("features", ["pca", pytest.param("autoencoder", marks=pytest.mark.slow)])
def test_quick_config_end_to_end_and_resume(tmp_path, features):
    # The quick config with 20 training steps instead of 80: the same records, files, ledgers
    # and resume, at a quarter of the training (the quick variant's own 80 is what the README
    # times; the accuracies here are only checked to be in [0, 1]). The default suite runs it on
    # PCA features (31 s against 51 s cold; the autoencoder's fit and cache have their own tests
    # in test_features.py), `make test-slow` on the quick config's own autoencoder.
    config = _config(**{"train.steps": 20, "features.kind": features})
    records = selective_labeling.run(config, tmp_path)
    methods = {r["method"] for r in records}
    assert methods == {"ecos", "random", "kcenter", "local", "oracle"}
    # 2 domains x 2 seeds x (4 pool methods x 2 budgets + local)
    assert len(records) == 2 * 2 * (4 * 2 + 1)
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in records)
    assert all(r["epsilon"] == pytest.approx(0.58, abs=0.01) for r in records if r["method"] == "ecos")
    out = json.loads((tmp_path / "results.json").read_text())
    assert len(out["records"]) == len(records)
    assert (tmp_path / "accuracy_vs_budget.png").stat().st_size > 1000
    md = (tmp_path / "results.md").read_text()
    assert "| budget | method | record ε |" in md and "client lifetime ε" in md
    ledgers = json.loads((tmp_path / "ledgers.json").read_text())
    # One ledger per ECOS record (2 domains x 2 seeds x 2 budgets), each holding the one
    # client response of its (domain, seed): both budgets rest on the same release.
    assert len(ledgers) == 2 * 2 * 2
    for key, ledger in ledgers.items():
        assert [e["name"] for e in ledger["entries"]] == ["ecos_client_response"], key
        domain, seed, method, _ = key.split("/")
        assert method == "ecos"
        twins = [v for k, v in ledgers.items() if k.startswith(f"{domain}/{seed}/")]
        assert len({json.dumps(t["entries"][0]["event"], sort_keys=True) for t in twins}) == 1
    # Each client released one response per seed: its lifetime composes both, so it is above
    # every record's ε (each record rests on one response).
    sigma = protocol.gaussian_sigma(0.58, 1e-5, "pld")
    two = accounting.epsilon(dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(sigma)] * 2),
                             1e-5, "pld")
    lifetime = out["client_lifetime"]
    assert set(lifetime) == {"digits", "mnist_invert"}
    for domain, v in lifetime.items():
        assert v["release_counts"] == {"ecos_client_response": 2}, domain
        assert v["epsilon"] == pytest.approx(two, rel=1e-9) and v["epsilon"] > v["max_record_epsilon"]
    comm = out["communication"]["digits"]
    assert comm["ecos_up_bytes"] * 100 < comm["upload_client_data_bytes"]
    # A second run with the same config resumes: nothing is recomputed.
    again = selective_labeling.run(config, tmp_path)
    assert [r["seconds"] for r in again] == [r["seconds"] for r in records]
    assert json.loads((tmp_path / "results.json").read_text())["client_lifetime"] == lifetime
    # A different config refuses the workdir and leaves its state untouched.
    state = (tmp_path / "state.json").read_bytes()
    with pytest.raises(ValueError, match="different config"):
        selective_labeling.run(_config(**{"train.steps": 20, "features.kind": features, "ecos.epsilon": 1.0}),
                               tmp_path)
    assert (tmp_path / "state.json").read_bytes() == state


@pytest.mark.parametrize("overrides, match", [
    ({"budgets": (100, 100_000)}, "larger than the pool"),
    ({"ecos.epsilon": 0.0}, "epsilon must be > 0"),
    ({"ecos.epsilon": -0.5}, "epsilon must be > 0"),
    ({"data.n_client_train": 0}, "cannot be empty"),
    ({"data.client_domains": ("no_such_domain",)}, "no_such_domain"),
    ({"data.name": "no_such_dataset_xyz"}, "no_such_dataset_xyz"),
    ({"methods": ("ecos", "bogus")}, "bogus"),
    ({"data.pool": "ood"}, "oracle"),
    ({"semi.mode": "fixmatchh"}, "semi.mode"),
    ({"semi.threshold": 1.5}, "semi.threshold"),
    ({"ecos.count_threshold": -1.0}, "count_threshold"),
])
def test_bad_config_fails_before_any_work(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        selective_labeling.run(_config(**overrides), tmp_path)
    assert not (tmp_path / "state.json").exists()


def test_command_line_rejects_misspelled_field(tmp_path):
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "experiments", "selective_labeling.py"),
         "--config=" + os.path.join(ROOT, "configs", "selective_labeling.py") + ":quick",
         f"--workdir={tmp_path}", "--config.budgt=3000"],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode != 0
    assert "budgt" in proc.stderr
    assert not any(tmp_path.iterdir())


def test_pseudo_label_mode_learns_from_the_unlabelled_pool(tmp_path):
    config = _config(**{"data.client_domains": ("digits",), "num_seeds": 1, "budgets": (40,),
                        "methods": ("random", "local"), "train.steps": 10, "features.kind": "pca",
                        "semi.mode": "pseudo_label", "semi.threshold": 0.0, "semi.num_unlabeled": 200})
    records = {r["method"]: r for r in selective_labeling.run(config, tmp_path)}
    r = records["random"]
    # Threshold 0 keeps every unlabelled sample scored; none of them is one of the picks.
    assert r["n_pseudo"] == 200 and r["n_train"] == 40
    assert 0.0 <= r["pseudo_label_accuracy"] <= 1.0 and 0.0 <= r["accuracy_supervised"] <= 1.0
    assert "n_pseudo" not in records["local"]  # the client's own data: nothing to pseudo-label
    assert "pseudo_label_accuracy" in (tmp_path / "results.md").read_text()


def test_exact_release_epsilon_survives_state_round_trip(tmp_path):
    """ε = inf (exact counts, an ablation) is written as "inf" in strict JSON and read back."""
    from ecos_jax.experiments import ecos_runner
    from ecos_jax.utils import io

    rec = {"method": "ecos", "domain": "digits", "budget": 10, "seed": 0, "accuracy": 0.5,
           "epsilon": float("inf")}
    io.write_json(tmp_path / "state.json", {"config_hash": "h", "records": [rec]})
    assert '"epsilon": "inf"' in (tmp_path / "state.json").read_text()
    assert ecos_runner._load_state(tmp_path / "state.json", "h")[0]["epsilon"] == float("inf")


def test_communication_follows_the_wire_dtypes():
    from ecos_jax.ecos import protocol

    assert protocol.message_bytes(30, 32) == (30 * 32 * 4, 30 * 4)
    assert protocol.message_bytes(30, 32, centroid_dtype="float16", count_dtype="int16") == (30 * 32 * 2, 30 * 2)


def test_pick_selects_through_each_methods_sampler(monkeypatch):
    """Every pool method picks through its sampler in ecos_runner.SAMPLERS, with the stage
    arguments it declares from the ECOS round; the picks equal the samplers called by hand."""
    import jax
    import numpy as np

    from ecos_jax import samplers
    from ecos_jax.experiments import ecos_runner

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    task = ecos_runner.ClientTask(domain="d", domain_index=0, split=None, num_classes=10, pool_features=x,
                                  client_features=x[:30], extractor=None, oracle_indices=np.arange(0, 300, 20))
    config = _config(**{"ecos.num_centroids": 5, "ecos.kmeans_iters": 3})
    key = jax.random.key(0)
    clusters, message = ecos_runner.compress(config, task, jax.random.fold_in(key, 1))
    assert message.centroids.shape == (5, 4)
    counts = np.array([9.0, 0.5, 3.0, -1.0, 2.0], np.float32)
    ecos_round = ecos_runner.EcosRound(clusters, protocol.NoisyCoverage(counts=counts, sigma=1.0))
    assert set(ecos_runner.SAMPLERS) == set(ecos_runner.POOL_METHODS)
    by_hand = {
        "ecos": samplers.ecos_sample(key, x, 20, centroids=clusters.centroids, noisy_counts=counts,
                                     assignments=clusters.assignments, proximity=config.ecos.proximity,
                                     rule=config.ecos.within_cluster),
        "random": samplers.random_sample(key, 300, 20),
        "kcenter": samplers.kcenter_greedy(key, x, 20),
        "oracle": task.oracle_indices[np.asarray(samplers.random_sample(key, 15, 15))],  # 15 in-domain
    }
    for method, expected in by_hand.items():
        idx = ecos_runner.pick(config, method, task, 20, key, ecos_round)
        assert idx.tolist() == np.asarray(expected).tolist(), method
    # Any sampler fits the table: a chain gets the ECOS stage's arguments too.
    monkeypatch.setitem(ecos_runner.SAMPLERS, "ecos", lambda c: samplers.chain(
        samplers.ecos_sampler(proximity=c.ecos.proximity), samplers.dedup_filter(threshold=1e-6, metric="l2")))
    assert len(set(ecos_runner.pick(config, "ecos", task, 20, key, ecos_round).tolist())) == 20
    with pytest.raises(TypeError, match=r"needs stage argument\(s\) \['centroids', 'noisy_counts'\]"):
        ecos_runner.pick(config, "ecos", task, 20, key, None)  # no round: nothing to sample from
