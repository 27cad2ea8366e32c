"""The references a consistency figure is read against (chance, the seed ceiling), the table cell
that shows them, and the pieces the Fashion-MNIST valuation runs rest on: the model as a
function of the image through the scattering, the run list and its resume fingerprint."""
import math

import jax
import numpy as np
import pytest

from ecos_jax import models, scattering
from ecos_jax.reporting.tables import beside_references
from ecos_jax.valuation import consistency as cm


def test_chance_top_k_overlap_is_k_over_n_and_matches_random_draws():
    n, k = 200, 20
    assert cm.chance_top_k_overlap(n, k) == pytest.approx(0.1)
    rng = np.random.default_rng(0)
    draws = [cm.top_k_overlap(rng.random(n), rng.random(n), k) for _ in range(400)]
    assert np.mean(draws) == pytest.approx(k / n, abs=0.01)   # E overlap of independent scores
    assert cm.chance_scores(n, k) == {"pearson": 0.0, "spearman": 0.0, "top_k_overlap": 0.1}
    with pytest.raises(ValueError, match="k must be"):
        cm.chance_top_k_overlap(10, 11)


def test_chance_images_of_random_subsets_sit_between_identical_and_disjoint_sets():
    rng = np.random.default_rng(1)
    dark = rng.uniform(0.0, 0.2, (100, 8, 8, 1)).astype(np.float32)
    bright = rng.uniform(0.8, 1.0, (100, 8, 8, 1)).astype(np.float32)
    x = np.concatenate([dark, bright])
    ch = cm.chance_images(x, 50, seed=0, ssim_mode="mean_image", bins=16)
    apart = cm.bhattacharyya_distance(dark[:50], bright[:50], bins=16)
    assert 0.0 < ch["bhattacharyya"] < apart        # random halves share most of the histogram
    assert ch["ssim"] > cm.set_ssim(dark[:50], bright[:50])
    assert ch == cm.chance_images(x, 50, seed=0, ssim_mode="mean_image", bins=16)   # seeded


def test_relative_agreement_maps_chance_to_0_and_the_ceiling_to_1_for_both_directions():
    assert cm.relative_agreement(0.1, 0.8, 0.1) == 0.0
    assert cm.relative_agreement(0.8, 0.8, 0.1) == pytest.approx(1.0)
    assert cm.relative_agreement(0.45, 0.8, 0.1) == pytest.approx(0.5)
    # a distance: ceiling below chance, the same reading
    assert cm.relative_agreement(0.02, 0.01, 0.03) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="ceiling equals chance"):
        cm.relative_agreement(0.3, 0.1, 0.1)
    with pytest.raises(ValueError, match="finite"):
        cm.relative_agreement(math.inf, 0.5, 0.1)


def test_beside_references_cell():
    assert beside_references(0.5234, 0.8, 0.1) == "0.52 (ceiling 0.80, chance 0.10)"
    assert beside_references(0.5, None, 0.1, digits=1) == "0.5 (chance 0.1)"
    assert beside_references("n/a", 0.8, None) == "n/a (ceiling 0.80)"
    assert beside_references(0.5) == "0.50"


@pytest.mark.slow  # compiles VoG through the scattering transform: ~5 s idle, ~25 s at load 16
def test_input_apply_differentiates_through_the_scattering_in_pixel_space():
    from configs.data_valuation import get_config
    from ecos_jax.experiments.data_valuation import input_apply
    from ecos_jax.valuation.vog import vog_scores

    c = get_config("fashion_quick")
    model = models.get_model("linear", 10)
    x = np.random.default_rng(0).random((6, 28, 28, 1), dtype=np.float32)
    y = np.arange(6, dtype=np.int32)
    bank = scattering.filter_bank((28, 28), J=2, L=8)
    f = scattering.group_normalize(scattering.scatter_features(bank, x), 27)
    ckpts = [model.init(jax.random.key(i), f[:1]) for i in range(3)]
    apply = input_apply(model, c.features, (28, 28))
    np.testing.assert_allclose(apply(ckpts[0], x), model.apply(ckpts[0], f), rtol=1e-5, atol=1e-5)
    pixel = np.asarray(vog_scores(apply, ckpts, x, y))
    assert pixel.shape == (6,) and np.all(pixel > 0)
    # On the normalised features a linear model's saliency is its class row, the same for every
    # sample of a class: the pixel-space VoG is what makes the score per sample.
    same_class = np.zeros(6, np.int32)
    feat = np.asarray(vog_scores(model.apply, ckpts, f, same_class))
    assert np.allclose(feat, feat[0])
    assert not np.allclose(np.asarray(vog_scores(apply, ckpts, x, same_class)), pixel[0])
    assert input_apply(model, get_config().features) == model.apply


