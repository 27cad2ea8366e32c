"""Model compression: the distillation loss, a tiny end-to-end run, the teacher cache, bad config."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import model_compression as mc_config
from ecos_jax import data
from ecos_jax import training as train
from ecos_jax.ecos import distillation
from ecos_jax.experiments import ecos_runner, model_compression
from ecos_jax.utils.overrides import override


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _logits(seed, shape=(6, 5)):
    return np.random.default_rng(seed).normal(0, 2, shape).astype(np.float32)


# Zero-for-equal and positive-otherwise of the plain KL are in tests/test_train.py.

@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_kl_is_t_squared_times_kl_of_softened_distributions(temperature):
    s, t = _logits(0), _logits(1)
    p, q = _softmax(t / temperature), _softmax(s / temperature)
    want = temperature**2 * np.sum(p * (np.log(p) - np.log(q)), axis=-1)
    got = distillation.distillation_loss(temperature)(s, t)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_gradient_pulls_student_towards_teacher(temperature):
    s, t = _logits(2), _logits(3)
    loss = distillation.distillation_loss(temperature)
    g = np.asarray(jax.grad(lambda z: jnp.sum(loss(z, t)))(s))
    # T² · (1/T) · (softmax(s/T) − softmax(t/T)): the T² keeps the gradient's size comparable across T.
    np.testing.assert_allclose(g, temperature * (_softmax(s / temperature) - _softmax(t / temperature)),
                               rtol=1e-4, atol=1e-6)
    stepped = s - 0.5 * g
    assert (np.asarray(loss(stepped, t)) < np.asarray(loss(s, t))).all()
    # The student's softened distribution moves towards the teacher's.
    tv = lambda z: np.abs(_softmax(z / temperature) - _softmax(t / temperature)).sum(-1)  # noqa: E731
    assert (tv(stepped) < tv(s)).all()


def test_high_temperature_matches_centred_logits():
    """Hinton et al.: as T grows, the T²-scaled KL's gradient tends to (s − t − mean(s − t)) / K."""
    s, t = _logits(4), _logits(5)
    k = s.shape[-1]
    g = np.asarray(jax.grad(lambda z: jnp.sum(distillation.distillation_loss(1000.0)(z, t)))(s))
    d = s - t
    np.testing.assert_allclose(g, (d - d.mean(-1, keepdims=True)) / k, rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_non_positive_temperature_is_rejected(temperature):
    with pytest.raises(ValueError, match="temperature must be > 0"):
        distillation.distillation_loss(temperature)


def test_alpha_mixes_hard_label_cross_entropy():
    s, t = _logits(6), _logits(7)
    y = np.array([0, 1, 2, 3, 4, 0])
    packed = distillation.pack_targets(t, y)
    assert packed.shape == (6, 6) and (packed[:, -1] == y).all()
    kl = np.asarray(train.kl_distillation(2.0)(s, t))
    ce = np.asarray(train.softmax_xent(s, y))
    assert distillation.distillation_loss(2, 0) is distillation.distillation_loss(2.0)  # memoised
    for alpha in (0.25, 1.0):
        np.testing.assert_allclose(distillation.distillation_loss(2.0, alpha)(s, packed),
                                   (1 - alpha) * kl + alpha * ce, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="alpha"):
        distillation.distillation_loss(2.0, 1.5)
    with pytest.raises(ValueError, match="labels"):
        distillation.pack_targets(t, y[:3])


def _config(tmp_path, **overrides):
    c = mc_config.get_config("quick")
    with c.unlocked():
        c.progress = False
        c.num_seeds = 1
        c.budgets = (50,)
        c.data.client_domains = ("digits",)
        c.features.kind = "pca"             # no extractor training: the test is about the teacher
        c.ecos.noise_seed = 0               # reproducible ECOS picks, so two runs can be compared
        c.train.steps = 15
        c.train.batch_size = 32
        c.teacher.model = "cnn"             # the student's shapes: compiled once, the test stays fast
        c.teacher.epochs = 1
        c.teacher.batch_size = 256
        c.teacher.cache_dir = str(tmp_path / "teachers")
    return override(c, overrides)


def test_end_to_end_records_and_teacher_cache(tmp_path, monkeypatch):
    teacher_fits = []
    real_fit = train.fit

    def counting_fit(*args, **kwargs):
        if kwargs.get("desc", "").startswith("teacher"):
            teacher_fits.append(kwargs["desc"])
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(train, "fit", counting_fit)
    config = _config(tmp_path)
    records = model_compression.run(config, tmp_path / "a")
    assert teacher_fits == ["teacher[digits]"]
    assert sorted(r["method"] for r in records) == ["ecos", "kcenter", "oracle", "random"]
    for r in records:
        assert (r["domain"], r["budget"], r["seed"], r["n_picked"], r["n_train"]) == ("digits", 50, 0, 50, 50)
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["teacher_agreement"] <= 1.0
        assert r["epsilon"] == (pytest.approx(0.58, abs=0.01) if r["method"] == "ecos" else 0.0)
    assert len({r["teacher_accuracy"] for r in records}) == 1
    assert records[0]["teacher_accuracy"] > 0.5  # one epoch on the pool already beats chance by far
    assert "model compression" in (tmp_path / "a" / "results.md").read_text()
    # One seed: the client's whole run is its one coverage response.
    lifetime = json.loads((tmp_path / "a" / "results.json").read_text())["client_lifetime"]["digits"]
    assert lifetime["releases"] == 1 and lifetime["epsilon"] == pytest.approx(0.58, abs=0.01)
    cached = list((tmp_path / "teachers").glob("teacher-cnn-*.npz"))
    assert len(cached) == 1

    # A fresh workdir with the same teacher settings loads the teacher instead of training it.
    again = model_compression.run(config, tmp_path / "b")
    assert teacher_fits == ["teacher[digits]"]
    for r, s in zip(records, again):
        assert (r["method"], r["teacher_accuracy"], r["accuracy"]) == (s["method"], s["teacher_accuracy"],
                                                                        s["accuracy"])


@pytest.fixture(scope="module")
def digits():
    return data.load("digits_mnist_c")


@pytest.mark.parametrize("overrides, match", [
    ({"teacher.model": "huge_transformer"}, "teacher.model 'huge_transformer'"),
    ({"train.model": "tiny"}, "train.model 'tiny'"),
    ({"compression.temperature": 0.0}, "temperature must be > 0"),
    ({"compression.temperature": -2.0}, "temperature must be > 0"),
    ({"compression.alpha": 1.5}, "alpha"),
    ({"teacher.epochs": 0}, "teacher.epochs"),
    ({"methods": ("ecos", "local")}, "local"),
])
def test_bad_config_is_rejected(tmp_path, digits, overrides, match):
    with pytest.raises(ValueError, match=match):
        ecos_runner.validate(_config(tmp_path, **overrides), digits, model_compression.ModelCompression())


def test_bad_config_fails_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="temperature must be > 0"):
        model_compression.run(_config(tmp_path, **{"compression.temperature": 0.0}), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    assert not (tmp_path / "teachers").exists()


def test_local_is_refused_with_its_reason():
    config = mc_config.get_config()
    with config.unlocked():
        config.methods = ("ecos", "local")
    with pytest.raises(ValueError, match="never reach the cloud"):
        model_compression.ModelCompression().validate(config)
