"""ECOS automated client labelling: private kNN labels on the picks, one ledger per record."""
import json

import dp_accounting
import pytest
from dp_accounting import rdp

from configs import client_labeling as cl_config
from ecos_jax.ecos import private_knn
from ecos_jax.experiments import client_labeling, ecos_runner
from ecos_jax.privacy import accounting
from ecos_jax.utils.overrides import override


def _config(**overrides):
    c = cl_config.get_config("quick")
    c.progress = False
    # RDP: PLD calibration costs tens of seconds here; private_knn's tests cover PLD.
    return override(c, {"data.client_domains": ("digits",), "num_seeds": 1, "budgets": (60,),
                                "train.steps": 10, "features.kind": "pca", "data.n_client_train": 100,
                                "labeling.k": 5, "ecos.accountant": "rdp", **overrides})


def test_tiny_run_accounts_labels_and_response_in_one_ledger(tmp_path):
    config = _config(methods=("ecos", "random", "local"))
    records = {r["method"]: r for r in client_labeling.run(config, tmp_path)}
    eps, delta = config.labeling.epsilon, config.ecos.delta
    # Random: the labels alone, at the target ε (calibrated for all 60 queries together).
    assert records["random"]["epsilon"] == pytest.approx(eps, rel=1e-3)
    assert 0.0 <= records["random"]["label_accuracy"] <= 1.0
    # ECOS: its coverage response composed with its labels, as dp_accounting composes them.
    ledgers = json.loads((tmp_path / "ledgers.json").read_text())
    entries = ledgers["digits/seed0/ecos/60"]["entries"]
    assert [e["name"] for e in entries] == ["ecos_client_response", "ecos_private_knn_labels"]
    sigma_labels = private_knn.calibrate_sigma(eps, delta, 60, accountant=config.ecos.accountant)
    sigma_counts = accounting.calibrate_gaussian_sigma(config.ecos.epsilon, delta, accountant="rdp")
    direct = accounting.epsilon(dp_accounting.ComposedDpEvent([
        dp_accounting.GaussianDpEvent(sigma_counts), private_knn.labeling_event(sigma_labels, 60)]),
        delta, config.ecos.accountant)
    assert records["ecos"]["epsilon"] == pytest.approx(direct, rel=1e-3)
    assert records["ecos"]["epsilon"] > eps
    # The client's lifetime: its one response and both methods' labels, each once.
    lifetime = json.loads((tmp_path / "results.json").read_text())["client_lifetime"]["digits"]
    events = [dp_accounting.GaussianDpEvent(sigma_counts)] + [private_knn.labeling_event(sigma_labels, 60)] * 2
    assert lifetime["releases"] == 3
    assert lifetime["epsilon"] == pytest.approx(
        rdp.RdpAccountant().compose(dp_accounting.ComposedDpEvent(events)).get_epsilon(delta), rel=1e-9)
    assert lifetime["epsilon"] > max(r["epsilon"] for r in records.values())
    saved = json.loads((tmp_path / "client_ledgers.json").read_text())["digits"]
    assert [e["name"] for e in saved["entries"]] == [
        "ecos_client_response", "ecos_private_knn_labels", "ecos_private_knn_labels"]
    assert {e["relation"] for e in saved["entries"]} == {"add_or_remove_one"}
    assert "client lifetime ε" in (tmp_path / "results.md").read_text()
    # Local trains on the client's own labels: nothing is released.
    assert records["local"]["epsilon"] == 0.0 and "label_accuracy" not in records["local"]
    assert "label_accuracy" in (tmp_path / "results.md").read_text()


class _Interrupted(Exception):
    pass


class _StopsAfter(client_labeling.ClientLabeling):
    """Client labelling that dies before its (n+1)-th record, as a killed run would."""

    def __init__(self, n):
        self.left = n

    def evaluate(self, config, task, state, sel):
        if self.left == 0:
            raise _Interrupted
        self.left -= 1
        return super().evaluate(config, task, state, sel)


def test_client_lifetime_epsilon_composes_every_release_once_across_a_resume(tmp_path):
    """One client: 1 response + 4 label releases (2 methods x 2 budgets). Its lifetime ε is
    those five events composed by dp_accounting, above every record's ε; a run killed after
    two records and resumed counts each release once and, with seeded noise, reproduces the
    uninterrupted run exactly (the saved response is reused, the ledger positions continue)."""
    config = _config(methods=("ecos", "random"), budgets=(30, 60), **{"train.steps": 2, "ecos.noise_seed": 0})
    whole = client_labeling.run(config, tmp_path / "whole")
    with pytest.raises(_Interrupted):
        ecos_runner.run(config, tmp_path / "resumed", _StopsAfter(2))
    assert len(ecos_runner.load_client_ledgers(tmp_path / "resumed")["digits"]) == 3  # response + 2 labels
    resumed = client_labeling.run(config, tmp_path / "resumed")

    delta = config.ecos.delta
    sigma_counts = accounting.calibrate_gaussian_sigma(config.ecos.epsilon, delta, accountant="rdp")
    labels = {q: private_knn.labeling_event(
        private_knn.calibrate_sigma(config.labeling.epsilon, delta, q, accountant="rdp"), q) for q in (30, 60)}
    direct = rdp.RdpAccountant().compose(dp_accounting.ComposedDpEvent(
        [dp_accounting.GaussianDpEvent(sigma_counts), *[labels[q] for _ in range(2) for q in (30, 60)]]
    )).get_epsilon(delta)
    for workdir, records in (("whole", whole), ("resumed", resumed)):
        lifetime = json.loads((tmp_path / workdir / "results.json").read_text())["client_lifetime"]["digits"]
        assert lifetime["releases"] == 5 and lifetime["release_counts"] == {
            "ecos_client_response": 1, "ecos_private_knn_labels": 4}
        assert lifetime["epsilon"] == pytest.approx(direct, rel=1e-9)
        assert lifetime["epsilon"] > max(r["epsilon"] for r in records) > 0
        assert lifetime["reproducible"]
    key = ("method", "budget", "label_accuracy", "accuracy", "epsilon")
    assert [[r[k] for k in key] for r in resumed] == [[r[k] for k in key] for r in whole]
    # Nothing left to do: a rerun changes neither the records nor the lifetime ledger.
    before = (tmp_path / "resumed" / "client_ledgers.json").read_text()
    again = client_labeling.run(config, tmp_path / "resumed")
    assert [r["seconds"] for r in again] == [r["seconds"] for r in resumed]
    assert (tmp_path / "resumed" / "client_ledgers.json").read_text() == before


@pytest.mark.parametrize("overrides, match", [
    ({"labeling.k": 0}, "labeling.k"),
    ({"labeling.epsilon": 0.0}, "labeling.epsilon"),
    ({"labeling.sampling_rate": 1.5}, "sampling_rate"),
    ({"data.n_client_train": 0}, "cannot be empty"),
])
def test_bad_config_fails_before_any_work(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        client_labeling.run(_config(**overrides), tmp_path)
    assert not (tmp_path / "state.json").exists()
