"""ECOS sweeps: point configs, rejected configs, aggregation, byte counts, one tiny sweep."""
import json
import math
import os
import subprocess
import sys

import dp_accounting
import numpy as np
import pytest

from configs import ecos_sweeps as sweeps_config
from ecos_jax.ecos import protocol
from ecos_jax.experiments import ecos_runner, ecos_sweeps
from ecos_jax.privacy import accounting
from ecos_jax.privacy.ledger import event_from_json
from ecos_jax.utils.overrides import override

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(arg=None, **overrides):
    c = sweeps_config.get_config(arg)
    with c.unlocked():
        c.progress = False
    return override(c, overrides)


def test_points_carry_the_overrides():
    c = _config()
    pts = ecos_sweeps.points(c)
    by = {(p.sweep, p.name): p for p in pts}
    pool = [p for p in pts if p.sweep == "pool"]
    assert [p.name for p in pool] == ["ood", "id+ood", "id"]
    for p in pool:
        assert p.config.data.pool == p.name and tuple(p.config.budgets) == tuple(c.budgets)
        assert tuple(p.config.methods) == ("ecos", "random", "kcenter") + (("oracle",) if p.name == "id+ood" else ())
        assert p.config.ecos.epsilon == c.ecos.epsilon and "sweep" not in p.config and p.config.is_locked
    eps = [p for p in pts if p.sweep == "epsilon" and "epsilon" in p.meta]
    assert [p.config.ecos.epsilon for p in eps] == [0.05, 0.1, 0.2, 0.58, 1.0, 2.0, 4.0, 100.0]
    assert [p.meta["exact_counts"] for p in eps] == [False] * 7 + [True]
    assert all(tuple(p.config.methods) == ("ecos",) and tuple(p.config.budgets) == (200,) for p in eps)
    ref = by[("epsilon", "random")].config
    assert tuple(ref.methods) == ("random",) and tuple(ref.budgets) == (200,) and ref.data.pool == "id+ood"
    # A point's config (hence its resume) does not depend on other sweeps' settings.
    other = ecos_sweeps.points(_config(**{"sweep.epsilons": (0.3,), "sweep.names": ("pool",)}))
    assert [ecos_runner.config_hash(p.config) for p in other] == [ecos_runner.config_hash(p.config) for p in pool]
    # Without 'id+ood' among the kinds the oracle still runs once, on the id+ood pool.
    only = ecos_sweeps.points(_config(**{"sweep.names": ("pool",), "sweep.pool_kinds": ("ood",)}))
    assert [(p.name, p.config.data.pool, tuple(p.config.methods)) for p in only] == [
        ("ood", "ood", ("ecos", "random", "kcenter")), ("oracle", "id+ood", ("oracle",))]


@pytest.mark.parametrize("overrides, match", [
    ({"sweep.names": ("pool", "bogus")}, "Unknown sweep"),
    ({"sweep.names": ()}, "cannot be empty"),
    ({"sweep.epsilons": ()}, "epsilons cannot be empty"),
    ({"sweep.epsilons": (0.5, 0.0)}, "must be > 0"),
    ({"sweep.epsilons": (-1.0,)}, "must be > 0"),
    ({"sweep.epsilons": (1.0, math.inf)}, "exact_counts"),
    ({"sweep.epsilons": (1.0, 1.0)}, "duplicates"),
    ({"sweep.exact_counts_epsilon": 2.0}, "exact_counts_epsilon"),
    ({"sweep.pool_kinds": ("ood", "everything")}, "pool_kinds"),
    ({"sweep.pool_methods": ("ecos", "oracle")}, "pool_methods"),
    ({"sweep.client_sizes": (100, 0)}, "client_sizes"),
])
def test_bad_sweep_config_rejected_before_any_work(tmp_path, overrides, match):
    c = _config(**overrides)
    with pytest.raises(ValueError, match=match):
        ecos_sweeps.points(c)
    with pytest.raises(ValueError, match=match):
        ecos_sweeps.run(c, tmp_path)
    assert not any(tmp_path.iterdir())


