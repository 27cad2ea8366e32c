"""Accuracy against ε: DP-SGD on one dataset at several target ε (issue 3, item 6).

For every target ε, σ is calibrated for the event `dpsgd.train` records: the run's sampling
rate q, step count T and δ, and with Poisson sampling the batch slots M (over-full batches are
cut to M, so the event is truncated Poisson, which only PLD can account;
`DPSGDConfig.calibrated`). The model is trained by `dpsgd.train` with that σ, every run
recording its release in its own `PrivacyLedger` (one neighbouring relation per ledger:
add/remove one for Poisson, replace one for shuffling). RDP ε is reported as "n/a" where RDP
cannot analyse the sampler. ε = ∞ is the non-private reference: the
same loop, batches and optimiser with σ = 0 and no clipping. `run(config, workdir)` is the whole
experiment; `experiments/train_dp.py` only parses flags and calls it.

Outputs in `workdir`: results.json (config and one record per ε), results.md (the table),
accuracy_vs_epsilon.png, and ledger_eps<ε>.json (one saved ledger per ε). With
`checkpoint_every` set, each run checkpoints into checkpoints_eps<ε>/ and a rerun resumes it;
those directories hold the secret noise keys: protect them like the data, delete them after.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import jax
import ml_collections
import optax

from ecos_jax import data as data_lib
from ecos_jax import models, training
from ecos_jax.experiments import progress
from ecos_jax.privacy import accounting, dpsgd
from ecos_jax.privacy.ledger import PrivacyLedger
from ecos_jax.reporting import plots, tables
from ecos_jax.reporting.metrics import JsonlWriter
from ecos_jax.utils import io, overrides
from ecos_jax.utils.errors import validates

log = logging.getLogger(__name__)


def _label(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:g}"


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """'sgd' (with `momentum`) or 'adam', at `learning_rate`."""
    if config.learning_rate <= 0:
        raise ValueError(f"train.learning_rate must be > 0, got {config.learning_rate}.")
    if config.optimizer == "sgd":
        return optax.sgd(config.learning_rate, momentum=config.momentum or None)
    if config.optimizer == "adam":
        return optax.adam(config.learning_rate)
    raise ValueError(f"train.optimizer must be 'sgd' or 'adam', got {config.optimizer!r}.")


def target_epsilons(spec) -> list[float]:
    """`epsilons`: (1, 3, 8, inf), or "1,3,8,inf" as a command line may give it -> [1.0, 3.0, 8.0, inf]."""
    return list(overrides.floats(spec, "epsilons"))


@validates
def validate(config: ml_collections.ConfigDict, n_train: int) -> int:
    """Checks the config before any training; returns the number of steps T."""
    eps = target_epsilons(config.epsilons)
    bad = [e for e in eps if not e > 0]
    if bad:
        raise ValueError(f"every target epsilon must be > 0 (inf for non-private); got {bad}.")
    accounting.check_delta(config.privacy.delta, n_train, allow_large_delta=config.privacy.allow_large_delta)
    if config.privacy.accountant not in accounting.ACCOUNTANTS:
        raise ValueError(f"privacy.accountant must be one of {accounting.ACCOUNTANTS}.")
    if not 1 <= config.train.batch_size <= n_train:
        raise ValueError(f"train.batch_size must be in [1, {n_train}], got {config.train.batch_size}.")
    if not config.train.epochs > 0:
        raise ValueError(f"train.epochs must be > 0, got {config.train.epochs}.")
    make_optimizer(config.train)
    # Validates sampling, clipping, grad method and C once, with a placeholder σ.
    dpsgd.DPSGDConfig(
        dataset_size=n_train, batch_size=config.train.batch_size, l2_norm_clip=config.dp.l2_norm_clip,
        noise_multiplier=1.0, sampling=config.dp.sampling, clipping=config.dp.clipping,
        grad_method=config.dp.grad_method, microbatch_size=config.dp.microbatch_size,
        max_batch_size=config.dp.max_batch_size,
    )
    if config.checkpoint_every is not None and config.checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1 or None, got {config.checkpoint_every}.")
    return max(1, round(config.train.epochs * n_train / config.train.batch_size))


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> list[dict]:
    """Trains at every target ε, writes the outputs into `workdir`, returns the records."""
    workdir = Path(workdir)
    ds = data_lib.load(config.data.name, data_dir=config.data.data_dir,
                       image_size=config.data.image_size)
    train_ds, test_ds = data_lib.train_test_split(
        ds, test_fraction=config.data.test_fraction, seed=config.data.split_seed)
    n = len(train_ds)
    steps = validate(config, n)
    q = config.train.batch_size / n
    model = models.get_model(config.train.model, ds.num_classes, **dict(config.train.model_kwargs))
    params = jax.jit(model.init)(jax.random.key(config.seed), train_ds.images[:1])
    log.info("%s: %d train / %d test examples, q = %.4f, T = %d steps.",
             config.data.name, n, len(test_ds), q, steps)

    records = []
    base = dpsgd.DPSGDConfig(
        dataset_size=n, batch_size=config.train.batch_size, l2_norm_clip=config.dp.l2_norm_clip,
        noise_multiplier=1.0, sampling=config.dp.sampling, clipping=config.dp.clipping,
        grad_method=config.dp.grad_method, microbatch_size=config.dp.microbatch_size,
        max_batch_size=config.dp.max_batch_size,
    )
    for target in target_epsilons(config.epsilons):
        t0 = time.perf_counter()
        # The same event train records (truncated Poisson when M < N), so the ledger's ε
        # meets the target.
        dp_config = base.calibrated(target, config.privacy.delta, steps=steps,
                                    accountant=config.privacy.accountant,
                                    allow_large_delta=config.privacy.allow_large_delta)
        sigma = dp_config.noise_multiplier
        ledger = PrivacyLedger(config.privacy.delta, accountant=config.privacy.accountant,
                               relation=dp_config.relation,
                               reproducible_seed=config.privacy.noise_seed, dataset_size=n,
                               allow_large_delta=config.privacy.allow_large_delta)
        ckpt = (None if config.checkpoint_every is None
                else workdir / f"checkpoints_eps{_label(target)}")
        # Metrics one JSON line per chunk of log_every steps; a resumed run appends the
        # chunks it trains after its checkpoint.
        with JsonlWriter(workdir / "metrics.jsonl", run=f"eps{_label(target)}") as metrics:
            result = dpsgd.train(
                model, params, train_ds.images, train_ds.labels, dp_config,
                make_optimizer(config.train), steps=steps, seed=config.privacy.noise_seed, ledger=ledger,
                name=f"{config.train.model}_dpsgd", log_every=config.log_every,
                hooks=[training.WriteMetrics(metrics, key="step"),
                       *progress.bar(config.progress, f"ε={_label(target)}", steps, key="step")],
                desc=f"ε={_label(target)}", checkpoint_dir=ckpt, checkpoint_every=config.checkpoint_every,
            )
        ledger.save(workdir / f"ledger_eps{_label(target)}.json")
        acc = training.evaluate(model, result.params, test_ds.images, test_ds.labels,
                                batch_size=config.eval_batch_size)
        # Infinite values are written as "inf": strict JSON has no infinities.
        record = {
            "target_epsilon": _label(target), "noise_multiplier": sigma,
            "l2_norm_clip": _label(dp_config.l2_norm_clip),
            "epsilon_rdp": _epsilon(ledger, "rdp"), "epsilon_pld": _epsilon(ledger, "pld"),
            "delta": config.privacy.delta, "max_batch_size": dp_config.sampler().max_batch_size,
            "test_accuracy": acc, "train_loss": result.history[-1]["loss"], "steps": steps,
            "sampling_rate": q, "truncated_examples": result.truncated_examples,
            "nonfinite_examples": result.nonfinite_examples,
            "reproducible": result.reproducible, "seconds": time.perf_counter() - t0,
        }
        records.append(record)
        log.info("ε=%s: σ=%.3f, accuracy %.2f%%, %.0f s", record["target_epsilon"], sigma,
                 100 * acc, record["seconds"])
    write_outputs(config, workdir, records, n, len(test_ds))
    return records


def _epsilon(ledger: PrivacyLedger, accountant: str) -> str:
    """The ledger's ε as text: "inf" for non-private, "n/a" where `accountant` cannot compose
    an entry (RDP has no analysis of truncated Poisson sampling)."""
    if accountant not in ledger.accountants():
        return "n/a"
    return _label(ledger.epsilon(accountant=accountant))


def write_outputs(config, workdir: Path, records: list[dict], n_train: int, n_test: int) -> str:
    """results.json, results.md and accuracy_vs_epsilon.png; returns the markdown."""
    def fmt(e: str) -> str:
        return {"inf": "∞", "n/a": "n/a"}.get(e) or f"{float(e):.2f}"

    header = ["target ε", "σ", "ε (RDP)", "ε (PLD)", "test accuracy %", "train loss", "time (s)"]
    rows = [[r["target_epsilon"].replace("inf", "∞"), f"{r['noise_multiplier']:.3f}",
             fmt(r["epsilon_rdp"]), fmt(r["epsilon_pld"]), f"{100 * r['test_accuracy']:.2f}",
             f"{r['train_loss']:.3f}", f"{r['seconds']:.0f}"] for r in records]
    r0 = records[0]
    text = (
        f"# DP-SGD accuracy vs ε ({config.data.name}, {config.train.model}, {n_train} train / "
        f"{n_test} test, δ = {config.privacy.delta}, q = {r0['sampling_rate']:.4f}, "
        f"T = {r0['steps']}, C = {config.dp.l2_norm_clip}, {config.dp.sampling} sampling)\n\n"
        + tables.markdown_table(header, rows)
    )
    if any(r["epsilon_rdp"] == "n/a" for r in records):
        text += ("\nRDP n/a: batches have M slots and over-full ones are cut to M (truncated "
                 "Poisson), which only PLD accounts; σ was calibrated with PLD.\n")
    if any(r["reproducible"] for r in records):
        text += "\nNoise was seeded (privacy.noise_seed): reproducible research only.\n"
    io.write_json(workdir / "results.json",
                  {"config": _finite_json(config.to_dict()), "records": records})
    io.write_text(workdir / "results.md", text)
    plots.accuracy_vs_epsilon(records, workdir / "accuracy_vs_epsilon.png")
    print(text)
    return text


def _finite_json(value):
    """Config values with infinities as "inf" (strict JSON has none)."""
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(v) for v in value]
    if isinstance(value, float) and math.isinf(value):
        return _label(value)
    return value


__all__ = ["make_optimizer", "run", "validate", "write_outputs"]
