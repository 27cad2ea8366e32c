"""Dotted-path config overrides, the same as `--config.a.b=v` on the command line.

    >>> c = override(get_config("quick"), {"data.pool": "ood", "ecos.epsilon": 1.0})
"""

from __future__ import annotations

import copy
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
