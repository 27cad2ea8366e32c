"""The data-valuation experiment (Usynin et al., arXiv 2305.02942): do gradient-based
scores pick the same samples when the model is trained privately?

For every architecture and every ε (∞ = non-private) the same training subset trains one model
(`private_training.train_at_epsilon`, K checkpoints), and every training sample is scored with

  loss       per-sample cross-entropy at the final checkpoint            (raw)
  grad_norm  un-clipped per-sample gradient norm at the final checkpoint (raw)
  vog        VoG over the K checkpoints, per-class min-max to [0, 1]    (+ early/middle/late)
  plis       matrix-free PLIS at the final checkpoint (clipped ḡ), per-class min-max; on a
             class-balanced subset of `scores.plis_samples` samples (`plis_subset`: power
             iteration costs ~10x VoG per sample on a CPU)

Each run's RAW VoG is then released (`release_vog`): clipped to [0, B] with B a public config
value (`privacy.release_bound`, VoG units), with per-sample Laplace noise and as a site-level
DP mean/variance; the noisy per-sample vector is normalised per class only afterwards
(post-processing). Normalising before the release would be unsafe: one sample that is its
class's min or max moves every normalised score of the class. Each run keeps two ledgers:
DP-SGD training under add/remove-one (Poisson sampling), and the score releases under
replace-one (public sample ids and N, given the DP model). They hold under different
neighbouring relations, so they are reported side by side and NOT composed into one ε.

Consistency between runs (every ε pair within an architecture, and the two architectures at
each ε) is measured on the unreleased ranking scores (not a release: they stay in the
experiment) with Pearson, Spearman, top-k overlap, SSIM of the top-k sets' mean images and the
Bhattacharyya distance of their pixel histograms. Each DP-vs-non-private figure is read
against two references: its CEILING, the same measure between the non-private run and a second
non-private run that differs only in its seed (`ceiling`: a score cannot agree across ε more
than it agrees with itself across seeds), and CHANCE (0 for the correlations, k/N for the
overlap, two random k-subsets for SSIM / Bhattacharyya: `consistency.chance_*`); the headline
is (value − chance) / (ceiling − chance).

Inputs (`features`): the pixels, or ScatterNet features (`scattering`, cached by content as in
`train_dp`). With features, the model trains on the cached features, loss and gradient norm
are computed on them (the same function of the image), and VoG and PLIS differentiate with
respect to the IMAGE through the scattering transform (`input_apply`), so their saliency is
in pixel space, as in the VoG paper. The model may train on the whole training split while
`data.n_scored` fixed samples of it are scored.

Each finished run (architecture, ε, seed) is saved under `done/` with its config fingerprint;
a rerun with the same settings reads it back instead of training again.

Writes to `workdir`: results.json, consistency.md, figures/{grid_*,hist_*}.png,
ledgers/{run}_training.json (finite ε only), ledgers/{run}_releases.json, scores/*.npz
(with `index`: the scored samples' rows in the training set), done/*.json.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import math
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from ecos_jax import models, scattering, training
from ecos_jax.data import load, train_test_split
from ecos_jax.experiments import progress
from ecos_jax.experiments.train_dp import model_inputs
from ecos_jax.parallel.mesh import device_report, local_mesh
from ecos_jax.privacy import accounting
from ecos_jax.privacy.keys import noise_key
from ecos_jax.privacy.ledger import PrivacyLedger
from ecos_jax.reporting import plots
from ecos_jax.reporting.metrics import JsonlWriter
from ecos_jax.reporting.tables import beside_references, markdown_table
from ecos_jax.utils.io import save_npz, write_json, write_text
from ecos_jax.utils.overrides import floats
from ecos_jax.valuation import consistency as cm
from ecos_jax.valuation.grad_norm import grad_norm_scores
from ecos_jax.valuation.loss import loss_scores
from ecos_jax.valuation.normalize import per_class_minmax
from ecos_jax.valuation.plis import plis_scores, plis_subset
from ecos_jax.valuation.private_training import train_at_epsilon
from ecos_jax.valuation.release import release_vog
from ecos_jax.valuation.vog import vog_scores, vog_stages

log = logging.getLogger(__name__)

METRICS = ("loss", "grad_norm", "vog", "plis")
MEASURES = ("pearson", "spearman", "top_k_overlap", "ssim", "bhattacharyya")
RELEASE_STREAM = 0x5E1EA5E  # folded into the noise key so release noise never reuses DP-SGD's
EPSILON_NOTE = (
    "training_epsilon (DP-SGD, add_or_remove_one) and release_epsilon (VoG score releases, "
    "replace_one, given the DP model) hold under different neighbouring relations; they are "
    "not composed into one number."
)


def eps_label(eps: float) -> str:
    """'inf' or a compact number: used in file names, JSON keys and tables."""
    return "inf" if math.isinf(eps) else f"{eps:g}"


@dataclasses.dataclass(frozen=True)
class Data:
    """What one experiment trains on and scores.

    inputs `[N, ...]` float32: what the model sees (pixels, or ScatterNet features);
    images `[N, H, W, C]` in [0, 1]: the same samples' pixels (VoG / PLIS inputs with
    features, the grids, SSIM, Bhattacharyya); labels `[N]`; test_inputs / test_labels;
    scored `[n]` int: the rows of the training set that are scored (sorted)."""

    inputs: np.ndarray
    images: np.ndarray
    labels: np.ndarray
    test_inputs: np.ndarray
    test_labels: np.ndarray
    scored: np.ndarray
    num_classes: int


def prepare(c: ml_collections.ConfigDict) -> Data:
    """The training set (a seeded subset of `data.n_train` of the train split; None: all of
    it), the test set, the model inputs of both and the `data.n_scored` scored rows."""
    kw = {"data_dir": c.data.data_dir, "image_size": c.data.image_size}
    if c.data.get("official_split", False):
        train_ds, test_ds = load(c.data.name, split="train", **kw), load(c.data.name, split="test", **kw)
    else:
        train_ds, test_ds = train_test_split(load(c.data.name, **kw), test_fraction=c.data.test_fraction,
                                             seed=c.data.split_seed)
    rng = np.random.default_rng(c.data.split_seed)
    tr = np.sort(rng.permutation(len(train_ds))[: c.data.n_train])  # n_train None: all
    te = np.sort(rng.permutation(len(test_ds))[: c.data.n_test])
    images, labels = train_ds.images[tr], train_ds.labels[tr]
    test_images, test_labels = test_ds.images[te], test_ds.labels[te]
    n_scored = c.data.get("n_scored")
    scored = (np.arange(len(tr)) if n_scored is None or n_scored >= len(tr) else
              np.sort(np.random.default_rng(c.data.split_seed + 1).permutation(len(tr))[:n_scored]))
    features = c.get("features")
    if features is None or features.name == "pixels":
        inputs, test_inputs = images, test_images
    else:  # the whole split in order hits train_dp's content-hashed feature cache
        inputs, test_inputs = model_inputs(features, images, test_images)
    return Data(inputs, images, labels, test_inputs, test_labels, scored, train_ds.num_classes)


def prepare_data(c: ml_collections.ConfigDict):
    """(x_train, y_train, x_test, y_test, num_classes): `prepare`'s model inputs."""
    d = prepare(c)
    return d.inputs, d.labels, d.test_inputs, d.test_labels, d.num_classes


