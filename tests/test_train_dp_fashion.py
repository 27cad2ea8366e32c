"""DP-SGD on Fashion-MNIST: the models, the ScatterNet feature pipeline and the experiment's
ε × seed grid (tiny data here; the real runs are in the README)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecos_jax import models, per_sample
from ecos_jax.privacy import layer_grads


def test_max_pool_2x2_stride1_matches_flax():
    x = jax.random.normal(jax.random.key(0), (2, 9, 7, 3))
    np.testing.assert_array_equal(models.max_pool_2x2_stride1(x),
                                  nn.max_pool(x, (2, 2), strides=(1, 1)))
    # Same gradient as reduce_window's where the window maximum is unique (no ties here).
    g_ours = jax.grad(lambda a: jnp.sum(models.max_pool_2x2_stride1(a) ** 2))(x)
    g_flax = jax.grad(lambda a: jnp.sum(nn.max_pool(a, (2, 2), strides=(1, 1)) ** 2))(x)
    np.testing.assert_allclose(g_ours, g_flax, rtol=1e-6)


def test_tramer_cnn_shape_params_and_layers_fast_path():
    model = models.get_model("tramer_cnn", 10)
    x = jax.random.uniform(jax.random.key(1), (3, 28, 28, 1))
    y = jnp.arange(3) % 10
    params = model.init(jax.random.key(0), x[:1])
    assert sum(p.size for p in jax.tree.leaves(params)) == 26_010   # as published
    assert model.apply(params, x).shape == (3, 10)
    assert model.apply(params, x, features=True).shape == (3, 32)
    # The layers path (per-example grads from layer inputs/outputs) against vmap(grad).
    fast, aux = layer_grads.clipped_grad_sum(model, params, x, y, l2_norm_clip=1e9,
                                             mask=jnp.ones(3))

    def loss(p, xi, yi):
        return layer_grads.softmax_xent(model.apply(p, xi[None]), yi[None])[0]

    ref = per_sample.per_example_grads(loss, params, x, y)
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b.sum(0), rtol=1e-4, atol=1e-6)


def test_scatter_cnn_shape_params_and_layers_fast_path_match_vmap_grad():
    model = models.get_model("scatter_cnn", 10)
    params = model.init(jax.random.key(0), jnp.zeros((1, 7, 7, 81)))
    assert sum(p.size for p in jax.tree.leaves(params)) == 33_066
    assert model.apply(params, jnp.ones((2, 7, 7, 81)), features=True).shape == (2, 32)
    # The per-example path on tiny shapes (same layers, fewer channels: a faster compile).
    model = models.get_model("scatter_cnn", 3, channels=(2, 3), hidden=4)
    x = jax.random.normal(jax.random.key(1), (3, 7, 7, 5))
    y = jnp.arange(3) % 3
    params = model.init(jax.random.key(0), x[:1])
    assert model.apply(params, x).shape == (3, 3)
    # Clipped at a C some examples exceed, so the per-example norms matter, not only the sum.
    fast, aux = layer_grads.clipped_grad_sum(model, params, x, y, l2_norm_clip=0.3,
                                             mask=jnp.ones(3))

    def loss(p, xi, yi):
        return layer_grads.softmax_xent(model.apply(p, xi[None]), yi[None])[0]

    ref = [np.asarray(g, np.float64) for g in
           jax.tree.leaves(per_sample.per_example_grads(loss, params, x, y))]
    norms = np.sqrt(sum(np.sum(g.reshape(3, -1) ** 2, axis=1) for g in ref))
    np.testing.assert_allclose(aux["norms"], norms, rtol=1e-4)
    assert norms.max() > 0.3
    w = np.minimum(1.0, 0.3 / norms)
    for a, b in zip(jax.tree.leaves(fast), ref):
        np.testing.assert_allclose(a, np.tensordot(w, b, axes=1), rtol=1e-4, atol=1e-6)


def test_scatter_cnn_variant_is_the_scatter_settings_with_the_cnn():
    import sys
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    from configs import train_dp as cfg_lib

    c = cfg_lib.get_config("fashion_scatter_cnn")
    assert c.train.model == "scatter_cnn" and c.features.name == "scattering"
    assert c.train.batch_size == 8192 and c.epsilons == (3.0,)
    assert c.features.normalization == "group_norm"
    assert c.train.epochs == 60  # the published count, the setting of the README's 88.80 row


def test_linear_model_on_features():
    model = models.get_model("linear", 10)
    params = model.init(jax.random.key(0), jnp.zeros((1, 7, 7, 81)))
    assert params["params"]["Dense_0"]["kernel"].shape == (3969, 10)
    assert model.apply(params, jnp.ones((3, 7, 7, 81))).shape == (3, 10)


def _scatter_config(tmp_path, **over):
    import sys
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    from configs import train_dp as cfg_lib

    c = cfg_lib.get_config("fashion_scatter_quick")
    c.unlock()
    # Tiny: the embedded digits data (random split), one short epoch.
    c.data.name = "digits_mnist_c"
    c.data.official_split = False
    c.train.epochs = 1
    c.train.batch_size = 512
    c.num_seeds = 2
    c.log_every = 4
    c.eval_every = 1
    c.progress = False
    c.privacy.noise_seed = 0
    c.features.cache_dir = str(tmp_path / "cache")
    c.update(over)
    return c


def test_tuned_scatter_variant_changes_only_the_learning_rate_and_tests_on_the_test_split():
    import sys
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    from configs import train_dp as cfg_lib

    base = cfg_lib.get_config("fashion_scatter").to_dict()
    tuned = cfg_lib.get_config("fashion_scatter_tuned").to_dict()
    # Tuned on the validation carve; the released run reads the official test split.
    assert tuned["data"]["official_split"] and tuned["data"]["validation_size"] == 0
    assert tuned["train"]["learning_rate"] == 8.0 and base["train"]["learning_rate"] == 4.0
    assert tuned["epsilons"] == (3.0,) and tuned["num_seeds"] == 3
    for d in (base, tuned):
        d["train"].pop("learning_rate")
        d.pop("epsilons")
    assert tuned == base


@pytest.mark.slow  # ~30 s CPU: features of 6,797 images and four compiled DP runs
def test_scatter_pipeline_seed_grid_and_time_to_accuracy(tmp_path):
    import json

    from ecos_jax.experiments import train_dp

    records = train_dp.run(_scatter_config(tmp_path), tmp_path / "run")
    assert [(r["target_epsilon"], r["seed"]) for r in records] == [
        ("3", 0), ("3", 1), ("inf", 0), ("inf", 1)]
    for r in records:
        assert r["features"] == "scattering"
        steps = [p["step"] for p in r["curve"]]
        assert steps[-1] == r["steps"] and steps == sorted(steps)
        assert np.all(np.diff([p["seconds"] for p in r["curve"]]) > 0)
        assert r["curve"][-1]["test_accuracy"] == r["test_accuracy"]
    # Non-private reference keeps the clipping at C (clip_nonprivate) and has no noise.
    assert records[2]["l2_norm_clip"] == "0.1" and records[2]["noise_multiplier"] == 0.0
    assert 2.9 < float(records[0]["epsilon_pld"]) <= 3.0
    # Seeds differ (init and noise), ledgers are per (ε, seed).
    assert records[0]["test_accuracy"] != records[1]["test_accuracy"] or \
        records[0]["train_loss"] != records[1]["train_loss"]
    run = tmp_path / "run"
    for name in ("results.json", "results.md", "time_to_accuracy.png", "accuracy_vs_epsilon.png",
                 "ledger_eps3_seed0.json", "ledger_epsinf_seed1.json"):
        assert (run / name).exists(), name
    assert "Mean ± std over seeds" in (run / "results.md").read_text()
    saved = json.loads((run / "results.json").read_text())
    assert len(saved["records"]) == 4
    # The features were cached once (one file per split) and reused by every run.
    assert len(list((tmp_path / "cache").iterdir())) == 2
    # DP beats chance and the features carry signal.
    assert max(r["test_accuracy"] for r in records) > 0.3


def test_time_to_accuracy_hook_excludes_evaluation_time():
    import time

    from ecos_jax.experiments.train_dp import TimeToAccuracy

    calls = []

    def slow_eval(params):
        calls.append(params)
        time.sleep(0.05)
        return 0.5

    hook = TimeToAccuracy(slow_eval, every=2, last_step=50)
    state = type("S", (), {"params": "p"})()
    for step in (10, 20, 30, 40, 50):
        hook(state, {"step": step})
    assert [p["step"] for p in hook.points] == [20, 40, 50]       # every 2 chunks + the last
    assert hook.points[-1]["seconds"] < 0.05                       # 3 sleeps excluded
    assert TimeToAccuracy(slow_eval, every=None, last_step=50).points == []


def test_model_inputs_scattering_group_norm_and_validation(tmp_path):
    import ml_collections

    from ecos_jax.experiments import train_dp
    from ecos_jax.utils.errors import ConfigError

    f = ml_collections.ConfigDict({"name": "scattering", "J": 2, "L": 8, "normalization":
                                   "group_norm", "num_groups": 27, "batch_size": 4,
                                   "cache_dir": str(tmp_path)})
    rng = np.random.default_rng(0)
    tr, te = (rng.uniform(size=(n, 28, 28, 1)).astype(np.float32) for n in (5, 3))
    a, b = train_dp.model_inputs(f, tr, te)
    assert a.shape == (5, 7, 7, 81) and b.shape == (3, 7, 7, 81)
    # Per-example: a test image's features do not depend on the training images.
    _, b2 = train_dp.model_inputs(f, tr[:1], te)
    np.testing.assert_allclose(b, b2, rtol=1e-6)
    groups = a.reshape(5, 49, 27, 3)
    np.testing.assert_allclose(groups.mean(axis=(1, 3)), 0.0, atol=1e-4)

    c = _scatter_config(tmp_path)
    c.features.num_groups = 4
    with pytest.raises(ConfigError, match="num_groups=4 must divide the 81 "):
        train_dp.validate(c, 1000)
    # The path count follows J and L (49 at L = 6), not a fixed 81.
    c.features.L, c.features.num_groups = 6, 7
    train_dp.validate(c, 1000)
    c.features.num_groups = 27
    with pytest.raises(ConfigError, match="the 49 scattering paths .* L = 6 .*1, 7, 49"):
        train_dp.validate(c, 1000)


def _fashion_present() -> bool:
    from ecos_jax.data import fashion

    return not fashion.missing_files(fashion.source_dir())


@pytest.mark.slow  # the real Fashion-MNIST: each quick variant is <= 3 min on 2 idle cores
@pytest.mark.skipif(not _fashion_present(), reason="Fashion-MNIST IDX files not installed (make data)")
@pytest.mark.parametrize("variant", ["fashion_scatter_quick", "fashion_cnn_quick"])
def test_fashion_quick_variants_run_on_the_official_split(tmp_path, variant):
    import sys
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    from configs import train_dp as cfg_lib
    from ecos_jax.experiments import train_dp

    c = cfg_lib.get_config(variant)
    c.unlock()
    c.progress = False
    records = train_dp.run(c, tmp_path)
    assert [r["target_epsilon"] for r in records] == ["3", "inf"]
    for r in records:
        assert r["sampling_rate"] == c.train.batch_size / 60_000     # the official train split
        assert r["curve"] and r["curve"][-1]["step"] == r["steps"]
    assert 2.9 < float(records[0]["epsilon_pld"]) <= 3.0
    # Far above chance (10%) after even one or two epochs.
    assert records[0]["test_accuracy"] > 0.6