def test_budget_too_large_for_the_id_pool_fails_before_training(tmp_path):
    c = _config(**{"budgets": (100, 500), "sweep.names": ("pool",), "data.client_domains": ("mnist_blur",)})
    with pytest.raises(ValueError, match="larger than the pool"):
        ecos_sweeps.run(c, tmp_path)
    assert not any(tmp_path.iterdir())


def _rec(pool, method, budget, domain, seed, acc, **kw):
    return {"pool": pool, "method": method, "budget": budget, "domain": domain, "seed": seed,
            "accuracy": acc, "n_picked": budget, **kw}


def test_aggregation_by_hand():
    recs = [_rec("ood", "ecos", 10, "a", 0, 0.5, pick_domains={"b": 10}),
            _rec("ood", "ecos", 10, "a", 1, 0.7, pick_domains={"b": 5, "c": 5}),
            _rec("ood", "ecos", 10, "d", 0, 0.9, pick_domains={"c": 10}),
            _rec("ood", "random", 10, "a", 1, 0.4, pick_domains={"c": 10}),
            _rec("ood", "random", 10, "d", 0, 0.8, pick_domains={"c": 10}),
            _rec("id+ood", "ecos", 10, "a", 0, 0.8, in_domain_fraction=0.6),
            _rec("id+ood", "random", 10, "a", 0, 0.4, pick_domains={"a": 2, "b": 8})]
    out = ecos_sweeps.summarise_pool(recs)
    rows = {(r["pool"], r["method"], r["budget"]): r for r in out["rows"]}
    acc = rows[("ood", "ecos", 10)]["accuracy"]
    assert acc["mean"] == pytest.approx(0.7) and acc["std"] == pytest.approx(np.std([0.5, 0.7, 0.9])) and acc["n"] == 3
    gap = rows[("ood", "ecos", 10)]["ecos_minus"]["random"]  # pairs (a, 1): +0.3 and (d, 0): +0.1
    assert (gap["mean"], gap["std"], gap["n"]) == (pytest.approx(0.2), pytest.approx(0.1), 2)
    assert set(rows[("ood", "ecos", 10)]["ecos_minus"]) == {"random"}
    assert rows[("id+ood", "ecos", 10)]["in_domain"]["mean"] == pytest.approx(0.6)
    assert rows[("id+ood", "random", 10)]["in_domain"]["mean"] == pytest.approx(0.2)  # from pick_domains
    assert out["pick_domains"]["ood/ecos/10"]["a"] == pytest.approx({"b": 0.75, "c": 0.25})
    assert list(out["pick_domains"]["ood/ecos/10"]["a"]) == ["b", "c"]  # largest share first

    eps = [_rec("id+ood", "ecos", 10, d, s, acc, epsilon=e * 1.001, epsilon_target=e, exact_counts=e > 50,
                in_domain_fraction=f)
           for e, d, s, acc, f in [(0.1, "a", 0, 0.2, 0.1), (0.1, "d", 0, 0.4, 0.3), (100.0, "a", 0, 0.9, 1.0)]]
    eps.append(_rec("id+ood", "random", 10, "a", 0, 0.3, epsilon=0.0, reference="random", pick_domains={"a": 1}))
    out = ecos_sweeps.summarise_epsilon(eps)
    assert [(r["epsilon"], r["exact_counts"]) for r in out["ecos"]] == [(0.1, False), (100.0, True)]
    assert out["ecos"][0]["accuracy"]["mean"] == pytest.approx(0.3)
    assert out["ecos"][0]["in_domain"]["std"] == pytest.approx(0.1)
    assert out["ecos"][0]["measured_epsilon"] == pytest.approx(0.1001)
    assert out["ecos"][0]["minus_random"] == {"mean": pytest.approx(-0.1), "std": 0.0, "n": 1}
    assert out["random"]["accuracy"]["mean"] == pytest.approx(0.3)
    assert out["random"]["in_domain"]["mean"] == pytest.approx(0.1)