def test_run_specs_add_one_seed_ceiling_per_architecture_and_fingerprint_ignores_the_run_list():
    from configs.data_valuation import get_config
    from ecos_jax.experiments import data_valuation as dv
    from ecos_jax.utils.overrides import override

    c = get_config("fashion_quick")
    specs = dv._run_specs(c, [3.0, math.inf])
    assert [s[3] for s in specs] == ["linear_eps3", "linear_epsinf", "mlp_eps3", "mlp_epsinf",
                                     "linear_epsinf_seed1", "mlp_epsinf_seed1"]
    assert len(dv._run_specs(c, [3.0])) == 2                # no non-private run: no ceiling
    fp = dv._fingerprint(c, "linear", 3.0, 0)
    assert dv._fingerprint(override(c, {"epsilons": (1.0, 3.0)}), "linear", 3.0, 0) == fp
    assert dv._fingerprint(override(c, {"train.dp_learning_rate": 8.0}), "linear", 3.0, 0) != fp
    assert dv._fingerprint(c, "linear", 3.0, 1) != fp


def test_pruning_refuses_scores_of_other_samples(tmp_path):
    from configs.pruning import get_config
    from ecos_jax.experiments.pruning import _saved_scores
    from ecos_jax.utils.io import save_npz
    from ecos_jax.utils.overrides import override

    c = override(get_config("fashion"), {"scores_from": str(tmp_path), "train.model": "linear"})
    labels = np.arange(20) % 10
    index = np.array([1, 4, 7])
    good = dict(index=index, labels=labels[index], loss=np.ones(3), grad_norm=np.ones(3),
                vog=np.ones(3), plis=np.ones(2))
    save_npz(tmp_path / "scores" / "linear_eps3.npz", **good)
    idx, s, _ = _saved_scores(c, labels, "3")
    assert idx.tolist() == [1, 4, 7] and set(s) == {"loss", "grad_norm", "vog"}
    save_npz(tmp_path / "scores" / "linear_eps3.npz", **(good | {"labels": labels[index] + 1}))
    with pytest.raises(ValueError, match="other samples"):
        _saved_scores(c, labels, "3")
    save_npz(tmp_path / "scores" / "linear_eps3.npz", **good)
    with pytest.raises(ValueError, match="plis"):
        _saved_scores(override(c, {"metrics": ("loss", "plis")}), labels, "3")
    with pytest.raises(FileNotFoundError):
        _saved_scores(c, labels, "8")


def test_fashion_plis_variants_score_plis_on_every_scored_sample_and_prune_by_it(tmp_path):
    from configs import data_valuation, pruning
    from ecos_jax.experiments import data_valuation as dv
    from ecos_jax.experiments.pruning import _saved_scores
    from ecos_jax.utils.io import save_npz
    from ecos_jax.utils.overrides import override
    from ecos_jax.valuation.plis import plis_subset

    c = data_valuation.get_config("fashion_plis")
    base = data_valuation.get_config("fashion")
    assert tuple(c.train.models) == ("linear",)
    # The variant is `fashion` with these two overrides: a run made with them resumes under it.
    by_hand = override(base, {"train.models": ("linear",), "scores.plis_samples": 10_000})
    assert dv._fingerprint(c, "linear", 3.0, 0) == dv._fingerprint(by_hand, "linear", 3.0, 0)
    assert dv._fingerprint(c, "linear", 3.0, 0) != dv._fingerprint(base, "linear", 3.0, 0)
    labels = np.arange(c.data.n_scored) % 10
    assert len(plis_subset(labels, c.scores.plis_samples)) == c.data.n_scored   # all, not 300

    p = override(pruning.get_config("fashion_plis"), {"scores_from": str(tmp_path)})
    assert tuple(p.metrics) == ("plis",) and p.data.to_dict() == pruning.get_config("fashion").data.to_dict()
    index = np.array([1, 4, 7])
    plis = np.array([0.2, 0.9, 0.5])
    save_npz(tmp_path / "scores" / "linear_eps3.npz", index=index, labels=labels[index],
             loss=np.ones(3), plis=plis)
    idx, s, _ = _saved_scores(p, labels, "3")
    assert idx.tolist() == [1, 4, 7] and set(s) == {"plis"} and s["plis"].tolist() == plis.tolist()


@pytest.mark.slow  # three DP-SGD compilations: ~10 s idle, ~30 s at load 5
def test_train_at_epsilon_takes_its_dp_batch_and_momentum_from_their_own_arguments():
    from ecos_jax.privacy.ledger import PrivacyLedger
    from ecos_jax.valuation.private_training import train_at_epsilon

    rng = np.random.default_rng(0)
    x = rng.random((64, 4, 4, 1), dtype=np.float32)
    y = (np.arange(64) % 10).astype(np.int32)
    model = models.get_model("linear", 10)
    runs = {}
    for name, kw in {"plain": {}, "dp_batch": {"dp_batch_size": 16},
                     "momentum": {"dp_momentum": 0.9}}.items():
        runs[name] = train_at_epsilon(model, x, y, epsilon=8.0, epochs=2, batch_size=32,
                                      ledger=PrivacyLedger(1e-3, accountant="pld", reproducible_seed=0),
                                      noise_seed=0,
                                      **kw)
    assert runs["plain"].steps == 4 and runs["dp_batch"].steps == 8   # T = epochs · N / batch
    p0, p1 = (jax.tree.leaves(runs[k].params)[0] for k in ("plain", "momentum"))
    assert not np.allclose(p0, p1)          # same noise, same batches: only momentum differs
