"""Training at a target ε keeps K live checkpoints and records one composed DP-SGD release."""
import math

import jax
import numpy as np
import pytest

from ecos_jax import models
from ecos_jax.privacy import accounting
from ecos_jax.privacy.ledger import PrivacyLedger
from ecos_jax.training import fit, make_optimizer
from ecos_jax.valuation.private_training import train_at_epsilon
from ecos_jax.valuation.vog import vog_scores


@pytest.fixture(scope="module")
def tiny():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(64, 8, 8, 1)).astype(np.float32)
    y = (x.mean(axis=(1, 2, 3)) > 0.5).astype(np.int32)
    return models.get_model("mlp", 2, hidden=(8,)), x, y


def test_nonprivate_checkpoints_are_distinct_and_alive(tiny):
    model, x, y = tiny
    run = train_at_epsilon(model, x, y, epsilon=math.inf, epochs=3, checkpoints_every=1,
                           batch_size=16, seed=0)
    assert len(run.checkpoints) == 3 and run.noise_multiplier == 0.0
    first, last = (jax.tree.leaves(c)[0] for c in (run.checkpoints[0], run.checkpoints[-1]))
    assert not np.allclose(first, last)            # training moved, and both arrays are readable
    assert np.all(np.isfinite(vog_scores(model.apply, run.checkpoints, x, y)))
    # One Adam run through its checkpoints (the old loop restarted Adam at each): the last
    # checkpoint is the run's final params.
    for a, b in zip(jax.tree.leaves(run.checkpoints[-1]), jax.tree.leaves(run.params)):
        np.testing.assert_array_equal(a, b)


def test_nonprivate_run_is_one_adam_run_through_its_checkpoints(tiny):
    # The old loop restarted (and re-seeded) Adam at every checkpoint; now the K checkpoints
    # are snapshots of one run: the same params as a plain fit without checkpoints.
    model, x, y = tiny
    run = train_at_epsilon(model, x, y, epsilon=math.inf, epochs=3, checkpoints_every=1,
                           batch_size=16, learning_rate=1e-3, seed=0)
    plain = fit(model, x, y, optimizer=make_optimizer("adam", 1e-3), epochs=3, batch_size=16, seed=0)
    for a, b in zip(jax.tree.leaves(run.params), jax.tree.leaves(plain.params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_mesh_run_equals_one_device_and_returns_host_arrays(tiny):
    # data_valuation and pruning train over local_mesh(num_devices); what they score must be
    # the same model, held once on the host (not replicated over the mesh's devices).
    from ecos_jax.parallel.mesh import local_mesh
    model, x, y = tiny
    kw = dict(epsilon=math.inf, epochs=2, checkpoints_every=1, batch_size=16, seed=0)
    one = train_at_epsilon(model, x, y, **kw)
    two = train_at_epsilon(model, x, y, mesh=local_mesh(2), **kw)
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(two.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert all(isinstance(leaf, np.ndarray)
               for c in (two.params, *two.checkpoints) for leaf in jax.tree.leaves(c))


@pytest.mark.slow  # σ calibration + two DP-SGD compilations: ~25 s on a busy 2-core CPU
def test_dp_segments_compose_to_target_epsilon(tiny):
    model, x, y = tiny
    ledger = PrivacyLedger(1e-3, accountant="pld", reproducible_seed=1, dataset_size=len(x) * 10)
    run = train_at_epsilon(model, x, y, epsilon=4.0, epochs=2, checkpoints_every=1, batch_size=16,
                           ledger=ledger, noise_seed=1, name="m")
    # One run of T steps, checkpointed on the way (the noise key and step carried through).
    assert [e.name for e in ledger.entries] == ["m"] and ledger.entries[0].meta["steps"] == 8
    assert run.steps == 8 and len(run.checkpoints) == 2
    assert not np.array_equal(jax.tree.leaves(run.checkpoints[0])[0], jax.tree.leaves(run.checkpoints[1])[0])
    # Batches have M = 16 + 5 std + 1 = 35 < 64 slots: the truncated-Poisson event, which the
    # σ was calibrated for (PLD; RDP cannot compose it).
    one_run = accounting.dpsgd_event(16 / 64, run.noise_multiplier, run.steps,
                                     dataset_size=64, max_batch_size=35)
    assert ledger.accountants() == ("pld",)
    assert ledger.epsilon() == pytest.approx(accounting.epsilon(one_run, 1e-3, "pld"), rel=1e-3)
    assert ledger.epsilon() == pytest.approx(4.0, rel=2e-2) and ledger.epsilon() <= 4.0 * 1.001


def test_bad_arguments(tiny):
    model, x, y = tiny
    with pytest.raises(ValueError, match="multiple of checkpoints_every"):
        train_at_epsilon(model, x, y, epsilon=1.0, epochs=3, checkpoints_every=2, ledger=PrivacyLedger())
    with pytest.raises(ValueError, match="ledger"):
        train_at_epsilon(model, x, y, epsilon=1.0, epochs=1)
