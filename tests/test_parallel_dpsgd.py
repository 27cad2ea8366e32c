"""Data-parallel DP-SGD (`privacy.dpsgd` given a mesh, built from `parallel.dpsgd`'s pieces)
equals one device, on 1, 2 and 4 host devices.

The reference is the library's one-device step (`privacy.dpsgd.make_dp_step` without a mesh)
with the same key: equal parameters after noisy steps mean the sharded step clips the same
per-example gradients, sums them, and adds the noise exactly once (n per-device draws would
differ).
"""
import dataclasses

import dp_accounting
import jax
import numpy as np
import optax
import pytest

from ecos_jax.models import get_model
from ecos_jax.parallel import dpsgd as pdp
from ecos_jax.parallel import mesh as mesh_lib
from ecos_jax.privacy import dpsgd as dpsgd_lib
from ecos_jax.privacy.clipped_grads import clipped_grad
from ecos_jax.privacy.ledger import PrivacyLedger

N, D, K = 48, 6, 3


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D)).astype(np.float32)
    y = rng.integers(0, K, N).astype(np.int32)
    model = get_model("mlp", K, hidden=(8,))
    params = model.init(jax.random.key(0), x[:1])
    return model, params, x, y


def _max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(u) - np.asarray(v))))
               for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# The default suite runs the fast path on 1 and 4 devices; the slow suite adds vmap and 2.
@pytest.mark.parametrize("method,counts", [
    ("layers", (1, 4)),
    pytest.param("layers", (2,), marks=pytest.mark.slow),
    pytest.param("vmap", (1, 2, 4), marks=pytest.mark.slow)])
def test_sharded_steps_equal_the_one_device_step(problem, method, counts):
    model, params, x, y = problem
    config = dpsgd_lib.DPSGDConfig(dataset_size=N, batch_size=12, l2_norm_clip=0.5,
                                   noise_multiplier=1.3, grad_method=method)
    key = jax.random.key(7)
    mask = np.arange(N) % 3 != 0  # a Poisson-like padded batch: some rows do not count
    init, step = dpsgd_lib.make_dp_step(model, optax.sgd(0.3), config, key=key)
    ref = init(params)
    for _ in range(2):
        ref, ref_metrics = step(ref, x, y, mask)
    for n in counts:
        mesh = mesh_lib.local_mesh(n)
        init_p, step_p = dpsgd_lib.make_dp_step(model, optax.sgd(0.3), config, key=key,
                                                mesh=mesh)
        state = init_p(params)
        (xs, ys), ms = mesh_lib.shard_batch(mesh, x, y, mask=mask)
        for _ in range(2):
            state, metrics = step_p(state, xs, ys, ms)
        assert _max_diff(state.params, ref.params) < 1e-5, n
        assert len(jax.tree.leaves(state.params)[0].addressable_shards) == n  # replicated
        for name in ("loss", "grad_norm", "clipped_fraction", "batch_size"):
            np.testing.assert_allclose(float(metrics[name]), float(ref_metrics[name]), rtol=1e-5)
    # The noise matters: without it the parameters differ by far more than the tolerance.
    quiet = dataclasses.replace(config, noise_multiplier=0.0)
    init_q, step_q = dpsgd_lib.make_dp_step(model, optax.sgd(0.3), quiet, key=key)
    assert _max_diff(step_q(init_q(params), x, y, mask)[0].params,
                     step(init(params), x, y, mask)[0].params) > 1e-2


def test_sharded_clipped_grad_keeps_the_sensitivity_and_rejects_bad_batches(problem):
    model, params, x, y = problem
    base = clipped_grad(model, l2_norm_clip=0.7)
    mesh = mesh_lib.local_mesh(4)
    sharded = pdp.sharded_clipped_grad(base, mesh)
    assert sharded.sensitivity == base.sensitivity == 0.7
    assert sharded.sensitivity_under("replace_one") == 1.4
    with pytest.raises(ValueError, match="multiple of the 4 devices"):
        sharded(params, x[:10], y[:10], np.ones(10, bool))
    with pytest.raises(ValueError, match="no axis 'batch'"):
        pdp.sharded_clipped_grad(base, mesh, axis="batch")
    config = dpsgd_lib.DPSGDConfig(dataset_size=N, batch_size=10)
    with pytest.raises(ValueError, match="no axis 'batch'"):  # refused before any work
        dpsgd_lib.train(model, params, x, y, config, optax.sgd(0.1), steps=1, mesh=mesh,
                        axis="batch")


