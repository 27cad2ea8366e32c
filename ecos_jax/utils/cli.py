"""Entry-point helper for experiment drivers: bad input ends in one clear line, not a traceback."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from absl import app

_INPUT_ERRORS = (ValueError, KeyError, AttributeError, TypeError, FileNotFoundError)
_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))), "configs")


def _fail(e: Exception) -> None:
    """Prints `error: <type>: <message>` and exits 2 (re-raises with ECOS_JAX_TRACEBACK=1)."""
    if os.environ.get("ECOS_JAX_TRACEBACK"):
        raise e
    msg = str(e).strip("'\"").replace("\\n", " ").replace("\\'", "'")
    print(f"error: {type(e).__name__}: {msg}", file=sys.stderr)
    sys.exit(2)


def define_config(config_file: str, name: str = "config"):
    """`--config`, defaulting to configs/<config_file>, with `--config.<field>=` overrides.

    ml_collections applies the overrides on the command line while the flag is defined (at
    import), so a misspelled field (`--config.budgt=3`) is reported here, in one line.
    """
    from ml_collections import config_flags  # noqa: PLC0415

    try:
        return config_flags.DEFINE_config_file(
            name, os.path.join(_CONFIGS, config_file),
            "Experiment configuration (an ml_collections config file).", lock_config=True)
    except _INPUT_ERRORS as e:
        _fail(e)


def run(main: Callable[[list[str]], None]) -> None:
    """`absl.app.run(main)`, turning configuration and input errors into `error: ...` and exit 2.

    Misspelled config fields (`--config.budgt=3`) surface from ml_collections as
    AttributeError/KeyError with a "did you mean" hint; validation raises ValueError. Set
    ECOS_JAX_TRACEBACK=1 to see the full traceback instead.
    """
    try:
        app.run(main)
    except _INPUT_ERRORS as e:
        _fail(e)
