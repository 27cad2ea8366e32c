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

Inputs: the pixels, or (`features.name = "scattering"`) ScatterNet features of every image
(`scattering.features`, computed once and cached by content), optionally normalised per
example by GroupNorm without affine parameters: a data-independent map, so it releases nothing
and adds nothing to the ledger (a data-dependent statistic would have to be a DP release in the
same ledger). `data.official_split` trains on the dataset's own train split and tests on its
test split. Every ε runs `num_seeds` times (model init seed + i, noise seed + i when seeded);
with `eval_every` set, test accuracy is read every `eval_every` chunks against the training
wall time (the evaluations' own time excluded): the time-to-accuracy curve, never used to pick
anything.

Outputs in `workdir`: results.json (config and one record per ε and seed), results.md (the
tables: every run, then mean ± std over seeds), accuracy_vs_epsilon.png, time_to_accuracy.png
(with eval_every), and ledger_eps<ε>.json (one saved ledger per ε; ledger_eps<ε>_seed<s>.json
with several seeds). With
`checkpoint_every` set, each run checkpoints into checkpoints_eps<ε>/ and a rerun resumes it;
those directories hold the secret noise keys: protect them like the data, delete them after.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
import optax

from ecos_jax import data as data_lib
from ecos_jax import models, scattering, training
from ecos_jax.experiments import progress
from ecos_jax.parallel.mesh import device_report, local_mesh
from ecos_jax.privacy import accounting, dpsgd, keys, normalization
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
    if config.dp.padding not in dpsgd.PADDINGS:
        raise ValueError(f"dp.padding must be one of {dpsgd.PADDINGS}, got {config.dp.padding!r}.")
    if config.dp.padding != "full" and config.dp.sampling != "poisson":
        raise ValueError("dp.padding='buckets' applies to Poisson sampling only.")
    if config.checkpoint_every is not None and config.checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1 or None, got {config.checkpoint_every}.")
    if not config.num_seeds >= 1:
        raise ValueError(f"num_seeds must be >= 1, got {config.num_seeds}.")
    if not 0.0 <= (config.get("average_tail") or 0.0) < 1.0:
        raise ValueError(f"average_tail must be in [0, 1), got {config.average_tail}.")
    if config.eval_every is not None and config.eval_every < 1:
        raise ValueError(f"eval_every must be >= 1 or None, got {config.eval_every}.")
    f = config.features
    if f.name not in ("pixels", "scattering"):
        raise ValueError(f"features.name must be 'pixels' or 'scattering', got {f.name!r}.")
    if f.normalization not in NORMALIZATIONS:
        raise ValueError(f"features.normalization must be one of {NORMALIZATIONS}, got "
                         f"{f.normalization!r}.")
    if f.normalization in DP_NORMALIZATIONS:
        if config.dp.sampling != "poisson":
            raise ValueError(f"features.normalization={f.normalization!r} is analysed under "
                             "add/remove-one neighbours: it composes with Poisson DP-SGD only "
                             "(dp.sampling='poisson').")
        if f.name != "scattering":
            raise ValueError(f"features.normalization={f.normalization!r} needs "
                             "features.name='scattering' (per-channel statistics).")
        if not f.stats_noise_multiplier > 0:
            raise ValueError("features.stats_noise_multiplier must be > 0 (the DP statistics' "
                             f"σ), got {f.stats_noise_multiplier}.")
        for name in ("stats_clip_mean", "stats_clip_square"):
            if not 0 < f[name] < math.inf:
                raise ValueError(f"features.{name} must be finite and > 0, got {f[name]}.")
        for e in eps:
            if not math.isinf(e):
                stats_eps = accounting.epsilon(normalization.event(f.stats_noise_multiplier),
                                               config.privacy.delta, "pld")
                if not stats_eps < e:
                    raise ValueError(
                        f"the DP statistics alone spend ε = {stats_eps:.3g} >= target ε = {e:g}: "
                        "raise features.stats_noise_multiplier.")
    if f.name == "scattering" and f.normalization.startswith("group_norm"):
        k = scattering.num_paths(f.J, f.L)
        if not 0 < f.num_groups <= k or k % f.num_groups:
            divisors = ", ".join(str(d) for d in range(1, k + 1) if k % d == 0)
            raise ValueError(f"features.num_groups={f.num_groups} must divide the {k} scattering "
                             f"paths of each channel at J = {f.J}, L = {f.L} ({divisors}).")
    return max(1, round(config.train.epochs * n_train / config.train.batch_size))


# "dp_data": per-channel standardisation with DP statistics of the raw scattering features;
# "group_norm_dp_data": the same after the per-example GroupNorm (`privacy.normalization`).
DP_NORMALIZATIONS = ("dp_data", "group_norm_dp_data")
NORMALIZATIONS = ("none", "group_norm", *DP_NORMALIZATIONS)


def load_split(data: ml_collections.ConfigDict) -> tuple[data_lib.ArrayDataset, data_lib.ArrayDataset]:
    """(train, test): the dataset's own splits with `official_split`, else a random split."""
    kw = {"data_dir": data.data_dir, "image_size": data.image_size}
    if data.official_split:
        return (data_lib.load(data.name, split="train", **kw),
                data_lib.load(data.name, split="test", **kw))
    return data_lib.train_test_split(data_lib.load(data.name, **kw),
                                     test_fraction=data.test_fraction, seed=data.split_seed)


def carve_validation(x, labels, size: int):
    """(x_train, y_train, x_val, y_val): the last `size` training examples held out.

    x: [N, ...] inputs (pixels or features), labels: [N]. A fixed carve (no shuffling) of
    the official training split, so hyper-parameters can be tuned without the test split;
    it is itself private data (tuning on it costs privacy in principle)."""
    if not 0 < size < len(labels):
        raise ValueError(f"data.validation_size must be in (0, {len(labels)}), got {size}.")
    cut = len(labels) - size
    return x[:cut], labels[:cut], x[cut:], labels[cut:]


def model_inputs(features: ml_collections.ConfigDict, train_images, test_images):
    """What the model trains and is tested on: the pixels, or ScatterNet features of both
    splits (each image's features depend on that image only), GroupNorm-ed per example
    ("group_norm", "group_norm_dp_data"). The DP statistics of the "*dp_data" normalisations
    are released per run (`dp_normalize`), not here."""
    if features.name == "pixels":
        return train_images, test_images
    out = []
    for images in (train_images, test_images):
        f = scattering.features(images, J=features.J, L=features.L,
                                batch_size=features.batch_size, cache_dir=features.cache_dir)
        if features.normalization in ("group_norm", "group_norm_dp_data"):
            f = scattering.batched(
                lambda a: scattering.group_normalize(a, features.num_groups), f,
                features.batch_size)
        out.append(f)
    return tuple(out)


def dp_normalize(features: ml_collections.ConfigDict, x_train, x_test, *, target: float,
                 noise_seed: int | None, ledger: PrivacyLedger | None, path: Path | None = None):
    """(x_train, x_test) standardised per channel with DP statistics of `x_train`, released
    once and recorded in `ledger` (the run's ledger, before DP-SGD's entry); the input as is
    when the normalisation is not a DP one. `target` inf releases the exact statistics
    (non-private reference). Returns (x_train, x_test, info dict for the record).

    The release is saved to `path` (JSON) and read back when a rerun of the same settings
    finds it there, so a resumed run trains on the statistics it started with and the release
    happens (and is recorded) once, not once per attempt."""
    if features.normalization not in DP_NORMALIZATIONS:
        return x_train, x_test, {}
    sigma = 0.0 if math.isinf(target) else float(features.stats_noise_multiplier)
    settings = {"noise_multiplier": sigma, "clip_mean": float(features.stats_clip_mean),
                "clip_square": float(features.stats_clip_square), "n": int(len(x_train)),
                "normalization": features.normalization, "seeded": noise_seed}
    saved = json.loads(path.read_text()) if path is not None and path.exists() else None
    if saved is not None and saved.get("settings") == settings:
        s = saved["stats"]
        stats = normalization.ChannelStats(
            mean=np.asarray(s["mean"]), var=np.asarray(s["var"]), count=s["count"],
            noise_multiplier=s["noise_multiplier"], clip_mean=s["clip_mean"],
            clip_square=s["clip_square"], clipped_mean=math.nan, clipped_square=math.nan)
        log.info("Read the released feature statistics back from %s.", path)
    else:
        key, _ = keys.noise_key(noise_seed)
        # Not DP-SGD's key stream: the same seed gives DP-SGD its noise and sampling keys.
        key = jax.random.fold_in(key, 0x57A75)
        stats = normalization.release(key, x_train, clip_mean=features.stats_clip_mean,
                                      clip_square=features.stats_clip_square,
                                      noise_multiplier=sigma)
        if path is not None:
            io.write_json(path, {"settings": settings, "stats": stats.to_dict()})
    if ledger is not None:
        ledger.record("feature_stats", normalization.event(sigma),
                      sensitivity=normalization.sensitivity(stats.clip_mean, stats.clip_square),
                      relation=normalization.RELATION, mechanism="Gaussian",
                      noise_multiplier=sigma, clip_mean=stats.clip_mean,
                      clip_square=stats.clip_square, normalization=features.normalization)
    info = {"stats_noise_multiplier": sigma,
            # Data-dependent diagnostics, NOT covered by the ε (never used to pick anything).
            "stats_clipped_fraction_nonprivate": [stats.clipped_mean, stats.clipped_square]}
    return normalization.normalize(x_train, stats), normalization.normalize(x_test, stats), info


class TailAverage:
    """A training-loop hook: the mean of the parameters at the chunk ends after `start_step`
    (Polyak-Ruppert tail averaging of the iterates).

    Free in privacy: DP-SGD's accounting covers every iterate (each is computed from the noisy
    gradients already accounted), so any function of them is post-processing. The sum is kept
    in float64 on the host; a resumed run averages the chunks trained since it resumed
    (`count` says how many)."""

    def __init__(self, start_step: int):
        self.start_step = start_step
        self.count = 0
        self._sum = None

    def __call__(self, state, record: dict) -> None:
        if record["step"] <= self.start_step:
            return
        p = jax.tree.map(lambda a: np.asarray(a, np.float64), state.params)
        self._sum = p if self._sum is None else jax.tree.map(np.add, self._sum, p)
        self.count += 1

    def params(self):
        """The averaged parameters (float32), or None before any chunk was averaged."""
        if not self.count:
            return None
        return jax.tree.map(lambda a: (a / self.count).astype(np.float32), self._sum)


class TimeToAccuracy:
    """A training-loop hook: test accuracy every `every` chunks and at `last_step`, against
    the training wall time since the first chunk began (the evaluations' own time excluded).

    `points`: [{"step", "seconds", "test_accuracy"}]; `every` None records nothing."""

    def __init__(self, evaluate, every: int | None, last_step: int):
        self.evaluate, self.every, self.last_step = evaluate, every, last_step
        self.points: list[dict] = []
        self._start = time.perf_counter()
        self._eval_seconds = 0.0
        self._chunks = 0

    def __call__(self, state, record: dict) -> None:
        self._chunks += 1
        if self.every is None or (self._chunks % self.every and record["step"] != self.last_step):
            return
        now = time.perf_counter()
        acc = float(self.evaluate(state.params))
        self.points.append({"step": int(record["step"]), "test_accuracy": acc,
                            "seconds": now - self._start - self._eval_seconds})
        self._eval_seconds += time.perf_counter() - now
        # In the log as it happens: a run stopped early still shows its curve so far.
        log.info("step %d: test accuracy %.4f after %.0f s of training", record["step"], acc,
                 self.points[-1]["seconds"])


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> list[dict]:
    """Trains at every target ε, writes the outputs into `workdir`, returns the records."""
    workdir = Path(workdir)
    # Data-parallel over num_devices local devices (0: all); more than there are is refused here.
    mesh = local_mesh(config.get("num_devices", 0))
    train_ds, test_ds = load_split(config.data)
    # validation_size > 0: train on the first N - n of the training split and evaluate on
    # its last n; the test split is then never evaluated (for tuning).
    n_val = config.data.get("validation_size") or 0
    n = len(train_ds) - n_val
    steps = validate(config, n)
    q = config.train.batch_size / n
    t_features = time.perf_counter()
    # Features of the whole split (per example, so carving after is the same; the cache
    # holds one file per official split).
    x_train, x_test = model_inputs(config.features, train_ds.images, test_ds.images)
    y_train, y_test = train_ds.labels, test_ds.labels
    if n_val:
        x_train, y_train, x_test, y_test = carve_validation(x_train, y_train, n_val)
    eval_split = f"validation (last {n_val} of train)" if n_val else "test"
    feature_seconds = time.perf_counter() - t_features
    model = models.get_model(config.train.model, train_ds.num_classes,
                             **dict(config.train.model_kwargs))
    log.info("%s: %d train / %d %s examples, q = %.4f, T = %d steps.",
             config.data.name, n, len(y_test), eval_split, q, steps)

    records = []
    base = dpsgd.DPSGDConfig(
        dataset_size=n, batch_size=config.train.batch_size, l2_norm_clip=config.dp.l2_norm_clip,
        noise_multiplier=1.0, sampling=config.dp.sampling, clipping=config.dp.clipping,
        grad_method=config.dp.grad_method, microbatch_size=config.dp.microbatch_size,
        max_batch_size=config.dp.max_batch_size,
    )
    runs = [(target, i) for target in target_epsilons(config.epsilons)
            for i in range(config.num_seeds)]
    for target, i in runs:
        t0 = time.perf_counter()
        seed = config.seed + i
        noise_seed = None if config.privacy.noise_seed is None else config.privacy.noise_seed + i
        params = jax.jit(model.init)(jax.random.key(seed), x_train[:1])
        # The same event train records (truncated Poisson when M < N), so the ledger's ε
        # meets the target; with DP statistics, σ is calibrated for their composition.
        if config.features.normalization in DP_NORMALIZATIONS and not math.isinf(target):
            prefix = normalization.event(config.features.stats_noise_multiplier)
            dp_config = dataclasses.replace(base, noise_multiplier=normalization.calibrate_after(
                prefix, lambda s: dataclasses.replace(base, noise_multiplier=s).event(steps),
                target, config.privacy.delta, accountant=(
                    config.privacy.accountant if config.privacy.accountant in base.accountants(steps)
                    else "pld")))
        else:
            dp_config = base.calibrated(target, config.privacy.delta, steps=steps,
                                        accountant=config.privacy.accountant,
                                        allow_large_delta=config.privacy.allow_large_delta)
        if math.isinf(target) and config.dp.clip_nonprivate:
            # σ = 0 with the clipping kept: the reference for a learning rate sized for
            # clipped gradients (the event is still non-private: ε = ∞).
            dp_config = dataclasses.replace(dp_config, l2_norm_clip=config.dp.l2_norm_clip)
        sigma = dp_config.noise_multiplier
        ledger = PrivacyLedger(config.privacy.delta, accountant=config.privacy.accountant,
                               relation=dp_config.relation,
                               reproducible_seed=noise_seed, dataset_size=n,
                               allow_large_delta=config.privacy.allow_large_delta)
        tag = f"eps{_label(target)}" + (f"_seed{seed}" if config.num_seeds > 1 else "")
        x_run, x_eval, stats_info = dp_normalize(
            config.features, x_train, x_test, target=target, noise_seed=noise_seed, ledger=ledger,
            path=workdir / f"feature_stats_{tag}.json")
        ckpt = (None if config.checkpoint_every is None else workdir / f"checkpoints_{tag}")
        curve = TimeToAccuracy(
            lambda p, x_eval=x_eval: training.evaluate(model, p, x_eval, y_test,
                                                       batch_size=config.eval_batch_size),
            every=config.eval_every, last_step=steps)
        # average_tail > 0: the mean of the chunk-end iterates over the last average_tail of
        # the steps, evaluated beside the final model (post-processing: no privacy cost).
        tail = config.get("average_tail") or 0.0
        averager = TailAverage(start_step=int(round((1.0 - tail) * steps))) if tail else None
        # Metrics one JSON line per chunk of log_every steps; a resumed run appends the
        # chunks it trains after its checkpoint.
        with JsonlWriter(workdir / "metrics.jsonl", run=tag) as metrics:
            result = dpsgd.train(
                model, params, x_run, y_train, dp_config,
                make_optimizer(config.train), steps=steps, seed=noise_seed, ledger=ledger, mesh=mesh,
                name=f"{config.train.model}_dpsgd", log_every=config.log_every,
                hooks=[training.WriteMetrics(metrics, key="step"), curve,
                       *([averager] if averager else []),
                       *progress.bar(config.progress, f"ε={_label(target)}", steps, key="step")],
                desc=f"ε={_label(target)}", checkpoint_dir=ckpt, checkpoint_every=config.checkpoint_every,
                padding=config.dp.padding,
            )
        ledger.save(workdir / f"ledger_{tag}.json")
        acc = training.evaluate(model, result.params, x_eval, y_test,
                             batch_size=config.eval_batch_size)
        # Infinite values are written as "inf": strict JSON has no infinities.
        record = {
            "target_epsilon": _label(target), "seed": seed, "noise_multiplier": sigma,
            "l2_norm_clip": _label(dp_config.l2_norm_clip),
            "epsilon_rdp": _epsilon(ledger, "rdp"), "epsilon_pld": _epsilon(ledger, "pld"),
            "delta": config.privacy.delta, "max_batch_size": dp_config.sampler().max_batch_size,
            "test_accuracy": acc, "train_loss": result.history[-1]["loss"], "steps": steps,
            "sampling_rate": q, "truncated_examples": result.truncated_examples,
            "nonfinite_examples": result.nonfinite_examples,
            "reproducible": result.reproducible, "seconds": time.perf_counter() - t0,
            "features": config.features.name, "feature_seconds": feature_seconds,
            # "test_accuracy" is read on this split (the validation carve when tuning).
            "eval_split": eval_split,
            "curve": curve.points,
            "normalization": config.features.normalization, **stats_info,
        }
        if averager is not None and averager.count:
            record["test_accuracy_tail_average"] = training.evaluate(
                model, averager.params(), x_eval, y_test, batch_size=config.eval_batch_size)
            record["tail_average_points"] = averager.count
        records.append(record)
        log.info("ε=%s seed %d: σ=%.3f, accuracy %.2f%%, %.0f s", record["target_epsilon"], seed,
                 sigma, 100 * acc, record["seconds"])
    write_outputs(config, workdir, records, n, len(y_test))
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

    split = "validation" if records[0].get("eval_split", "test") != "test" else "test"
    header = ["target ε", "seed", "σ", "ε (RDP)", "ε (PLD)", f"{split} accuracy %", "train loss",
              "time (s)"]
    rows = [[r["target_epsilon"].replace("inf", "∞"), r["seed"], f"{r['noise_multiplier']:.3f}",
             fmt(r["epsilon_rdp"]), fmt(r["epsilon_pld"]), f"{100 * r['test_accuracy']:.2f}",
             f"{r['train_loss']:.3f}", f"{r['seconds']:.0f}"] for r in records]
    if any("test_accuracy_tail_average" in r for r in records):
        header.insert(6, f"{split} accuracy %, tail average")
        for row, r in zip(rows, records):
            avg = r.get("test_accuracy_tail_average")
            row.insert(6, "-" if avg is None else f"{100 * avg:.2f}")
    r0 = records[0]
    text = (
        f"# DP-SGD accuracy vs ε ({config.data.name}, {config.train.model}, {n_train} train / "
        f"{n_test} {split}, δ = {config.privacy.delta}, q = {r0['sampling_rate']:.4f}, "
        f"T = {r0['steps']}, C = {config.dp.l2_norm_clip}, {config.dp.sampling} sampling)\n\n"
        + tables.markdown_table(header, rows)
    )
    if config.num_seeds > 1:
        stats = tables.aggregate(records, ["target_epsilon"], "test_accuracy")
        text += "\nMean ± std over seeds:\n\n" + tables.markdown_table(
            ["target ε", f"{split} accuracy %", "seeds"],
            [[e.replace("inf", "∞"), tables.pm(m, sd, digits=2), k]
             for (e,), (m, sd, k) in stats.items()])
    if config.features.name != "pixels":
        if config.features.normalization in DP_NORMALIZATIONS:
            how = (f"(per-channel DP statistics, σ = {config.features.stats_noise_multiplier:g}, "
                   "composed with DP-SGD in each run's ledger: the ε above is the total)")
        else:
            how = "(per example, data-independent: no privacy cost)"
        text += (f"\nInputs: {config.features.name} features (J = {config.features.J}, "
                 f"L = {config.features.L}), normalisation {config.features.normalization} "
                 f"{how}.\n")
    if any(r["epsilon_rdp"] == "n/a" for r in records):
        text += ("\nRDP n/a: batches have M slots and over-full ones are cut to M (truncated "
                 "Poisson), which only PLD accounts; σ was calibrated with PLD.\n")
    if any(r["reproducible"] for r in records):
        text += "\nNoise was seeded (privacy.noise_seed): reproducible research only.\n"
    io.write_json(workdir / "results.json",
                  {"config": _finite_json(config.to_dict()), "records": records,
                   "device_report": device_report(local_mesh(config.get("num_devices", 0)))})
    io.write_text(workdir / "results.md", text)
    plots.accuracy_vs_epsilon(records, workdir / "accuracy_vs_epsilon.png")
    curves: dict[str, list] = {}
    for r in records:
        if r["curve"]:
            curves.setdefault(f"ε = {r['target_epsilon'].replace('inf', '∞')}", []).append(r["curve"])
    if curves:
        plots.time_to_accuracy(curves, workdir / "time_to_accuracy.png")
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


__all__ = ["DP_NORMALIZATIONS", "NORMALIZATIONS", "TailAverage", "carve_validation", "dp_normalize", "make_optimizer", "run", "validate", "write_outputs"]
