"""Entry-point helper for experiment drivers: a bad configuration ends in one clear line.

Only configuration errors are shortened: a misspelled `--config.<field>` or a bad config
variant (raised by ml_collections while the flag is defined) and a `ConfigError` from an
experiment's validation. Anything else raised during a run is a bug or a failure worth its
traceback, and keeps it.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from absl import app

from ecos_jax.utils import allocator
from ecos_jax.utils.errors import ConfigError

# What ml_collections raises while it loads the config file and applies `--config.*`
# overrides: AttributeError/KeyError for a misspelled field (with a "did you mean" hint),
# ValueError/TypeError for a bad variant or value, FileNotFoundError for a missing file.
# Only caught around the flag's definition, where nothing but the config runs.
_OVERRIDE_ERRORS = (ValueError, KeyError, AttributeError, TypeError, FileNotFoundError)
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
    except _OVERRIDE_ERRORS as e:
        _fail(e)


def main(config_file: str, experiment: Callable[[Any, str], Any], *, workdir: str,
         quiet_absl: bool = False) -> None:
    """The whole of a driver: `--config` (configs/<config_file>), `--workdir`, then
    `experiment(config, workdir)` under `run`, so a bad configuration ends in one line.

    quiet_absl: silence absl's INFO/WARNING logs (dp_accounting's RDP-order convergence chatter).
    """
    from absl import flags  # noqa: PLC0415

    # Before anything computes, so XLA's worker threads start on the tuned heap.
    allocator.configure()
    config = define_config(config_file)
    workdir_flag = flags.DEFINE_string("workdir", workdir, "Where results (and resumable state) are written.")

    def _main(argv):
        del argv
        logging.getLogger("ecos_jax").setLevel(logging.INFO)
        if quiet_absl:
            logging.getLogger("absl").setLevel(logging.ERROR)
        experiment(config.value, workdir_flag.value)

    run(_main)


def run(main: Callable[[list[str]], None]) -> None:
    """`absl.app.run(main)`, turning a `ConfigError` into `error: ...` and exit 2.

    Validation raises ConfigError (a ValueError) before any work; every other exception
    propagates with its traceback. Set ECOS_JAX_TRACEBACK=1 to see a ConfigError's traceback too.
    """
    try:
        app.run(main)
    except ConfigError as e:
        _fail(e)