def input_apply(model, features: ml_collections.ConfigDict | None, image_shape=(28, 28)):
    """The model as a function of the IMAGE `(params, images [B, H, W, C]) -> logits`: with
    ScatterNet features, the scattering (and its per-example GroupNorm) composed before the
    model, so VoG and PLIS differentiate with respect to the pixels; else `model.apply`.
    Build it once per model: the score functions are jitted on this function object."""
    if features is None or features.name == "pixels":
        return model.apply
    bank = scattering.filter_bank(tuple(image_shape), J=features.J, L=features.L)

    def apply(params, images):
        f = scattering.scatter_features(bank, images)
        if features.normalization == "group_norm":
            f = scattering.group_normalize(f, features.num_groups)
        return model.apply(params, f)

    return apply


def score_run(model, run, x, y, c: ml_collections.ConfigDict, *, images=None,
              apply_images=None) -> tuple[dict[str, np.ndarray], dict]:
    """All scores of one trained run: ({name: [n] float64}, timing / diagnostics).

    x `[n, ...]`: the model inputs of the scored samples (loss, gradient norm); images and
    apply_images: the same samples as VoG / PLIS see them and the model as a function of
    them (`input_apply`; default x and `model.apply`)."""
    apply, mb = model.apply, c.scores.microbatch_size
    apply_images = apply if apply_images is None else apply_images
    images = x if images is None else images
    out, info = {}, {}

    def timed(name, fn):
        t0 = time.perf_counter()
        value = jax.block_until_ready(fn())
        info[f"{name}_seconds"] = round(time.perf_counter() - t0, 3)
        return value

    out["loss"] = np.asarray(timed("loss", lambda: loss_scores(apply, run.params, x, y, microbatch_size=mb)), np.float64)
    out["grad_norm"] = np.asarray(timed("grad_norm", lambda: grad_norm_scores(apply, run.params, x, y, microbatch_size=mb)), np.float64)
    vog = timed("vog", lambda: vog_scores(apply_images, run.checkpoints, images, y, microbatch_size=mb))
    out["vog_raw"] = np.asarray(vog, np.float64)
    out["vog"] = np.asarray(per_class_minmax(vog, y), np.float64)
    if len(run.checkpoints) >= 6:  # each of early / middle / late needs >= 2 checkpoints
        for stage, v in vog_stages(apply_images, run.checkpoints, images, y, microbatch_size=mb).items():
            out[f"vog_{stage}"] = np.asarray(per_class_minmax(v, y), np.float64)
    idx = plis_subset(y, c.scores.plis_samples)
    n_plis = len(idx)
    sigma, iters = timed("plis", lambda: plis_scores(
        apply_images, run.params, images[idx], y[idx], clip_norm=c.scores.plis_clip_norm,
        tol=c.scores.plis_tol, max_iters=c.scores.plis_max_iters,
        microbatch_size=c.scores.plis_microbatch_size, return_iterations=True))
    iters = np.asarray(iters)
    out["plis_raw"] = np.asarray(sigma, np.float64)
    out["plis"] = np.asarray(per_class_minmax(sigma, y[idx]), np.float64)
    out["plis_index"] = idx
    info.update(plis_samples=n_plis, plis_iterations_mean=float(iters.mean()),
                plis_hit_cap=int((iters >= c.scores.plis_max_iters).sum()))
    for name, v in out.items():  # never let a NaN reach a table (ints cannot be NaN)
        if not np.all(np.isfinite(v)):
            raise FloatingPointError(f"score {name!r} has {int((~np.isfinite(v)).sum())} non-finite values.")
    return out, info


