"""One ECOS results table from several runs of the same experiment that split its methods.

A grid too large for one sitting (budgets x seeds x domains x methods) runs as several
resumable runner workdirs, e.g. the baselines in one and ECOS in another; their records are
independent (each method's picks and training depend only on the domain, seed, method and
budget), so their union is the table one run would have written. `combine` checks that the
runs agree on everything but methods and budgets, then writes the runner's usual outputs
(results.json / results.md / accuracy_vs_budget.png / ledgers / client ledgers) into `out`,
plus comparison.md: ECOS against every other method at every budget.

  python -m ecos_jax.experiments.ecos_budgets runs/table runs/baselines runs/ecos

A workdir written `PATH:m1,m2` contributes only those methods' records. When none of them reads
the pool's features (`random`, `local`, `oracle`), that run may differ in the `features` section
too, so a new ECOS feature map joins baselines run before it:

  python -m ecos_jax.experiments.ecos_budgets runs/table runs/baselines:random,local runs/ecos_stats
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ml_collections
import numpy as np

from ecos_jax.ecos import protocol
from ecos_jax.experiments import ecos_runner
from ecos_jax.privacy.ledger import PrivacyLedger
from ecos_jax.reporting import tables
from ecos_jax.utils import io

_FREE = ("methods", "budgets")  # what the combined runs may differ in
# Execution options, which change no record (ecos_runner.config_hash leaves them out too): a
# run made before `num_devices` existed joins one made after.
_EXECUTION = ("progress", "num_devices")
# Methods whose picks and training never read the pool's features (uniform draws, or no pool).
_FEATURE_FREE = ("random", "local", "oracle")


def _parse(workdir: str | Path) -> tuple[Path, tuple[str, ...] | None]:
    """`PATH` or `PATH:m1,m2` -> (path, the methods to take, None for all)."""
    text = str(workdir)
    if ":" in text and not Path(text).exists():
        path, methods = text.rsplit(":", 1)
        return Path(path), tuple(m for m in methods.split(",") if m)
    return Path(text), None


def _seed_means(records: list[dict], method: str, budget: int) -> list[float]:
    """Mean accuracy over domains, one value per seed (only seeds with every domain)."""
    domains = {r["domain"] for r in records}
    out = []
    for s in sorted({r["seed"] for r in records}):
        v = [r["accuracy"] for r in records if (r["method"], r["budget"], r["seed"]) == (method, budget, s)]
        if len(v) == len(domains):
            out.append(float(np.mean(v)))
    return out


def comparisons(records: list[dict], *, local_from: int) -> tuple[list[dict], str]:
    """ECOS − each other method per budget (mean over domains, std over seeds) and markdown.

    A difference is 'inside one std' when |Δ| <= the larger of the two methods' stds over seeds.
    'local' (budget 0) is compared at every budget >= `local_from`; 'oracle' at the budgets it ran.
    """
    budgets = sorted({r["budget"] for r in records if r["method"] == "ecos"})
    others = [m for m in dict.fromkeys(r["method"] for r in records) if m != "ecos"]
    rows = []
    for b in budgets:
        e = _seed_means(records, "ecos", b)
        for m in others:
            if m == "local" and b < local_from:
                continue
            o = _seed_means(records, m, 0 if m == "local" else b)
            if not e or not o:
                continue
            diff = float(np.mean(e) - np.mean(o))
            spread = max(float(np.std(e)), float(np.std(o)))
            rows.append({"budget": b, "other": m, "ecos": float(np.mean(e)), "ecos_std": float(np.std(e)),
                         "other_mean": float(np.mean(o)), "other_std": float(np.std(o)), "diff": diff,
                         "inside_one_std": abs(diff) <= spread, "seeds": min(len(e), len(o))})
    md = tables.markdown_table(
        ["budget", "vs", "ECOS", "other", "ECOS − other (points)", "inside one std?", "seeds"],
        [[r["budget"], r["other"], tables.pm(r["ecos"], r["ecos_std"]), tables.pm(r["other_mean"], r["other_std"]),
          f"{100 * r['diff']:+.1f}", "yes" if r["inside_one_std"] else "no", r["seeds"]] for r in rows])
    return rows, md


def combine(out: str | Path, workdirs: list[str | Path]) -> list[dict]:
    """Writes the union of `workdirs`' records into `out` as one run's outputs; returns them."""
    out = Path(out)
    parsed = [_parse(w) for w in workdirs]
    workdirs = [w for w, _ in parsed]
    results = [json.loads((w / "results.json").read_text()) for w in workdirs]
    for (w, keep), r in zip(parsed, results, strict=True):
        if keep is not None:
            missing = set(keep) - set(r["config"]["methods"])
            if missing:
                raise ValueError(f"{w} has no records of {sorted(missing)} (its methods: {r['config']['methods']}).")
            r["config"]["methods"] = list(keep)
            r["records"] = [rec for rec in r["records"] if rec["method"] in keep]
    # The reference is a run with ECOS in it; a run without ECOS never read the ecos section
    # (its picks and training do not depend on it), so only its other sections must match.
    ref = next((r for r in results if "ecos" in r["config"]["methods"]), results[0])
    for w, r in zip(workdirs, results, strict=True):
        free = (*_FREE, *_EXECUTION) if "ecos" in r["config"]["methods"] else (*_FREE, *_EXECUTION, "ecos")
        if set(r["config"]["methods"]) <= set(_FEATURE_FREE):
            free = (*free, "features")
        base = {k: v for k, v in ref["config"].items() if k not in free}
        other = {k: v for k, v in r["config"].items() if k not in free}
        if json.dumps(other, sort_keys=True, default=str) != json.dumps(base, sort_keys=True, default=str):
            diff = sorted(k for k in set(base) | set(other) if base.get(k) != other.get(k))
            raise ValueError(f"{w} is a run of a different config (differs in {diff}); only methods and "
                             "budgets may differ between combined runs.")
    records, seen = [], set()
    for w, r in zip(workdirs, results, strict=True):
        for rec in r["records"]:
            k = (rec["method"], rec["domain"], rec["budget"], rec["seed"])
            if k in seen:
                raise ValueError(f"{w} repeats record {k}: combined runs must split the methods/budgets.")
            seen.add(k)
            rec["epsilon"] = float(rec["epsilon"])
            records.append(rec)
    ledgers, client_ledgers, comm = {}, {}, {}
    for (w, keep), r in zip(parsed, results, strict=True):
        if (w / "ledgers.json").exists():
            # Keys are domain/seed<s>/method/budget: a filtered run brings its kept methods' only.
            ledgers.update({k: v for k, v in json.loads((w / "ledgers.json").read_text()).items()
                            if keep is None or k.split("/")[2] in keep})
        # A run whose ECOS records were left out brings none of its client releases either.
        for d, led in (ecos_runner.load_client_ledgers(w) if keep is None or "ecos" in keep else {}).items():
            if len(led):
                if d in client_ledgers and len(client_ledgers[d]):
                    raise ValueError(f"client {d!r} released data in two of the runs; compose them in one run.")
                client_ledgers[d] = led
        comm.update(r.get("communication", {}))
    methods = [m for m in ecos_runner.METHODS if any(rec["method"] == m for rec in records)]
    config = ml_collections.ConfigDict({**ref["config"], "methods": tuple(methods),
                                        "budgets": tuple(sorted({rec["budget"] for rec in records if rec["budget"]}))})
    domains = list(dict.fromkeys(rec["domain"] for rec in records))
    for d in domains:  # a client that released nothing still gets its (empty) lifetime ledger
        client_ledgers.setdefault(d, PrivacyLedger(config.ecos.delta, accountant=config.ecos.accountant,
                                                    relation=protocol.RELATION))
    out.mkdir(parents=True, exist_ok=True)
    ecos_runner.write_outputs(config, out, records, ledgers, comm, domains,
                              client_ledgers={d: client_ledgers[d] for d in domains})
    _, md = comparisons(records, local_from=2 * config.data.n_client_train)
    io.write_text(out / "comparison.md", f"# ECOS against each method ({config.data.name})\n\n" + md)
    print(md)
    return records


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python -m ecos_jax.experiments.ecos_budgets OUT WORKDIR [WORKDIR ...]")
    combine(sys.argv[1], sys.argv[2:])
