"""ECOS selective labelling (the ECOS paper's first application) against its baselines.

For every client domain, every seed and every budget, each method picks pool samples, the
picks are labelled with the pool's labels (the labelling oracle), a model is trained on them
and scored on the client's held-out test split. With `semi.mode = "pseudo_label"` the model
then also learns from confident pseudo-labels on the unlabelled rest of the pool
(`ecos_jax.ecos.semi_supervised`). `run(config, workdir)` is the whole experiment;
`experiments/selective_labeling.py` only parses flags and calls it. The loop, the ledger, resume
and the results files are the shared ECOS runner's (`ecos_runner.py`).
"""

from __future__ import annotations

import math
import os

import jax
import ml_collections
import numpy as np

from ecos_jax import models, training
from ecos_jax.ecos import semi_supervised
from ecos_jax.experiments import ecos_runner
from ecos_jax.experiments.ecos_runner import METHODS, POOL_METHODS, ClientTask, Selection  # noqa: F401  (re-exported)
from ecos_jax.parallel.mesh import local_mesh


def fit_for_steps(config: ml_collections.ConfigDict, x: np.ndarray, targets: np.ndarray, *, seed: int,
                  desc: str, model_name: str | None = None, num_classes: int, **fit_kwargs) -> tuple:
    """Trains `model_name` (default `train.model`) for about `train.steps` optimiser steps.

    Every method gets the same number of steps whatever its budget, so budgets compare data,
    not compute. Returns (model, FitResult). Trains data-parallel over `num_devices` local
    devices (0 = all; the batch split over them, the same run to float tolerance).
    """
    fit_kwargs.setdefault("mesh", local_mesh(config.get("num_devices", 0)))
    model = models.get_model(model_name or config.train.model, num_classes)
    batch = min(config.train.batch_size, len(x))
    epochs = max(1, math.ceil(config.train.steps * batch / len(x)))
    res = training.fit(model, x, targets, optimizer=training.make_optimizer("adam", float(config.train.learning_rate)),
                       epochs=epochs, batch_size=batch, seed=seed, desc=desc, **fit_kwargs)
    return model, res


class SelectiveLabeling:
    """Picks labelled by the pool's own labels; optional pseudo-labels on the unlabelled rest."""

    name = "ECOS selective labelling"
    methods = METHODS
    summary_metrics = ("in_domain_fraction", "accuracy_supervised", "n_pseudo", "pseudo_label_accuracy")

    def validate(self, config: ml_collections.ConfigDict) -> None:
        semi = config.get("semi")
        if semi is None:
            return
        if semi.mode not in semi_supervised.MODES:
            raise ValueError(f"Unknown semi.mode {semi.mode!r}; choose from {semi_supervised.MODES}.")
        if not 0.0 <= semi.threshold <= 1.0:
            raise ValueError(f"semi.threshold must be in [0, 1], got {semi.threshold}.")
        if not semi.weight > 0:
            raise ValueError(f"semi.weight must be > 0, got {semi.weight}.")
        if semi.num_unlabeled == 0:
            raise ValueError("semi.num_unlabeled must be positive, or -1 for the whole unlabelled pool.")

    def prepare(self, config: ml_collections.ConfigDict, task: ClientTask) -> None:
        return None

    def evaluate(self, config: ml_collections.ConfigDict, task: ClientTask, state, sel: Selection) -> dict:
        pool, test = task.split.pool, task.split.client_test
        if sel.indices is None:
            x, y = task.split.client_train.images, task.split.client_train.labels
        else:
            x, y = pool.images[sel.indices], pool.labels[sel.indices]
        desc = f"{sel.method}/{task.domain}"
        model, res = fit_for_steps(config, x, y, seed=sel.seed, desc=desc, num_classes=task.num_classes)
        out = {"n_train": int(len(x))}
        semi = config.get("semi")
        if semi is not None and semi.mode == "pseudo_label" and sel.indices is not None:
            out["accuracy_supervised"] = training.evaluate(model, res.params, test.images, test.labels)
            u = semi_supervised.unlabeled_indices(jax.random.fold_in(sel.key, 7), len(pool), sel.indices,
                                                  semi.num_unlabeled)
            keep, pseudo = semi_supervised.confident_pseudo_labels(
                training.predict(model, res.params, pool.images[u]), semi.threshold)
            xs = np.concatenate([x, pool.images[u[keep]]])
            ys = np.concatenate([y, pseudo]).astype(np.int32)
            w = np.concatenate([np.ones(len(x), np.float32), np.full(len(keep), semi.weight, np.float32)])
            _, res = fit_for_steps(config, xs, ys, seed=sel.seed, desc=desc + "+pseudo", weights=w,
                                   init_params=res.params, num_classes=task.num_classes)
            out.update(n_pseudo=int(len(keep)),
                       pseudo_label_accuracy=float(np.mean(pseudo == pool.labels[u[keep]])) if len(keep) else 0.0)
        out["accuracy"] = training.evaluate(model, res.params, test.images, test.labels)
        return out


def validate(config: ml_collections.ConfigDict, ds) -> dict:
    """Checks the config against the data before any work; returns {client domain: its split}."""
    return ecos_runner.validate(config, ds, SelectiveLabeling())


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> list[dict]:
    """Runs the whole experiment; writes results into `workdir` and returns the records."""
    return ecos_runner.run(config, workdir, SelectiveLabeling())
