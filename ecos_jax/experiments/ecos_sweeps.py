"""The ECOS paper's sweeps over selective labelling: pool composition, ε, and bytes.

A sweep is a set of selective-labelling runs (`ecos_runner.run` with `SelectiveLabeling`) that
differ from a base config by a few overrides: axes of the sweep runner (`ecos_jax.sweep`), each
*point* in its own sub-workdir `workdir/<sweep>/<point>/`. The runner skips finished points
(`sweep_state.json`), a point interrupted mid-run resumes inside the ECOS runner's own
state.json, and points can run over a local pool or on a Ray cluster (`run(..., workers=,
backend=)`). The communication curve needs no training and is computed here.

  pool           data.pool ∈ sweep.pool_kinds ("ood", "id+ood", "id"): accuracy against budget
                 for sweep.pool_methods; the in-domain oracle once, with the "id+ood" pool, as
                 the reference (with "ood" the pool holds none of the client's domain, so the
                 oracle cannot pick; with "id" it is Random).
  epsilon        ECOS alone at one budget for every ε in sweep.epsilons (plus exact counts),
                 Random once as the flat reference; accuracy and the share of ECOS's picks that
                 come from the client's own domain (`in_domain_fraction`) against ε.
  communication  no training: bytes of one ECOS round (centroids down, noisy counts up, sizes
                 from the protocol's messages) against uploading the client's data and
                 downloading the pool, per dataset and client domain, and against client size.

    >>> out = run(config, "runs/ecos_sweeps")   # config: configs/ecos_sweeps.py
    >>> out["epsilon"]["ecos"][0]                # {"epsilon": 0.05, "accuracy": ..., ...}

Aggregates are mean ± std over client domains and seeds pooled (population std), written to
sweeps.json and sweeps.md with one PNG per sweep.

Privacy: each point's results.md reports its record ε and each client's lifetime ε over that
point. The sweep adds the client's lifetime over the whole sweep (`client_lifetime`): every
point's releases composed, since the same client answered at every point (sweeps.md,
sweeps.json "client_lifetime", client_ledgers.json). With seeded noise the points draw
different noise (the client's seed folds in the point's config hash).

ε = ∞ (exact counts) is run at the finite stand-in `sweep.exact_counts_epsilon` (σ < 0.1 at
ε = 100, so no count moves by ½): the runner writes each record's ε to strict JSON, which
refuses inf.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
from pathlib import Path

import ml_collections
import numpy as np

from ecos_jax import data as data_lib
from ecos_jax import features as features_lib
from ecos_jax.ecos import protocol
from ecos_jax.experiments import ecos_runner
from ecos_jax.experiments.selective_labeling import SelectiveLabeling
from ecos_jax.privacy.ledger import PrivacyLedger
from ecos_jax.reporting import plots, tables
from ecos_jax.sweep import runner as sweep_runner
from ecos_jax.sweep import spec as sweep_spec
from ecos_jax.sweep import targets as sweep_targets
from ecos_jax.utils import io
from ecos_jax.utils.errors import validates

log = logging.getLogger(__name__)
SWEEPS = ("pool", "epsilon", "communication")
POOL_LABELS = {"ood": "OoD only", "id+ood": "ID + OoD", "id": "ID only"}
ENCODINGS = {"float32": ("float32", "float32"), "lean": ("float16", "int16")}  # (centroids, counts)
FOLD = 100.0  # the "at least 100x below uploading" mark
POINT_FUNCTION = "ecos_jax.experiments.ecos_sweeps:run_point"


@dataclasses.dataclass(frozen=True, eq=False)
class Point:
    """One selective-labelling run of a sweep (in `<workdir>/<sweep>/<name>/`): `config` is a
    full, locked runner config (None where only the name and meta are needed)."""

    sweep: str
    name: str
    config: ml_collections.ConfigDict | None
    meta: dict


class TrackedSelectiveLabeling(SelectiveLabeling):
    """Selective labelling that also records which pool domains each method picked from."""

    def evaluate(self, config, task, state, sel) -> dict:
        out = super().evaluate(config, task, state, sel)
        if sel.indices is not None:
            doms = task.split.pool.domains[sel.indices]
            names = task.split.pool.domain_names
            out["pick_domains"] = {names[d]: int(n) for d, n in zip(*np.unique(doms, return_counts=True))}
        return out


# ---------------------------------------------------------------------------- configs


@validates
def validate(config: ml_collections.ConfigDict) -> None:
    """Checks the `sweep` section; raises ValueError with the reason."""
    s = config.get("sweep")
    if s is None:
        raise ValueError("config has no `sweep` section (use configs/ecos_sweeps.py).")
    names = tuple(s.names)
    if not names:
        raise ValueError(f"sweep.names cannot be empty; choose from {SWEEPS}.")
    unknown = [n for n in names if n not in SWEEPS]
    if unknown:
        raise ValueError(f"Unknown sweep(s) {unknown}; choose from {SWEEPS}.")
    if "pool" in names:
        kinds = tuple(s.pool_kinds)
        bad = [k for k in kinds if k not in data_lib.POOL_KINDS]
        if not kinds or bad:
            raise ValueError(f"sweep.pool_kinds must be a non-empty subset of {data_lib.POOL_KINDS}, got {kinds}.")
        methods = tuple(s.pool_methods)
        bad = [m for m in methods if m not in ecos_runner.POOL_METHODS or m == "oracle"]
        if not methods or bad:
            raise ValueError(f"sweep.pool_methods must be a non-empty subset of "
                             f"{tuple(m for m in ecos_runner.POOL_METHODS if m != 'oracle')}, got {methods} "
                             "(the oracle reference is `sweep.oracle`: it cannot pick when data.pool='ood').")
    if "epsilon" in names:
        eps = tuple(s.epsilons)
        if not eps:
            raise ValueError("sweep.epsilons cannot be empty.")
        if any(math.isinf(e) for e in eps):
            raise ValueError("ε = inf cannot go through the runner (it writes ε to strict JSON); "
                             "set sweep.exact_counts=True for the exact-counts ablation.")
        if any(not e > 0 for e in eps):
            raise ValueError(f"every ε in sweep.epsilons must be > 0, got {eps}.")
        if len(set(eps)) != len(eps):
            raise ValueError(f"sweep.epsilons has duplicates: {eps}.")
        if s.exact_counts and not (math.isfinite(s.exact_counts_epsilon) and s.exact_counts_epsilon > max(eps)):
            raise ValueError(f"sweep.exact_counts_epsilon must be finite and above every ε swept "
                             f"({max(eps)}), got {s.exact_counts_epsilon}.")
        if s.epsilon_budget < 1:
            raise ValueError(f"sweep.epsilon_budget must be >= 1, got {s.epsilon_budget}.")
        if s.epsilon_pool not in data_lib.POOL_KINDS:
            raise ValueError(f"sweep.epsilon_pool must be one of {data_lib.POOL_KINDS}, got {s.epsilon_pool!r}.")
    if "communication" in names and any(n < 1 for n in s.client_sizes):
        raise ValueError(f"sweep.client_sizes must be positive, got {tuple(s.client_sizes)}.")


def base_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The selective-labelling config without the `sweep` section (so a point's config hash,
    hence its resume, does not change when another sweep's settings change)."""
    c = copy.deepcopy(config)
    with c.unlocked():
        if "sweep" in c:
            del c["sweep"]
    return c


