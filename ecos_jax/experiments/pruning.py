"""The pruning / importance experiment (the seed paper's Table 1 analogue).

For each ε (∞ = non-private): train E₁ epochs (private or not), score every training sample
with loss, grad-norm, VoG and PLIS (as in `data_valuation.score_run`, PLIS on all samples
here), remove a fraction f of the training set by each metric — highest scores first and
lowest first — and at random, retrain from scratch for E₂ epochs at the same ε, and report test
accuracy, train accuracy (on the kept samples) and the retraining wall time. A retrain on the
full set is the reference row.

Reusing the data-valuation scores (`scores_from`: a `data_valuation` workdir): instead of
training its own scoring models, the experiment reads that run's saved scores of `train.model`
at each ε (scores/<model>_eps<ε>.npz) and prunes the samples those scores cover (their `index`
rows of the same training set, re-derived from the same `data` / `features` config and checked
against the saved labels). A metric must cover every scored row: PLIS scored on a subset
(`scores.plis_samples` below the scored count) must be left out of `metrics`. `retrain_private
= False` retrains every kept set without DP (Adam): the retrain then measures what the
ε-model's scores say about the data, and the retrains that do not depend on the scores (the
full set, random removal) run once and serve every ε.

Privacy note: each training run's ε is recorded in its own ledger and reported, but the
selection step itself (which samples are kept) is a function of every sample's own data and
is NOT covered by any DP claim here; the experiment measures data value, not an end-to-end
private pipeline.

Writes to `workdir`: results.json and pruning.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time

import ml_collections
import numpy as np

from ecos_jax import models, training
from ecos_jax.experiments import progress
from ecos_jax.experiments.data_valuation import eps_label, prepare, score_run
from ecos_jax.parallel.mesh import device_report, local_mesh
from ecos_jax.privacy.ledger import PrivacyLedger
from ecos_jax.reporting.tables import markdown_table
from ecos_jax.utils.io import write_json, write_text
from ecos_jax.utils.overrides import floats
from ecos_jax.valuation.private_training import train_at_epsilon
from ecos_jax.valuation.pruning import DIRECTIONS, removal_indices

log = logging.getLogger(__name__)

def _train(model, x, y, eps, epochs, c, seed, name):
    """One run at ε (inf: Adam), its ε from its own ledger ("inf" if non-private)."""
    ledger = PrivacyLedger(c.privacy.delta, accountant=c.privacy.accountant,
                           reproducible_seed=c.privacy.noise_seed, dataset_size=len(x))
    run = train_at_epsilon(model, x, y, epsilon=eps, epochs=epochs,
                           checkpoints_every=c.train.checkpoints_every if name == "score" else epochs,
                           batch_size=c.train.batch_size, learning_rate=c.train.learning_rate,
                           dp_learning_rate=c.train.dp_learning_rate,
                           dp_momentum=c.train.get("dp_momentum", 0.0),
                           dp_batch_size=c.train.get("dp_batch_size"),
                           l2_norm_clip=c.train.l2_norm_clip, ledger=ledger,
                           accountant=c.privacy.accountant, seed=seed,
                           noise_seed=c.privacy.noise_seed, name=name,
                           mesh=local_mesh(c.get("num_devices", 0)),
                           hooks=progress.bar(c.progress, name, key="epoch" if math.isinf(eps) else "step"))
    # DP-SGD's truncated-Poisson event is PLD-only: fall back to PLD where RDP cannot compose.
    acc = c.privacy.accountant if c.privacy.accountant in ledger.accountants() else "pld"
    eps_run = "inf" if math.isinf(eps) else ledger.epsilon(accountant=acc)
    return run, eps_run


def _saved_scores(c: ml_collections.ConfigDict, labels: np.ndarray, e: str):
    """(index, scores, scoring record) of `train.model` at ε = e from the data-valuation run in
    `scores_from`; raises if its samples are not this config's training set."""
    label = f"{c.train.model}_eps{e}"
    path = os.path.join(c.scores_from, "scores", f"{label}.npz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no saved scores of {label}; run the data-valuation "
                                "experiment with this model and ε first.")
    with np.load(path) as z:
        index, saved = z["index"], {k: z[k] for k in z.files}
    if index.max() >= len(labels) or not np.array_equal(labels[index], saved["labels"]):
        raise ValueError(f"{path} scores other samples than this config's training set: use the "
                         "data and features settings of the data-valuation run.")
    missing = [m for m in c.metrics if m not in saved or len(saved[m]) != len(index)]
    if missing:
        raise ValueError(f"{path} has no score over every scored sample for {missing} "
                         "(e.g. PLIS scored on a subset): leave them out of `metrics`.")
    done = os.path.join(c.scores_from, "done", f"{label}.json")
    record = {}
    if os.path.exists(done):
        with open(done, encoding="utf-8") as f:
            r = json.load(f)["record"]
        record = {k: r[k] for k in ("test_accuracy", "train_seconds", "vog_seconds",
                                    "plis_seconds", "plis_iterations_mean") if k in r}
        record["epsilon_scoring_model"] = (r["training_epsilon"].get("pld") if e != "inf" else "inf")
    return index, {m: saved[m] for m in c.metrics}, record