def test_communication_bytes_from_the_protocol_and_the_data():
    from ecos_jax import data as data_lib

    c = _config(**{"features.stats_weight": 0.0})  # the 32-d code alone; statistics add 10 floats
    ds = data_lib.load(c.data.name)
    comm = ecos_sweeps.communication(c, {c.data.name: ds})[c.data.name]
    assert ecos_sweeps.feature_dim(_config(**{"features.stats_weight": 2.0}), (28, 28, 1)) == 42
    down, up = protocol.message_bytes(30, 32)
    assert (down, up) == (protocol.Centroids(np.zeros((30, 32), np.float32)).nbytes,
                          protocol.NoisyCoverage(np.zeros(30, np.float32), 0.0).nbytes) == (3840, 120)
    assert comm["ecos"]["float32"] == {"down": down, "up": up, "total": down + up}
    assert comm["ecos"]["lean"] == {"down": 1920, "up": 60, "total": 1980}
    assert len(comm["domains"]) == len(ds.domain_names)
    row = comm["domains"][0]
    assert row["upload_client_data_bytes"] == 100 * 28 * 28
    assert row["download_pool_bytes"] == (len(ds) - 400) * 28 * 28
    assert row["upload_over_ecos_float32"] == pytest.approx(78400 / 3960)
    # 100x below uploading needs n >= 100 * 3960 / 784 client images, or R <= 5 / d <= 5 at n = 100.
    assert comm["crossing"]["float32"] == {"min_client_samples": 506, "max_centroids": 5, "max_dim": 5}
    assert comm["crossing"]["lean"]["min_client_samples"] == 253
    curve = comm["vs_client_size"]["digits"]
    assert curve["n"] == [100, 200, 400, 800, 1600, 1797] and curve["upload_bytes"][-1] == 1797 * 784


def test_tiny_sweep_end_to_end_and_resume(tmp_path):
    c = _config("quick", **{
        "features.kind": "pca", "train.steps": 5, "budgets": (20,), "ecos.num_centroids": 10,
        "ecos.accountant": "rdp", "sweep.pool_kinds": ("ood",), "sweep.pool_methods": ("ecos", "random"),
        "sweep.epsilons": (0.5, 4.0), "sweep.epsilon_budget": 20})
    out = ecos_sweeps.run(c, tmp_path)
    recs = out["records"]
    assert [(r["method"], r["pool"]) for r in recs["pool"]] == [("ecos", "ood"), ("random", "ood"),
                                                               ("oracle", "id+ood")]
    assert "mnist_invert" not in recs["pool"][0]["pick_domains"]  # the client's domain is not in an OoD pool
    assert recs["pool"][2]["pick_domains"] == {"mnist_invert": 20}
    assert [r["epsilon"] for r in out["epsilon"]["ecos"]] == [0.5, 4.0]
    assert [r["measured_epsilon"] for r in out["epsilon"]["ecos"]] == pytest.approx([0.5, 4.0], rel=0.05)
    assert out["epsilon"]["random"]["accuracy"]["n"] == 1
    for f in ("sweeps.json", "sweeps.md", "pool_accuracy_vs_budget.png", "epsilon.png",
              "communication_digits_mnist_c.png"):
        assert (tmp_path / f).stat().st_size > 500, f
    assert (tmp_path / "pool" / "ood" / "state.json").exists()
    assert (tmp_path / "epsilon" / "eps_0.5" / "results.json").exists()
    # The sweep's bytes equal what the runner measured on the real task (same client, same pool).
    ran = json.loads((tmp_path / "pool" / "oracle" / "results.json").read_text())["communication"]["mnist_invert"]
    row = {r["domain"]: r for r in out["communication"]["digits_mnist_c"]["domains"]}["mnist_invert"]
    assert (row["ecos_float32"]["down"], row["ecos_float32"]["up"], row["upload_client_data_bytes"],
            row["download_pool_bytes"]) == (ran["ecos_down_bytes"], ran["ecos_up_bytes"],
                                            ran["upload_client_data_bytes"], ran["download_pool_bytes"])
    md = (tmp_path / "sweeps.md").read_text()
    assert "## Pool composition" in md and "## ECOS against ε" in md and "## Communication" in md
    # The client answered at every ECOS point; the sweep composes all of it, once each.
    points = [p for p in ecos_sweeps.points(c) if "ecos" in p.config.methods]
    per_point = [json.loads((tmp_path / p.sweep / p.name / "results.json").read_text())["client_lifetime"]
                 ["mnist_invert"] for p in points]
    events = [event_from_json(e["event"]) for p in points for e in json.loads(
        (tmp_path / p.sweep / p.name / "client_ledgers.json").read_text())["mnist_invert"]["entries"]]
    lifetime = out["client_lifetime"]["mnist_invert"]
    assert lifetime["releases"] == len(events) == sum(v["releases"] for v in per_point) == len(points)
    assert lifetime["epsilon"] == pytest.approx(accounting.epsilon(
        dp_accounting.ComposedDpEvent(events), c.ecos.delta, "rdp"), rel=1e-9)
    assert lifetime["epsilon"] > max(v["epsilon"] for v in per_point)
    assert "Client privacy over the whole sweep" in md
    # Resume: every point is done, so nothing is retrained and nothing is counted twice.
    again = ecos_sweeps.run(c, tmp_path)
    assert [r["seconds"] for r in again["records"]["pool"]] == [r["seconds"] for r in recs["pool"]]
    assert again["client_lifetime"] == out["client_lifetime"]


