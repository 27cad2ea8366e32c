"""A sweep's merged table (markdown + JSON rows) and its plot of one metric against one axis.

A row is one headline row of one point (`ecos_jax.sweep.adapters`):

    {"point": "ecos.epsilon=0.1,...", "axes": {"ecos.epsilon": "0.1", ...}, "group": {"method": "ecos"},
     "metrics": {"accuracy": {"mean": .7, "std": .01, "n": 2}, "epsilon": 0.1}, "status": "done",
     "seconds": 41.2, "error": None}

Metrics are numbers or {mean, std, n}; `average_over` folds an axis (e.g. seeds swept as an axis)
into mean ± std (population std over its values, as `tables.aggregate`). Nothing here computes
a result: it arranges what the points wrote.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from ecos_jax.reporting import tables


def mean_of(v) -> float | None:
    """A metric's value as one number (the mean of a {mean, std, n})."""
    if isinstance(v, dict):
        return v.get("mean")
    return v


def std_of(v) -> float:
    return float(v.get("std") or 0.0) if isinstance(v, dict) else 0.0


def fmt(v) -> str:
    """'0.712 ± 0.021' for {mean, std}, '0.712' for a number, '' for none."""
    if v is None:
        return ""
    if isinstance(v, dict):
        if v.get("mean") is None:
            return ""
        std = v["std"] if abs(v["std"]) > 1e-9 * max(1.0, abs(v["mean"])) else 0.0  # float noise of equal values
        return f"{v['mean']:.4g} ± {std:.2g}" + (f" (n={v['n']})" if v.get("n") not in (None, 1) else "")
    if isinstance(v, float) and math.isinf(v):
        return "∞"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def average_over(rows: Sequence[dict], field: str) -> list[dict]:
    """Rows with axis `field` folded: one row per (other axes, group), each metric the mean ±
    population std of its per-point values over `field` (n: how many); failed points left out."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["status"] != "done":
            continue
        axes = {k: v for k, v in r["axes"].items() if k != field}
        groups.setdefault((tuple(axes.items()), tuple(r["group"].items())), []).append(r)
    out = []
    for (axes, group), rs in groups.items():
        names = [m for m in rs[0]["metrics"] if all(m in r["metrics"] for r in rs)]
        metrics = {}
        for m in names:
            vals = [mean_of(r["metrics"][m]) for r in rs]
            if any(v is None or not math.isfinite(v) for v in vals):
                continue
            metrics[m] = {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "n": len(vals)}
        out.append({"point": ",".join(r["point"] for r in rs), "axes": dict(axes), "group": dict(group),
                    "metrics": metrics, "status": "done", "seconds": sum(r["seconds"] for r in rs),
                    "error": None, "averaged_over": {field: [r["axes"].get(field) for r in rs]}})
    return out


def markdown(rows: Sequence[dict], axes: Sequence[str], title: str) -> str:
    """One table: axis values, group keys, every metric, wall seconds, status (error if failed)."""
    group_keys = list(dict.fromkeys(k for r in rows for k in r["group"]))
    metric_keys = list(dict.fromkeys(k for r in rows for k in r["metrics"]))
    header = [*axes, *group_keys, *metric_keys, "point s", "status"]
    body = [[r["axes"].get(a, "") for a in axes] + [r["group"].get(k, "") for k in group_keys]
            + [fmt(r["metrics"].get(k)) for k in metric_keys]
            + [f"{r['seconds']:.1f}" if r.get("seconds") is not None else "",
               r["status"] if r["status"] == "done" else f"{r['status']}: {r.get('error') or ''}".replace("|", "/")]
            for r in rows]
    return f"# {title}\n\n" + tables.markdown_table(header, body)


def _as_number(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def plot(rows: Sequence[dict], metric: str, x_axis: str, line_axis: str | None, path: str | os.PathLike,
         title: str = "") -> None:
    """`metric` against axis `x_axis`, one line per value of `line_axis` (or one line), one panel
    per headline group (e.g. method, budget); error bars where the metric has a std."""
    # matplotlib only when a plot is asked for: it is most of the merge's time otherwise.
    from ecos_jax.reporting.plots import plt, save_figure  # noqa: PLC0415
    rows = [r for r in rows if r["status"] == "done" and metric in r["metrics"] and x_axis in r["axes"]]
    if not rows:
        raise ValueError(f"No finished point reports {metric!r} with axis {x_axis!r}.")
    groups = list(dict.fromkeys(tuple(r["group"].items()) for r in rows))
    xs = list(dict.fromkeys(r["axes"][x_axis] for r in rows))
    numeric = all(_as_number(x) is not None for x in xs)
    fig, axs = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.4), squeeze=False, sharey=True)
    for ax, g in zip(axs[0], groups):
        rs = [r for r in rows if tuple(r["group"].items()) == g]
        lines = list(dict.fromkeys(r["axes"].get(line_axis) if line_axis else None for r in rs))
        for line in lines:
            pts = [r for r in rs if line_axis is None or r["axes"].get(line_axis) == line]
            order = sorted(pts, key=lambda r: _as_number(r["axes"][x_axis]) if numeric else xs.index(r["axes"][x_axis]))
            x = [_as_number(r["axes"][x_axis]) if numeric else xs.index(r["axes"][x_axis]) for r in order]
            y = [mean_of(r["metrics"][metric]) for r in order]
            err = [std_of(r["metrics"][metric]) for r in order]
            ax.errorbar(x, y, yerr=err if any(err) else None, marker="o", capsize=3,
                        label=f"{line_axis}={line}" if line_axis else metric)
        if not numeric:
            ax.set_xticks(range(len(xs)), xs, rotation=30, fontsize=7)
        elif len(xs) > 2 and min(map(_as_number, xs)) > 0 and max(map(_as_number, xs)) / min(map(_as_number, xs)) >= 10:
            ax.set_xscale("log")
        ax.set_xlabel(x_axis)
        ax.set_title(", ".join(f"{k}={v}" for k, v in g) or title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axs[0, 0].set_ylabel(metric)
    if title and len(groups) > 1:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
