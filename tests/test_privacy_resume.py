"""A DP-SGD run killed mid-way resumes from its orbax checkpoint to the uninterrupted result."""
import shutil

import jax
import numpy as np
import optax
import pytest

from ecos_jax.models import get_model
from ecos_jax.privacy import dpsgd
from ecos_jax.privacy.ledger import PrivacyLedger

N, B, T = 48, 8, 6


class Stop(Exception):
    pass


def _stop_at(step):
    """A loop hook that kills the run after step `step` (before that chunk's checkpoint)."""
    def hook(state, record):
        if record["step"] == step:
            raise Stop

    return [hook]


@pytest.fixture(scope="module")
def setup():
    model = get_model("mlp", 3, hidden=(8,))
    x = np.random.default_rng(1).normal(size=(N, 4, 4, 1)).astype(np.float32)
    y = np.arange(N) % 3
    return model, jax.jit(model.init)(jax.random.key(0), x[:1]), x, y


def _train(setup, cfg, *, seed=3, ledger=None, **kw):
    model, params, x, y = setup
    # Adam: its moments must survive the restart too, or the resumed run would differ.
    return dpsgd.train(model, params, x, y, cfg, optax.adam(0.05), steps=T, seed=seed,
                       ledger=ledger, log_every=2, **kw)


def _ledger(cfg, seed=3):
    return PrivacyLedger(1e-3, accountant="pld", relation=cfg.relation, reproducible_seed=seed,
                         dataset_size=N, allow_large_delta=True)


def _same(a, b):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("sampling", ["poisson", "shuffle"])
def test_interrupted_run_resumes_bitwise_and_records_once(setup, tmp_path, sampling):
    cfg = dpsgd.DPSGDConfig(dataset_size=N, batch_size=B, noise_multiplier=2.0,
                            sampling=sampling)
    ref_ledger = _ledger(cfg)
    ref = _train(setup, cfg, ledger=ref_ledger)

    ledger = _ledger(cfg)
    with pytest.raises(Stop):  # killed in step 6's hooks: step 4's checkpoint is the latest
        _train(setup, cfg, ledger=ledger, checkpoint_dir=tmp_path, checkpoint_every=2,
               hooks=_stop_at(6))
    assert len(ledger) == 0  # nothing released yet, nothing recorded
    res = _train(setup, cfg, ledger=ledger, checkpoint_dir=tmp_path, checkpoint_every=2)
    assert res.resumed_from == 4 and res.compilations == 1
    _same(res.params, ref.params)
    assert res.history == ref.history
    assert [e.meta["steps"] for e in ledger.entries] == [T]  # each step counted once
    assert ledger.epsilon() == ref_ledger.epsilon() == res.epsilon["pld"]


def test_checkpoint_of_another_run_is_refused(setup, tmp_path):
    cfg = dpsgd.DPSGDConfig(dataset_size=N, batch_size=B, noise_multiplier=2.0)
    with pytest.raises(Stop):
        _train(setup, cfg, checkpoint_dir=tmp_path, hooks=_stop_at(4))
    for other, kw, match in [
        (dpsgd.DPSGDConfig(dataset_size=N, batch_size=B, noise_multiplier=2.5), {},
         "noise_multiplier"),
        (dpsgd.DPSGDConfig(dataset_size=N, batch_size=B, noise_multiplier=2.0,
                           max_batch_size=12), {}, "max_batch_size"),
        (cfg, {"seed": 4}, "seed"),
    ]:
        with pytest.raises(ValueError, match=f"different DP-SGD run.*{match}"):
            _train(setup, other, checkpoint_dir=tmp_path, **kw)
    model, params, x, y = setup
    with pytest.raises(ValueError, match="data_sha256"):
        dpsgd.train(model, params, x + 1, y, cfg, optax.adam(0.05), steps=T, seed=3,
                    log_every=2, checkpoint_dir=tmp_path)


def test_unseeded_run_resumes_with_its_saved_key(setup, tmp_path):
    # With seed=None the noise key came from OS entropy: only the checkpoint holds it. Two
    # resumptions of the same checkpoint must continue with that key, not fresh draws.
    cfg = dpsgd.DPSGDConfig(dataset_size=N, batch_size=B, noise_multiplier=2.0)
    ledger = PrivacyLedger(1e-3, accountant="pld", dataset_size=N, allow_large_delta=True)
    with pytest.raises(Stop):
        _train(setup, cfg, seed=None, checkpoint_dir=tmp_path / "a", hooks=_stop_at(4))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    a = _train(setup, cfg, seed=None, ledger=ledger, checkpoint_dir=tmp_path / "a")
    b = _train(setup, cfg, seed=None, checkpoint_dir=tmp_path / "b")
    assert a.resumed_from == b.resumed_from == 2 and not a.reproducible
    _same(a.params, b.params)
    assert not ledger.to_dict()["reproducible"]