def ledger_epsilon(ledger: PrivacyLedger) -> dict[str, Any]:
    """{"relation": ..., "rdp": ε or None, "pld": ε or None}: None where that accountant cannot
    compose every entry of the ledger."""
    d = ledger.to_dict()
    return {"relation": d["neighboring_relation"],
            **{acc: d["total_epsilon"].get(acc) for acc in accounting.ACCOUNTANTS}}


def compare(a: np.ndarray, b: np.ndarray, x: np.ndarray, c: ml_collections.ConfigDict) -> dict[str, Any]:
    """Every consistency measure between two score vectors over the same samples x[:n]."""
    n = len(a)
    k = max(1, int(round(c.consistency.top_fraction * n)))
    ia, ib = cm.top_k_indices(a, k), cm.top_k_indices(b, k)
    res: dict[str, Any] = {"n": n, "k": k}
    for name, fn in (("pearson", lambda: cm.pearson(a, b)),
                     ("spearman", lambda: cm.spearman(a, b)),
                     ("top_k_overlap", lambda: cm.top_k_overlap(a, b, k)),
                     ("ssim", lambda: cm.set_ssim(x[ia], x[ib], mode=c.consistency.ssim_mode)),
                     ("bhattacharyya", lambda: cm.bhattacharyya_distance(
                         x[ia], x[ib], bins=c.consistency.hist_bins))):
        try:
            value = float(fn())
            # JSON has no infinity: disjoint histograms are reported as the string "inf"
            res[name] = value if math.isfinite(value) else "inf"
        except ValueError as err:  # e.g. a constant score vector: undefined, said so
            res[name] = f"undefined: {err}"
    return res


def _images(x: np.ndarray, run_scores: dict[str, np.ndarray], metric: str) -> np.ndarray:
    """The images a metric's score vector refers to (PLIS scores a subset)."""
    return x[run_scores["plis_index"]] if metric == "plis" else x


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else ("n/a" if str(v).startswith("undefined") else str(v))