@pytest.mark.parametrize("grid", [
    ((None, 1), (4, 2)),
    pytest.param(((None, 1), (1, 1), (1, 2), (2, 2), (4, 1), (2, 1)), marks=pytest.mark.slow)])
def test_train_with_accumulation_equals_across_devices_and_ledger_is_unchanged(problem, grid):
    """(devices, accumulation steps) pairs, None = no mesh: the default suite compares 4 devices
    with 2 micro-batches per logical step against the one-device `train` with 1."""
    model, params, x, y = problem
    # M = N slots: plain Poisson (no truncation), so RDP can check the claim in milliseconds.
    config = dpsgd_lib.DPSGDConfig(dataset_size=N, batch_size=10, l2_norm_clip=1.0,
                                   noise_multiplier=2.0, max_batch_size=N)
    runs, ledgers = {}, {}
    for n, k in grid:
        ledger = PrivacyLedger(delta=1e-5, reproducible_seed=3)
        runs[n, k] = dpsgd_lib.train(model, params, x, y, config, optax.sgd(0.2), steps=3,
                                     mesh=None if n is None else mesh_lib.local_mesh(n),
                                     seed=3, ledger=ledger,
                                     accumulation_steps=k, log_every=1)
        ledgers[n, k] = ledger
    for key_, run in runs.items():
        # Two micro-batches of one logical batch, noised once, are one step on the whole batch.
        assert _max_diff(run.params, runs[None, 1].params) < 1e-5, key_
        assert ledgers[key_].entries == ledgers[None, 1].entries, key_  # name, event, meta
        assert run.devices.get("mesh_devices") == key_[0]
        assert ([h["batch_size"] for h in run.history]
                == [h["batch_size"] for h in runs[None, 1].history])
    # The ledger holds the one-device event: T = 3 steps at q = 10/48, sigma 2.0, checked
    # against dp_accounting's RDP accountant directly.
    event = config.event(3)
    last = grid[-1]
    assert runs[last].event == event
    rdp = dp_accounting.rdp.RdpAccountant().compose(
        dp_accounting.PoissonSampledDpEvent(10 / N, dp_accounting.GaussianDpEvent(2.0)), 3)
    assert runs[last].epsilon["rdp"] == pytest.approx(rdp.get_epsilon(1e-5), rel=1e-6)
    assert ledgers[last].epsilon(accountant="rdp") == pytest.approx(
        rdp.get_epsilon(1e-5), rel=1e-6)


class _Stop(Exception):
    pass


@pytest.mark.slow
def test_train_on_a_mesh_resumes_from_its_checkpoint(problem, tmp_path):
    """The data-parallel run is the one training loop: killed after step 2 of 4 on 2 devices, it
    resumes from its orbax checkpoint (restored onto the mesh) to the uninterrupted run."""
    model, params, x, y = problem
    config = dpsgd_lib.DPSGDConfig(dataset_size=N, batch_size=10, l2_norm_clip=1.0,
                                   noise_multiplier=2.0)
    mesh = mesh_lib.local_mesh(2)

    def run(**kw):
        return dpsgd_lib.train(model, params, x, y, config, optax.adam(0.05), steps=4, seed=5,
                               mesh=mesh, log_every=1, **kw)

    def stop(state, record):
        if record["step"] == 3:
            raise _Stop

    ref = run()
    with pytest.raises(_Stop):
        run(checkpoint_dir=tmp_path, hooks=[stop])
    resumed = run(checkpoint_dir=tmp_path)
    assert resumed.resumed_from == 2
    assert _max_diff(resumed.params, ref.params) < 1e-6
    assert len(jax.tree.leaves(resumed.params)[0].addressable_shards) == 2
