"""ECOS's within-cluster rules (numbers of centroids R, count thresholds) compared on the client's
validation data.

One point per (rule, R, k): the selective-labelling run with ECOS alone, `ecos.within_cluster =
rule`, `ecos.num_centroids = R`, `ecos.count_threshold = k` (`threshold_grid`), scored on the
validation slice `ecos_runner.carve_validation` holds out of the client's labelled training
images (the client answers ECOS from the rest; its test split is never read). Each point is a
resumable runner workdir `<workdir>/<rule>_R<R>` (`_t<k>` appended for k > 0);
every ECOS response is a release in that point's client lifetime ledger, and `rules.md` gives
each client's ε composed over all the points (one client answering every point).

Outputs: rules.json (every record, the table's numbers) and rules.md: validation accuracy per
rule, R and budget (mean over domains, ± std over seeds), and the rule ranked first at each
budget.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import ml_collections
import numpy as np

from ecos_jax import data as data_lib
from ecos_jax.experiments import ecos_runner
from ecos_jax.experiments.selective_labeling import SelectiveLabeling
from ecos_jax.privacy.ledger import PrivacyLedger
from ecos_jax.reporting import tables
from ecos_jax.samplers import ecos as ecos_lib
from ecos_jax.utils import io
from ecos_jax.utils.errors import validates


def points(config: ml_collections.ConfigDict) -> list[tuple[str, ml_collections.ConfigDict]]:
    """[(name, the point's selective-labelling config)] for every rule x R x count threshold, in
    run order. A point at threshold 0 is named `<rule>_R<R>`, as before thresholds existed."""
    out = []
    for rule in config.rules:
        for r in config.centroid_grid:
            for k in config.get("threshold_grid", (0.0,)):
                c = copy.deepcopy(config)
                with c.unlocked():
                    c.ecos.within_cluster = rule
                    c.ecos.num_centroids = int(r)
                    c.ecos.count_threshold = float(k)
                    del c.rules, c.centroid_grid
                    if "threshold_grid" in c:
                        del c.threshold_grid
                out.append((f"{rule}_R{r}" + (f"_t{float(k):g}" if k else ""), c))
    return out


@validates
def validate(config: ml_collections.ConfigDict, ds: data_lib.ArrayDataset) -> list:
    """Checks every point before any work (the runner's own checks on each)."""
    if not config.data.get("n_client_validation", 0):
        raise ValueError("data.n_client_validation must be >= 1: rules are compared on validation "
                         "data, never on the client's test split.")
    if not config.rules or not config.centroid_grid or not config.get("threshold_grid", (0.0,)):
        raise ValueError("rules, centroid_grid and threshold_grid cannot be empty.")
    for rule in config.rules:
        ecos_lib.check_rule(rule)
    if list(config.methods) != ["ecos"]:
        raise ValueError(f"methods must be ('ecos',) (the rules differ only there), got {tuple(config.methods)}.")
    pts = points(config)
    for _, c in pts:
        ecos_runner.validate(c, ds, SelectiveLabeling())
    return pts


def summarise(records_by_point: dict[str, list[dict]], budgets) -> tuple[list[dict], str]:
    """Rows {point, budget, mean, std, n_seeds} (mean over domains per seed, then over seeds)
    and the markdown table with the best point at each budget."""
    rows = []
    for name, records in records_by_point.items():
        for b in budgets:
            per_seed = {}
            for r in records:
                if r["budget"] == b:
                    per_seed.setdefault(r["seed"], []).append(r["accuracy"])
            if per_seed:
                means = [float(np.mean(v)) for v in per_seed.values()]
                rows.append({"point": name, "budget": int(b), "mean": float(np.mean(means)),
                             "std": float(np.std(means)), "n_seeds": len(means),
                             "n_records": sum(map(len, per_seed.values()))})
    md_rows = [[r["point"], r["budget"], tables.pm(r["mean"], r["std"]), r["n_records"]] for r in rows]
    best = {b: max((r for r in rows if r["budget"] == b), key=lambda r: r["mean"])["point"]
            for b in budgets if any(r["budget"] == b for r in rows)}
    md = tables.markdown_table(["rule_R", "budget", "validation acc % (± std over seeds)", "records"], md_rows)
    md += "\n" + "\n".join(f"- best at budget {b}: {p}" for b, p in best.items()) + "\n"
    return rows, md


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    """Runs every (rule, R) point (resumable); writes rules.json / rules.md, returns the rows."""
    workdir = Path(workdir)
    ds = data_lib.load(config.data.name, data_dir=config.data.data_dir, image_size=config.data.image_size)
    pts = validate(config, ds)
    by_point, lifetime = {}, {}
    for name, c in pts:
        by_point[name] = ecos_runner.run(c, workdir / name, SelectiveLabeling())
        for domain, ledger in ecos_runner.load_client_ledgers(workdir / name).items():
            total = lifetime.setdefault(domain, PrivacyLedger(ledger.delta, accountant=ledger.accountant,
                                                              relation=ledger.relation))
            for e in ledger.entries:
                total.record(e.name, e.event, sensitivity=e.sensitivity, relation=e.relation, **e.meta)
    rows, md = summarise(by_point, config.budgets)
    eps = {d: float(v.epsilon()) for d, v in lifetime.items()}
    title = (f"# ECOS within-cluster rules ({config.data.name}, ε = {config.ecos.epsilon} per response, "
             f"validation: {config.data.n_client_validation} of the client's {config.data.n_client_train} "
             f"labelled images)\n\n")
    md = title + md + "\n## Client lifetime ε over every point\n\n" + tables.markdown_table(
        ["client domain", "responses", "lifetime ε"], [[d, len(lifetime[d]), f"{e:.3g}"] for d, e in eps.items()])
    io.write_json(workdir / "rules.json", {"config": config.to_dict(), "rows": rows,
                                           "records": by_point, "client_lifetime_epsilon": eps})
    io.write_text(workdir / "rules.md", md)
    print(md)
    return {"rows": rows, "client_lifetime_epsilon": eps}
