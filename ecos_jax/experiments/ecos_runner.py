"""The loop every ECOS application shares.

For every client domain, every seed and every budget, each method picks pool samples; an
*application* turns the picks into a trained model and scores it on the client's held-out
test split. The runner owns what is common: data and splits (validated before any work),
the public feature extractor, one ECOS protocol round per (domain, seed), the picks of every
method, the per-record privacy ledger, resumable state, and the results files.

    >>> records = run(config, "runs/x", SelectiveLabeling())   # or ModelCompression(), ...

An application is an object with
  name: str                                    title of the results table
  methods: tuple[str, ...]                     the methods it supports (subset of METHODS)
  validate(config) -> None                     checks its own config section (before any work)
  prepare(config, task) -> state               once per client domain (e.g. train a teacher)
  evaluate(config, task, state, sel) -> dict   trains on `sel` and returns at least
                                               {"accuracy": float in [0, 1]}; records every
                                               release of client data in `sel.client_ledger`

Methods: 'ecos' (the protocol; its ε comes from the ledger), 'random', 'kcenter' (greedy
coreset over the whole pool, ignoring the client), 'oracle' (uniform picks from the pool's
part of the client's own domain) and 'local' (no picks: the client's own training data).
Every pool method selects through one sampler (`SAMPLERS`: method name -> constructor from the
config, `ecos_jax.samplers`), called with the stage arguments it declares.

Privacy, two numbers (every ECOS release is add/remove-one, see `protocol.RELATION`):
  record ε: what one selection and its training rest on. Each record's own ledger holds the
    ECOS client's response for method 'ecos' (one response per domain and seed serves every
    budget) plus whatever the application released for it (e.g. private kNN labels); its
    total at `ecos.delta` is the record's `epsilon`. Non-empty ledgers go to ledgers.json.
  client lifetime ε: everything that client (one client domain: the party holding that
    domain's private data) released over the whole run, each release once: every response
    and every application release of every seed, method and budget, composed in one
    lifetime ledger per client (client_ledgers.json, results.json "client_lifetime",
    results.md). This is what the client has spent; a record's ε is only part of it.

Outputs in `workdir`: results.json (one record per method, domain, budget, seed),
results.md (the seed paper's table form), accuracy_vs_budget.png, ledgers.json,
client_ledgers.json, and state.json (the records, the clients' lifetime ledgers and the
released responses so far; an interrupted run resumes from it when the config is unchanged,
reusing each saved response rather than asking the client again, and a different config is
refused rather than overwritten).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from ecos_jax import data as data_lib
from ecos_jax import features as features_lib
from ecos_jax.ecos import protocol
from ecos_jax.experiments import progress as progress_lib
from ecos_jax.parallel.mesh import device_report, local_mesh
from ecos_jax.privacy.ledger import LedgerEntry, PrivacyLedger, event_to_json
from ecos_jax.reporting import plots, tables
from ecos_jax.samplers import Sampler, ecos_sampler, kcenter_sampler, random_sampler
from ecos_jax.samplers import ecos as ecos_lib
from ecos_jax.samplers.base import stage
from ecos_jax.samplers.kmeans import KMeansResult, kmeans
from ecos_jax.utils import io
from ecos_jax.utils.errors import validates

log = logging.getLogger(__name__)
# The sampler each pool method selects with, built from the config: one constructor per method
# name. 'oracle' is the random sampler over the pool's part of the client's domain (its
# candidates); 'local' picks nothing. A chain (e.g. with `dedup_filter`) fits here too: `pick`
# hands every sampler the stage arguments it declares from what the round made public.
SAMPLERS: dict[str, Callable[[ml_collections.ConfigDict], Sampler]] = {
    "ecos": lambda config: rule_sampler(config),
    "random": lambda config: random_sampler(),
    "kcenter": lambda config: kcenter_sampler(),
    "oracle": lambda config: random_sampler(),
}
POOL_METHODS = tuple(SAMPLERS)
METHODS = ("ecos", "random", "kcenter", "local", "oracle")
DEFAULT_RULE = ecos_lib.WITHIN_CLUSTER[0]  # ecos.within_cluster where a config has no such field


def within_cluster_rule(config: ml_collections.ConfigDict) -> str:
    """The config's within-cluster rule (`ecos.within_cluster`, see samplers/ecos.py)."""
    return config.ecos.get("within_cluster", DEFAULT_RULE)


