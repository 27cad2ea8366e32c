"""Aggregating per-run records into mean ± std tables (markdown)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence

import numpy as np


def aggregate(records: Iterable[dict], keys: Sequence[str], value: str) -> dict[tuple, tuple[float, float, int]]:
    """Groups `records` by `keys` and returns {group: (mean, std, count)} of `value`.

    std is the population std over the group (seeds); NaN values raise, never propagate.
    """
    groups: dict[tuple, list[float]] = defaultdict(list)
    for r in records:
        v = float(r[value])
        if not np.isfinite(v):
            raise ValueError(f"Record {r} has a non-finite {value!r}.")
        groups[tuple(r[k] for k in keys)].append(v)
    return {g: (float(np.mean(v)), float(np.std(v)), len(v)) for g, v in groups.items()}


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def pm(mean: float, std: float, scale: float = 100.0, digits: int = 1) -> str:
    """'mean ± std' (scaled, e.g. accuracy in %)."""
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def pivot(
    stats: dict[tuple, tuple[float, float, int]],
    row_of: Callable[[tuple], object],
    col_of: Callable[[tuple], object],
) -> tuple[list, list, dict]:
    """Rearranges `aggregate` output into (row labels, column labels, {(row, col): stats})."""
    rows, cols, cells = [], [], {}
    for g, s in stats.items():
        r, c = row_of(g), col_of(g)
        if r not in rows:
            rows.append(r)
        if c not in cols:
            cols.append(c)
        cells[(r, c)] = s
    return rows, cols, cells


def beside_references(value, ceiling=None, chance=None, digits: int = 2) -> str:
    """'value (ceiling c, chance r)': a figure beside what it is read against. A number is
    formatted with `digits`; anything else (e.g. 'n/a', 'inf') is written as is; a missing
    reference (None) is left out."""
    def fmt(v) -> str:
        return f"{v:.{digits}f}" if isinstance(v, (float, int)) and not isinstance(v, bool) else str(v)

    refs = [f"{name} {fmt(v)}" for name, v in (("ceiling", ceiling), ("chance", chance))
            if v is not None]
    return fmt(value) + (f" ({', '.join(refs)})" if refs else "")