def epsilon_name(eps: float) -> str:
    return f"eps_{eps:g}"


def _named(sweep: str, names: list[str], pts: list[sweep_spec.Point], metas: list[dict]) -> list[tuple]:
    """The grid's points under the names this sweep has always used (`<sweep>/<name>`), so a
    run started before the sweep runner resumes in the same directories."""
    return [(sweep, n, dataclasses.replace(p, name=f"{sweep}/{n}"), m) for n, p, m in zip(names, pts, metas)]


def plan(config: ml_collections.ConfigDict) -> list[tuple[str, str, sweep_spec.Point, dict]]:
    """(sweep, point name, runner point, meta) of every run the requested sweeps need, in run order.

    The pool sweep zips two axes, data.pool and methods (the oracle joins the 'id+ood' pool
    only); the ε sweep is the axis ecos.epsilon (plus the exact-counts stand-in) at fixed pool,
    budget and methods=("ecos",), and the Random reference one point at the same fixed fields.
    """
    validate(config)
    s = config.sweep
    out = []
    if "pool" in s.names:
        kinds = list(s.pool_kinds)
        methods = [tuple(s.pool_methods) + (("oracle",) if s.oracle and k == "id+ood" else ()) for k in kinds]
        out += _named("pool", kinds, sweep_spec.grid([{"data.pool": kinds, "methods": methods}]),
                      [{"pool": k} for k in kinds])
        if s.oracle and "id+ood" not in s.pool_kinds:
            out += _named("pool", ["oracle"], sweep_spec.grid([], {"data.pool": "id+ood", "methods": ("oracle",)}),
                          [{"pool": "id+ood"}])
    if "epsilon" in s.names:
        common = {"data.pool": s.epsilon_pool, "budgets": (int(s.epsilon_budget),)}
        eps = [(float(e), False) for e in s.epsilons]
        if s.exact_counts:
            eps.append((float(s.exact_counts_epsilon), True))
        out += _named("epsilon", ["exact_counts" if x else epsilon_name(e) for e, x in eps],
                      sweep_spec.grid([{"ecos.epsilon": [e for e, _ in eps]}], {**common, "methods": ("ecos",)}),
                      [{"epsilon": e, "exact_counts": x} for e, x in eps])
        out += _named("epsilon", ["random"], sweep_spec.grid([], {**common, "methods": ("random",)}),
                      [{"reference": "random"}])
    return out