def count_threshold(config: ml_collections.ConfigDict) -> float:
    """`ecos.count_threshold`: k, the budget follows max(s̃ − kσ, 0) (0 where a config has none)."""
    return float(config.ecos.get("count_threshold", 0.0))


def rule_sampler(config: ml_collections.ConfigDict) -> Sampler:
    """ECOS's sampler for the config: `ecos_sampler` under the default rule and no count
    threshold, else the same stage picking inside each cluster by `ecos.within_cluster` and
    allocating by the noisy counts shrunk by `ecos.count_threshold` · σ (the response's public
    noise scale, stage argument `noise_sigma`; post-processing, no privacy cost)."""
    rule, k = within_cluster_rule(config), count_threshold(config)
    if rule == DEFAULT_RULE and k == 0:
        return ecos_sampler(proximity=config.ecos.proximity)

    def select(key, features, budget, candidates, *, centroids, noisy_counts, noise_sigma, assignments=None):
        return ecos_lib.ecos_sample(key, features, budget, centroids=centroids, noisy_counts=noisy_counts,
                                    assignments=assignments, proximity=config.ecos.proximity, rule=rule,
                                    count_threshold=k * float(noise_sigma), candidates=candidates)
    return stage(select, "ecos")


def carve_validation(split: data_lib.EcosSplit, n_validation: int, seed: int) -> data_lib.EcosSplit:
    """The split with a validation slice of the client's own training data as its test split.

    `n_validation` of the client's labelled training examples (seeded draw) are held out: the
    returned `client_train` is the rest (what the client answers ECOS from, the Local method's
    data) and `client_test` is the held-out slice. The pool is unchanged (so is its cached
    feature extractor), and a run on the result never reads the client's test split.
    """
    train = split.client_train
    if not 1 <= n_validation < len(train):
        raise ValueError(f"data.n_client_validation must be in [1, n_client_train - 1 = {len(train) - 1}], "
                         f"got {n_validation}.")
    held = np.zeros(len(train), bool)
    held[np.random.default_rng([seed, 14]).permutation(len(train))[:n_validation]] = True
    return dataclasses.replace(split, client_train=train.subset(~held), client_test=train.subset(held))


@dataclasses.dataclass(frozen=True, eq=False)
class ClientTask:
    """One client domain: its split and both sides' public features.

    pool_features: `[N_pool, d]` float32, f(pool images).
    client_features: `[N_client, d]` float32, f(client-train images); the client's own.
    oracle_indices: `[M]` int, indices into the pool of its part of the client's domain.
    """

    domain: str
    domain_index: int
    split: data_lib.EcosSplit
    num_classes: int
    pool_features: np.ndarray
    client_features: np.ndarray
    extractor: features_lib.FeatureExtractor
    oracle_indices: np.ndarray


@dataclasses.dataclass(frozen=True, eq=False)
class Selection:
    """What one method picked for one (domain, seed, budget).

    indices: `[budget]` int indices into `task.split.pool`, or None for 'local'.
    key: a PRNG key for the application's own randomness (training order, init).
    client_ledger: the client's lifetime ledger; the application records each release of the
      client's data here (the runner copies the new entries into the record's own ledger).
      Its `reproducible_seed` is the client's noise seed for this run (None: OS entropy).
    """

    method: str
    budget: int
    seed: int
    indices: np.ndarray | None
    key: jax.Array
    client_ledger: PrivacyLedger

    @property
    def noise_seed(self) -> int | None:
        """The seed a seeded release of the client must use (its ledger's), or None."""
        return self.client_ledger.reproducible_seed


