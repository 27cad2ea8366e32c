"""Entry-point helper for experiment drivers: bad input ends in one clear line, not a traceback."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from absl import app


def run(main: Callable[[list[str]], None]) -> None:
    """`absl.app.run(main)`, turning configuration and input errors into `error: ...` and exit 2.

    Misspelled config fields (`--config.budgt=3`) surface from ml_collections as
    AttributeError/KeyError with a "did you mean" hint; validation raises ValueError. Set
    ECOS_JAX_TRACEBACK=1 to see the full traceback instead.
    """
    try:
        app.run(main)
    except (ValueError, KeyError, AttributeError, TypeError, FileNotFoundError) as e:
        if os.environ.get("ECOS_JAX_TRACEBACK"):
            raise
        msg = str(e).strip("'\"").replace("\\n", " ").replace("\\'", "'")
        print(f"error: {type(e).__name__}: {msg}", file=sys.stderr)
        sys.exit(2)
