"""The CoOpt experiment: CoOpt against SSL, distillation, no-alignment and labels.

`train_and_evaluate(config, workdir)` runs, on the same pool, target architecture, epochs,
batch size and optimiser:
  * coopt            participants' prior targets, aligned, cosine regression;
  * coopt_no_align   the same raw targets without alignment;
  * distill_single   one prior's targets for the whole pool (centralised distillation; by
                     default standardised and projected like CoOpt's, nothing to align);
  * simclr           self-supervised SimCLR on the pool's images;
  * byol             self-supervised BYOL (no negatives; moving-average target network);
  * supervised       cross-entropy on the pool's labels (a reference, not a competitor);
each evaluated by a linear probe on the labelled pool-train features, scored on the held-out
test set (a split of the pool, or `data.test_domains`), every `train.eval_every` epochs (epoch
0 = the random initialisation). The pool may come from another dataset than the priors
(`data.prior_name`: a Fashion-MNIST pool, digits priors). Equal wall time: `time_budgets`. Then it
saves the optimised dataset, reloads it and trains another architecture on it, and runs the
ablation over P, prior strength and alignment. Writes results.json, results.md and
curves.png into `workdir`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from ecos_jax.coopt import participants as participants_lib
from ecos_jax.coopt import pipeline
from ecos_jax.coopt.networks import HeadNet
from ecos_jax.coopt.optimised_data import OptimisedDataset
from ecos_jax.coopt.priors import load_prior
from ecos_jax.coopt.probe import linear_probe
from ecos_jax.coopt.ssl import (
    Augment,
    Predictor,
    byol_init,
    byol_objective,
    byol_optimizer,
    simclr_objective,
)
from ecos_jax.coopt.targets import data_mesh, participant_targets
from ecos_jax.coopt.training import TrainRun, regression_objective, train_epochs
from ecos_jax.data import ArrayDataset, load, train_test_split
from ecos_jax.experiments import progress
from ecos_jax.models import get_model
from ecos_jax.parallel.mesh import device_report
from ecos_jax.reporting import plots
from ecos_jax.reporting.tables import markdown_table
from ecos_jax.training import (
    cosine_regression,
    make_optimizer,
    mse_regression,
    predict,
    softmax_xent,
)
from ecos_jax.utils.errors import ConfigError
from ecos_jax.utils.io import write_json, write_text

log = logging.getLogger(__name__)

METHODS = ("coopt", "coopt_no_align", "distill_single", "simclr", "byol", "supervised")
TIME_FRACTIONS = (0.25, 0.5, 1.0, 2.0)  # equal-time budgets, as multiples of CoOpt's training seconds
LOSSES = {"cosine": cosine_regression, "mse": mse_regression}


@dataclasses.dataclass(frozen=True, eq=False)
class Setting:
    """The data every method shares: unlabeled pool-train (+ labels for probing only),
    labelled held-out test images, the shared anchors, the participants' shards and the caches.

    full: the pool's dataset (its `num_classes` is the probe's). prior_data: the dataset the
    priors train on (their `domains`), the pool's own unless `data.prior_name` names another.
    """

    train: ArrayDataset
    test: ArrayDataset
    anchors: np.ndarray
    shards: list[np.ndarray]
    full: ArrayDataset
    prior_data: ArrayDataset
    cache_dir: str


def _load_data(config: ml_collections.ConfigDict) -> tuple[ArrayDataset, ArrayDataset]:
    """(pool dataset, priors' dataset): the second is the first unless `data.prior_name` is set."""
    d = config.data
    ds = load(d.name, data_dir=d.data_dir, image_size=d.image_size)
    prior_name = d.get("prior_name", "")
    if not prior_name or prior_name == d.name:
        return ds, ds
    return ds, load(prior_name, data_dir=d.data_dir, image_size=d.image_size)


def make_setting(config: ml_collections.ConfigDict, ds: ArrayDataset,
                 prior_ds: ArrayDataset | None = None) -> Setting:
    """The pool, test set, anchors and shards of `config` from the loaded datasets.

    ds: the pool's dataset (`data.pool_domains`; `data.test_domains` too when set).
    prior_ds: where the priors train and public anchors come from (`data.public_domains`);
      None = `ds`. When it is another dataset its domains may share names with nothing in
      the pool, and no pool image is ever a prior's training image.
    Test set: `data.test_domains` of `ds` (e.g. Fashion-MNIST's official test split), at most
    `data.max_test` of them, when set; otherwise a stratified `data.test_fraction` of the pool.
    """
    d = config.data
    prior_ds = ds if prior_ds is None else prior_ds
    pool_domains = list(d.pool_domains)
    test_domains = list(d.get("test_domains", ()))
    if set(pool_domains) & set(test_domains):
        raise ConfigError(f"domains {sorted(set(pool_domains) & set(test_domains))} are both pool and test domains.")
    public = prior_ds.select_domains(list(d.public_domains))
    if prior_ds is ds:
        overlap = set(pool_domains) & set(d.public_domains)
        if overlap:
            raise ConfigError(f"domains {sorted(overlap)} are both pool and public (prior / anchor) domains.")
    if prior_ds.image_shape != ds.image_shape:
        raise ConfigError(f"the priors' images {prior_ds.image_shape} and the pool's {ds.image_shape} differ in shape.")
    pool = ds.select_domains(pool_domains)
    rng = np.random.default_rng(d.split_seed)
    if d.max_pool and len(pool) > d.max_pool:
        pool = pool.subset(np.sort(rng.choice(len(pool), d.max_pool, replace=False)))
    if test_domains:
        train, test = pool, ds.select_domains(test_domains)
        max_test = d.get("max_test", 0)
        if max_test and len(test) > max_test:
            test = test.subset(np.sort(rng.choice(len(test), max_test, replace=False)))
    else:
        train, test = train_test_split(pool, test_fraction=d.test_fraction, seed=d.split_seed)
    if config.anchors.source == "public":
        anchors = public.images[rng.choice(len(public), min(config.anchors.num, len(public)), replace=False)]
    elif config.anchors.source == "pool":  # a few unlabeled pool images all participants share
        anchors = train.images[rng.choice(len(train), min(config.anchors.num, len(train)), replace=False)]
    else:
        raise ConfigError(f"anchors.source must be 'public' or 'pool', got {config.anchors.source!r}.")
    shards = participants_lib.split_pool(
        num_examples=len(train), num_participants=config.participants.num, scheme=config.participants.scheme,
        seed=d.split_seed, domains=train.domains, labels=train.labels,
        dirichlet_alpha=config.participants.dirichlet_alpha)
    cache_dir = config.cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "ecos_jax", "coopt")
    return Setting(train=train, test=test, anchors=anchors, shards=shards, full=ds, prior_data=prior_ds,
                   cache_dir=cache_dir)