def test_command_line_rejects_unknown_sweep(tmp_path):
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "experiments", "ecos_sweeps.py"), f"--workdir={tmp_path}",
         "--config.sweep.names=('pool','bogus')"],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2
    assert "Unknown sweep" in proc.stderr and "bogus" in proc.stderr
    assert not any(tmp_path.iterdir())


def test_a_failing_point_does_not_stop_the_others_and_reruns_alone(tmp_path, monkeypatch):
    """The sweep runner under the ECOS sweep: a point that raises is recorded, the rest finish,
    no summary is written from partial results, and the rerun runs only that point."""
    c = _config("quick", **{"sweep.names": ("pool", "epsilon"), "sweep.pool_kinds": ("ood", "id"),
                            "sweep.epsilons": (0.5,), "budgets": (20,), "sweep.epsilon_budget": 20})
    ran = []

    def fake_point(config, workdir):  # records shaped like the runner's, no training
        name = os.path.relpath(workdir, tmp_path)
        ran.append(name)
        if name == "pool/id" and os.environ.get("FAIL_POINT"):
            raise RuntimeError("out of memory")
        recs = [{"method": m, "budget": b, "domain": "mnist_invert", "seed": 0, "accuracy": 0.5, "epsilon": 0.5,
                 "n_picked": b, "seconds": 0.0, "in_domain_fraction": 0.5} for m in config.methods
                for b in config.budgets]
        (tmp_path / name).mkdir(parents=True, exist_ok=True)
        (tmp_path / name / "results.json").write_text(json.dumps({"records": recs}))

    monkeypatch.setattr(ecos_sweeps, "run_point", fake_point)
    monkeypatch.setenv("FAIL_POINT", "1")
    with pytest.raises(RuntimeError, match=r"pool/id: RuntimeError: out of memory \(log .*pool/id/sweep.log\)"):
        ecos_sweeps.run(c, tmp_path)
    assert ran == ["pool/ood", "pool/id", "pool/oracle", "epsilon/eps_0.5", "epsilon/random"]
    assert "out of memory" in (tmp_path / "pool" / "id" / "sweep.log").read_text()
    assert not (tmp_path / "sweeps.json").exists()
    monkeypatch.delenv("FAIL_POINT")
    out = ecos_sweeps.run(c, tmp_path)
    assert ran[5:] == ["pool/id"]
    assert {r["pool"] for r in out["pool"]["rows"]} == {"ood", "id", "id+ood"}