class Application(Protocol):
    name: str
    methods: tuple[str, ...]

    def validate(self, config: ml_collections.ConfigDict) -> None: ...

    def prepare(self, config: ml_collections.ConfigDict, task: ClientTask) -> Any: ...

    def evaluate(self, config: ml_collections.ConfigDict, task: ClientTask, state: Any,
                 sel: Selection) -> dict: ...


def config_hash(config: ml_collections.ConfigDict) -> str:
    """A hash of every field that changes results (not `progress`, nor `num_devices`: k-means
    and the picks are bit-identical on any number of devices)."""
    c = config.to_dict()
    c.pop("progress", None)
    c.pop("num_devices", None)
    return hashlib.sha256(json.dumps(c, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stable_tag(*parts: object) -> int:
    """A process-independent int for `jax.random.fold_in` (Python's str hash is salted)."""
    return zlib.crc32("/".join(map(str, parts)).encode()) % (2**31)


@validates
def validate(config: ml_collections.ConfigDict, ds: data_lib.ArrayDataset,
             app: Application | None = None) -> dict[str, data_lib.EcosSplit]:
    """Checks the config against the data before any work; returns {client domain: its split}."""
    if app is not None:  # first: an application explains why it refuses a method
        app.validate(config)
    supported = app.methods if app is not None else METHODS
    unknown = set(config.methods) - set(supported)
    if unknown:
        raise ValueError(f"Unknown methods {sorted(unknown)}; choose from {supported}.")
    if not config.methods:
        raise ValueError("methods cannot be empty.")
    local_mesh(config.get("num_devices", 0))  # more devices than there are: refused before work
    if config.num_seeds < 1:
        raise ValueError(f"num_seeds must be >= 1, got {config.num_seeds}.")
    if not config.ecos.epsilon > 0:
        raise ValueError(f"ecos.epsilon must be > 0, got {config.ecos.epsilon}.")
    if not 0 < config.ecos.delta < 1:
        raise ValueError(f"ecos.delta must be in (0, 1), got {config.ecos.delta}.")
    if config.data.n_client_train < 1:
        raise ValueError(f"data.n_client_train must be >= 1 (the client cannot be empty), "
                         f"got {config.data.n_client_train}.")
    if "oracle" in config.methods and config.data.pool == "ood":
        raise ValueError("method 'oracle' picks from the pool's part of the client's domain, which "
                         "data.pool='ood' leaves out; drop 'oracle' from methods or use another pool.")
    for field, allowed in (("centroid_dtype", protocol.CENTROID_DTYPES), ("count_dtype", protocol.COUNT_DTYPES)):
        if config.ecos[field] not in allowed:
            raise ValueError(f"ecos.{field} must be one of {allowed}, got {config.ecos[field]!r}.")
    ecos_lib.check_rule(within_cluster_rule(config))
    k = config.ecos.get("count_threshold", 0.0)
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not 0 <= k < float("inf"):
        raise ValueError(f"ecos.count_threshold must be a finite number >= 0 (in units of the noise σ), got {k!r}.")
    if not config.budgets or any(b < 1 for b in config.budgets):
        raise ValueError(f"budgets must be positive integers, got {tuple(config.budgets)}.")
    domains = list(config.data.client_domains) or list(ds.domain_names)
    for d in domains:
        ds.domain_index(d)  # raises with the list of valid names
    splits = {}
    for domain in domains:
        split = data_lib.ecos_split(ds, domain, n_client_train=config.data.n_client_train,
                                    n_client_test=config.data.n_client_test, pool=config.data.pool,
                                    seed=config.data.split_seed)
        if not 1 <= config.ecos.num_centroids <= len(split.pool):
            raise ValueError(f"ecos.num_centroids must be in [1, pool size {len(split.pool)}] when "
                             f"{domain!r} is the client, got {config.ecos.num_centroids}.")
        too_big = [b for b in config.budgets if b > len(split.pool)]
        if too_big:
            raise ValueError(f"budget(s) {too_big} larger than the pool ({len(split.pool)} samples) "
                             f"when {domain!r} is the client.")
        if config.data.get("n_client_validation", 0):  # rule comparisons: never the test split
            split = carve_validation(split, config.data.n_client_validation, config.data.split_seed)
        splits[domain] = split
    return splits


def _read_state(path: Path, chash: str) -> dict:
    """state.json of an interrupted run with this config: records, client ledgers, responses."""
    if not path.exists():
        return {"records": [], "client_ledgers": {}, "responses": {}}
    state = json.loads(path.read_text())
    if state.get("config_hash") != chash:
        raise ValueError(f"{path} holds results of a different config; use a new --workdir "
                         "or delete it to start over (nothing was overwritten).")
    for r in state["records"]:  # io.write_json spells ε = inf (an exact release) as "inf"
        r["epsilon"] = float(r["epsilon"])
    state.setdefault("client_ledgers", {})
    state.setdefault("responses", {})
    return state


def _load_state(path: Path, chash: str) -> list[dict]:
    """The records saved in state.json (empty when there is none)."""
    return _read_state(path, chash)["records"]


def ledger_state(ledger: PrivacyLedger) -> dict:
    """A ledger's entries without their ε, for state.json (cheap enough to write after every
    record); `PrivacyLedger.from_dict` rebuilds the ledger from it."""
    return {"delta": ledger.delta, "accountant": ledger.accountant,
            "neighboring_relation": ledger.relation, "reproducible_seed": ledger.reproducible_seed,
            "entries": [{"name": e.name, "relation": e.relation, "sensitivity": e.sensitivity,
                         "event": event_to_json(e.event), "meta": e.meta} for e in ledger.entries]}


def load_client_ledgers(workdir: str | os.PathLike) -> dict[str, PrivacyLedger]:
    """{client domain: its lifetime ledger} of the run in `workdir`, rebuilt from state.json."""
    path = Path(workdir) / "state.json"
    if not path.exists():
        return {}
    state = json.loads(path.read_text())
    return {d: PrivacyLedger.from_dict(v) for d, v in state.get("client_ledgers", {}).items()}


def _copy_entry(ledger: PrivacyLedger, entry: LedgerEntry) -> None:
    ledger.record(entry.name, entry.event, sensitivity=entry.sensitivity, relation=entry.relation,
                  **entry.meta)


def feature_cache_dir(config: ml_collections.ConfigDict) -> str:
    return config.features.cache_dir or os.path.join(
        config.data.data_dir or os.environ.get("ECOS_JAX_DATA_DIR", "~/.cache/ecos_jax"), "features")


def client_task(config: ml_collections.ConfigDict, ds: data_lib.ArrayDataset, domain: str,
                split: data_lib.EcosSplit) -> ClientTask:
    """Fits (or loads) the public extractor on the pool and featurises both sides."""
    pool = split.pool
    f = features_lib.fit_extractor(
        config.features.kind, pool.images, pool_labels=pool.labels, num_classes=ds.num_classes,
        dim=config.features.dim, epochs=config.features.epochs, seed=config.data.split_seed,
        cache_dir=feature_cache_dir(config), stats_weight=float(config.features.get("stats_weight", 0.0)),
        hooks=progress_lib.bar(config.progress, f"features[{config.features.kind}]", config.features.epochs))
    return ClientTask(
        domain=domain, domain_index=ds.domain_index(domain), split=split, num_classes=ds.num_classes,
        pool_features=f(pool.images), client_features=f(split.client_train.images), extractor=f,
        oracle_indices=np.flatnonzero(np.isin(pool.ids, split.oracle_pool.ids)))


@dataclasses.dataclass(frozen=True, eq=False)
class EcosRound:
    """The cloud's side of one ECOS round: its clusters of the pool and the client's response.

    clusters: k-means of `task.pool_features` (`[R, d]` centroids, `[N_pool]` assignments);
    response: the client's released noisy coverage counts `[R]`.
    """

    clusters: KMeansResult
    response: protocol.NoisyCoverage

    def stage_arguments(self) -> dict[str, Any]:
        """What an ECOS sampling stage reads (`ecos_sampler`'s stage arguments, and the response's
        public noise scale σ for a stage that thresholds the counts)."""
        return {"centroids": self.clusters.centroids, "assignments": self.clusters.assignments,
                "noisy_counts": np.asarray(self.response.counts, np.float32),
                "noise_sigma": float(self.response.sigma)}


def compress(config: ml_collections.ConfigDict, task: ClientTask, key: jax.Array
             ) -> tuple[KMeansResult, protocol.Centroids]:
    """ECOS step 1 on the cloud: k-means of the pool's public features into `ecos.num_centroids`
    clusters; returns them and the message sent down (centroids in `ecos.centroid_dtype`)."""
    clusters = kmeans(key, np.asarray(task.pool_features, np.float32), config.ecos.num_centroids,
                      iters=config.ecos.kmeans_iters)
    message = np.asarray(clusters.centroids, np.float32).astype(config.ecos.centroid_dtype)
    return clusters, protocol.Centroids(message)


def pick(config: ml_collections.ConfigDict, method: str, task: ClientTask, budget: int, key: jax.Array,
         ecos_round: EcosRound | None = None) -> np.ndarray:
    """Indices into the pool chosen by `method`'s sampler (unique, `[budget]`, fewer for a small oracle).

    The sampler (`SAMPLERS[method](config)`) gets the stage arguments it declares from
    `ecos_round` (none without one); one it needs but the round cannot give raises TypeError.
    """
    if method not in SAMPLERS:
        raise ValueError(f"{method!r} does not pick from the pool.")
    sampler = SAMPLERS[method](config)
    candidates = None
    if method == "oracle":  # uniform from the pool's in-domain part
        candidates = task.oracle_indices
        budget = min(budget, len(candidates))
    offered = ecos_round.stage_arguments() if ecos_round is not None else {}
    arguments = {k: v for k, v in offered.items() if k in sampler.arguments}
    idx = np.asarray(sampler(key, task.pool_features, budget, candidates=candidates, **arguments))
    if len(np.unique(idx)) != len(idx):
        raise AssertionError(f"{method} picked an index twice.")
    return idx


def client_noise_seed(config: ml_collections.ConfigDict, domain: str) -> int | None:
    """The seed of one client's DP noise in this run: None (OS entropy) unless `ecos.noise_seed`.

    Derived from `ecos.noise_seed`, the client domain and the config hash, so that two clients,
    or two runs of different configs (the points of a sweep), never draw the same noise, while a
    rerun of one config draws all of it again. Within the run every release of the client gets
    fresh noise from its position in the client's lifetime ledger (`protocol.release_key`).
    """
    if config.ecos.noise_seed is None:
        return None
    return stable_tag("ecos-client-noise", config.ecos.noise_seed, domain, config_hash(config))


def _new_ledger(config: ml_collections.ConfigDict, noise_seed: int | None) -> PrivacyLedger:
    # Every ECOS release (coverage counts, kNN labels) is analysed under add/remove-one.
    return PrivacyLedger(config.ecos.delta, accountant=config.ecos.accountant,
                         relation=protocol.RELATION, reproducible_seed=noise_seed)


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike, app: Application) -> list[dict]:
    """Runs the whole experiment for `app`; writes results into `workdir`, returns the records."""
    workdir = Path(workdir)
    ds = data_lib.load(config.data.name, data_dir=config.data.data_dir, image_size=config.data.image_size)
    splits = validate(config, ds, app)
    domains = list(splits)
    chash = config_hash(config)
    state_path = workdir / "state.json"
    saved_state = _read_state(state_path, chash)
    records = saved_state["records"]
    # The client's lifetime ledgers and released responses come back from the same atomic
    # state file as the records, so a resumed run neither repeats nor re-counts a release.
    client_ledgers = {d: PrivacyLedger.from_dict(v) for d, v in saved_state["client_ledgers"].items()}
    responses = saved_state["responses"]
    ledgers: dict[str, dict] = {}
    if (workdir / "ledgers.json").exists() and records:
        ledgers = json.loads((workdir / "ledgers.json").read_text())
    done = {(r["method"], r["domain"], r["budget"], r["seed"]) for r in records}
    if records:
        log.info("Resuming from %s: %d records already done.", state_path, len(records))

    def save_state():
        io.write_json(state_path, {"config_hash": chash, "records": records,
                                   "client_ledgers": {d: ledger_state(v) for d, v in client_ledgers.items()},
                                   "responses": responses})

    seeds = [config.seed + i for i in range(config.num_seeds)]
    pool_methods = [m for m in config.methods if m in POOL_METHODS]
    jobs = [(m, b) for m in pool_methods for b in config.budgets]
    if "local" in config.methods:
        jobs.append(("local", 0))
    bar = tqdm(total=len(domains) * len(seeds) * len(jobs), desc=app.name, disable=not config.progress,
               dynamic_ncols=True, initial=len(done))
    comm = {}
    for domain in domains:
        todo_domain = [(s, m, b) for s in seeds for m, b in jobs if (m, domain, b, s) not in done]
        task = client_task(config, ds, domain, splits[domain])
        comm[domain] = communication(config, task)
        noise_seed = client_noise_seed(config, domain)
        # Everything this client releases over the run, once each (the record ledgers repeat
        # the one coverage response that serves several budgets).
        client_ledger = client_ledgers.setdefault(domain, _new_ledger(config, noise_seed))
        if not todo_domain:
            continue
        state = app.prepare(config, task)
        for seed in seeds:
            key = jax.random.fold_in(jax.random.key(seed), task.domain_index)
            todo = [(m, b) for s, m, b in todo_domain if s == seed]
            if not todo:
                continue
            ecos_round = response_entry = None
            if any(m == "ecos" for m, _ in todo):
                clusters, centroids = compress(config, task, jax.random.fold_in(key, 1))
                # One response per client and seed serves every budget: the release does not
                # depend on the budget, so the client pays ε once. A resumed run reuses the
                # saved response (post-processing of a release) instead of answering again.
                rkey = f"{domain}/seed{seed}"
                if rkey not in responses:
                    client = protocol.Client(task.client_features, epsilon=config.ecos.epsilon,
                                             delta=config.ecos.delta, accountant=config.ecos.accountant,
                                             count_dtype=config.ecos.count_dtype, noise_seed=noise_seed)
                    up = client.respond(centroids, client_ledger)
                    responses[rkey] = {"counts": np.asarray(up.counts, np.float64).tolist(),
                                       "sigma": float(up.sigma), "entry": len(client_ledger) - 1}
                    save_state()  # the response has left the client: never answer it twice
                sent = responses[rkey]
                ecos_round = EcosRound(clusters, protocol.NoisyCoverage(
                    counts=protocol.encode_counts(np.asarray(sent["counts"]), config.ecos.count_dtype),
                    sigma=float(sent["sigma"])))
                response_entry = client_ledger.entries[sent["entry"]]
            for method, budget in todo:
                t0 = time.perf_counter()
                mkey = jax.random.fold_in(key, stable_tag(method, budget))
                idx = None if method == "local" else pick(config, method, task, budget, mkey, ecos_round)
                first_new = len(client_ledger)
                sel = Selection(method=method, budget=int(budget), seed=int(seed), indices=idx,
                                key=jax.random.fold_in(mkey, 1), client_ledger=client_ledger)
                out = app.evaluate(config, task, state, sel)
                if "accuracy" not in out:
                    raise KeyError(f"{app.name}.evaluate must return an 'accuracy'.")
                # The record's own ledger: what this selection and its training rest on.
                ledger = _new_ledger(config, noise_seed)
                for entry in ([response_entry] if method == "ecos" else []) + client_ledger.entries[first_new:]:
                    _copy_entry(ledger, entry)
                rec = {"method": method, "domain": domain, "budget": int(budget), "seed": int(seed),
                       **out, "epsilon": float(ledger.epsilon()) if len(ledger) else 0.0,
                       "n_picked": 0 if idx is None else int(len(idx)),
                       "seconds": time.perf_counter() - t0}
                if method == "ecos":
                    rec["in_domain_fraction"] = float(np.isin(idx, task.oracle_indices).mean())
                records.append(rec)
                if len(ledger):
                    ledgers[f"{domain}/seed{seed}/{method}/{budget}"] = ledger.to_dict()
                    io.write_json(workdir / "ledgers.json", ledgers)
                save_state()
                bar.update(1)
    bar.close()
    write_outputs(config, workdir, records, ledgers, comm, domains, title=app.name,
                  extra_metrics=getattr(app, "summary_metrics", ()),
                  client_ledgers={d: client_ledgers[d] for d in domains})
    return records


def communication(config: ml_collections.ConfigDict, task: ClientTask) -> dict:
    """Bytes each way for one ECOS round, against moving the raw data (uint8 pixels).

    Down: R centroids of d values; up: R noisy counts, in the configured wire dtypes
    (`ecos.centroid_dtype`, `ecos.count_dtype`), as `protocol.message_bytes` computes them.
    """
    down, up = protocol.message_bytes(config.ecos.num_centroids, task.pool_features.shape[1],
                                      centroid_dtype=config.ecos.centroid_dtype,
                                      count_dtype=config.ecos.count_dtype)
    return {"ecos_down_bytes": int(down), "ecos_up_bytes": int(up),
            "upload_client_data_bytes": int(task.split.client_train.images.size),
            "download_pool_bytes": int(task.split.pool.images.size)}


def client_lifetime(client_ledgers: dict[str, PrivacyLedger], records: list[dict]) -> dict:
    """{client domain: its lifetime ε and what it is made of}, for results.json / results.md.

    `epsilon`: the client's lifetime ledger composed at its δ with its accountant (0 with no
    release, inf with an exact one); `max_record_epsilon`: the largest record ε of that domain.
    """
    out = {}
    for domain, ledger in client_ledgers.items():
        mine = [r["epsilon"] for r in records if r["domain"] == domain]
        out[domain] = {"epsilon": float(ledger.epsilon()), "delta": ledger.delta,
                       "accountant": ledger.accountant, "relation": ledger.relation,
                       "releases": len(ledger),
                       "release_counts": {n: sum(e.name == n for e in ledger.entries)
                                          for n in dict.fromkeys(e.name for e in ledger.entries)},
                       "max_record_epsilon": max(mine, default=0.0),
                       "reproducible": ledger.reproducible}
    return out


def _lifetime_md(lifetime: dict) -> list[str]:
    def fmt(e):
        return f"{e:.3g}" if e > 0 else "-"

    rows = [[d, v["releases"], ", ".join(f"{n} × {k}" for k, n in v["release_counts"].items()) or "-",
             fmt(v["max_record_epsilon"]), fmt(v["epsilon"])] for d, v in lifetime.items()]
    any_v = next(iter(lifetime.values()))
    return ["\n## Client privacy over the whole run\n",
            f"record ε (the table's ε column): what one selection/labelling rests on. Client lifetime "
            f"ε: everything that client released in this run, each release once, composed "
            f"({any_v['accountant'].upper()}, δ = {any_v['delta']:g}, {any_v['relation']} "
            f"neighbours); this is the client's total.\n",
            tables.markdown_table(["client domain", "releases", "of which", "largest record ε",
                                    "client lifetime ε"], rows)]


def write_outputs(config, workdir: Path, records: list[dict], ledgers: dict, comm: dict, domains: list[str],
                  title: str = "ECOS selective labelling", extra_metrics: tuple[str, ...] = (),
                  client_ledgers: dict[str, PrivacyLedger] | None = None) -> str:
    """results.json, results.md, accuracy_vs_budget.png, ledgers.json, client_ledgers.json;
    returns the markdown.

    `extra_metrics`: numeric record fields (e.g. "label_accuracy") summarised per method and
    budget, mean ± std over domains and seeds, under the main table. `client_ledgers`: {client
    domain: lifetime ledger}, reported beside the record ε (see the module docstring).
    """
    stats = tables.aggregate(records, ("method", "budget", "domain"), "accuracy")
    # sorted: a set of tuples with strings iterates in PYTHONHASHSEED order, which made the
    # order of results.json "average" (and of the seeds each mean sums) differ between runs.
    avg = tables.aggregate(
        [{"method": m, "budget": b, "seed": s,
          "accuracy": np.mean([r["accuracy"] for r in records if (r["method"], r["budget"], r["seed"]) == (m, b, s)])}
         for (m, b, s) in sorted({(r["method"], r["budget"], r["seed"]) for r in records})],
        ("method", "budget"), "accuracy")
    eps: dict[tuple, float] = {}  # ε is the same for every seed; inf (exact release) is allowed
    for r in records:
        eps[(r["method"], r["budget"])] = max(eps.get((r["method"], r["budget"]), 0.0), r["epsilon"])
    md = [f"# {title} ({config.data.name}, ECOS ε = {config.ecos.epsilon} at δ = {config.ecos.delta},"
          f" {config.num_seeds} seeds, accuracy % on the client's test split)\n"]
    header = ["budget", "method", "record ε", *domains, "Avg"]
    rows = []
    budgets = sorted({r["budget"] for r in records if r["method"] != "local"})
    for b in [*budgets, 0]:
        for m in config.methods:
            if (m, b) not in avg:
                continue
            e = eps[(m, b)]
            cells = [tables.pm(*stats[(m, b, d)][:2]) if (m, b, d) in stats else "" for d in domains]
            rows.append([b or "-", m, f"{e:.2f}" if e > 0 else "-", *cells, tables.pm(*avg[(m, b)][:2])])
    md.append(tables.markdown_table(header, rows))
    lifetime = client_lifetime(client_ledgers, records) if client_ledgers else {}
    if lifetime:
        md += _lifetime_md(lifetime)
        io.write_json(workdir / "client_ledgers.json", {d: v.to_dict() for d, v in client_ledgers.items()})
    for metric in extra_metrics:
        have = [r for r in records if isinstance(r.get(metric), (int, float))]
        if not have:
            continue
        ms = tables.aggregate(have, ("method", "budget"), metric)
        md.append(f"\n## {metric} (mean ± std over domains and seeds)\n")
        md.append(tables.markdown_table(
            ["budget", "method", metric],
            [[b or "-", m, f"{ms[(m, b)][0]:.4g} ± {ms[(m, b)][1]:.2g}"]
             for b in [*budgets, 0] for m in config.methods if (m, b) in ms]))
    if comm:
        md.append("\n## Communication (bytes)\n")
        md.append(tables.markdown_table(
            ["client domain", "ECOS down (centroids)", "ECOS up (noisy counts)", "upload client data",
             "download pool", "upload / ECOS total"],
            [[d, c["ecos_down_bytes"], c["ecos_up_bytes"], c["upload_client_data_bytes"], c["download_pool_bytes"],
              f"{c['upload_client_data_bytes'] / (c['ecos_down_bytes'] + c['ecos_up_bytes']):.1f}x"]
             for d, c in comm.items()]))
    text = "\n".join(md)
    io.write_json(workdir / "results.json", {"config": config.to_dict(), "records": records,
                                             "average": [{"method": m, "budget": b, "mean": s[0], "std": s[1]}
                                                         for (m, b), s in avg.items()],
                                             "communication": comm, "client_lifetime": lifetime,
                                             "device_report": device_report(local_mesh(config.get("num_devices", 0)))})
    io.write_text(workdir / "results.md", text)
    if ledgers:
        io.write_json(workdir / "ledgers.json", ledgers)
    plots.accuracy_vs_budget(avg, workdir / "accuracy_vs_budget.png", budgets)
    print(text)
    return text