def _priors(names, setting: Setting, config) -> list:
    return [load_prior(n, setting.prior_data, cache_dir=os.path.join(setting.cache_dir, "priors"),
                       pool_domains=config.data.pool_domains,
                       hooks=progress.bar(config.progress, f"prior {n}")) for n in names]


def _build(setting: Setting, config, prior_names, alignment: str, num_participants: int | None = None,
           centralised: bool = False) -> pipeline.CoOptResult:
    """The optimised dataset for `prior_names` cycled over the participants (or one for all)."""
    if centralised:
        shards = [np.arange(len(setting.train))]
    elif num_participants is None or num_participants == config.participants.num:
        shards = setting.shards
    else:
        shards = participants_lib.split_pool(
            num_examples=len(setting.train), num_participants=num_participants, scheme=config.participants.scheme,
            seed=config.data.split_seed, domains=setting.train.domains, labels=setting.train.labels,
            dirichlet_alpha=config.participants.dirichlet_alpha)
    names = [prior_names[p % len(prior_names)] for p in range(len(shards))]
    a = config.alignment
    return pipeline.build_optimised_dataset(
        images=setting.train.images, ids=setting.train.ids, shards=shards, priors=_priors(names, setting, config),
        anchors=setting.anchors, alignment=alignment, shared_dim=a.shared_dim, reference=a.reference,
        stats_on=a.stats_on, normalise=a.normalise, check_images=setting.test.images,
        cache_dir=os.path.join(setting.cache_dir, "targets"), mesh=data_mesh())


