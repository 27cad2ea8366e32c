"""Combining runs that split one ECOS grid's methods: the union table, ECOS's comparisons, and
refusals of runs that do not fit together."""
import json

import dp_accounting
import pytest

from configs import selective_labeling as sl_config
from ecos_jax.experiments import ecos_budgets, ecos_runner
from ecos_jax.privacy.ledger import PrivacyLedger
from ecos_jax.utils import io


def _run(path, methods, accuracy, *, epsilon=0.58, client_release=False):
    """A finished runner workdir: results.json and state.json, 2 domains x 2 seeds."""
    config = sl_config.get_config("quick")
    with config.unlocked():
        config.methods = tuple(methods)
        config.ecos.epsilon = epsilon
    records = [{"method": m, "domain": d, "budget": 0 if m == "local" else b, "seed": s,
                "accuracy": accuracy[m] + 0.01 * s, "epsilon": epsilon if m == "ecos" else 0.0}
               for m in methods for d in ("digits", "mnist_invert") for s in (0, 1)
               for b in ((0,) if m == "local" else (100, 200))]
    ledgers = {}
    for d in ("digits", "mnist_invert"):
        led = PrivacyLedger(1e-5, accountant="pld", relation="add_or_remove_one")
        if client_release:
            led.record("ecos_coverage", dp_accounting.GaussianDpEvent(3.0), sensitivity="1")
        ledgers[d] = ecos_runner.ledger_state(led)
    io.write_json(path / "results.json", {"config": config.to_dict(), "records": records,
                                          "communication": {}})
    io.write_json(path / "state.json", {"config_hash": "x", "records": records, "client_ledgers": ledgers})
    return records


def test_combined_table_holds_every_run_and_compares_ecos(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    base = _run(tmp_path / "a", ("random", "kcenter", "local"), {"random": 0.5, "kcenter": 0.45, "local": 0.7})
    ecos = _run(tmp_path / "b", ("ecos",), {"ecos": 0.6}, client_release=True)
    records = ecos_budgets.combine(tmp_path / "out", [tmp_path / "a", tmp_path / "b"])
    assert len(records) == len(base) + len(ecos)
    out = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {r["method"] for r in out["records"]} == {"ecos", "random", "kcenter", "local"}
    assert out["client_lifetime"]["digits"]["releases"] == 1
    rows, md = ecos_budgets.comparisons(records, local_from=200)
    by = {(r["budget"], r["other"]): r for r in rows}
    assert by[(100, "random")]["diff"] == pytest.approx(0.1)
    assert by[(100, "kcenter")]["diff"] == pytest.approx(0.15) and not by[(100, "kcenter")]["inside_one_std"]
    assert (100, "local") not in by and by[(200, "local")]["diff"] == pytest.approx(-0.1)
    assert "| 200 | local |" in (tmp_path / "out" / "comparison.md").read_text()


def test_runs_that_do_not_fit_together_are_refused(tmp_path):
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    _run(tmp_path / "a", ("random",), {"random": 0.5})
    _run(tmp_path / "b", ("random",), {"random": 0.5})
    _run(tmp_path / "c", ("ecos",), {"ecos": 0.6}, epsilon=1.0)
    with pytest.raises(ValueError, match="repeats record"):
        ecos_budgets.combine(tmp_path / "out", [tmp_path / "a", tmp_path / "b"])
    (tmp_path / "d").mkdir()
    _run(tmp_path / "d", ("ecos",), {"ecos": 0.6}, epsilon=0.58)
    with pytest.raises(ValueError, match=r"different config \(differs in \['ecos'\]\)"):
        ecos_budgets.combine(tmp_path / "out", [tmp_path / "d", tmp_path / "c"])
    # A run without ECOS never read the ecos section: it joins an ECOS run of any ε.
    assert len(ecos_budgets.combine(tmp_path / "out", [tmp_path / "a", tmp_path / "c"])) == 16
    # Execution options change no record: a run from before `num_devices` existed still joins.
    res = json.loads((tmp_path / "a" / "results.json").read_text())
    del res["config"]["num_devices"]
    res["config"]["progress"] = not res["config"]["progress"]
    io.write_json(tmp_path / "a" / "results.json", res)
    assert len(ecos_budgets.combine(tmp_path / "out", [tmp_path / "a", tmp_path / "c"])) == 16
