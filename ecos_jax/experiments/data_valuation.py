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
Bhattacharyya distance of their pixel histograms.

Writes to `workdir`: results.json, consistency.md, figures/{grid_*,hist_*}.png,
ledgers/{run}_training.json (finite ε only), ledgers/{run}_releases.json, scores/*.npz.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from ecos_jax import models, training
from ecos_jax.data import load, train_test_split
from ecos_jax.experiments import progress
from ecos_jax.parallel.mesh import device_report
from ecos_jax.privacy import accounting
from ecos_jax.privacy.keys import noise_key
from ecos_jax.privacy.ledger import PrivacyLedger
from ecos_jax.reporting import plots
from ecos_jax.reporting.metrics import JsonlWriter
from ecos_jax.reporting.tables import markdown_table
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


def prepare_data(c: ml_collections.ConfigDict):
    """(x_train, y_train, x_test, y_test): a seeded subset of the embedded data's train split."""
    ds = load(c.data.name, data_dir=c.data.data_dir, image_size=c.data.image_size)
    train_ds, test_ds = train_test_split(ds, test_fraction=c.data.test_fraction, seed=c.data.split_seed)
    rng = np.random.default_rng(c.data.split_seed)
    tr = np.sort(rng.permutation(len(train_ds))[: c.data.n_train])
    te = np.sort(rng.permutation(len(test_ds))[: c.data.n_test])
    return (train_ds.images[tr], train_ds.labels[tr], test_ds.images[te], test_ds.labels[te],
            ds.num_classes)


def score_run(model, run, x, y, c: ml_collections.ConfigDict) -> tuple[dict[str, np.ndarray], dict]:
    """All scores of one trained run: ({name: [n] float64}, timing / diagnostics)."""
    apply, mb = model.apply, c.scores.microbatch_size
    out, info = {}, {}

    def timed(name, fn):
        t0 = time.perf_counter()
        value = jax.block_until_ready(fn())
        info[f"{name}_seconds"] = round(time.perf_counter() - t0, 3)
        return value

    out["loss"] = np.asarray(timed("loss", lambda: loss_scores(apply, run.params, x, y, microbatch_size=mb)), np.float64)
    out["grad_norm"] = np.asarray(timed("grad_norm", lambda: grad_norm_scores(apply, run.params, x, y, microbatch_size=mb)), np.float64)
    vog = timed("vog", lambda: vog_scores(apply, run.checkpoints, x, y, microbatch_size=mb))
    out["vog_raw"] = np.asarray(vog, np.float64)
    out["vog"] = np.asarray(per_class_minmax(vog, y), np.float64)
    if len(run.checkpoints) >= 6:  # each of early / middle / late needs >= 2 checkpoints
        for stage, v in vog_stages(apply, run.checkpoints, x, y, microbatch_size=mb).items():
            out[f"vog_{stage}"] = np.asarray(per_class_minmax(v, y), np.float64)
    idx = plis_subset(y, c.scores.plis_samples)
    n_plis = len(idx)
    sigma, iters = timed("plis", lambda: plis_scores(
        apply, run.params, x[idx], y[idx], clip_norm=c.scores.plis_clip_norm,
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


def run(c: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs the whole experiment; returns (and writes) the results dict."""
    t_start = time.perf_counter()
    os.makedirs(workdir, exist_ok=True)
    x, y, x_test, y_test, num_classes = prepare_data(c)
    log.info("data: %d train / %d test samples", len(x), len(x_test))
    epsilons = list(floats(c.epsilons, "epsilons"))  # (1, 8, inf) or as a command line gives it
    runs: list[dict] = []
    scores: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    release_key = jax.random.fold_in(noise_key(c.privacy.noise_seed)[0], RELEASE_STREAM)
    # Training metrics of every run, one JSON line per epoch (non-private) or chunk of DP-SGD
    # steps, named by run; written afresh by each call.
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(metrics_path):
        os.remove(metrics_path)

    for run_index, (arch, eps) in enumerate(itertools.product(c.train.models, epsilons)):
        label = f"{arch}_eps{eps_label(eps)}"
        model = models.get_model(arch, num_classes)
        ledger_args = dict(accountant=c.privacy.accountant, reproducible_seed=c.privacy.noise_seed,
                           dataset_size=len(x))
        ledger = PrivacyLedger(c.privacy.delta, relation="add_or_remove_one", **ledger_args)
        releases = PrivacyLedger(c.privacy.delta, relation="replace_one", **ledger_args)
        unit = "epoch" if math.isinf(eps) else "step"
        with JsonlWriter(metrics_path, run=label) as metrics:
            trained = train_at_epsilon(
                model, x, y, epsilon=eps, epochs=c.train.epochs,
                checkpoints_every=c.train.checkpoints_every, batch_size=c.train.batch_size,
                learning_rate=c.train.learning_rate, dp_learning_rate=c.train.dp_learning_rate,
                l2_norm_clip=c.train.l2_norm_clip, ledger=ledger, accountant=c.privacy.accountant,
                seed=c.seed, noise_seed=c.privacy.noise_seed, name=f"dpsgd/{label}",
                hooks=[training.WriteMetrics(metrics, key=unit), *progress.bar(c.progress, label, key=unit)])
        s, info = score_run(model, trained, x, y, c)
        scores[(arch, eps_label(eps))] = s

        # DP releases of this run's RAW VoG (public bound B), per sample and as a site summary;
        # per-class min-max only after the noise. A fresh key per run: no noise draw is reused.
        bound = float(c.privacy.release_bound)
        released, released_mm, summary = release_vog(
            jax.random.fold_in(release_key, run_index), s["vog_raw"], y, bound=bound,
            epsilon=c.privacy.release_epsilon, ledger=releases, name=f"vog/{label}")
        if len(ledger):  # the non-private model has no training ledger to save: its ε is ∞
            ledger.save(os.path.join(workdir, "ledgers", f"{label}_training.json"))
        releases.save(os.path.join(workdir, "ledgers", f"{label}_releases.json"))
        save_npz(os.path.join(workdir, "scores", f"{label}.npz"), labels=y, vog_released=released,
                 vog_released_normalised=released_mm, **s)
        clipped = np.clip(s["vog_raw"], 0.0, bound)
        record = {
            "arch": arch, "epsilon": eps_label(eps), "noise_multiplier": trained.noise_multiplier,
            "steps": trained.steps, "checkpoints": len(trained.checkpoints),
            "train_seconds": round(trained.seconds, 2),
            "test_accuracy": training.evaluate(model, trained.params, x_test, y_test),
            "train_accuracy": training.evaluate(model, trained.params, x, y),
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
                            "clipped_fraction": float(np.mean(s["vog_raw"] > bound))},
            **info,
        }
        log.info("%s: test acc %.3f, ε training %s, ε releases %s, scoring %s", label,
                 record["test_accuracy"], record["training_epsilon"], record["release_epsilon"],
                 {k: v for k, v in info.items() if k.endswith("seconds")})
        runs.append(record)

    # ---- consistency: ε pairs within an architecture, and architecture pairs at one ε --------
    metric_names = [m for m in METRICS + ("vog_early", "vog_middle", "vog_late")
                    if all(m in s for s in scores.values())]
    pairs = []
    for arch in c.train.models:
        for e1, e2 in itertools.combinations([eps_label(e) for e in epsilons], 2):
            for m in metric_names:
                a, b = scores[(arch, e1)][m], scores[(arch, e2)][m]
                pairs.append({"kind": "epsilon", "arch": arch, "pair": f"{e1} vs {e2}", "metric": m,
                              **compare(a, b, _images(x, scores[(arch, e1)], m), c)})
    for a1, a2 in itertools.combinations(c.train.models, 2):
        for e in [eps_label(e) for e in epsilons]:
            for m in metric_names:
                a, b = scores[(a1, e)][m], scores[(a2, e)][m]
                pairs.append({"kind": "architecture", "arch": f"{a1} vs {a2}", "pair": f"ε={e}",
                              "metric": m, **compare(a, b, _images(x, scores[(a1, e)], m), c)})

    # ---- headline: agreement of each metric's DP selections with the non-private one --------
    headline = {}
    for arch in c.train.models:
        for m in metric_names:
            rows = [p for p in pairs if p["kind"] == "epsilon" and p["arch"] == arch
                    and p["metric"] == m and p["pair"].endswith("vs inf")]
            vals = [p["top_k_overlap"] for p in rows if isinstance(p["top_k_overlap"], float)]
            sp = [p["spearman"] for p in rows if isinstance(p["spearman"], float)]
            if vals:
                headline[f"{arch}/{m}"] = {"mean_top_k_overlap_vs_nonprivate": float(np.mean(vals)),
                                           "mean_spearman_vs_nonprivate": float(np.mean(sp)) if sp else None}

    # ---- figures ----------------------------------------------------------------------------
    fig_dir = os.path.join(workdir, "figures")
    g = c.consistency.grid_k
    for arch in c.train.models:
        for m in METRICS:
            rows = []
            for e in [eps_label(e) for e in epsilons]:
                v, imgs = scores[(arch, e)][m], _images(x, scores[(arch, e)], m)
                k = min(g, len(v) // 2)
                rows.append((f"ε={e}", imgs[cm.top_k_indices(v, k)], imgs[cm.top_k_indices(v, k, largest=False)]))
            plots.image_grid(os.path.join(fig_dir, f"grid_{arch}_{m}.png"), rows,
                               title=f"{arch}: {m} — highest (left) and lowest (right) scored samples")
        plots.score_histograms(
            os.path.join(fig_dir, f"hist_{arch}.png"),
            {m: {f"ε={eps_label(e)}": scores[(arch, eps_label(e))][m if m in ("loss", "grad_norm") else f"{m}_raw"]
                 for e in epsilons} for m in METRICS},
            title=f"{arch}: score distributions (raw VoG / PLIS)")

    # ---- tables -----------------------------------------------------------------------------
    header = ["kind", "arch", "pair", "metric", "n", "k", *MEASURES]
    table = markdown_table(header, [[p["kind"], p["arch"], p["pair"], p["metric"], p["n"], p["k"],
                                     *(_fmt(p[m]) for m in MEASURES)] for p in pairs])
    run_table = markdown_table(
        ["arch", "ε (train)", "σ", "test acc", "train acc",
         "ε training, add/remove (RDP / PLD)", "ε VoG releases, replace-one (RDP / PLD)",
         "VoG release Spearman", "PLIS iters (mean)", "train s", "VoG s", "PLIS s"],
        [[r["arch"], r["epsilon"], f"{r['noise_multiplier']:.3f}", f"{r['test_accuracy']:.3f}",
          f"{r['train_accuracy']:.3f}", _eps_cell(r["training_epsilon"]),
          _eps_cell(r["release_epsilon"]),
          f"{r['vog_release']['spearman_released_vs_raw']:.3f}", f"{r['plis_iterations_mean']:.1f}",
          r["train_seconds"], r["vog_seconds"], r["plis_seconds"]] for r in runs])
    write_text(os.path.join(workdir, "consistency.md"),
               "# Runs\n\n" + run_table + f"\n{EPSILON_NOTE}\n\n# Consistency (top-k = top "
               f"{c.consistency.top_fraction:.0%} of the scored samples)\n\n" + table)
    results = {"config": c.to_dict() | {"epsilons": [eps_label(e) for e in epsilons]},
               "epsilon_note": EPSILON_NOTE, "runs": runs, "consistency": pairs, "headline": headline,
               "seconds": round(time.perf_counter() - t_start, 1),
               "device_report": device_report()}  # the scores and training use one device
    write_json(os.path.join(workdir, "results.json"), results)
    log.info("wrote %s (%.0f s)", workdir, results["seconds"])
    return results