def _probe_fn(net: HeadNet, setting: Setting, config, select=lambda params: params):
    """The probe of `net`'s backbone; `select` picks `net`'s parameters out of a run's (BYOL's online)."""

    def probe(params) -> dict[str, float]:
        params = select(params)
        f_train = predict(net, params, setting.train.images, features=True)
        f_test = predict(net, params, setting.test.images, features=True)
        res = linear_probe(f_train, setting.train.labels, f_test, setting.test.labels,
                           num_classes=setting.full.num_classes, l2=config.probe.l2, steps=config.probe.steps,
                           learning_rate=config.probe.learning_rate)
        return {"probe_accuracy": res.test_accuracy, "probe_train_accuracy": res.train_accuracy}

    return probe


def seeds(config: ml_collections.ConfigDict) -> list[int]:
    """The training seeds of every method: seed, seed + 1, ..., num_seeds of them."""
    return [config.seed + i for i in range(config.num_seeds)]


def _backbone(model_config) -> Any:
    # Config lists become tuples: flax modules are jit-static and must hash.
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(model_config.model_kwargs).items()}
    return get_model(model_config.model, 10, **kwargs)


def _train_method(method: str, setting: Setting, config, seed: int, data: OptimisedDataset | None,
                  model_config=None, epochs: int | None = None, eval_every: int | None = None) -> TrainRun:
    model_config = model_config or config.train  # a section with model and model_kwargs
    t = config.train
    epochs = epochs or t.epochs
    common = dict(epochs=epochs, batch_size=t.batch_size, seed=seed, desc=method, eval_every=eval_every,
                  hooks=progress.bar(config.progress, method, epochs))
    key = jax.random.key(seed)
    x0 = setting.train.images[:1]
    if method == "simclr":
        s = config.ssl
        net = HeadNet(backbone=_backbone(model_config), out_dim=s.out_dim, hidden=s.head_hidden)
        objective = simclr_objective(net, temperature=s.temperature, augment=Augment(**dict(s.augment)))
        return train_epochs(objective, net.init(key, x0), setting.train.images, None,
                            optimizer=make_optimizer(t.optimizer, float(s.learning_rate)),
                            eval_fn=_probe_fn(net, setting, config), **common)
    if method == "byol":  # SimCLR's network, augmentations and learning rate; no negatives
        s = config.ssl
        net = HeadNet(backbone=_backbone(model_config), out_dim=s.out_dim, hidden=s.head_hidden,
                      batch_norm=bool(s.byol_batch_norm))
        predictor = Predictor(hidden=s.head_hidden, out_dim=s.out_dim, batch_norm=bool(s.byol_batch_norm))
        objective = byol_objective(net, predictor, augment=Augment(**dict(s.augment)))
        tx = byol_optimizer(make_optimizer(t.optimizer, float(s.learning_rate)), float(s.byol_tau))
        return train_epochs(objective, byol_init(net, predictor, key, x0), setting.train.images, None,
                            optimizer=tx, eval_fn=_probe_fn(net, setting, config, select=lambda p: p["online"]),
                            **common)
    # Every method sees the same augmentations (SimCLR's); off by train.augment=False.
    augment = Augment(**dict(config.ssl.augment)) if t.augment else None
    if method == "supervised":
        net = HeadNet(backbone=_backbone(model_config), out_dim=setting.full.num_classes)
        return train_epochs(regression_objective(net, softmax_xent, augment), net.init(key, x0), setting.train.images,
                            setting.train.labels, optimizer=make_optimizer(t.optimizer, float(t.learning_rate)),
                            eval_fn=_probe_fn(net, setting, config), **common)
    net = HeadNet(backbone=_backbone(model_config), out_dim=data.target_dim)
    return train_epochs(regression_objective(net, LOSSES[t.loss], augment), net.init(key, x0), data.images,
                        data.targets, optimizer=make_optimizer(t.optimizer, float(t.learning_rate)),
                        eval_fn=_probe_fn(net, setting, config), **common)


