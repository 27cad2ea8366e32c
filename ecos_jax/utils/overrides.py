"""Dotted-path config overrides, the same as `--config.a.b=v` on the command line.

Both go through ml_collections: `config_flags` applies `--config.*` flags, and `override` calls
`ConfigDict.update_from_flattened_dict`, which refuses a field the config does not have and a
value of the wrong type (an int field given a string) just as the flag would. Either refusal
becomes one `ConfigError` line naming the field (with the closest existing one for a misspelling).

    >>> c = override(get_config("quick"), {"data.pool": "ood", "ecos.epsilon": 1.0})

`floats(value, field)` reads a tuple of floats such as `epsilons` whatever form the command
line gave it: ml_collections parses `--config.epsilons='(1,8)'` as a tuple of numbers but
`'(1,8,inf)'` (inf is no Python literal) as a one-string tuple.
"""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Mapping
from typing import Any

import ml_collections

from ecos_jax.utils.errors import ConfigError


def fields(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Every leaf field of `config` as a dotted path ("ecos.epsilon", "budgets", ...)."""
    out = []
    for k, v in config.items():
        if isinstance(v, ml_collections.ConfigDict):
            out += fields(v, f"{prefix}{k}.")
        else:
            out.append(prefix + k)
    return out


def override(config: ml_collections.ConfigDict, values: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """A copy of `config` with `values` ({"section.field": value}) set; `config` is untouched.

    Only existing fields can be set, each to a value of its type (ints widen to floats; a
    placeholder takes its type or None), as on the command line; anything else raises
    ConfigError naming the field. The copy is locked if `config` was.
    """
    c = copy.deepcopy(config)
    known = fields(c)
    for dotted, value in values.items():
        if dotted not in known:
            close = difflib.get_close_matches(dotted, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"Unknown config field {dotted!r}{hint}.")
        try:
            c.update_from_flattened_dict({dotted: value})
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            msg = str(e).strip("'\"")
            raise ConfigError(f"Cannot set {dotted!r} to {value!r}: {msg}") from e
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