def run(c: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs the pruning experiment; returns (and writes) the results dict."""
    t_start = time.perf_counter()
    mesh = local_mesh(c.get("num_devices", 0))  # too many devices: refused before any work
    os.makedirs(workdir, exist_ok=True)
    d = prepare(c)
    x_all, y_all, x_test, y_test = d.inputs, d.labels, d.test_inputs, d.test_labels
    kwargs = (c.train.get("model_kwargs") or {}).get(c.train.model, {})
    model = models.get_model(c.train.model, d.num_classes, **dict(kwargs))
    rows, scoring = [], []
    rng = np.random.default_rng(c.seed)
    reuse = c.get("scores_from")
    private = c.get("retrain_private", True)
    shared: dict[bytes, tuple] = {}   # non-private retrains that do not depend on ε: run once
    # Resume: every finished retrain is appended to partial.json with the config's fingerprint;
    # a rerun with the same config reads them back instead of retraining.
    partial_path = os.path.join(workdir, "partial.json")
    fingerprint = hashlib.sha256(json.dumps(
        {k: v for k, v in c.to_dict().items() if k != "progress"}, sort_keys=True,
        default=repr).encode()).hexdigest()[:16]
    finished: dict[str, dict] = {}
    if os.path.exists(partial_path):
        with open(partial_path, encoding="utf-8") as f:
            saved = json.load(f)
        if saved.get("fingerprint") == fingerprint:
            finished = saved["rows"]

    for eps in floats(c.epsilons, "epsilons"):  # (1, 8, inf) or as a command line gives it
        e = eps_label(eps)
        if reuse:
            index, s, info = _saved_scores(c, y_all, e)
            x, y = x_all[index], y_all[index]
            scoring.append({"epsilon": e, "source": reuse, **info})
        else:
            x, y = x_all, y_all
            scored, eps_score = _train(model, x, y, eps, c.score_epochs, c, c.seed, "score")
            s, info = score_run(model, scored, x, y, c)
            scoring.append({"epsilon": e, "epsilon_scoring_model": eps_score,
                            "test_accuracy": training.evaluate(model, scored.params, x_test, y_test),
                            "train_seconds": round(scored.seconds, 2), **info})
        eps_retrain = eps if private else math.inf

        everyone = np.arange(len(x))
        jobs = [(everyone, "none (full set)", "-", 0.0)]
        for f in c.fractions:
            for metric in c.metrics:
                for direction in DIRECTIONS:
                    drop = removal_indices(s[metric], f, direction)
                    jobs.append((np.setdiff1d(everyone, drop), metric, direction, f))
            drop = rng.permutation(len(x))[: int(round(f * len(x)))]
            jobs.append((np.setdiff1d(everyone, drop), "random", "-", f))
        if not rows and not all(f"{e}/{j[3]}/{j[1]}/{j[2]}" in finished for j in jobs):
            # One untimed epoch first, so that no row's retrain time holds the compilation.
            _train(model, x, y, eps_retrain, 1, c, c.seed + 1, "warm-up")
        for keep, metric, direction, fraction in jobs:
            job = f"{e}/{fraction}/{metric}/{direction}"
            if job in finished:
                rows.append(finished[job])
                continue
            key = keep.tobytes() if metric in ("random", "none (full set)") and not private else None
            if key is not None and key in shared:
                test_acc, train_acc, seconds, eps_run = shared[key]
            else:
                retrained, eps_run = _train(model, x[keep], y[keep], eps_retrain, c.retrain_epochs, c,
                                            c.seed + 1, "retrain")
                test_acc = training.evaluate(model, retrained.params, x_test, y_test)
                train_acc = training.evaluate(model, retrained.params, x[keep], y[keep])
                seconds = round(retrained.seconds, 2)
                if key is not None:
                    shared[key] = (test_acc, train_acc, seconds, eps_run)
            rows.append({
                "epsilon": e, "fraction": fraction, "metric": metric, "direction": direction,
                "kept": int(len(keep)), "test_accuracy": test_acc, "train_accuracy": train_acc,
                "retrain_seconds": seconds, "epsilon_retrain": eps_run})
            finished[job] = rows[-1]
            write_json(partial_path, {"fingerprint": fingerprint, "rows": finished})
            log.info("ε=%s f=%.2f %s/%s: test %.3f (%.1f s)", e, fraction, metric, direction,
                     test_acc, seconds)


    table = markdown_table(
        ["ε", "removed f", "metric", "removed", "kept", "test acc", "train acc (kept)", "retrain s",
         "ε retrain"],
        [[r["epsilon"], f"{r['fraction']:.2f}", r["metric"], r["direction"], r["kept"],
          f"{r['test_accuracy']:.3f}", f"{r['train_accuracy']:.3f}", r["retrain_seconds"],
          r["epsilon_retrain"] if isinstance(r["epsilon_retrain"], str) else f"{r['epsilon_retrain']:.2f}"]
         for r in rows])
    def num(v, fmt):
        return v if isinstance(v, str) else ("-" if v is None else format(v, fmt))

    score_table = markdown_table(
        ["ε", "ε scoring model", "scoring-model test acc", "train s", "VoG s", "PLIS s", "PLIS iters"],
        [[r["epsilon"], num(r.get("epsilon_scoring_model"), ".2f"), num(r.get("test_accuracy"), ".3f"),
          num(r.get("train_seconds"), ""), num(r.get("vog_seconds"), ""),
          num(r.get("plis_seconds"), ""), num(r.get("plis_iterations_mean"), ".1f")] for r in scoring])
    write_text(os.path.join(workdir, "pruning.md"),
               "# Scoring models\n\n" + score_table + "\n# Retraining after removal\n\n" + table)
    results = {"config": c.to_dict() | {"epsilons": [eps_label(v) for v in floats(c.epsilons, "epsilons")]},
               "scoring": scoring, "rows": rows, "seconds": round(time.perf_counter() - t_start, 1),
               "device_report": device_report(mesh)}  # training's mesh; scoring uses one device
    write_json(os.path.join(workdir, "results.json"), results)
    log.info("wrote %s (%.0f s)", workdir, results["seconds"])
    return results