def _prior_probe(setting: Setting, config) -> dict[str, float]:
    """Each main prior's own embedding, probed like the methods: how much the priors know."""
    out = {}
    for prior in _priors(list(dict.fromkeys(config.priors.names)), setting, config):
        f_train, f_test = (participant_targets([prior], [x], cache_dir=os.path.join(setting.cache_dir, "targets"))[0][0]
                           for x in (setting.train.images, setting.test.images))
        out[prior.spec.name] = linear_probe(f_train, setting.train.labels, f_test, setting.test.labels,
                                            num_classes=setting.full.num_classes, l2=config.probe.l2,
                                            steps=config.probe.steps,
                                            learning_rate=config.probe.learning_rate).test_accuracy
    return out


def _pixel_probe(setting: Setting, config) -> float:
    """The linear probe on raw pixels: what a representation must beat to be worth learning."""
    flat = lambda x: x.reshape(len(x), -1)  # noqa: E731
    return linear_probe(flat(setting.train.images), setting.train.labels, flat(setting.test.images),
                        setting.test.labels, num_classes=setting.full.num_classes, l2=config.probe.l2,
                        steps=config.probe.steps, learning_rate=config.probe.learning_rate).test_accuracy


def _target_seconds(setting: Setting, config) -> float:
    """Seconds the participants spend embedding their shards with their priors (warm: compiled
    and priors loaded first), what CoOpt pays before training and SimCLR does not."""
    names = [config.priors.names[p % len(config.priors.names)] for p in range(len(setting.shards))]
    priors = _priors(names, setting, config)
    shards = [setting.train.images[s] for s in setting.shards]
    # Compile first: embed's batch is min(512, a power of two >= n), so 512 rows compile what n needs.
    participant_targets(priors, [s[:512] for s in shards], cache_dir=None, mesh=data_mesh())
    start = time.perf_counter()
    participant_targets(priors, shards, cache_dir=None, mesh=data_mesh())
    return time.perf_counter() - start


# Fields that change no trained run: output options, how many seeds or which methods (each
# run is stored by its own method and seed) and the parts after the main table.
_NOT_IN_RUN_FINGERPRINT = ("progress", "num_devices", "num_seeds", "methods", "reuse", "ablation", "name")


