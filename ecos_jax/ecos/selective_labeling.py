"""ECOS selective labelling (SPEC §3, first application) against its baselines.

For every client domain, every seed and every budget, each method picks pool samples, the
picks are labelled with the pool's labels (the labelling oracle), a model is trained on them
and scored on the client's held-out test split. `run(config, workdir)` is the whole
experiment; `experiments/selective_labeling.py` only parses flags and calls it.

Methods: 'ecos' (the protocol, ε from the privacy ledger), 'random', 'kcenter' (greedy
coreset over the whole pool, ignoring the client), 'local' (the client's own training data
only) and 'oracle' (uniform picks from the pool's part of the client's own domain).

Outputs in `workdir`: results.json (one record per method, domain, budget, seed), results.md
(the seed paper's table form), accuracy_vs_budget.png, ledgers.json, and state.json (the
records so far; an interrupted run resumes from it when the config is unchanged).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
import zlib
from pathlib import Path

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from ecos_jax import data as data_lib
from ecos_jax import features as features_lib
from ecos_jax import models, train
from ecos_jax.ecos import protocol
from ecos_jax.privacy.ledger import PrivacyLedger
from ecos_jax.samplers.kcenter import kcenter_greedy
from ecos_jax.samplers.random import random_sample
from ecos_jax.utils import io, results

log = logging.getLogger(__name__)
METHODS = ("ecos", "random", "kcenter", "local", "oracle")
POOL_METHODS = ("ecos", "random", "kcenter", "oracle")


def _config_hash(config: ml_collections.ConfigDict) -> str:
    c = config.to_dict()
    c.pop("progress", None)
    return hashlib.sha256(json.dumps(c, sort_keys=True, default=str).encode()).hexdigest()[:16]


def validate(config: ml_collections.ConfigDict, ds: data_lib.ArrayDataset) -> dict[str, data_lib.EcosSplit]:
    """Checks the config against the data before any work; returns {client domain: its split}."""
    unknown = set(config.methods) - set(METHODS)
    if unknown:
        raise ValueError(f"Unknown methods {sorted(unknown)}; choose from {METHODS}.")
    if config.num_seeds < 1:
        raise ValueError(f"num_seeds must be >= 1, got {config.num_seeds}.")
    if not config.ecos.epsilon > 0:
        raise ValueError(f"ecos.epsilon must be > 0, got {config.ecos.epsilon}.")
    if not 0 < config.ecos.delta < 1:
        raise ValueError(f"ecos.delta must be in (0, 1), got {config.ecos.delta}.")
    if config.data.n_client_train < 1:
        raise ValueError(f"data.n_client_train must be >= 1 (the client cannot be empty), "
                         f"got {config.data.n_client_train}.")
    domains = list(config.data.client_domains) or list(ds.domain_names)
    for d in domains:
        ds.domain_index(d)  # raises with the list of valid names
    if any(b < 1 for b in config.budgets) or not config.budgets:
        raise ValueError(f"budgets must be positive integers, got {tuple(config.budgets)}.")
    splits = {}
    for domain in domains:
        split = data_lib.ecos_split(ds, domain, n_client_train=config.data.n_client_train,
                                    n_client_test=config.data.n_client_test, pool=config.data.pool,
                                    seed=config.data.split_seed)
        too_big = [b for b in config.budgets if b > len(split.pool)]
        if too_big:
            raise ValueError(f"budget(s) {too_big} larger than the pool ({len(split.pool)} samples) "
                             f"when {domain!r} is the client.")
        splits[domain] = split
    return splits


def _train_and_score(config, x, y, test: data_lib.ArrayDataset, num_classes: int, seed: int, desc: str) -> float:
    model = models.get_model(config.train.model, num_classes)
    batch = min(config.train.batch_size, len(x))
    epochs = max(1, math.ceil(config.train.steps * batch / len(x)))
    res = train.fit(model, x, y, epochs=epochs, batch_size=batch, learning_rate=config.train.learning_rate,
                    seed=seed, progress=False, desc=desc)
    return train.evaluate(model, res.params, test.images, test.labels)


def _load_state(path: Path, chash: str) -> list[dict]:
    if not path.exists():
        return []
    state = json.loads(path.read_text())
    if state.get("config_hash") != chash:
        raise ValueError(f"{path} holds results of a different config; use a new --workdir "
                         "or delete it to start over (nothing was overwritten).")
    return state["records"]


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> list[dict]:
    """Runs the whole experiment; writes results into `workdir` and returns the records."""
    workdir = Path(workdir)
    ds = data_lib.load(config.data.name, data_dir=config.data.data_dir, image_size=config.data.image_size)
    splits = validate(config, ds)
    domains = list(splits)
    chash = _config_hash(config)
    state_path = workdir / "state.json"
    records = _load_state(state_path, chash)
    done = {(r["method"], r["domain"], r["budget"], r["seed"]) for r in records}
    if records:
        log.info("Resuming from %s: %d records already done.", state_path, len(records))
    cache_root = config.features.cache_dir or os.path.join(
        config.data.data_dir or os.environ.get("ECOS_JAX_DATA_DIR", "~/.cache/ecos_jax"), "features")

    seeds = [config.seed + i for i in range(config.num_seeds)]
    pool_methods = [m for m in config.methods if m in POOL_METHODS]
    total = len(domains) * len(seeds) * (len(pool_methods) * len(config.budgets) + ("local" in config.methods))
    bar = tqdm(total=total, desc="selective labelling", disable=not config.progress, dynamic_ncols=True,
               initial=len(done))
    ledgers, comm = {}, {}
    for domain in domains:
        split = splits[domain]
        pool, client, test = split.pool, split.client_train, split.client_test
        f = features_lib.fit_extractor(
            config.features.kind, pool.images, pool_labels=pool.labels, num_classes=ds.num_classes,
            dim=config.features.dim, epochs=config.features.epochs, seed=config.data.split_seed,
            cache_dir=cache_root, progress=config.progress)
        pool_f, client_f = f(pool.images), f(client.images)
        comm[domain] = {"upload_client_data_bytes": int(client.images.size),  # uint8 pixels
                        "download_pool_bytes": int(pool.images.size)}
        oracle_idx = np.flatnonzero(np.isin(pool.ids, split.oracle_pool.ids))

        for seed in seeds:
            key = jax.random.fold_in(jax.random.key(seed), ds.domain_index(domain))
            todo = [(m, b) for m in pool_methods for b in config.budgets if (m, domain, b, seed) not in done]
            if "local" in config.methods and ("local", domain, 0, seed) not in done:
                todo.append(("local", 0))
            ledger = PrivacyLedger(config.ecos.delta, accountant=config.ecos.accountant,
                                   reproducible_seed=config.ecos.noise_seed)
            response = None
            if "ecos" in pool_methods:
                cloud = protocol.Cloud(pool_f, num_centroids=config.ecos.num_centroids,
                                       kmeans_iters=config.ecos.kmeans_iters, proximity=config.ecos.proximity)
                client_side = protocol.Client(client_f, epsilon=config.ecos.epsilon, delta=config.ecos.delta,
                                              accountant=config.ecos.accountant,
                                              noise_seed=None if config.ecos.noise_seed is None
                                              else config.ecos.noise_seed + seed)
                # One response per client and seed serves every budget: the release does not
                # depend on the budget, so the client pays ε once.
                down = cloud.compress(jax.random.fold_in(key, 1))
                response = client_side.respond(down, ledger)
                eps = ledger.epsilon()
                comm[domain].update(ecos_down_bytes=down.nbytes, ecos_up_bytes=response.nbytes)
                ledgers[f"{domain}/seed{seed}"] = ledger.to_dict()
            for method, budget in todo:
                t0 = time.perf_counter()
                # A stable tag: Python's str hash is salted per process, which broke resume and reruns.
                mkey = jax.random.fold_in(key, zlib.crc32(f"{method}/{budget}".encode()) % (2**31))
                if method == "local":
                    x, y = client.images, client.labels
                else:
                    if method == "ecos":
                        idx = cloud.sample(mkey, response, budget)
                    elif method == "random":
                        idx = np.asarray(random_sample(mkey, len(pool), budget))
                    elif method == "kcenter":
                        idx = np.asarray(kcenter_greedy(mkey, pool_f, budget))
                    else:  # oracle: uniform from the pool's in-domain part
                        take = min(budget, len(oracle_idx))
                        idx = oracle_idx[np.asarray(random_sample(mkey, len(oracle_idx), take))]
                    if len(np.unique(idx)) != len(idx):
                        raise AssertionError(f"{method} picked an index twice.")
                    x, y = pool.images[idx], pool.labels[idx]
                acc = _train_and_score(config, x, y, test, ds.num_classes, seed, f"{method}/{domain}")
                rec = {"method": method, "domain": domain, "budget": int(budget), "seed": int(seed),
                       "accuracy": acc, "epsilon": float(eps) if method == "ecos" else 0.0,
                       "n_train": int(len(x)), "seconds": time.perf_counter() - t0}
                if method == "ecos":
                    rec["in_domain_fraction"] = float(np.isin(pool.ids[idx], split.oracle_pool.ids).mean())
                records.append(rec)
                io.write_json(state_path, {"config_hash": chash, "records": records})
                bar.update(1)
    bar.close()
    write_outputs(config, workdir, records, ledgers, comm, domains)
    return records


def write_outputs(config, workdir: Path, records: list[dict], ledgers: dict, comm: dict, domains: list[str]) -> str:
    """results.json, results.md, accuracy_vs_budget.png, ledgers.json; returns the markdown."""
    stats = results.aggregate(records, ("method", "budget", "domain"), "accuracy")
    avg = results.aggregate(
        [{"method": m, "budget": b, "seed": s,
          "accuracy": np.mean([r["accuracy"] for r in records if (r["method"], r["budget"], r["seed"]) == (m, b, s)])}
         for (m, b, s) in {(r["method"], r["budget"], r["seed"]) for r in records}],
        ("method", "budget"), "accuracy")
    eps = {r["method"]: r["epsilon"] for r in records}
    md = [f"# ECOS selective labelling ({config.data.name}, ε = {config.ecos.epsilon} at δ = {config.ecos.delta},"
          f" {config.num_seeds} seeds, accuracy % on the client's test split)\n"]
    header = ["budget", "method", "ε", *domains, "Avg"]
    rows = []
    budgets = sorted({r["budget"] for r in records if r["method"] != "local"})
    for b in budgets:
        for m in [m for m in config.methods if m != "local"]:
            if (m, b) not in avg:
                continue
            cells = [results.pm(*stats[(m, b, d)][:2]) if (m, b, d) in stats else "" for d in domains]
            rows.append([b, m, f"{eps.get(m, 0.0):.2f}" if m == "ecos" else "-", *cells, results.pm(*avg[(m, b)][:2])])
    if ("local", 0) in avg:
        rows.append(["-", "local", "-", *[results.pm(*stats[("local", 0, d)][:2]) for d in domains],
                     results.pm(*avg[("local", 0)][:2])])
    md.append(results.markdown_table(header, rows))
    if comm:
        md.append("\n## Communication (bytes)\n")
        md.append(results.markdown_table(
            ["client domain", "ECOS down (centroids)", "ECOS up (noisy counts)", "upload client data", "download pool"],
            [[d, c.get("ecos_down_bytes", "-"), c.get("ecos_up_bytes", "-"), c["upload_client_data_bytes"],
              c["download_pool_bytes"]] for d, c in comm.items()]))
    text = "\n".join(md)
    io.write_json(workdir / "results.json", {"config": config.to_dict(), "records": records,
                                             "average": [{"method": m, "budget": b, "mean": s[0], "std": s[1]}
                                                         for (m, b), s in avg.items()],
                                             "communication": comm})
    io.write_text(workdir / "results.md", text)
    if ledgers:
        io.write_json(workdir / "ledgers.json", ledgers)
    _plot(avg, workdir / "accuracy_vs_budget.png", budgets)
    print(text)
    return text


def _plot(avg: dict, path: Path, budgets: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for m in sorted({m for m, _ in avg}):
        if m == "local":
            mean, std, _ = avg[("local", 0)]
            ax.axhline(100 * mean, ls="--", c="gray", label=f"local ({100 * mean:.1f})")
            continue
        pts = [(b, *avg[(m, b)][:2]) for b in budgets if (m, b) in avg]
        bs, ms, ss = map(np.array, zip(*pts))
        ax.errorbar(bs, 100 * ms, yerr=100 * ss, marker="o", capsize=3, label=m)
    ax.set_xlabel("labelling budget (pool samples)")
    ax.set_ylabel("client test accuracy (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    io.save_figure(fig, path)
