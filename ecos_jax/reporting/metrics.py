"""A metric writer: training metrics as JSON lines, one object per (step, scalars).

The training loop's `WriteMetrics` hook hands every record to a writer with clu's
`metric_writers` interface (`write_scalars(step, scalars)`, `flush()`, `close()`); this one
appends `{"step": step, "run": run, **scalars}` lines to a file, which any later tool reads with
`read_jsonl`. (clu's own writers need TensorFlow for their summary files; this keeps the same
interface without it.)

    >>> with JsonlWriter(workdir / "metrics.jsonl", run="cnn_eps3") as w:
    ...     fit(..., hooks=[WriteMetrics(w)])
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path


def _jsonable(v):
    v = float(v) if not isinstance(v, int | str) else v
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # strict JSON has no NaN or inf
    return v


class JsonlWriter:
    """Appends scalars to `path` as JSON lines (created with its folder if missing).

    run: a name written into every line, so several runs can share one file."""

    def __init__(self, path: str | os.PathLike, run: str | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.run = run
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        line = {"step": int(step), **({"run": self.run} if self.run is not None else {}),
                **{k: _jsonable(v) for k, v in scalars.items()}}
        self._file.write(json.dumps(line) + "\n")

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_jsonl(path: str | os.PathLike, run: str | None = None) -> list[dict]:
    """The lines `JsonlWriter` wrote to `path` (only those of `run` if given), in order."""
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if run is None or r.get("run") == run]
