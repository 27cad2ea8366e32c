"""ECOS automated client labelling: private kNN labels on the picks, one ledger per record."""
import json

import dp_accounting
import pytest

from configs import client_labeling as cl_config
from ecos_jax.ecos import client_labeling, private_knn
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
    # Local trains on the client's own labels: nothing is released.
    assert records["local"]["epsilon"] == 0.0 and "label_accuracy" not in records["local"]
    assert "label_accuracy" in (tmp_path / "results.md").read_text()


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
