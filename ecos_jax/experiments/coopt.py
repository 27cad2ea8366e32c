"""The CoOpt experiment: CoOpt against SSL, distillation, no-alignment and labels.

`train_and_evaluate(config, workdir)` runs, on the same pool, target architecture, epochs,
batch size and optimiser:
  * coopt            participants' prior targets, aligned, cosine regression;
  * coopt_no_align   the same raw targets without alignment;
  * distill_single   one prior's targets for the whole pool (centralised distillation; by
                     default standardised and projected like CoOpt's, nothing to align);
  * simclr           self-supervised SimCLR on the pool's images;
  * supervised       cross-entropy on the pool's labels (a reference, not a competitor);
each evaluated by a linear probe on the labelled pool-train features, scored on the held-out
pool-test set, every `train.eval_every` epochs (epoch 0 = the random initialisation). Then it
saves the optimised dataset, reloads it and trains another architecture on it, and runs the
ablation over P, prior strength and alignment. Writes results.json, results.md and
curves.png into `workdir`.
"""

from __future__ import annotations

import dataclasses
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
from ecos_jax.coopt.ssl import Augment, simclr_objective
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

METHODS = ("coopt", "coopt_no_align", "distill_single", "simclr", "supervised")
LOSSES = {"cosine": cosine_regression, "mse": mse_regression}


@dataclasses.dataclass(frozen=True, eq=False)
class Setting:
    """The data every method shares: unlabeled pool-train (+ labels for probing only),
    labelled pool-test, the shared anchors, the participants' shards and the caches."""

    train: ArrayDataset
    test: ArrayDataset
    anchors: np.ndarray
    shards: list[np.ndarray]
    full: ArrayDataset
    cache_dir: str


def _make_setting(config: ml_collections.ConfigDict, workdir: str) -> Setting:
    ds = load(config.data.name, data_dir=config.data.data_dir, image_size=config.data.image_size)
    pool_domains = list(config.data.pool_domains)
    public = ds.select_domains(list(config.data.public_domains))
    overlap = set(pool_domains) & set(config.data.public_domains)
    if overlap:
        raise ConfigError(f"domains {sorted(overlap)} are both pool and public (prior / anchor) domains.")
    pool = ds.select_domains(pool_domains)
    rng = np.random.default_rng(config.data.split_seed)
    if config.data.max_pool and len(pool) > config.data.max_pool:
        pool = pool.subset(np.sort(rng.choice(len(pool), config.data.max_pool, replace=False)))
    train, test = train_test_split(pool, test_fraction=config.data.test_fraction, seed=config.data.split_seed)
    if config.anchors.source == "public":
        anchors = public.images[rng.choice(len(public), min(config.anchors.num, len(public)), replace=False)]
    elif config.anchors.source == "pool":  # a few unlabeled pool images all participants share
        anchors = train.images[rng.choice(len(train), min(config.anchors.num, len(train)), replace=False)]
    else:
        raise ConfigError(f"anchors.source must be 'public' or 'pool', got {config.anchors.source!r}.")
    shards = participants_lib.split_pool(
        num_examples=len(train), num_participants=config.participants.num, scheme=config.participants.scheme,
        seed=config.data.split_seed, domains=train.domains, labels=train.labels,
        dirichlet_alpha=config.participants.dirichlet_alpha)
    cache_dir = config.cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "ecos_jax", "coopt")
    return Setting(train=train, test=test, anchors=anchors, shards=shards, full=ds, cache_dir=cache_dir)


def _priors(names, setting: Setting, config) -> list:
    return [load_prior(n, setting.full, cache_dir=os.path.join(setting.cache_dir, "priors"),
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


def _probe_fn(net: HeadNet, setting: Setting, config):
    def probe(params) -> dict[str, float]:
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


def time_to_accuracy(evals: list[dict], target: float) -> tuple[int | None, float | None]:
    """(epoch, cumulative training seconds) of the first evaluation reaching `target`, else (None, None)."""
    for e in evals:
        if e["probe_accuracy"] >= target:
            return int(e["epoch"]), float(e["seconds"])
    return None, None


def _speedup(curves: dict[str, list[list[dict]]]) -> dict[str, Any]:
    """CoOpt's speed-up over SimCLR to reach SimCLR's best accuracy, per seed and averaged."""
    per_seed = []
    for ssl_run, coopt_run in zip(curves["simclr"], curves["coopt"]):
        target = max(e["probe_accuracy"] for e in ssl_run)
        ssl_epoch, ssl_sec = time_to_accuracy(ssl_run, target)
        co_epoch, co_sec = time_to_accuracy(coopt_run, target)
        budget = coopt_run[-1]["seconds"]  # CoOpt's whole training time
        ssl_same_time = max(e["probe_accuracy"] for e in ssl_run if e["seconds"] <= budget)
        per_seed.append({
            "coopt_final_accuracy": coopt_run[-1]["probe_accuracy"], "coopt_seconds_total": budget,
            "simclr_accuracy_at_coopt_seconds": ssl_same_time,
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
    out["simclr_accuracy_at_coopt_seconds"] = float(np.mean([r["simclr_accuracy_at_coopt_seconds"] for r in per_seed]))
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
             f"{', '.join(results['data']['pool_domains'])}; {results['data']['participants']} participants "
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
    """Runs the whole CoOpt experiment and writes results.json, results.md, curves.png."""
    unknown = set(config.methods) - set(METHODS)
    if unknown or "coopt" not in config.methods:
        raise ConfigError(f"methods must include 'coopt' and be among {METHODS}; got {list(config.methods)}.")
    os.makedirs(workdir, exist_ok=True)
    start = time.perf_counter()
    setting = _make_setting(config, workdir)
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

    curves: dict[str, list[list[dict]]] = {m: [] for m in config.methods}
    timing: dict[str, list[float]] = {m: [] for m in config.methods}
    for seed in seeds(config):
        for method in config.methods:
            run = _train_method(method, setting, config, seed, datasets.get(method),
                                eval_every=config.train.eval_every)
            curves[method].append(run.evals)
            timing[method].append(float(np.mean([h["seconds"] for h in run.history])))
            log.info("%s seed %d: probe %.4f", method, seed, run.evals[-1]["probe_accuracy"])

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
    speedup = _speedup(curves) if "simclr" in curves else None
    results = {
        "config_name": config.name,
        "config": config.to_dict(),
        "data": {"pool_domains": list(config.data.pool_domains), "pool_train": len(setting.train),
                 "pool_test": len(setting.test), "participants": len(setting.shards),
                 "shard_sizes": [len(s) for s in setting.shards], "scheme": config.participants.scheme,
                 "anchors": len(setting.anchors)},
        "model": config.train.model, "epochs": config.train.epochs, "seeds": seeds(config),
        "methods": methods, "prior_probe_accuracy": prior_probe, "speedup": speedup, "inconsistency": coopt.inconsistency,
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
    return results
