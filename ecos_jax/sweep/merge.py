"""One table from a sweep's points: each point's results.json through its experiment's adapter.

Writes into the sweep's workdir:

  sweep.md            the table (one row per point and headline group; failed points with their error)
  sweep.json          the same rows as JSON (and, with `average_over`, the folded rows)
  sweep_<metric>.png  `plot=(metric, x_axis, line_axis)`: the metric against one axis
  sweep_client_ledgers.json   where points keep client ledgers (the ECOS applications): each
                      client's releases over every finished point, composed

Privacy: a point's ε (its records', its clients' lifetime) covers that point only. When every
point asks the same client (an ECOS sweep), the client released at every point, so its total
over the sweep is the composition of all of them: `client_lifetime` composes each point's
`client_ledgers.json` into one ledger per client (every release once, each entry naming its
point), at the first ledger's δ and accountant, and the table reports it beside the points.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ecos_jax.privacy.ledger import PrivacyLedger
from ecos_jax.reporting import sweeps as report
from ecos_jax.reporting import tables
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


CLIENT_LEDGERS = "client_ledgers.json"


def client_lifetime(workdir: str | Path, points: Sequence[Point], state: dict) -> dict[str, PrivacyLedger]:
    """{client: one ledger of its releases at every finished point} from each point's
    client_ledgers.json ({} where no point keeps one). Raises ValueError if two points'
    ledgers hold under different neighbouring relations (they cannot be composed as one)."""
    out: dict[str, PrivacyLedger] = {}
    for p in points:
        path = Path(workdir) / p.name / CLIENT_LEDGERS
        if (state["points"].get(p.name) or {}).get("status") != "done" or not path.exists():
            continue
        for client, data in json.loads(path.read_text()).items():
            ledger = PrivacyLedger.from_dict(data)
            total = out.setdefault(client, PrivacyLedger(ledger.delta, accountant=ledger.accountant,
                                                         relation=ledger.relation,
                                                         reproducible_seed=ledger.reproducible_seed))
            for e in ledger.entries:
                total.record(e.name, e.event, sensitivity=e.sensitivity, relation=e.relation,
                             **{**e.meta, "point": p.name})
    return out


def _lifetime_md(ledgers: dict[str, PrivacyLedger]) -> str:
    first = next(iter(ledgers.values()))
    rows = [[c, len(v), len({e.meta["point"] for e in v.entries}), f"{v.epsilon():.4g}"] for c, v in ledgers.items()]
    return (f"\n## Client privacy over the whole sweep ({first.accountant.upper()}, δ = {first.delta:g})\n\n"
            "Each point's ε above covers that point alone. The same client answered at every point, "
            "so everything it released over the sweep composes to:\n\n"
            + tables.markdown_table(["client", "releases", "points", "client lifetime ε over the sweep"], rows))


def select(rs: list[dict], where: dict[str, str]) -> list[dict]:
    """The rows whose headline group or axes have every `where` value (compared as text);
    a point that did not finish is always kept, so its error stays in view."""
    def keep(r):
        have = {**{k: str(v) for k, v in r["group"].items()}, **r["axes"]}
        return r["status"] != "done" or all(have.get(k) == v for k, v in where.items())
    return [r for r in rs if keep(r)]


def write(workdir: str | Path, points: Sequence[Point], state: dict, experiment: str, *,
          average_over: str | None = None, plot: tuple[str, str, str | None] | None = None,
          title: str | None = None, where: dict[str, str] | None = None) -> dict:
    """Writes sweep.md, sweep.json (and the plot); returns {"rows", "averaged"?, "markdown"}.

    where: {group key or axis: value}: only those rows in the table and plot (e.g. method=ecos).
    """
    workdir = Path(workdir)
    axes = list(dict.fromkeys(f for p in points for f in p.axes))
    rs = select(rows(workdir, points, state, experiment), where or {})
    title = title or f"Sweep of {experiment} ({len(points)} points)"
    md = report.markdown(rs, axes, title)
    out: dict = {"experiment": experiment, "axes": axes, "where": where or {}, "rows": rs}
    plotted = rs
    if average_over:
        avg = report.average_over(rs, average_over)
        kept = [a for a in axes if a != average_over]
        md += "\n" + report.markdown(avg, kept, f"Mean ± std over {average_over}")
        out["averaged"] = {"over": average_over, "rows": avg}
        plotted = avg
    ledgers = client_lifetime(workdir, points, state)
    if ledgers:
        io.write_json(workdir / "sweep_client_ledgers.json", {c: v.to_dict() for c, v in ledgers.items()})
        out["client_lifetime"] = {c: {"epsilon": float(v.epsilon()), "releases": len(v)} for c, v in ledgers.items()}
        md += _lifetime_md(ledgers)
    if plot:
        metric, x_axis, line_axis = plot
        path = workdir / f"sweep_{metric}.png"
        report.plot(plotted, metric, x_axis, line_axis, path, title=title)
        out["plot"] = path.name
    io.write_json(workdir / "sweep.json", out)
    io.write_text(workdir / "sweep.md", md)
    out["markdown"] = md
    return out