def target(config: ml_collections.ConfigDict, ds: data_lib.ArrayDataset | None = None
           ) -> sweep_targets.FunctionTarget:
    """The sweep runner's target: `run_point` on the base config; with `ds`, every point's
    config is validated against the data (budgets within its pool, ...) before any point runs."""
    app = TrackedSelectiveLabeling()
    check = None if ds is None else (lambda c: ecos_runner.validate(c, ds, app))
    return sweep_targets.FunctionTarget(POINT_FUNCTION, base_config(config), check=check)


def points(config: ml_collections.ConfigDict) -> list[Point]:
    """Every selective-labelling run the requested sweeps need, in run order (configs locked)."""
    t = target(config)
    return [Point(sweep, name, t.point_config(p), meta) for sweep, name, p, meta in plan(config)]


def run_point(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> None:
    """One point: selective labelling that also records the pool domains of every pick."""
    ecos_runner.run(config, workdir, TrackedSelectiveLabeling())


# ------------------------------------------------------------------------ communication


def feature_dim(config: ml_collections.ConfigDict, image_shape: tuple[int, ...]) -> int:
    """d of the public features the centroids live in ('raw' sends pixels; appended image
    statistics count)."""
    return features_lib.output_dim(config.features.kind, config.features.dim, image_shape,
                                   float(config.features.get("stats_weight", 0.0)))


def round_bytes(num_centroids: int, dim: int, encoding: str = "float32") -> dict:
    """Bytes of one ECOS round under `encoding` (a key of ENCODINGS), from the protocol."""
    cd, sd = ENCODINGS[encoding]
    down, up = protocol.message_bytes(num_centroids, dim, centroid_dtype=cd, count_dtype=sd)
    return {"down": down, "up": up, "total": down + up}


def client_sizes(config: ml_collections.ConfigDict, domain_size: int) -> list[int]:
    """Client sizes for the bytes-against-size curve: sweep.client_sizes, or 100, 200, 400, ...
    up to every sample of the domain (and the domain size itself)."""
    if tuple(config.sweep.client_sizes):
        return sorted({int(n) for n in config.sweep.client_sizes})
    sizes, n = [], 100
    while n < domain_size:
        sizes.append(n)
        n *= 2
    return [*sizes, int(domain_size)]


def crossing(num_centroids: int, dim: int, bytes_per_image: int, n_client: int, encoding: str) -> dict:
    """Where ECOS gets FOLD× below uploading the client data (one round, both directions).

    min_client_samples: smallest client size n with n·bytes_per_image ≥ FOLD · ECOS bytes;
    max_centroids: largest R (at `dim`) with FOLD · ECOS bytes ≤ upload of `n_client` samples;
    max_dim: largest d (at `num_centroids`) likewise (0 when none fits).
    """
    cd, sd = ENCODINGS[encoding]
    bc, bs = np.dtype(cd).itemsize, np.dtype(sd).itemsize
    total = num_centroids * (dim * bc + bs)
    upload = n_client * bytes_per_image
    return {"min_client_samples": int(math.ceil(FOLD * total / bytes_per_image)),
            "max_centroids": int(upload // (FOLD * (dim * bc + bs))),
            "max_dim": max(0, int((upload / (FOLD * num_centroids) - bs) // bc))}


def communication(config: ml_collections.ConfigDict, datasets: dict[str, data_lib.ArrayDataset]) -> dict:
    """Bytes per dataset and client domain (every domain: no training is needed).

    Matches `ecos_runner.communication` for float32 (centroids `[R, d]` down, counts `[R]` up,
    uploading/downloading raw pixels as uint8), adds the lean encoding and the curve against
    the number of client samples.
    """
    r = int(config.ecos.num_centroids)
    out = {}
    for name, ds in datasets.items():
        shape = tuple(ds.images.shape[1:])
        bpi = int(np.prod(shape))  # one uint8 per pixel value, as ecos_runner.communication counts
        d = feature_dim(config, shape)
        enc = {e: round_bytes(r, d, e) for e in ENCODINGS}
        rows, curves = [], {}
        for domain in ds.domain_names:
            split = data_lib.ecos_split(ds, domain, n_client_train=config.data.n_client_train,
                                        n_client_test=config.data.n_client_test, pool=config.data.pool,
                                        seed=config.data.split_seed)
            up_client = int(split.client_train.images.size)
            row = {"domain": domain, "n_client": len(split.client_train), "pool_size": len(split.pool),
                   "upload_client_data_bytes": up_client, "download_pool_bytes": int(split.pool.images.size)}
            for e, b in enc.items():
                row[f"ecos_{e}"] = b
                row[f"upload_over_ecos_{e}"] = up_client / b["total"]
                row[f"download_over_ecos_{e}"] = split.pool.images.size / b["total"]
            rows.append(row)
            size = int(np.sum(ds.domains == ds.domain_index(domain)))
            ns = client_sizes(config, size)
            curves[domain] = {"domain_size": size, "n": ns, "upload_bytes": [n * bpi for n in ns],
                              **{f"upload_over_ecos_{e}": [n * bpi / b["total"] for n in ns] for e, b in enc.items()}}
        out[name] = {"num_centroids": r, "dim": d, "image_shape": list(shape), "bytes_per_image": bpi,
                     "ecos": enc, "domains": rows, "vs_client_size": curves,
                     "crossing": {e: crossing(r, d, bpi, config.data.n_client_train, e) for e in ENCODINGS}}
    return out


# ---------------------------------------------------------------------------- aggregation


def _stat(records: list[dict], value: str) -> dict:
    vals = [float(r[value]) for r in records if value in r]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    (m, s, n), = tables.aggregate([{"v": v} for v in vals], (), "v").values()
    return {"mean": m, "std": s, "n": n}


def paired_gap(a: list[dict], b: list[dict]) -> dict:
    """Accuracy of `a` minus `b`, paired by (client domain, seed): {mean, std, n} over pairs.

    Domains differ far more in difficulty than methods do, so the pooled std of either side
    hides a gap that the paired one shows.
    """
    acc = {(r["domain"], r["seed"]): r["accuracy"] for r in b}
    return _stat([{"v": r["accuracy"] - acc[(r["domain"], r["seed"])]} for r in a
                  if (r["domain"], r["seed"]) in acc], "v")


def in_domain_share(rec: dict) -> float | None:
    """Share of a record's picks from the client's own domain (from `pick_domains`)."""
    if "in_domain_fraction" in rec:
        return float(rec["in_domain_fraction"])
    if "pick_domains" not in rec or not rec.get("n_picked"):
        return None
    return rec["pick_domains"].get(rec["domain"], 0) / rec["n_picked"]


def summarise_pool(records: list[dict]) -> dict:
    """{"rows": [{pool, method, budget, accuracy: {mean, std, n}, in_domain, ecos_minus: ...}],
    "pick_domains": ...}.

    ecos_minus: for the ECOS row, {other method: paired_gap(ECOS, other)} in the same pool and
    budget. `records` carry a "pool" key (the point's data.pool). pick_domains: for every pool kind,
    method and budget, the share of picks per pool domain, averaged over client domains
    and seeds, keyed by client domain (what ECOS finds when its own domain is absent).
    """
    rows, picks = [], {}
    keys = sorted({(r["pool"], r["method"], r["budget"]) for r in records})
    for pool, method, budget in keys:
        rs = [r for r in records if (r["pool"], r["method"], r["budget"]) == (pool, method, budget)]
        shares = [s for s in map(in_domain_share, rs) if s is not None]
        row = {"pool": pool, "method": method, "budget": budget, "accuracy": _stat(rs, "accuracy"),
               "in_domain": _stat([{"v": s} for s in shares], "v")}
        if method == "ecos":
            row["ecos_minus"] = {m: paired_gap(rs, [r for r in records if (r["pool"], r["method"], r["budget"])
                                                    == (pool, m, budget)])
                                 for m in sorted({r["method"] for r in records if r["method"] != "ecos"})}
        rows.append(row)
        for dom in sorted({r["domain"] for r in rs}):
            got = [r for r in rs if r["domain"] == dom and r.get("pick_domains")]
            if not got:
                continue
            tot: dict[str, float] = {}
            for r in got:
                for k, v in r["pick_domains"].items():
                    tot[k] = tot.get(k, 0.0) + v / r["n_picked"] / len(got)
            picks.setdefault(f"{pool}/{method}/{budget}", {})[dom] = dict(sorted(tot.items(), key=lambda kv: -kv[1]))
    return {"rows": rows, "pick_domains": picks}


def summarise_epsilon(records: list[dict]) -> dict:
    """{"ecos": [{epsilon, exact_counts, measured_epsilon, accuracy, in_domain, minus_random}],
    "random": {...}}; minus_random is `paired_gap` against the Random reference.

    ECOS records carry "epsilon_target" and "exact_counts"; the Random reference carries
    "reference": "random".
    """
    ecos = []
    ref = [r for r in records if r.get("reference") == "random"]
    for e in sorted({r["epsilon_target"] for r in records if "epsilon_target" in r}):
        rs = [r for r in records if r.get("epsilon_target") == e]
        ecos.append({"epsilon": e, "exact_counts": bool(rs[0]["exact_counts"]),
                     "measured_epsilon": max(r["epsilon"] for r in rs), "budget": rs[0]["budget"],
                     "accuracy": _stat(rs, "accuracy"), "in_domain": _stat(rs, "in_domain_fraction"),
                     "minus_random": paired_gap(rs, ref)})
    shares = [s for s in map(in_domain_share, ref) if s is not None]
    return {"ecos": ecos, "random": {"accuracy": _stat(ref, "accuracy"),
                                     "in_domain": _stat([{"v": s} for s in shares], "v")}}


# ---------------------------------------------------------------------------- privacy


def client_lifetime(config: ml_collections.ConfigDict, pts: list[Point],
                    workdir: Path) -> dict[str, PrivacyLedger]:
    """{client domain: one ledger of everything that client released at every point}.

    Built from each point's lifetime ledgers (`ecos_runner.load_client_ledgers`, i.e. its saved
    state), so a resumed sweep counts each release once; each entry's meta names its point.
    """
    out: dict[str, PrivacyLedger] = {}
    for p in pts:
        for domain, ledger in ecos_runner.load_client_ledgers(workdir / p.sweep / p.name).items():
            total = out.setdefault(domain, PrivacyLedger(
                config.ecos.delta, accountant=config.ecos.accountant, relation=protocol.RELATION,
                reproducible_seed=config.ecos.noise_seed))
            for e in ledger.entries:
                total.record(e.name, e.event, sensitivity=e.sensitivity, relation=e.relation,
                             **{**e.meta, "point": f"{p.sweep}/{p.name}"})
    return out


def _lifetime_md(lifetime: dict, config) -> list[str]:
    rows = [[d, v["releases"], v["points"], f"{v['epsilon']:.3g}"] for d, v in lifetime.items()]
    return [f"\n## Client privacy over the whole sweep ({config.ecos.accountant.upper()}, "
            f"δ = {config.ecos.delta:g})\n",
            "Each point's results.md gives its record ε (what one selection rests on) and each "
            "client's lifetime ε over that point. Over the sweep the same client answered at every "
            "point, so everything it released composes to:\n",
            tables.markdown_table(["client domain", "releases", "points", "client lifetime ε"], rows)]


# ---------------------------------------------------------------------------- the run


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, backend: str = "local",
        workers: int = 1, address: str | None = None, cpus_per_point: float = 1.0,
        gpus_per_point: float = 0.0) -> dict:
    """Runs every requested sweep into `workdir`; writes sweeps.json, sweeps.md and PNGs.

    The points go through the sweep runner (`ecos_jax.sweep`): every point's config is
    validated against the data before any training, finished points are skipped
    (`sweep_state.json`), and they run here one at a time (as before the runner), over a local
    pool (`workers`) or as Ray tasks (`backend="ray"`, `address`, per-point CPUs/GPUs). A point
    that fails is recorded with its log (`<point>/sweep.log`) while the others run; the sweep
    then raises, writing no summary from partial results.
    """
    validate(config)
    workdir = Path(workdir)
    ds = data_lib.load(config.data.name, data_dir=config.data.data_dir, image_size=config.data.image_size)
    planned = plan(config)
    pts = [Point(sweep, name, None, meta) for sweep, name, _, meta in planned]
    tgt = target(config, ds)
    datasets = {config.data.name: ds}
    for name in config.sweep.comm_datasets:
        if name not in datasets:
            datasets[name] = data_lib.load(name, data_dir=config.data.data_dir, image_size=config.data.image_size)
    # Checks every point's config (against the data) before any point runs.
    state = sweep_runner.run(tgt, [p for *_, p, _ in planned], workdir, backend=backend, workers=workers,
                             address=address, cpus_per_point=cpus_per_point, gpus_per_point=gpus_per_point,
                             on_outcome=lambda o: log.info("Sweep point %s: %s in %.0f s", o["name"], o["status"],
                                                           o["seconds"]))
    bad = sweep_runner.failed(state, [p.name for *_, p, _ in planned])
    if bad:
        raise RuntimeError("Sweep points failed (the others finished; rerun to retry these): "
                           + "; ".join(f"{n}: {e} (log {workdir / n / sweep_targets.LOG_NAME})" for n, e in bad.items()))
    records: dict[str, list[dict]] = {"pool": [], "epsilon": []}
    for p in pts:
        results = json.loads((workdir / p.sweep / p.name / sweep_targets.RESULTS_NAME).read_text())
        for r in results["records"]:
            meta = dict(p.meta)
            if "epsilon" in meta:
                meta = {"epsilon_target": meta.pop("epsilon"), **meta}
            records[p.sweep].append({**r, **meta, "point": p.name})
    out = {"config": config.to_dict(),
           "points": [{"sweep": p.sweep, "name": p.name, "workdir": str(workdir / p.sweep / p.name)} for p in pts]}
    if "pool" in config.sweep.names:
        out["pool"] = summarise_pool(records["pool"])
    if "epsilon" in config.sweep.names:
        out["epsilon"] = summarise_epsilon(records["epsilon"])
    if "communication" in config.sweep.names:
        out["communication"] = communication(config, datasets)
    out["records"] = records
    ledgers = client_lifetime(config, pts, workdir)
    if ledgers:
        io.write_json(workdir / "client_ledgers.json", {d: v.to_dict() for d, v in ledgers.items()})
        out["client_lifetime"] = {
            d: {"epsilon": float(v.epsilon()), "releases": len(v),
                "points": len({e.meta["point"] for e in v.entries})} for d, v in ledgers.items()}
    write_outputs(config, workdir, out)
    return out


def write_outputs(config: ml_collections.ConfigDict, workdir: Path, out: dict) -> str:
    """sweeps.json, sweeps.md and one PNG per sweep; returns the markdown."""
    md = [f"# ECOS sweeps ({config.data.name}; accuracy % on the client's test split, mean ± std "
          f"over client domains and seeds pooled)\n"]
    if "pool" in out:
        md += _pool_md(out["pool"])
        plots.sweep_pool(out["pool"], workdir / "pool_accuracy_vs_budget.png", POOL_LABELS)
    if "epsilon" in out:
        md += _epsilon_md(out["epsilon"], config)
        plots.sweep_epsilon(out["epsilon"], workdir / "epsilon.png")
    if "communication" in out:
        md += _communication_md(out["communication"], config)
        for name, c in out["communication"].items():
            plots.sweep_communication(c, workdir / f"communication_{name.replace('/', '_')}.png", name, FOLD)
    if out.get("client_lifetime"):
        md += _lifetime_md(out["client_lifetime"], config)
    text = "\n".join(md)
    io.write_json(workdir / "sweeps.json", out)
    io.write_text(workdir / "sweeps.md", text)
    print(text)
    return text


def _pm(s: dict, scale: float = 100.0) -> str:
    return "" if s["mean"] is None else tables.pm(s["mean"], s["std"], scale=scale)


def _pool_md(p: dict) -> list[str]:
    rows = p["rows"]
    budgets = sorted({r["budget"] for r in rows})
    cell = {(r["pool"], r["method"], r["budget"]): r for r in rows}
    kinds = [k for k in POOL_LABELS if any(r["pool"] == k for r in rows)]
    table = []
    for kind in kinds:
        for m in [m for m in ("ecos", "random", "kcenter", "oracle") if (kind, m, budgets[0]) in cell or
                  any((kind, m, b) in cell for b in budgets)]:
            table.append([POOL_LABELS[kind], m, *[_pm(cell[(kind, m, b)]["accuracy"]) if (kind, m, b) in cell else ""
                                                  for b in budgets]])
    gaps = []
    for kind in kinds:
        for m in ("random", "kcenter", "oracle"):
            got = [cell[(kind, "ecos", b)]["ecos_minus"].get(m) if (kind, "ecos", b) in cell else None for b in budgets]
            if any(g and g["n"] for g in got):
                gaps.append([POOL_LABELS[kind], f"ECOS − {plots.METHOD_STYLE[m][0]}",
                             *[_pm(g) if g and g["n"] else "" for g in got]])
    md = ["## Pool composition: accuracy against budget\n",
          tables.markdown_table(["pool", "method", *[f"budget {b}" for b in budgets]], table),
          "\nAccuracy gap in points, paired by client domain and seed (the pooled std above is mostly "
          "the spread in difficulty between client domains; per-domain tables: pool/<pool>/results.md):\n",
          tables.markdown_table(["pool", "gap", *[f"budget {b}" for b in budgets]], gaps),
          "\nShare of picks from the client's own domain (%):\n"]
    table = []
    for kind in kinds:
        if kind == "ood":
            continue  # none of the client's domain is in the pool
        for m in ("ecos", "random", "kcenter"):
            if any((kind, m, b) in cell for b in budgets):
                table.append([POOL_LABELS[kind], m, *[_pm(cell[(kind, m, b)]["in_domain"]) if (kind, m, b) in cell
                                                      else "" for b in budgets]])
    md.append(tables.markdown_table(["pool", "method", *[f"budget {b}" for b in budgets]], table))
    ood = {k: v for k, v in p["pick_domains"].items() if k.startswith("ood/")}
    if ood:
        b = max(int(k.split("/")[2]) for k in ood)
        md.append(f"\nOoD-only pool, budget {b}: the pool domains each method picks from (top 3, % of picks):\n")
        table = []
        for dom in sorted(next(iter(ood.values()))):
            table.append([dom, *[", ".join(f"{k} {100 * v:.0f}" for k, v in list(ood[f'ood/{m}/{b}'][dom].items())[:3])
                                 if f"ood/{m}/{b}" in ood and dom in ood[f"ood/{m}/{b}"] else ""
                                 for m in ("ecos", "random", "kcenter")]])
        md.append(tables.markdown_table(["client domain", "ECOS", "Random", "K-Center"], table))
    return md


def _epsilon_md(e: dict, config) -> list[str]:
    budget = e["ecos"][0]["budget"] if e["ecos"] else config.sweep.epsilon_budget
    rows = [[f"∞ (exact counts, run at ε = {r['epsilon']:g})" if r["exact_counts"] else f"{r['epsilon']:g}",
             f"{r['measured_epsilon']:.3g}", _pm(r["accuracy"]), _pm(r["minus_random"]), _pm(r["in_domain"])]
            for r in e["ecos"]]
    rows.append(["Random (reference)", "-", _pm(e["random"]["accuracy"]), "", _pm(e["random"]["in_domain"])])
    return [f"\n## ECOS against ε (budget {budget}, pool {config.sweep.epsilon_pool}, δ = {config.ecos.delta})\n",
            tables.markdown_table(["ε target", "ε (ledger)", "accuracy", "ECOS − Random (paired)",
                                    "in-domain picks (%)"], rows),
            "\nPer-domain tables: epsilon/<point>/results.md.\n"]


def _communication_md(comm: dict, config) -> list[str]:
    md = []
    for name, c in comm.items():
        f32, lean = c["ecos"]["float32"], c["ecos"]["lean"]
        md.append(f"\n## Communication: {name} (R = {c['num_centroids']} centroids, d = {c['dim']}, "
                  f"images {'×'.join(map(str, c['image_shape']))} uint8)\n")
        md.append(f"One ECOS round: float32 {f32['down']} B down + {f32['up']} B up = {f32['total']} B; "
                  f"lean (float16 centroids, int16 rounded counts) {lean['down']} + {lean['up']} = {lean['total']} B.\n")
        md.append(tables.markdown_table(
            ["client domain", "client n", "upload client data", "download pool", "ECOS float32", "ECOS lean",
             "upload / ECOS float32", "upload / ECOS lean", "upload / ECOS up only (float32)",
             "download / ECOS float32"],
            [[r["domain"], r["n_client"], r["upload_client_data_bytes"], r["download_pool_bytes"],
              r["ecos_float32"]["total"], r["ecos_lean"]["total"], f"{r['upload_over_ecos_float32']:.1f}x",
              f"{r['upload_over_ecos_lean']:.1f}x",
              f"{r['upload_client_data_bytes'] / r['ecos_float32']['up']:.0f}x",
              f"{r['download_over_ecos_float32']:.0f}x"] for r in c["domains"]]))
        md.append(f"\nWhere ECOS is {FOLD:.0f}× below uploading the client data (one round, both directions):\n")
        md.append(tables.markdown_table(
            ["encoding", "ECOS bytes", f"client samples needed (R = {c['num_centroids']}, d = {c['dim']})",
             f"largest R at d = {c['dim']}, n = {config.data.n_client_train}",
             f"largest d at R = {c['num_centroids']}, n = {config.data.n_client_train}"],
            [[e, c["ecos"][e]["total"], x["min_client_samples"], x["max_centroids"], x["max_dim"]]
             for e, x in c["crossing"].items()]))
        # The ratio depends on the client's size only, not on its domain.
        ns = sorted({n for cv in c["vs_client_size"].values() for n in cv["n"]})
        ratio = {}
        for cv in c["vs_client_size"].values():
            for i, n in enumerate(cv["n"]):
                ratio[n] = (cv["upload_bytes"][i], cv["upload_over_ecos_float32"][i], cv["upload_over_ecos_lean"][i])
        whole = ", ".join(f"{d} {cv['domain_size']}" for d, cv in c["vs_client_size"].items())
        md.append(f"\nUpload / ECOS against the client's size (the largest n of each domain is all of it: {whole}):\n")
        md.append(tables.markdown_table(["client samples n", "upload bytes", "upload / ECOS float32",
                                          "upload / ECOS lean"],
                                         [[n, ratio[n][0], f"{ratio[n][1]:.0f}x", f"{ratio[n][2]:.0f}x"] for n in ns]))
    return md
