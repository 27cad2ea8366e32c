"""Ledger: totals equal a hand-built composition; saved ledgers round-trip; seeded runs flagged."""
import json
import math

import dp_accounting
import pytest
from dp_accounting import pld, rdp

from ecos_jax.privacy import accounting
from ecos_jax.privacy.ledger import PrivacyLedger

DELTA = 1e-5


def _events():
    return [
        accounting.dpsgd_event(0.02, 1.2, 300),
        dp_accounting.GaussianDpEvent(6.7),
        dp_accounting.LaplaceDpEvent(2.0),
    ]


def _ledger(**kw):
    ledger = PrivacyLedger(DELTA, **kw)
    sens = ["L2 = C per example", "L2 = 1: one count by one", "L1 = B"]
    for i, (ev, s) in enumerate(zip(_events(), sens)):
        ledger.record(f"release{i}", ev, sensitivity=s, step=i)
    return ledger


def test_total_equals_hand_built_composition():
    ledger = _ledger()
    hand = dp_accounting.ComposedDpEvent(_events())
    assert ledger.composed_event() == hand
    assert ledger.epsilon() == rdp.RdpAccountant().compose(hand).get_epsilon(DELTA)
    assert ledger.epsilon(accountant="pld") == pld.PLDAccountant().compose(hand).get_epsilon(DELTA)
    # Composition costs more than any single release.
    assert ledger.epsilon() > max(accounting.epsilon(e, DELTA) for e in _events())
    assert ledger.total_epsilon(1e-6) > ledger.epsilon()


def test_empty_ledger_and_non_private_entry():
    ledger = PrivacyLedger()
    assert ledger.epsilon() == 0.0 and ledger.to_dict()["total_epsilon"]["rdp"] == 0.0
    ledger.record("plain_model", dp_accounting.NonPrivateDpEvent(), sensitivity="unbounded")
    assert ledger.epsilon() == math.inf
    assert ledger.to_dict()["total_epsilon"]["pld"] == "inf"


def test_save_load_round_trip(tmp_path):
    ledger = _ledger(reproducible_seed=3)
    path = tmp_path / "sub" / "ledger.json"
    ledger.save(path)
    data = json.loads(path.read_text())
    assert data["reproducible"] is True and "reproducible research only" in data["warning"]
    assert data["total_epsilon"]["rdp"] == pytest.approx(ledger.epsilon())
    assert [e["meta"]["step"] for e in data["entries"]] == [0, 1, 2]
    assert data["entries"][2]["epsilon"]["rdp"] >= 0.5  # Laplace(2) is 0.5-DP
    again = PrivacyLedger.load(path)
    assert again.composed_event() == ledger.composed_event()
    assert again.epsilon() == ledger.epsilon()
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no temp file left


def test_unseeded_ledger_is_not_marked():
    d = PrivacyLedger().to_dict()
    assert d["reproducible"] is False and "warning" not in d


def test_bad_input():
    with pytest.raises(ValueError, match="delta"):
        PrivacyLedger(1.5)
    with pytest.raises(ValueError, match="1/N"):
        PrivacyLedger(1e-3, dataset_size=5000)
    ledger = PrivacyLedger()
    with pytest.raises(ValueError, match="sensitivity"):
        ledger.record("x", dp_accounting.GaussianDpEvent(1.0), sensitivity="")
    with pytest.raises(ValueError, match="DpEvent"):
        ledger.record("x", 1.0, sensitivity="L2 = 1")
    with pytest.raises(ValueError, match="cannot compose"):
        ledger.record("x", dp_accounting.UnsupportedDpEvent(), sensitivity="L2 = 1")
    with pytest.raises(ValueError, match="JSON"):
        ledger.record("x", dp_accounting.GaussianDpEvent(1.0), sensitivity="L2 = 1", f=object())
    assert len(ledger) == 0


def test_relation_recorded_and_mixed_relations_refused(tmp_path):
    ledger = PrivacyLedger(DELTA)
    ledger.record("model", accounting.dpsgd_event(0.02, 1.2, 300), sensitivity="L2 = C")
    with pytest.raises(ValueError, match="one neighbouring relation"):
        ledger.record("scores", dp_accounting.LaplaceDpEvent(1.0), sensitivity="L1 = B",
                      relation="replace_one")
    assert len(ledger) == 1
    d = ledger.to_dict()
    assert d["neighboring_relation"] == "add_or_remove_one"
    assert d["entries"][0]["relation"] == "add_or_remove_one"

    shuffle = PrivacyLedger(DELTA, relation="replace_one")
    shuffle.record("model", accounting.dpsgd_event(0.1, 2.0, 25, sampling="shuffle"),
                   sensitivity="L2 = 2C under replace-one")
    shuffle.record("scores", dp_accounting.LaplaceDpEvent(1.0), sensitivity="L1 = B")
    path = tmp_path / "l.json"
    shuffle.save(path)
    again = PrivacyLedger.load(path)
    assert again.relation == "replace_one"
    assert [e.relation for e in again.entries] == ["replace_one"] * 2
    assert again.epsilon() == shuffle.epsilon()
    # Amplification by sampling is an add/remove analysis: a replace-one Poisson entry is refused.
    with pytest.raises(ValueError, match="add_or_remove_one only"):
        shuffle.record("poisson", accounting.dpsgd_event(0.1, 2.0, 25), sensitivity="L2 = C")
    with pytest.raises(ValueError, match="relation"):
        PrivacyLedger(DELTA, relation="swap_two")


def test_pld_only_event_is_composed_by_pld_and_refused_by_rdp():
    ev = accounting.dpsgd_event(0.05, 2.0, 20, dataset_size=1000, max_batch_size=52)  # σ = 2: a 4x faster PLD than σ = 1
    assert isinstance(ev.event, dp_accounting.TruncatedSubsampledGaussianDpEvent)
    ledger = PrivacyLedger(DELTA)
    ledger.record("model", ev, sensitivity="L2 = C")
    ledger.record("counts", dp_accounting.GaussianDpEvent(6.7), sensitivity="L2 = 1")
    assert ledger.accountants() == ("pld",)
    hand = dp_accounting.ComposedDpEvent([ev, dp_accounting.GaussianDpEvent(6.7)])
    assert ledger.epsilon(accountant="pld") == pld.PLDAccountant().compose(hand).get_epsilon(DELTA)
    with pytest.raises(ValueError, match="'rdp' accountant cannot compose entry 'model'"):
        ledger.epsilon()
    d = ledger.to_dict()
    assert d["total_epsilon"]["rdp"] is None and d["entries"][0]["epsilon"]["rdp"] is None
    assert d["total_epsilon"]["pld"] == pytest.approx(ledger.epsilon(accountant="pld"))


def test_one_entry_ledger_reuses_its_release_epsilon(monkeypatch):
    # A one-entry ledger composes ComposedDpEvent([e]), whose ε is e's: it must equal the direct
    # dp_accounting value of that composition and be served from the memo the release filled
    # (no second PLD build: a truncated-Poisson one costs seconds).
    ev = accounting.dpsgd_event(0.05, 2.0, 5, dataset_size=1000, max_batch_size=52)
    first = accounting.epsilon(ev, DELTA, "pld")
    ledger = PrivacyLedger(DELTA, accountant="pld")
    ledger.record("model", ev, sensitivity="L2 = C")
    monkeypatch.setattr(pld.PLDAccountant, "compose", lambda *a, **k: pytest.fail("PLD rebuilt"))
    assert ledger.epsilon() == first
    monkeypatch.undo()
    assert first == pld.PLDAccountant().compose(ledger.composed_event()).get_epsilon(DELTA)