def _eps_cell(eps: dict) -> str:
    """'RDP / PLD' of one ledger; n/a where that accountant cannot compose the ledger."""
    return " / ".join("n/a" if eps[acc] is None else _fmt(eps[acc]) for acc in accounting.ACCOUNTANTS)


def _fingerprint(c: ml_collections.ConfigDict, arch: str, eps: float, seed: int) -> str:
    """What one run's record and scores depend on: the config less the fields that only choose
    which runs happen or how they are read (a rerun with more ε reuses the finished ones)."""
    d = c.to_dict()
    for name in ("epsilons", "progress", "consistency", "ceiling", "num_devices"):
        d.pop(name, None)
    d["train"] = {k: v for k, v in d["train"].items() if k != "models"}
    blob = json.dumps([d, arch, eps_label(eps), int(seed)], sort_keys=True, default=repr)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _load_done(workdir: str, label: str, fingerprint: str):
    """(record, scores) of a finished run with this fingerprint, or None."""
    path = os.path.join(workdir, "done", f"{label}.json")
    scores_path = os.path.join(workdir, "scores", f"{label}.npz")
    if not (os.path.exists(path) and os.path.exists(scores_path)):
        return None
    with open(path, encoding="utf-8") as f:
        done = json.load(f)
    if done.get("fingerprint") != fingerprint:
        return None
    with np.load(scores_path) as z:
        s = {k: z[k] for k in z.files if k not in ("labels", "index", "vog_released",
                                                   "vog_released_normalised")}
    return done["record"], s


def _run_specs(c: ml_collections.ConfigDict, epsilons: list[float]) -> list[tuple[str, float, int, str]]:
    """(arch, ε, seed, label) of every run: each architecture at each ε with `seed`, then (with
    `ceiling` and ∞ among the ε) a second non-private run with seed + 1 per architecture."""
    specs = [(a, e, c.seed, f"{a}_eps{eps_label(e)}") for a in c.train.models for e in epsilons]
    if c.get("ceiling", False) and any(math.isinf(e) for e in epsilons):
        specs += [(a, math.inf, c.seed + 1, f"{a}_epsinf_seed{c.seed + 1}") for a in c.train.models]
    return specs


def _references(pairs_by_key: dict, ceiling: dict, chance: dict) -> None:
    """Adds "ceiling", "chance" and "relative" (per measure) to each DP-vs-non-private pair."""
    for (arch, metric), rows in pairs_by_key.items():
        ref, ch = ceiling.get((arch, metric)), chance.get(metric)
        for p in rows:
            p["ceiling"] = {m: ref[m] for m in MEASURES} if ref else None
            p["chance"] = ch
            rel = {}
            for m in MEASURES:
                try:
                    rel[m] = cm.relative_agreement(p[m], ref[m], ch[m]) if ref and ch else None
                except (ValueError, TypeError):   # undefined / "inf" / ceiling at chance
                    rel[m] = None
            p["relative"] = rel


