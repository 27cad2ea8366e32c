"""The one training loop: fit learns, compiles once, snapshots, carries the optimiser state,
resumes from its orbax checkpoint, takes hooks and a data mesh, and rejects bad input."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from ecos_jax import models, training
from ecos_jax.reporting.metrics import JsonlWriter, read_jsonl
from ecos_jax.training import supervised


def _toy(n=96, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n).astype(np.int32)
    x = rng.normal(0, 0.3, (n, 6, 6, 1)).astype(np.float32)
    x[y == 1, :3] += 1.0  # class 1 has a bright top half
    return x, y


ADAM = training.make_optimizer("adam", 1e-2)


def _same(a, b):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(u, v)


def test_fit_learns_and_snapshots():
    x, y = _toy()
    model = models.get_model("mlp", num_classes=2, hidden=(16,))
    res = training.fit(model, x, y, optimizer=ADAM, epochs=6, batch_size=32, seed=0,
                       snapshot_every=2, eval_data=(x, y))
    assert [e for e, _ in res.snapshots] == [2, 4, 6]
    # Snapshots survive buffer donation by later steps, and differ from one another.
    first, last = (jax.tree.leaves(p)[0] for _, p in (res.snapshots[0], res.snapshots[-1]))
    assert not np.allclose(np.asarray(first), np.asarray(last))
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    assert "eval_accuracy" in res.history[-1]
    assert training.evaluate(model, res.params, x, y) > 0.9


def test_snapshots_carry_the_optimiser_state():
    # The old valuation loop restarted Adam at every checkpoint. With the one loop a run with
    # snapshots is the run without them: same params, and Adam's count is every step taken.
    x, y = _toy()
    model = models.get_model("mlp", num_classes=2, hidden=(8,))
    plain = training.fit(model, x, y, optimizer=ADAM, epochs=3, batch_size=32, seed=0)
    snaps = training.Snapshots(1)
    with_snaps = training.fit(model, x, y, optimizer=ADAM, epochs=3, batch_size=32, seed=0, hooks=[snaps])
    _same(plain.params, with_snaps.params)
    _same(snaps.snapshots[-1][1], plain.params)
    assert int(with_snaps.state.step) == 9 and int(with_snaps.state.opt_state[0].count) == 9


def test_epoch_compiles_once():
    x, y = _toy()
    model = models.get_model("mlp", num_classes=2, hidden=(8,))
    supervised._train_step.clear_cache()
    training.fit(model, x, y, optimizer=ADAM, epochs=4, batch_size=40, seed=0)
    training.fit(model, x, y, optimizer=ADAM, epochs=1, batch_size=40, seed=1)
    assert supervised._train_step._cache_size() == 1


def test_any_optax_transformation_and_a_name_is_refused():
    x, y = _toy()
    model = models.get_model("mlp", num_classes=2, hidden=(8,))
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1))
    res = training.fit(model, x, y, optimizer=tx, epochs=2, batch_size=32, seed=0)
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    with pytest.raises(TypeError, match="make_optimizer"):
        training.fit(model, x, y, optimizer="adam", epochs=1, batch_size=32, seed=0)


def test_weights_zero_out_examples():
    x, y = _toy()
    model = models.get_model("mlp", num_classes=2, hidden=(8,))
    w = np.zeros(len(x), np.float32)
    w[:10] = 1.0
    a = training.fit(model, x, y, optimizer=ADAM, epochs=1, batch_size=96, seed=0, weights=w)
    init = model.init(jax.random.fold_in(jax.random.key(0), 0), x[:1])
    b = training.fit(model, x[:10], y[:10], optimizer=ADAM, epochs=1, batch_size=10, seed=0,
                     init_params=init)
    jax.tree.map(np.asarray, init)  # the caller's init params are still alive (not donated)
    for p, q in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-6)


class _Stop(Exception):
    pass


def test_killed_fit_resumes_from_its_checkpoint_bitwise(tmp_path):
    x, y = _toy()
    model = models.get_model("mlp", num_classes=2, hidden=(8,))
    ref = training.fit(model, x, y, optimizer=ADAM, epochs=4, batch_size=32, seed=0)

    def stop(record):
        if record["epoch"] == 3:
            raise _Stop

    with pytest.raises(_Stop):  # killed in epoch 3's hooks: epoch 2's checkpoint is the latest
        training.fit(model, x, y, optimizer=ADAM, epochs=4, batch_size=32, seed=0,
                     hooks=[training.Callback(stop)], checkpoint_dir=tmp_path)
    res = training.fit(model, x, y, optimizer=ADAM, epochs=4, batch_size=32, seed=0, checkpoint_dir=tmp_path)
    _same(res.params, ref.params)  # Adam's moments came back from the checkpoint too
    assert res.history == ref.history
    with pytest.raises(ValueError, match="different fit run.*seed"):
        training.fit(model, x, y, optimizer=ADAM, epochs=4, batch_size=32, seed=1, checkpoint_dir=tmp_path)


def test_hooks_see_every_record_and_the_writer_keeps_them(tmp_path):
    x, y = _toy()
    model = models.get_model("mlp", num_classes=2, hidden=(8,))
    closed = []

    class Hook:
        def __init__(self):
            self.seen = []

        def __call__(self, state, record):
            self.seen.append((int(state.step), dict(record)))

        def close(self):
            closed.append(True)

    hook = Hook()
    with JsonlWriter(tmp_path / "m.jsonl", run="toy") as w:
        res = training.fit(model, x, y, optimizer=ADAM, epochs=3, batch_size=32, seed=0,
                           hooks=[hook, training.WriteMetrics(w)])
    assert [s for s, _ in hook.seen] == [3, 6, 9] and closed == [True]
    rows = read_jsonl(tmp_path / "m.jsonl", run="toy")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert [r["loss"] for r in rows] == [h["loss"] for h in res.history]
    json.dumps(rows)


def test_nan_loss_stops_the_loop():
    x, y = _toy()
    model = models.get_model("mlp", num_classes=2, hidden=(8,))
    with pytest.raises(FloatingPointError, match="at epoch 1"):
        training.fit(model, x, y, optimizer=optax.sgd(1e30), epochs=2, batch_size=96, seed=0,
                     loss_fn=lambda o, t: training.softmax_xent(o, t) * np.nan)


def test_kl_distillation_is_zero_for_equal_logits_and_positive_otherwise():
    logits = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    np.testing.assert_allclose(training.kl_distillation(2.0)(logits, logits), 0.0, atol=1e-6)
    assert (training.kl_distillation(2.0)(logits, np.roll(logits, 1, axis=0)) > 0).all()


@pytest.mark.parametrize("bad, match", [
    (dict(x=np.zeros((0, 6, 6, 1), np.float32), y=np.zeros(0, np.int32)), "empty"),
    (dict(x=np.full((4, 6, 6, 1), np.nan, np.float32), y=np.zeros(4, np.int32)), "NaN"),
    (dict(x=np.zeros((4, 6, 6, 1), np.float32), y=np.zeros(3, np.int32)), "examples"),
])
def test_bad_input(bad, match):
    model = models.get_model("mlp", num_classes=2)
    with pytest.raises(ValueError, match=match):
        training.fit(model, bad["x"], bad["y"], optimizer=ADAM, epochs=1, batch_size=2, seed=0)


_MESH_SCRIPT = """
import jax, numpy as np
from ecos_jax import models, training
from ecos_jax.parallel.mesh import local_mesh
assert jax.device_count() == 4, jax.devices()
rng = np.random.default_rng(0)
y = rng.integers(0, 2, 90).astype(np.int32)
x = rng.normal(0, 0.3, (90, 6, 6, 1)).astype(np.float32)
model = models.get_model("mlp", num_classes=2, hidden=(8,))
adam = training.make_optimizer("adam", 1e-2)
# batch 30 on 4 devices: every batch is padded to 32 with weight-0 rows
one = training.fit(model, x, y, optimizer=adam, epochs=2, batch_size=30, seed=0)
four = training.fit(model, x, y, optimizer=adam, epochs=2, batch_size=30, seed=0, mesh=local_mesh(4))
for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert len(b.sharding.device_set) == 4
print("MESH_OK", [h["loss"] for h in one.history], [h["loss"] for h in four.history])
"""


@pytest.mark.slow  # a fresh JAX process on 4 host devices: ~25 s on the loaded 2-core CPU
def test_data_parallel_fit_matches_one_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", _MESH_SCRIPT], env=env, capture_output=True, text=True,
                         timeout=300)
    assert "MESH_OK" in out.stdout, out.stderr[-3000:]
