"""Per experiment: its headline numbers from results.json, and its value checks before a sweep.

Every experiment writes a different results.json; an adapter turns one into headline rows:

    [{"group": {"method": "ecos", "budget": 100},          # what the point's rows are split by
      "metrics": {"accuracy": {"mean": .71, "std": .02, "n": 2}, "epsilon": 0.58}}]

A metric is a number, or {mean, std, n} where the experiment itself ran several seeds (std is
the population std over seeds). Experiments without an adapter get `generic`: one row of the
top-level numbers in results.json. `check(name)` is the experiment's own validation, run on
every point's config before a sweep starts (None where none can run without doing the work).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import ml_collections
import numpy as np

Rows = list[dict]


def _num(v) -> float | None:
    """A finite float from a number or its JSON spelling ('inf' stays inf), else None."""
    if isinstance(v, bool):
        return float(v)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if not math.isnan(f) else None


def generic(results: dict) -> Rows:
    """One row: every top-level number (and bool) of results.json."""
    metrics = {k: _num(v) for k, v in results.items() if k != "config" and isinstance(v, (int, float, bool))}
    return [{"group": {}, "metrics": {k: v for k, v in metrics.items() if v is not None}}]


def ecos(results: dict) -> Rows:
    """ECOS applications: a row per (method, budget): accuracy mean ± std over seeds (of the
    mean over client domains, results.json "average"), the record ε, the largest client
    lifetime ε over the point, and the records' total training seconds."""
    recs = results.get("records", [])
    life = [_num(v.get("epsilon")) for v in (results.get("client_lifetime") or {}).values()]
    rows = []
    n_seeds = {}
    for r in recs:
        n_seeds.setdefault((r["method"], r["budget"]), set()).add(r["seed"])
    for a in results.get("average", []):
        m, b = a["method"], a["budget"]
        rs = [r for r in recs if (r["method"], r["budget"]) == (m, b)]
        metrics = {"accuracy": {"mean": a["mean"], "std": a["std"], "n": len(n_seeds.get((m, b), ()))},
                   "epsilon": max((_num(r.get("epsilon")) or 0.0 for r in rs), default=None),
                   "train_seconds": sum(_num(r.get("seconds")) or 0.0 for r in rs)}
        if life and all(x is not None for x in life):
            metrics["client_lifetime_epsilon"] = max(life)
        rows.append({"group": {"method": m, "budget": b}, "metrics": metrics})
    return rows


def train_dp(results: dict) -> Rows:
    """DP-SGD: a row per target ε: test accuracy mean ± std over the run's seeds, the ledger's ε
    (PLD, RDP; the largest over seeds), σ and the total training seconds."""
    groups: dict[str, list[dict]] = {}
    for r in results.get("records", []):
        groups.setdefault(str(r.get("target_epsilon")), []).append(r)
    rows = []
    for target, rs in groups.items():
        acc = [a for a in (_num(r.get("test_accuracy")) for r in rs) if a is not None]
        metrics = {"accuracy": {"mean": float(np.mean(acc)), "std": float(np.std(acc)), "n": len(acc)} if acc else None}
        for k, src in (("epsilon", "epsilon_pld"), ("epsilon_rdp", "epsilon_rdp"), ("sigma", "noise_multiplier")):
            vals = [v for v in (_num(r.get(src)) for r in rs) if v is not None]
            metrics[k] = max(vals) if vals else None
        metrics["train_seconds"] = sum(_num(r.get("seconds")) or 0.0 for r in rs)
        rows.append({"group": {"target_epsilon": target}, "metrics": {k: v for k, v in metrics.items() if v is not None}})
    return rows


HEADLINES: dict[str, Callable[[dict], Rows]] = {
    "selective_labeling": ecos, "model_compression": ecos, "client_labeling": ecos,
    "train_dp": train_dp,
}


def headlines(experiment: str, results: dict) -> Rows:
    """The headline rows of `results` (a results.json) for `experiment` (a driver's name)."""
    rows = HEADLINES.get(experiment, generic)(results)
    return rows or generic(results)


def _ecos_check(app_name: str) -> Callable[[ml_collections.ConfigDict], None]:
    """The ECOS runner's validation (data split sizes, budgets within the pool, ε, methods),
    on the point's config, as the experiment runs it before any training."""
    loaded: dict = {}

    def check(config: ml_collections.ConfigDict) -> None:
        # Imported here: a sweep of another experiment should not pay for JAX start-up.
        import importlib  # noqa: PLC0415

        from ecos_jax import data as data_lib  # noqa: PLC0415
        from ecos_jax.experiments import ecos_runner  # noqa: PLC0415

        module, cls = {"selective_labeling": ("selective_labeling", "SelectiveLabeling"),
                       "model_compression": ("model_compression", "ModelCompression"),
                       "client_labeling": ("client_labeling", "ClientLabeling")}[app_name]
        app = getattr(importlib.import_module(f"ecos_jax.experiments.{module}"), cls)()
        key = (config.data.name, config.data.data_dir, config.data.image_size)
        if key not in loaded:
            loaded[key] = data_lib.load(config.data.name, data_dir=config.data.data_dir,
                                        image_size=config.data.image_size)
        ecos_runner.validate(config, loaded[key], app)

    return check


def check(experiment: str) -> Callable[[ml_collections.ConfigDict], None] | None:
    """`experiment`'s validation of one config (raises ConfigError), or None."""
    if experiment in ("selective_labeling", "model_compression", "client_labeling"):
        return _ecos_check(experiment)
    return None
