"""One table from a sweep's points: each point's results.json through its experiment's adapter.

Writes into the sweep's workdir:

  sweep.md            the table (one row per point and headline group; failed points with their error)
  sweep.json          the same rows as JSON (and, with `average_over`, the folded rows)
  sweep_<metric>.png  `plot=(metric, x_axis, line_axis)`: the metric against one axis
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ecos_jax.reporting import sweeps as report
from ecos_jax.sweep import adapters
from ecos_jax.sweep.spec import Point, cli_value
from ecos_jax.sweep.targets import RESULTS_NAME
from ecos_jax.utils import io


def rows(workdir: str | Path, points: Sequence[Point], state: dict, experiment: str) -> list[dict]:
    """Headline rows of every point, in sweep order (a failed or unrun point: one row, no metrics)."""
    workdir = Path(workdir)
    out = []
    for p in points:
        s = state["points"].get(p.name) or {"status": "not run", "seconds": None, "error": None}
        base = {"point": p.name, "axes": {k: cli_value(v) for k, v in p.axes.items()}, "status": s["status"],
                "seconds": s.get("seconds"), "error": s.get("error")}
        results = workdir / p.name / RESULTS_NAME
        if s["status"] != "done" or not results.exists():
            out.append({**base, "group": {}, "metrics": {}})
            continue
        for h in adapters.headlines(experiment, json.loads(results.read_text())):
            out.append({**base, "group": h["group"], "metrics": h["metrics"]})
    return out


def write(workdir: str | Path, points: Sequence[Point], state: dict, experiment: str, *,
          average_over: str | None = None, plot: tuple[str, str, str | None] | None = None,
          title: str | None = None) -> dict:
    """Writes sweep.md, sweep.json (and the plot); returns {"rows", "averaged"?, "markdown"}."""
    workdir = Path(workdir)
    axes = list(dict.fromkeys(f for p in points for f in p.axes))
    rs = rows(workdir, points, state, experiment)
    title = title or f"Sweep of {experiment} ({len(points)} points)"
    md = report.markdown(rs, axes, title)
    out: dict = {"experiment": experiment, "axes": axes, "rows": rs}
    plotted = rs
    if average_over:
        avg = report.average_over(rs, average_over)
        kept = [a for a in axes if a != average_over]
        md += "\n" + report.markdown(avg, kept, f"Mean ± std over {average_over}")
        out["averaged"] = {"over": average_over, "rows": avg}
        plotted = avg
    if plot:
        metric, x_axis, line_axis = plot
        path = workdir / f"sweep_{metric}.png"
        report.plot(plotted, metric, x_axis, line_axis, path, title=title)
        out["plot"] = path.name
    io.write_json(workdir / "sweep.json", out)
    io.write_text(workdir / "sweep.md", md)
    out["markdown"] = md
    return out
