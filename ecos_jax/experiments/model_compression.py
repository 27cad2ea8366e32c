"""ECOS adaptive model compression (the ECOS paper's second application) against its baselines.

A large teacher (`teacher.model`, default 'wide_cnn') is trained on the cloud's
whole labelled pool, once per client domain, and cached to disk by content hash. For every
seed and budget, each method picks pool samples; the teacher's logits on those picks, and
nothing else, distil a small student (`train.model`, default 'cnn') with the
temperature-scaled KL of `train.kl_distillation`, for `train.steps` optimiser steps whatever
the budget. The student is scored on the client's held-out test split.

There is no 'local' method: the client's data never reach the cloud, so the cloud has no
client images on which to query its teacher.

Each record adds to the runner's fields: `teacher_accuracy` (the teacher on the same client
test split: the student's ceiling), `teacher_agreement` (fraction of client test images on
which student and teacher predict the same class) and `n_train`.

    >>> records = run(config, "runs/model_compression")   # configs/model_compression.py
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ecos_jax import models, training
from ecos_jax.data import sources
from ecos_jax.ecos.distillation import distillation_loss, pack_targets
from ecos_jax.experiments import ecos_runner
from ecos_jax.experiments import progress as progress_lib
from ecos_jax.experiments.ecos_runner import POOL_METHODS, ClientTask, Selection
from ecos_jax.experiments.selective_labeling import fit_for_steps
from ecos_jax.utils import io

log = logging.getLogger(__name__)
PyTree = Any


@dataclasses.dataclass(frozen=True, eq=False)
class Teacher:
    """The cloud's teacher for one client domain.

    accuracy: top-1 accuracy on the client's test split, in [0, 1].
    test_predictions: `[N_test]` int, its classes on the client's test split.
    """

    model: nn.Module
    params: PyTree
    accuracy: float
    test_predictions: np.ndarray
    cache_path: Path | None


def teacher_cache_dir(config: ml_collections.ConfigDict) -> str:
    return config.teacher.cache_dir or os.path.join(
        config.data.data_dir or os.environ.get(sources.DATA_DIR_ENV, "~/.cache/ecos_jax"), "teachers")


def fit_teacher(model_name: str, images: np.ndarray, labels: np.ndarray, *, num_classes: int, epochs: int,
                batch_size: int, learning_rate: float, seed: int, cache_dir: str | None,
                progress: bool = False, desc: str = "teacher") -> tuple[nn.Module, PyTree, Path | None]:
    """Trains `model_name` on the labelled pool, or loads it from `cache_dir` (keyed by content hash).

    images: `[N, H, W, C]` float32, the cloud's pool; labels: `[N]` int. Returns
    (model, params, cache path or None).
    """
    model = models.get_model(model_name, num_classes)
    settings = {"model": model_name, "num_classes": num_classes, "epochs": epochs, "batch_size": batch_size,
                "lr": learning_rate, "seed": seed, "shape": tuple(images.shape)}
    path = None
    if cache_dir:
        path = Path(cache_dir).expanduser() / f"teacher-{model_name}-{io.content_hash('teacher', images, labels, settings)}.npz"
    if path is not None and path.exists():
        # Shapes only: an eager init would compile every initialiser just to be overwritten.
        template = jax.eval_shape(model.init, jax.random.key(seed), jnp.zeros((1, *images.shape[1:]), jnp.float32))
        params = io.load_params(path, template)
        log.info("Loaded cached teacher from %s", path)
        return model, params, path
    params = training.fit(model, images, np.asarray(labels, np.int32),
                          optimizer=training.make_optimizer("adam", float(learning_rate)), epochs=epochs,
                          batch_size=batch_size, seed=seed, hooks=progress_lib.bar(progress, desc, epochs),
                          desc=desc).params
    if path is not None:
        io.save_params(path, params)
    return model, params, path


class ModelCompression:
    """Distils a pool-trained teacher into a small student on each method's picks only."""

    name = "ECOS adaptive model compression"
    methods = POOL_METHODS

    def validate(self, config: ml_collections.ConfigDict) -> None:
        c, t = config.get("compression"), config.get("teacher")
        if c is None or t is None:
            raise ValueError("Model compression needs 'compression' and 'teacher' config sections "
                             "(see configs/model_compression.py).")
        if "local" in config.methods:
            raise ValueError("'local' is not a compression method: the client's data never reach the "
                             "cloud, so there is nothing to query the teacher on.")
        for field, name in (("teacher.model", t.model), ("train.model", config.train.model)):
            if name not in models.MODELS:
                raise ValueError(f"Unknown {field} {name!r}; choose one of {sorted(models.MODELS)}.")
        if not c.temperature > 0:
            raise ValueError(f"compression.temperature must be > 0, got {c.temperature}.")
        if not 0.0 <= c.alpha <= 1.0:
            raise ValueError(f"compression.alpha must be in [0, 1], got {c.alpha}.")
        if t.epochs < 1:
            raise ValueError(f"teacher.epochs must be >= 1, got {t.epochs}.")
        if t.batch_size < 1:
            raise ValueError(f"teacher.batch_size must be >= 1, got {t.batch_size}.")
        if not t.learning_rate > 0:
            raise ValueError(f"teacher.learning_rate must be > 0, got {t.learning_rate}.")

    def prepare(self, config: ml_collections.ConfigDict, task: ClientTask) -> Teacher:
        t, pool, test = config.teacher, task.split.pool, task.split.client_test
        model, params, path = fit_teacher(
            t.model, pool.images, pool.labels, num_classes=task.num_classes, epochs=t.epochs,
            batch_size=t.batch_size, learning_rate=t.learning_rate, seed=config.data.split_seed,
            cache_dir=teacher_cache_dir(config), progress=config.progress, desc=f"teacher[{task.domain}]")
        pred = np.argmax(training.predict(model, params, test.images), axis=-1)
        acc = float(np.mean(pred == test.labels))
        log.info("Teacher %s for client %s: %.1f%% on the client test split.", t.model, task.domain,
                 100 * acc)
        return Teacher(model=model, params=params, accuracy=acc, test_predictions=pred, cache_path=path)

    def evaluate(self, config: ml_collections.ConfigDict, task: ClientTask, teacher: Teacher,
                 sel: Selection) -> dict:
        if sel.indices is None:
            raise ValueError(f"{sel.method!r} picks nothing from the pool; compression needs pool picks.")
        c, pool, test = config.compression, task.split.pool, task.split.client_test
        x = pool.images[sel.indices]
        logits = training.predict(teacher.model, teacher.params, x)
        targets = logits if c.alpha == 0 else pack_targets(logits, pool.labels[sel.indices])
        student, res = fit_for_steps(config, x, targets, seed=sel.seed, desc=f"{sel.method}/{task.domain}",
                                     num_classes=task.num_classes,
                                     loss_fn=distillation_loss(c.temperature, c.alpha))
        pred = np.argmax(training.predict(student, res.params, test.images), axis=-1)
        return {"accuracy": float(np.mean(pred == test.labels)),
                "teacher_accuracy": teacher.accuracy,
                "teacher_agreement": float(np.mean(pred == teacher.test_predictions)),
                "n_train": int(len(x))}


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> list[dict]:
    """Runs the whole experiment; writes results into `workdir` and returns the records."""
    return ecos_runner.run(config, workdir, ModelCompression())
