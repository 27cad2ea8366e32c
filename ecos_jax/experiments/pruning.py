"""The pruning / importance experiment (the seed paper's Table 1 analogue).

For each ε (∞ = non-private): train E₁ epochs (private or not), score every training sample
with loss, grad-norm, VoG and PLIS (as in `data_valuation.score_run`, PLIS on all samples
here), remove a fraction f of the training set by each metric — highest scores first and
lowest first — and at random, retrain from scratch for E₂ epochs at the same ε, and report test
accuracy, train accuracy (on the kept samples) and the retraining wall time. A retrain on the
full set is the reference row.

Privacy note: each training run's ε is recorded in its own ledger and reported, but the
selection step itself (which samples are kept) is a function of every sample's own data and
is NOT covered by any DP claim here; the experiment measures data value, not an end-to-end
private pipeline.

Writes to `workdir`: results.json and pruning.md.
"""

from __future__ import annotations

import logging
import math
import os
import time

import ml_collections
import numpy as np

from ecos_jax import models, training
from ecos_jax.experiments import progress
from ecos_jax.experiments.data_valuation import eps_label, prepare_data, score_run
from ecos_jax.parallel.mesh import device_report
from ecos_jax.privacy.ledger import PrivacyLedger
from ecos_jax.reporting.tables import markdown_table
from ecos_jax.utils.io import write_json, write_text
from ecos_jax.utils.overrides import floats
from ecos_jax.valuation.private_training import train_at_epsilon
from ecos_jax.valuation.pruning import DIRECTIONS, removal_indices

log = logging.getLogger(__name__)

def _train(model, x, y, eps, epochs, c, seed, name):
    ledger = PrivacyLedger(c.privacy.delta, accountant=c.privacy.accountant,
                           reproducible_seed=c.privacy.noise_seed, dataset_size=len(x))
    run = train_at_epsilon(model, x, y, epsilon=eps, epochs=epochs,
                           checkpoints_every=c.train.checkpoints_every if name == "score" else epochs,
                           batch_size=c.train.batch_size, learning_rate=c.train.learning_rate,
                           dp_learning_rate=c.train.dp_learning_rate,
                           l2_norm_clip=c.train.l2_norm_clip, ledger=ledger,
                           accountant=c.privacy.accountant, seed=seed,
                           noise_seed=c.privacy.noise_seed, name=name,
                           hooks=progress.bar(c.progress, name, key="epoch" if math.isinf(eps) else "step"))
    # DP-SGD's truncated-Poisson event is PLD-only: fall back to PLD where RDP cannot compose.
    acc = c.privacy.accountant if c.privacy.accountant in ledger.accountants() else "pld"
    eps_run = "inf" if math.isinf(eps) else ledger.epsilon(accountant=acc)
    return run, eps_run


def run(c: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs the pruning experiment; returns (and writes) the results dict."""
    t_start = time.perf_counter()
    os.makedirs(workdir, exist_ok=True)
    x, y, x_test, y_test, num_classes = prepare_data(c)
    model = models.get_model(c.train.model, num_classes)
    rows, scoring = [], []
    rng = np.random.default_rng(c.seed)

    for eps in floats(c.epsilons, "epsilons"):  # (1, 8, inf) or as a command line gives it
        e = eps_label(eps)
        scored, eps_score = _train(model, x, y, eps, c.score_epochs, c, c.seed, "score")
        s, info = score_run(model, scored, x, y, c)
        scoring.append({"epsilon": e, "epsilon_scoring_model": eps_score,
                        "test_accuracy": training.evaluate(model, scored.params, x_test, y_test),
                        "train_seconds": round(scored.seconds, 2), **info})

        everyone = np.arange(len(x))
        jobs = [(everyone, "none (full set)", "-", 0.0)]
        for f in c.fractions:
            for metric in c.metrics:
                for direction in DIRECTIONS:
                    drop = removal_indices(s[metric], f, direction)
                    jobs.append((np.setdiff1d(everyone, drop), metric, direction, f))
            drop = rng.permutation(len(x))[: int(round(f * len(x)))]
            jobs.append((np.setdiff1d(everyone, drop), "random", "-", f))
        for keep, metric, direction, fraction in jobs:
            retrained, eps_run = _train(model, x[keep], y[keep], eps, c.retrain_epochs, c,
                                        c.seed + 1, "retrain")
            rows.append({
                "epsilon": e, "fraction": fraction, "metric": metric, "direction": direction,
                "kept": int(len(keep)),
                "test_accuracy": training.evaluate(model, retrained.params, x_test, y_test),
                "train_accuracy": training.evaluate(model, retrained.params, x[keep], y[keep]),
                "retrain_seconds": round(retrained.seconds, 2), "epsilon_retrain": eps_run})
            log.info("ε=%s f=%.2f %s/%s: test %.3f (%.1f s)", e, fraction, metric, direction,
                     rows[-1]["test_accuracy"], retrained.seconds)

    table = markdown_table(
        ["ε", "removed f", "metric", "removed", "kept", "test acc", "train acc (kept)", "retrain s",
         "ε retrain"],
        [[r["epsilon"], f"{r['fraction']:.2f}", r["metric"], r["direction"], r["kept"],
          f"{r['test_accuracy']:.3f}", f"{r['train_accuracy']:.3f}", r["retrain_seconds"],
          r["epsilon_retrain"] if isinstance(r["epsilon_retrain"], str) else f"{r['epsilon_retrain']:.2f}"]
         for r in rows])
    score_table = markdown_table(
        ["ε", "ε scoring model", "scoring-model test acc", "train s", "VoG s", "PLIS s", "PLIS iters"],
        [[r["epsilon"], r["epsilon_scoring_model"] if isinstance(r["epsilon_scoring_model"], str)
          else f"{r['epsilon_scoring_model']:.2f}", f"{r['test_accuracy']:.3f}", r["train_seconds"],
          r["vog_seconds"], r["plis_seconds"], f"{r['plis_iterations_mean']:.1f}"] for r in scoring])
    write_text(os.path.join(workdir, "pruning.md"),
               "# Scoring models\n\n" + score_table + "\n# Retraining after removal\n\n" + table)
    results = {"config": c.to_dict() | {"epsilons": [eps_label(v) for v in floats(c.epsilons, "epsilons")]},
               "scoring": scoring, "rows": rows, "seconds": round(time.perf_counter() - t_start, 1),
               "device_report": device_report()}  # scoring and retraining use one device
    write_json(os.path.join(workdir, "results.json"), results)
    log.info("wrote %s (%.0f s)", workdir, results["seconds"])
    return results
