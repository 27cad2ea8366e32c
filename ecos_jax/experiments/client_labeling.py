"""ECOS automated client labelling (the ECOS paper's third application) against its baselines.

The cloud picks pool samples by each method but has no labels it may use: it sends the picks
(public data) to the client, which labels them with its own labelled data by private kNN
(`ecos_jax.ecos.private_knn`: Gaussian noisy argmax over the k nearest client samples' votes in the
public feature space, PATE/GNMax-style). The cloud trains on those labels and is scored on the
client's held-out test split.

Privacy: every labelled query is a release of the client's data (`labeling.epsilon` for all of
a record's queries together, at `ecos.delta`), recorded in the client's lifetime ledger and
copied into the record's. A record's `epsilon` is what that record rests on: its labels, plus
the coverage-count response for 'ecos'. It is NOT the client's total: the same client labels
the picks of every method, budget and seed, so its lifetime ε (results.md, "Client privacy
over the whole run") composes all of them; e.g. 3 seeds × 4 methods × 2 budgets of labels
plus 3 responses. 'local' trains on the client's own data (nothing released).

Each record also reports `label_accuracy`: how many of the private labels agree with the
pool's true labels (a diagnostic the cloud could not compute in deployment).
"""

from __future__ import annotations

import math
import os

import ml_collections
import numpy as np

from ecos_jax import training
from ecos_jax.ecos import private_knn
from ecos_jax.experiments import ecos_runner
from ecos_jax.experiments.ecos_runner import ClientTask, Selection
from ecos_jax.experiments.selective_labeling import fit_for_steps


class ClientLabeling:
    """Picks labelled by the client's private kNN; the cloud trains on those labels."""

    name = "ECOS automated client labelling"
    methods = ecos_runner.METHODS
    summary_metrics = ("label_accuracy",)

    def validate(self, config: ml_collections.ConfigDict) -> None:
        lab = config.labeling
        if lab.k < 1:
            raise ValueError(f"labeling.k must be >= 1, got {lab.k}.")
        if not lab.epsilon > 0:
            raise ValueError(f"labeling.epsilon must be > 0, got {lab.epsilon}.")
        if not 0 < lab.sampling_rate <= 1:
            raise ValueError(f"labeling.sampling_rate must be in (0, 1], got {lab.sampling_rate}.")

    def prepare(self, config: ml_collections.ConfigDict, task: ClientTask) -> None:
        return None

    def evaluate(self, config: ml_collections.ConfigDict, task: ClientTask, state, sel: Selection) -> dict:
        pool, client, test = task.split.pool, task.split.client_train, task.split.client_test
        out: dict = {}
        if sel.indices is None:
            x, y = client.images, client.labels
        else:
            lab = config.labeling
            # The client featurises the received images with the public extractor itself;
            # f(pool[idx]) is exactly what it computes.
            res = private_knn.private_knn_labels(
                task.pool_features[sel.indices], task.client_features, client.labels,
                num_classes=task.num_classes, k=lab.k, epsilon=lab.epsilon, delta=config.ecos.delta,
                sampling_rate=lab.sampling_rate, accountant=config.ecos.accountant,
                noise_seed=sel.noise_seed, ledger=sel.client_ledger,
                bytes_down=int(pool.images[sel.indices].size))  # the picked images, uint8 pixels
            x, y = pool.images[sel.indices], np.asarray(res.labels, np.int32)
            out.update(label_accuracy=float(np.mean(y == pool.labels[sel.indices])),
                       label_sigma=float(res.sigma) if math.isfinite(res.sigma) else str(res.sigma),
                       labeling_epsilon=float(lab.epsilon), label_bytes_down=res.bytes_down,
                       label_bytes_up=res.bytes_up)
        model, fitted = fit_for_steps(config, x, y, seed=sel.seed, desc=f"{sel.method}/{task.domain}",
                                      num_classes=task.num_classes)
        out.update(n_train=int(len(x)), accuracy=training.evaluate(model, fitted.params, test.images, test.labels))
        return out


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> list[dict]:
    """Runs the whole experiment; writes results into `workdir` and returns the records."""
    return ecos_runner.run(config, workdir, ClientLabeling())