def run(c: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs the whole experiment; returns (and writes) the results dict."""
    t_start = time.perf_counter()
    # Training runs data-parallel over num_devices local devices (0 = all); too many is refused
    # here, before any work. The scores run on one device.
    mesh = local_mesh(c.get("num_devices", 0))
    os.makedirs(workdir, exist_ok=True)
    d = prepare(c)
    x_all, y_all = d.inputs, d.labels
    x, y, images = d.inputs[d.scored], d.labels[d.scored], d.images[d.scored]
    x_test, y_test, num_classes = d.test_inputs, d.test_labels, d.num_classes
    log.info("data: %d train (%d scored) / %d test samples, inputs %s", len(x_all), len(x),
             len(x_test), x_all.shape[1:])
    epsilons = list(floats(c.epsilons, "epsilons"))  # (1, 8, inf) or as a command line gives it
    runs: list[dict] = []
    scores: dict[tuple[str, str, int], dict[str, np.ndarray]] = {}
    release_key = jax.random.fold_in(noise_key(c.privacy.noise_seed)[0], RELEASE_STREAM)
    # Training metrics of every run, one JSON line per epoch (non-private) or chunk of DP-SGD
    # steps, named by run; appended by each run that trains (a resumed run does not).
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    kwargs = c.train.get("model_kwargs") or {}
    built = {a: models.get_model(a, num_classes, **dict(kwargs.get(a, {}))) for a in c.train.models}
    applies = {a: input_apply(m, c.get("features"), images.shape[1:3]) for a, m in built.items()}

    for run_index, (arch, eps, seed, label) in enumerate(_run_specs(c, epsilons)):
        model = built[arch]
        fingerprint = _fingerprint(c, arch, eps, seed)
        done = _load_done(workdir, label, fingerprint)
        if done is not None:
            record, s = done
            log.info("%s: finished before, read back (test acc %.3f)", label, record["test_accuracy"])
            scores[(arch, eps_label(eps), seed)] = s
            runs.append(record)
            continue
        ledger_args = dict(accountant=c.privacy.accountant, reproducible_seed=c.privacy.noise_seed,
                           dataset_size=len(x_all))
        ledger = PrivacyLedger(c.privacy.delta, relation="add_or_remove_one", **ledger_args)
        releases = PrivacyLedger(c.privacy.delta, relation="replace_one", **ledger_args)
        unit = "epoch" if math.isinf(eps) else "step"
        with JsonlWriter(metrics_path, run=label) as metrics:
            trained = train_at_epsilon(
                model, x_all, y_all, epsilon=eps, epochs=c.train.epochs,
                checkpoints_every=c.train.checkpoints_every, batch_size=c.train.batch_size,
                learning_rate=c.train.learning_rate,
                dp_learning_rate=(c.train.get("dp_learning_rates") or {}).get(arch, c.train.dp_learning_rate),
                dp_momentum=c.train.get("dp_momentum", 0.0),
                dp_batch_size=c.train.get("dp_batch_size"),
                l2_norm_clip=c.train.l2_norm_clip, ledger=ledger, accountant=c.privacy.accountant,
                seed=seed, noise_seed=c.privacy.noise_seed, name=f"dpsgd/{label}", mesh=mesh,
                hooks=[training.WriteMetrics(metrics, key=unit), *progress.bar(c.progress, label, key=unit)])
        s, info = score_run(model, trained, x, y, c, images=images, apply_images=applies[arch])
        scores[(arch, eps_label(eps), seed)] = s

        # DP releases of this run's RAW VoG (public bound B), per sample and as a site summary;
        # per-class min-max only after the noise. A fresh key per run: no noise draw is reused.
        bound = float(c.privacy.release_bound)
        released, released_mm, summary = release_vog(
            jax.random.fold_in(release_key, run_index), s["vog_raw"], y, bound=bound,
            epsilon=c.privacy.release_epsilon, ledger=releases, name=f"vog/{label}")
        if len(ledger):  # the non-private model has no training ledger to save: its ε is ∞
            ledger.save(os.path.join(workdir, "ledgers", f"{label}_training.json"))
        releases.save(os.path.join(workdir, "ledgers", f"{label}_releases.json"))
        save_npz(os.path.join(workdir, "scores", f"{label}.npz"), labels=y, index=d.scored,
                 vog_released=released, vog_released_normalised=released_mm, **s)
        clipped = np.clip(s["vog_raw"], 0.0, bound)
        record = {
            "arch": arch, "epsilon": eps_label(eps), "seed": seed, "label": label,
            "noise_multiplier": trained.noise_multiplier,
            "steps": trained.steps, "checkpoints": len(trained.checkpoints),
            "train_seconds": round(trained.seconds, 2),
            "test_accuracy": training.evaluate(model, trained.params, x_test, y_test),
            "train_accuracy": training.evaluate(model, trained.params, x_all, y_all),
            "n_train": len(x_all), "n_scored": len(x),
            # two relations, two numbers, never summed (EPSILON_NOTE); ∞ for the non-private model
            "training_epsilon": ({"relation": "add_or_remove_one", "rdp": "inf", "pld": "inf"}
                                 if math.isinf(eps) else ledger_epsilon(ledger)),
            "release_epsilon": ledger_epsilon(releases),
            "ledger_entries": {"training": [e.name for e in ledger.entries],
                               "releases": [e.name for e in releases.entries]},
            # true_* and clipped_fraction are non-private diagnostics of the release's utility
            "vog_release": {"bound": bound,
                            "spearman_released_vs_raw": cm.spearman(released_mm, s["vog"]),
                            "site_mean": summary.mean, "site_variance": summary.variance,
                            "true_mean": float(np.mean(clipped)),
                            "true_variance": float(np.var(clipped)),
                            "clipped_fraction": float(np.mean(s["vog_raw"] > bound)),
                            "raw_quantiles": [float(q) for q in np.quantile(
                                s["vog_raw"], [0.0, 0.5, 0.99, 1.0])]},
            **info,
        }
        log.info("%s: test acc %.3f, ε training %s, ε releases %s, scoring %s", label,
                 record["test_accuracy"], record["training_epsilon"], record["release_epsilon"],
                 {k: v for k, v in info.items() if k.endswith("seconds")})
        write_json(os.path.join(workdir, "done", f"{label}.json"),
                   {"fingerprint": fingerprint, "record": record})
        runs.append(record)

    # ---- consistency: ε pairs within an architecture, and architecture pairs at one ε --------
    main = {(a, e): v for (a, e, sd), v in scores.items() if sd == c.seed}
    metric_names = [m for m in METRICS + ("vog_early", "vog_middle", "vog_late")
                    if all(m in s for s in scores.values())]
    pairs = []
    for arch in c.train.models:
        for e1, e2 in itertools.combinations([eps_label(e) for e in epsilons], 2):
            for m in metric_names:
                a, b = main[(arch, e1)][m], main[(arch, e2)][m]
                pairs.append({"kind": "epsilon", "arch": arch, "pair": f"{e1} vs {e2}", "metric": m,
                              **compare(a, b, _images(images, main[(arch, e1)], m), c)})
    for a1, a2 in itertools.combinations(c.train.models, 2):
        for e in [eps_label(e) for e in epsilons]:
            for m in metric_names:
                a, b = main[(a1, e)][m], main[(a2, e)][m]
                pairs.append({"kind": "architecture", "arch": f"{a1} vs {a2}", "pair": f"ε={e}",
                              "metric": m, **compare(a, b, _images(images, main[(a1, e)], m), c)})

    # ---- references: the seed ceiling (non-private vs non-private, seed + 1) and chance ------
    ceiling, chance = {}, {}
    for arch in c.train.models:
        other = scores.get((arch, "inf", c.seed + 1))
        if other is None:
            continue
        for m in metric_names:
            ref = compare(main[(arch, "inf")][m], other[m], _images(images, main[(arch, "inf")], m), c)
            ceiling[(arch, m)] = ref
            pairs.append({"kind": "seed", "arch": arch, "pair": f"inf vs inf (seed {c.seed + 1})",
                          "metric": m, **ref})
    for m in metric_names:
        some = next(iter(main.values()))
        imgs = _images(images, some, m)
        n = len(some[m])
        k = max(1, int(round(c.consistency.top_fraction * n)))
        chance[m] = {**cm.chance_scores(n, k), **cm.chance_images(
            imgs, k, seed=c.seed, ssim_mode=c.consistency.ssim_mode, bins=c.consistency.hist_bins)}
    vs_inf: dict[tuple[str, str], list[dict]] = {}
    for p in pairs:
        if p["kind"] == "epsilon" and p["pair"].endswith("vs inf"):
            vs_inf.setdefault((p["arch"], p["metric"]), []).append(p)
    _references(vs_inf, ceiling, chance)

    # ---- headline: agreement of each metric's DP selections with the non-private one --------
    headline = {}
    for (arch, m), rows in vs_inf.items():
        vals = [p["top_k_overlap"] for p in rows if isinstance(p["top_k_overlap"], float)]
        sp = [p["spearman"] for p in rows if isinstance(p["spearman"], float)]
        if not vals:
            continue
        h = {"mean_top_k_overlap_vs_nonprivate": float(np.mean(vals)),
             "mean_spearman_vs_nonprivate": float(np.mean(sp)) if sp else None,
             "chance_top_k_overlap": chance[m]["top_k_overlap"]}
        if (arch, m) in ceiling:
            ref = ceiling[(arch, m)]
            h["ceiling_top_k_overlap"] = ref["top_k_overlap"]
            h["ceiling_spearman"] = ref["spearman"]
            for measure in ("top_k_overlap", "spearman"):
                rel = [p["relative"][measure] for p in rows if p["relative"][measure] is not None]
                h[f"relative_{measure}"] = {p["pair"]: p["relative"][measure] for p in rows}
                h[f"mean_relative_{measure}"] = float(np.mean(rel)) if rel else None
        headline[f"{arch}/{m}"] = h

    # ---- figures ----------------------------------------------------------------------------
    fig_dir = os.path.join(workdir, "figures")
    g = c.consistency.grid_k
    for arch in c.train.models:
        for m in METRICS:
            rows = []
            for e in [eps_label(e) for e in epsilons]:
                v, imgs = main[(arch, e)][m], _images(images, main[(arch, e)], m)
                k = min(g, len(v) // 2)
                rows.append((f"ε={e}", imgs[cm.top_k_indices(v, k)], imgs[cm.top_k_indices(v, k, largest=False)]))
            plots.image_grid(os.path.join(fig_dir, f"grid_{arch}_{m}.png"), rows,
                               title=f"{arch}: {m} — highest (left) and lowest (right) scored samples")
        plots.score_histograms(
            os.path.join(fig_dir, f"hist_{arch}.png"),
            {m: {f"ε={eps_label(e)}": main[(arch, eps_label(e))][m if m in ("loss", "grad_norm") else f"{m}_raw"]
                 for e in epsilons} for m in METRICS},
            title=f"{arch}: score distributions (raw VoG / PLIS)")

    # ---- tables -----------------------------------------------------------------------------
    def cell(p, m):
        if p.get("ceiling") is None:
            return _fmt(p[m])
        return beside_references(_fmt(p[m]) if not isinstance(p[m], float) else p[m],
                                 p["ceiling"][m], p["chance"][m], digits=3)

    header = ["kind", "arch", "pair", "metric", "n", "k", *MEASURES]
    table = markdown_table(header, [[p["kind"], p["arch"], p["pair"], p["metric"], p["n"], p["k"],
                                     *(cell(p, m) for m in MEASURES)] for p in pairs])
    rel_rows = []
    for (arch, m), rows in vs_inf.items():
        rel_rows.append([arch, m, *(_fmt(p["relative"]["top_k_overlap"]) if p["relative"]["top_k_overlap"] is not None
                                    else "n/a" for p in rows),
                         *(_fmt(p["relative"]["spearman"]) if p["relative"]["spearman"] is not None
                           else "n/a" for p in rows)])
    some_rows = next(iter(vs_inf.values()), [])
    rel_table = markdown_table(
        ["arch", "metric", *(f"top-k {p['pair']}" for p in some_rows),
         *(f"Spearman {p['pair']}" for p in some_rows)], rel_rows) if ceiling else ""
    run_table = markdown_table(
        ["run", "σ", "test acc", "train acc",
         "ε training, add/remove (RDP / PLD)", "ε VoG releases, replace-one (RDP / PLD)",
         "VoG release Spearman", "PLIS iters (mean)", "train s", "VoG s", "PLIS s"],
        [[r.get("label", f"{r['arch']}_eps{r['epsilon']}"), f"{r['noise_multiplier']:.3f}",
          f"{r['test_accuracy']:.4f}",
          f"{r['train_accuracy']:.4f}", _eps_cell(r["training_epsilon"]),
          _eps_cell(r["release_epsilon"]),
          f"{r['vog_release']['spearman_released_vs_raw']:.3f}", f"{r['plis_iterations_mean']:.1f}",
          r["train_seconds"], r["vog_seconds"], r["plis_seconds"]] for r in runs])
    text = ("# Runs\n\n" + run_table + f"\n{EPSILON_NOTE}\n\n# Consistency (top-k = top "
            f"{c.consistency.top_fraction:.0%} of the scored samples; a DP-vs-non-private cell "
            "reads value (ceiling: the same measure between two non-private runs that differ only "
            "in their seed, chance: k/N for the overlap, 0 for the correlations, two random "
            "k-subsets for SSIM / Bhattacharyya))\n\n" + table)
    if rel_table:
        text += ("\n# Agreement with the non-private run relative to the seed ceiling\n\n"
                 "(value − chance) / (ceiling − chance): 1 = as consistent as two non-private "
                 "seeds, 0 = chance.\n\n" + rel_table)
    write_text(os.path.join(workdir, "consistency.md"), text)
    results = {"config": c.to_dict() | {"epsilons": [eps_label(e) for e in epsilons]},
               "epsilon_note": EPSILON_NOTE, "runs": runs, "consistency": pairs, "headline": headline,
               "chance": chance, "seconds": round(time.perf_counter() - t_start, 1),
               "device_report": device_report(mesh)}  # training's mesh; the scores use one device
    write_json(os.path.join(workdir, "results.json"), results)
    log.info("wrote %s (%.0f s)", workdir, results["seconds"])
    return results
