"""Dotted-path config overrides, the same as `--config.a.b=v` on the command line.

    >>> c = override(get_config("quick"), {"data.pool": "ood", "ecos.epsilon": 1.0})

`floats(value, field)` reads a tuple of floats such as `epsilons` whatever form the command
line gave it: ml_collections parses `--config.epsilons='(1,8)'` as a tuple of numbers but
`'(1,8,inf)'` (inf is no Python literal) as a one-string tuple.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import ml_collections


def override(config: ml_collections.ConfigDict, fields: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """A copy of `config` with `fields` ({"section.field": value}) set; `config` is untouched.

    Only existing fields can be set (a misspelled path raises KeyError naming it), as on the
    command line. The copy is locked if `config` was.
    """
    c = copy.deepcopy(config)
    with c.unlocked():
        for dotted, value in fields.items():
            node = c
            *path, leaf = dotted.split(".")
            for p in path:
                if p not in node:
                    raise KeyError(f"Unknown config field {dotted!r}: no section {p!r}.")
                node = node[p]
            if leaf not in node:
                raise KeyError(f"Unknown config field {dotted!r}.")
            node[leaf] = value
    return c


def floats(value: Any, field: str) -> tuple[float, ...]:
    """A tuple of floats (inf allowed) from a tuple of numbers or strings, or one string such as
    "1,3,8,inf" or "(1.0,8.0,inf)"; ValueError naming `field` for anything else or none."""
    items = [value] if isinstance(value, str) else list(value)
    out = []
    for item in items:
        if isinstance(item, str):
            parts = [p.strip() for p in item.strip().strip("()[]").split(",") if p.strip()]
        else:
            parts = [item]
        for p in parts:
            try:
                out.append(float(p))
            except (TypeError, ValueError) as e:
                raise ValueError(f"{field} must be comma-separated numbers or inf, got {value!r}.") from e
    if not out:
        raise ValueError(f"{field} is empty.")
    if any(math.isnan(e) for e in out):
        raise ValueError(f"{field} must be numbers or inf, got {value!r}.")
    return tuple(out)
