"""What a sweep is: axes over dotted config fields, combined into named points.

An axis is one field and its values (`ecos.epsilon=0.1,0.58,2`). Axes in one *group* are zipped
(their i-th values go together, so they need equal lengths); groups are combined by product,
first group outermost (itertools.product order). Every point is the fixed overrides plus one
value of every axis, and is named by its overrides:

    >>> pts = grid([{"ecos.epsilon": ["0.1", "2"]}, {"ecos.num_centroids": ["10", "30"]}])
    >>> [p.name for p in pts]
    ['ecos.epsilon=0.1,ecos.num_centroids=10', 'ecos.epsilon=0.1,ecos.num_centroids=30', ...]

Values are what the user wrote on the command line (strings, parsed later by the same
ml_collections parser the driver uses) or Python values (from a sweep file, or an experiment
that builds its own sweep); `cli_value` renders a Python value the way the command line takes it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ecos_jax.utils.errors import ConfigError

# Filesystem-safe on Linux, macOS and Windows: brackets and quotes go, any other run of
# characters outside this set becomes '-' (a tuple (100, 200) reads 100-200).
_DROP = re.compile(r"[()\[\]{}'\"]")
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]+")
MAX_NAME = 120  # characters of a point's directory name before it is cut and hashed


@dataclasses.dataclass(frozen=True)
class Point:
    """One run of a sweep: `overrides` ({dotted field: value}) on top of the base config.

    `name` is its sub-workdir (relative, '/'-separated components allowed); `axes` the subset of
    `overrides` that the sweep varies (the table's columns), in axis order.
    """

    name: str
    overrides: Mapping[str, Any]
    axes: Mapping[str, Any]


def split_values(text: str) -> list[str]:
    """Splits `a,b,(1,2),'x,y'` on the commas outside brackets and quotes.

    >>> split_values("0.1,(100,200),'a,b'")
    ['0.1', '(100,200)', "'a,b'"]
    """
    out, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur).strip())
    if quote or depth:
        raise ConfigError(f"Unbalanced brackets or quotes in {text!r}.")
    return out


def parse_assignment(text: str, *, many: bool) -> tuple[str, list[str]]:
    """'field=v1,v2' -> ('field', ['v1', 'v2']) (many) or 'field=v' -> ('field', ['v'])."""
    field, eq, values = text.partition("=")
    field = field.strip()
    if not eq or not field or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", field):
        raise ConfigError(f"Expected FIELD=VALUE{'S' if many else ''} with a dotted config field, got {text!r}.")
    vals = split_values(values) if many else [values.strip()]
    if any(v == "" for v in vals):
        raise ConfigError(f"Empty value in {text!r}.")
    return field, vals


def cli_value(value: Any) -> str:
    """How the command line writes `value` (`--config.f=<this>`): strings as they are, the rest
    as Python literals (tuples `(1, 2)`, floats with repr's round-trip precision)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        value = tuple(value)
    return repr(value)


def _safe(text: str) -> str:
    return _UNSAFE.sub("-", _DROP.sub("", text).strip()) or "-"


def point_name(overrides: Mapping[str, Any]) -> str:
    """A readable, filesystem-safe and stable directory name for a point's overrides.

    `field=value` pairs in order, joined by ','; brackets and quotes dropped, other characters outside [A-Za-z0-9._=+-] become '-'.
    Names longer than MAX_NAME are cut and end in a hash of the full overrides, so they stay
    unique. No overrides at all: 'base'.
    """
    if not overrides:
        return "base"
    name = ",".join(f"{k}={_safe(cli_value(v))}" for k, v in overrides.items())
    if len(name) > MAX_NAME:
        digest = hashlib.sha256(repr([(k, cli_value(v)) for k, v in overrides.items()]).encode()).hexdigest()[:10]
        name = name[:MAX_NAME - 11] + "~" + digest
    return name


def grid(groups: Sequence[Mapping[str, Sequence[Any]]], fixed: Mapping[str, Any] | None = None) -> list[Point]:
    """Every point of the product of `groups`, the axes within a group zipped.

    groups: [{field: [values]}]: a group of several fields zips them (equal lengths); the groups
    multiply, the first outermost. fixed: overrides every point carries (not in the name).
    Raises ConfigError for an empty axis, unequal zipped lengths, a field given twice, or two
    points whose names collide.
    """
    fixed = dict(fixed or {})
    seen: set[str] = set(fixed)
    rows_per_group = []
    for g in groups:
        if not g:
            continue
        for f, vals in g.items():
            if f in seen:
                raise ConfigError(f"Field {f!r} is given twice (two axes, or an axis and --set).")
            seen.add(f)
            if len(vals) == 0:
                raise ConfigError(f"Axis {f!r} has no values.")
        lengths = {f: len(v) for f, v in g.items()}
        if len(set(lengths.values())) > 1:
            raise ConfigError(f"Zipped axes need equal lengths, got {lengths}.")
        n = next(iter(lengths.values()))
        rows_per_group.append([{f: g[f][i] for f in g} for i in range(n)])
    points = []
    for combo in itertools.product(*rows_per_group):
        axes = {k: v for row in combo for k, v in row.items()}
        points.append(Point(point_name(axes), {**fixed, **axes}, axes))
    names = [p.name for p in points]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"Two points would share the directory {dup[0]!r}: give distinct values.")
    return points