def run_fingerprint(config: ml_collections.ConfigDict) -> str:
    """A hash of every config field a main-table (method, seed) run depends on."""
    d = {k: v for k, v in config.to_dict().items() if k not in _NOT_IN_RUN_FINGERPRINT}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_run(path: str, fingerprint: str) -> dict | None:
    """A finished run stored at `path` by this config, or None (absent or another config's)."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        done = json.load(f)
    if done.get("fingerprint") != fingerprint:
        log.info("%s was run by another config; rerunning it", path)
        return None
    return done


def accuracy_at_seconds(evals: list[dict], seconds: float) -> float | None:
    """The last probe accuracy evaluated within `seconds` of training, None if none was."""
    within = [e["probe_accuracy"] for e in evals if e["seconds"] <= seconds + 1e-9]
    return within[-1] if within else None


def time_budgets(curves: dict[str, list[list[dict]]], fractions: tuple[float, ...],
                 reference: str = "coopt") -> dict[str, list[float | None]]:
    """Per method, the seed-mean accuracy after `fractions` of the `reference` method's training
    seconds, seed by seed (seed i's budget is a fraction of the reference's seed-i run, trained
    at about the same load); None where some seed's run ended before its budget (it cannot say
    what more time would give)."""
    totals = [r[-1]["seconds"] for r in curves[reference]]
    out = {}
    for m, runs in curves.items():
        row = []
        for f in fractions:
            accs = [accuracy_at_seconds(r, f * t) if r[-1]["seconds"] >= f * t - 1e-9 else None
                    for r, t in zip(runs, totals)]
            row.append(float(np.mean(accs)) if all(a is not None for a in accs) else None)
        out[m] = row
    return out


def time_to_accuracy(evals: list[dict], target: float) -> tuple[int | None, float | None]:
    """(epoch, cumulative training seconds) of the first evaluation reaching `target`, else (None, None)."""
    for e in evals:
        if e["probe_accuracy"] >= target:
            return int(e["epoch"]), float(e["seconds"])
    return None, None


def _speedup(curves: dict[str, list[list[dict]]], target_seconds: float = 0.0) -> dict[str, Any]:
    """CoOpt's speed-up over SimCLR to reach SimCLR's best accuracy, per seed and averaged, and
    SimCLR at CoOpt's whole training time, without and with the `target_seconds` CoOpt's
    participants spent embedding their shards (SimCLR given that time too)."""
    per_seed = []
    for ssl_run, coopt_run in zip(curves["simclr"], curves["coopt"]):
        target = max(e["probe_accuracy"] for e in ssl_run)
        ssl_epoch, ssl_sec = time_to_accuracy(ssl_run, target)
        co_epoch, co_sec = time_to_accuracy(coopt_run, target)
        budget = coopt_run[-1]["seconds"]  # CoOpt's whole training time
        ssl_same_time = max(e["probe_accuracy"] for e in ssl_run if e["seconds"] <= budget)
        ssl_with_targets = max(e["probe_accuracy"] for e in ssl_run if e["seconds"] <= budget + target_seconds)
        per_seed.append({
            "coopt_final_accuracy": coopt_run[-1]["probe_accuracy"], "coopt_seconds_total": budget,
            "simclr_accuracy_at_coopt_seconds": ssl_same_time,
            "simclr_accuracy_at_coopt_seconds_with_targets": ssl_with_targets,
            "target_accuracy": target, "simclr_epochs": ssl_epoch, "simclr_seconds": ssl_sec,
            "coopt_epochs": co_epoch, "coopt_seconds": co_sec,
            "speedup_epochs": (ssl_epoch / co_epoch) if co_epoch else None,
            "speedup_seconds": (ssl_sec / co_sec) if co_sec else None,
        })
    out: dict[str, Any] = {"per_seed": per_seed}
    for k in ("speedup_epochs", "speedup_seconds"):
        vals = [r[k] for r in per_seed]
        # An epoch-0 hit (CoOpt's init already beats SSL) has no finite ratio: report it as such.
        out[k] = float(np.mean(vals)) if all(v is not None for v in vals) else None
    for k in ("simclr_accuracy_at_coopt_seconds", "simclr_accuracy_at_coopt_seconds_with_targets"):
        out[k] = float(np.mean([r[k] for r in per_seed]))
    out["target_seconds"] = float(target_seconds)
    out["coopt_final_accuracy"] = float(np.mean([r["coopt_final_accuracy"] for r in per_seed]))
    out["coopt_reached_ssl_best"] = all(r["coopt_epochs"] is not None for r in per_seed)
    return out


def _ablation(setting: Setting, config) -> list[dict[str, Any]]:
    ab = config.ablation
    runs = []
    for p in ab.num_participants:
        for al in ab.alignments:
            runs.append({"group": "participants", "P": int(p), "strength": "strong", "priors": list(config.priors.names),
                         "alignment": al})
    for strength, names in ab.strengths.items():
        for al in ab.alignments:
            runs.append({"group": "strength", "P": config.participants.num, "strength": strength,
                         "priors": list(names), "alignment": al})
    for al in ab.alignments:
        runs.append({"group": "homogeneous", "P": config.participants.num, "strength": "-",
                     "priors": [ab.homogeneous_prior], "alignment": al})
    records = []
    for run in tqdm(runs, desc="ablation", disable=not config.progress, leave=False):
        res = _build(setting, config, run["priors"], run["alignment"], num_participants=run["P"])
        tr = _train_method("coopt", setting, config, config.seed, res.data, epochs=ab.epochs)
        used = res.data.meta["priors"]  # the list cycled over P participants
        records.append({**run, "priors": sorted(set(used), key=used.index), "probe_accuracy": tr.evals[-1]["probe_accuracy"],
                        "inconsistency_raw": res.inconsistency["raw"],
                        "inconsistency_aligned": res.inconsistency["aligned"]})
        log.info("ablation %s", records[-1])
    return records


def _fmt(v, scale=100.0, digits=1):
    return "n/a" if v is None else f"{v * scale:.{digits}f}"


def _markdown(results: dict[str, Any]) -> str:
    lines = [f"# CoOpt experiment ({results['config_name']})\n",
             f"Pool: {results['data']['pool_train']} train / {results['data']['pool_test']} test images from "
             f"{results['data'].get('name', '')} {', '.join(results['data']['pool_domains'])}"
             + (f" (test: {', '.join(results['data']['test_domains'])})" if results['data'].get('test_domains') else "")
             + f"; priors trained on {results['data'].get('prior_data', '')}; {results['data']['participants']} participants "
             f"({results['data']['scheme']}); target model `{results['model']}`, {results['epochs']} epochs, "
             f"seeds {results['seeds']}.\n",
             "## Linear-probe accuracy (%) at the epoch budget\n"]
    rows = []
    for m, s in results["methods"].items():
        rows.append([m, f"{s['final_mean'] * 100:.1f} ± {s['final_std'] * 100:.1f}", _fmt(s["best_mean"]),
                     _fmt(s["init_mean"]), f"{s['seconds_per_epoch']:.2f}"])
    lines.append(markdown_table(["method", "final", "best", "epoch 0 (init)", "s / epoch"], rows))
    sp = results["speedup"] or {"speedup_epochs": None, "speedup_seconds": None, "coopt_reached_ssl_best": None}
    if sp["coopt_reached_ssl_best"]:
        why = (" (n/a: CoOpt was there at epoch 0)"
               if sp["speedup_epochs"] is None or sp["speedup_seconds"] is None else "")
        lines.append(f"\nTime to SimCLR's best accuracy: CoOpt speed-up {_fmt(sp['speedup_epochs'], 1, 2)}x in epochs, "
                     f"{_fmt(sp['speedup_seconds'], 1, 2)}x in training seconds{why}.\n")
    else:
        lines.append("\nTime to SimCLR's best accuracy: CoOpt did not reach it in every seed within the budget "
                     "(no speed-up).\n")
    if "simclr_accuracy_at_coopt_seconds" in sp:
        lines.append(f"\nAt equal training time (CoOpt's whole run, compile excluded): CoOpt "
                     f"{_fmt(sp['coopt_final_accuracy'])}%, SimCLR {_fmt(sp['simclr_accuracy_at_coopt_seconds'])}%.\n")
    if "target_seconds" in sp:
        lines.append(f"\nCoOpt's participants embed their shards in {sp['target_seconds']:.1f} s; given that time "
                     f"too, SimCLR reaches {_fmt(sp['simclr_accuracy_at_coopt_seconds_with_targets'])}%.\n")
    tb = results.get("time_budgets")
    if tb:
        lines.append("\n## Equal wall time: probe accuracy (%) after a fraction of CoOpt's training seconds "
                     "(each seed against its own CoOpt run; header: the seed-mean budget; n/a: a run ended "
                     "before it)\n")
        header = ["method"] + [f"{f:g}x CoOpt ({sec:.0f} s)" for f, sec in zip(tb["fractions_of_coopt_seconds"],
                                                                            tb["seconds"])]
        lines.append(markdown_table(header, [[m] + [_fmt(a) for a in accs] for m, accs in tb["accuracy"].items()]))
    if results.get("pixel_probe_accuracy") is not None:
        lines.append(f"\nThe same probe on raw pixels: {_fmt(results['pixel_probe_accuracy'])}%.\n")
    lines.append("\nEach prior's own embedding, probed the same way (%): "
                 + ", ".join(f"{k} {_fmt(v)}" for k, v in results["prior_probe_accuracy"].items()) + "\n")
    inc = results["inconsistency"]
    lines.append(f"\nTarget inconsistency (mean pairwise 1 - cos on held-out images): raw {_fmt(inc['raw'], 1, 3)}, "
                 f"aligned {_fmt(inc['aligned'], 1, 3)}; raw mean pairwise CKA {_fmt(inc['raw_cka'], 1, 3)}.\n")
    r = results["reuse"]
    lines.append(f"\nReuse: optimised data saved and reloaded (identical: {r['reload_identical']}); "
                 f"`{r['model']}` trained on it for {r['epochs']} epochs: probe {_fmt(r['probe_accuracy'])}% "
                 f"(its random init: {_fmt(r['init_probe_accuracy'])}%).\n")
    if results["ablation"]:
        lines.append(f"\n## Ablation (CoOpt, {results['ablation_epochs']} epochs, seed {results['seeds'][0]})\n")
        rows = [[a["group"], a["P"], a["strength"], ",".join(a["priors"]), a["alignment"], _fmt(a["probe_accuracy"]),
                 _fmt(a["inconsistency_raw"], 1, 3), _fmt(a["inconsistency_aligned"], 1, 3)]
                for a in results["ablation"]]
        lines.append(markdown_table(["group", "P", "strength", "priors", "alignment", "probe %",
                                     "incons. raw", "incons. after"], rows))
    return "\n".join(lines)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs the whole CoOpt experiment and writes results.json, results.md, curves.png,
    time_to_accuracy.png; each finished (method, seed) run is kept under runs/ and read back on
    a rerun with the same settings (`run_fingerprint`)."""
    unknown = set(config.methods) - set(METHODS)
    if unknown or "coopt" not in config.methods:
        raise ConfigError(f"methods must include 'coopt' and be among {METHODS}; got {list(config.methods)}.")
    os.makedirs(workdir, exist_ok=True)
    start = time.perf_counter()
    setting = make_setting(config, *_load_data(config))
    log.info("pool train %d, test %d, anchors %d, shards %s", len(setting.train), len(setting.test),
             len(setting.anchors), [len(s) for s in setting.shards])

    coopt = _build(setting, config, list(config.priors.names), config.alignment.method)
    prior_probe = _prior_probe(setting, config)
    datasets = {"coopt": coopt.data}
    if "coopt_no_align" in config.methods:
        datasets["coopt_no_align"] = _build(setting, config, list(config.priors.names), "off").data
    if "distill_single" in config.methods:
        datasets["distill_single"] = _build(setting, config, [config.baselines.distill_prior],
                                            config.baselines.distill_alignment,
                                            centralised=True).data

    target_seconds = _target_seconds(setting, config)
    pixel_probe = _pixel_probe(setting, config)

    curves: dict[str, list[list[dict]]] = {m: [] for m in config.methods}
    timing: dict[str, list[float]] = {m: [] for m in config.methods}
    fingerprint = run_fingerprint(config)
    for seed in seeds(config):
        for method in config.methods:
            path = os.path.join(workdir, "runs", f"{method}-seed{seed}.json")
            done = _read_run(path, fingerprint)
            if done is None:
                run = _train_method(method, setting, config, seed, datasets.get(method),
                                    eval_every=config.train.eval_every)
                done = {"fingerprint": fingerprint, "evals": run.evals,
                        "seconds_per_epoch": float(np.mean([h["seconds"] for h in run.history])),
                        "compile_seconds": run.compile_seconds}
                write_json(path, done)  # a killed run resumes after its last finished (method, seed)
            curves[method].append(done["evals"])
            timing[method].append(done["seconds_per_epoch"])
            log.info("%s seed %d: probe %.4f", method, seed, done["evals"][-1]["probe_accuracy"])

    methods = {}
    for m, runs in curves.items():
        final = [r[-1]["probe_accuracy"] for r in runs]
        methods[m] = {"final_mean": float(np.mean(final)), "final_std": float(np.std(final)), "final": final,
                      "best_mean": float(np.mean([max(e["probe_accuracy"] for e in r) for r in runs])),
                      "init_mean": float(np.mean([r[0]["probe_accuracy"] for r in runs])),
                      "seconds_per_epoch": float(np.mean(timing[m])), "curves": runs}

    # Reuse: save, reload and train another architecture without touching the priors.
    path = os.path.join(workdir, "optimised_data.npz")
    coopt.data.save(path)
    reloaded = OptimisedDataset.load(path)
    identical = all(np.array_equal(getattr(coopt.data, f), getattr(reloaded, f))
                    for f in ("images", "targets", "participant", "ids")) and reloaded.meta == coopt.data.meta
    reuse_run = _train_method("coopt", setting, config, config.seed, reloaded, model_config=config.reuse,
                              epochs=config.reuse.epochs)
    reuse = {"model": config.reuse.model, "epochs": config.reuse.epochs, "reload_identical": bool(identical),
             "probe_accuracy": reuse_run.evals[-1]["probe_accuracy"],
             "init_probe_accuracy": reuse_run.evals[0]["probe_accuracy"]}

    ablation = _ablation(setting, config) if config.ablation.enabled else []
    speedup = _speedup(curves, target_seconds) if "simclr" in curves else None
    # Equal wall time: every method at fractions of CoOpt's training time, compile excluded.
    coopt_total = float(np.mean([r[-1]["seconds"] for r in curves["coopt"]]))
    budgets = [coopt_total * f for f in TIME_FRACTIONS]  # the seed means, for the table's header
    results = {
        "config_name": config.name,
        "config": config.to_dict(),
        "data": {"name": config.data.name, "prior_data": config.data.get("prior_name", "") or config.data.name,
                 "test_domains": list(config.data.get("test_domains", ())),
                 "pool_domains": list(config.data.pool_domains), "pool_train": len(setting.train),
                 "pool_test": len(setting.test), "participants": len(setting.shards),
                 "shard_sizes": [len(s) for s in setting.shards], "scheme": config.participants.scheme,
                 "anchors": len(setting.anchors)},
        "model": config.train.model, "epochs": config.train.epochs, "seeds": seeds(config),
        "methods": methods, "prior_probe_accuracy": prior_probe, "pixel_probe_accuracy": pixel_probe,
        "time_budgets": {"fractions_of_coopt_seconds": list(TIME_FRACTIONS), "seconds": budgets,
                         "accuracy": time_budgets(curves, TIME_FRACTIONS)}, "speedup": speedup, "inconsistency": coopt.inconsistency,
        "target_stats": dataclasses.asdict(coopt.target_stats), "reuse": reuse,
        "ablation": ablation, "ablation_epochs": config.ablation.epochs,
        "coopt_beats_simclr": (methods["coopt"]["final_mean"] > methods["simclr"]["final_mean"]
                               if "simclr" in methods else None),
        "devices": len(jax.devices()), "wall_seconds": time.perf_counter() - start,
        "device_report": device_report(),
    }
    write_json(os.path.join(workdir, "results.json"), results)
    write_text(os.path.join(workdir, "results.md"), _markdown(results))
    plots.probe_curves(curves, os.path.join(workdir, "curves.png"))
    ssl = {m: curves[m] for m in ("coopt", "simclr", "byol") if m in curves}
    plots.probe_time_to_accuracy(ssl, os.path.join(workdir, "time_to_accuracy.png"), offsets={"coopt": target_seconds})
    return results
