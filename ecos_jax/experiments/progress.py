"""Progress bars for the training loop, as hooks the experiments pass into the library.

The pure packages draw nothing; a run that wants a bar passes `bar(config.progress, desc)` as
(part of) the loop's `hooks`. The bar opens on the first chunk and closes when the loop ends
(`close()`), so one hook can follow several loops one after another.
"""

from __future__ import annotations

import logging

from tqdm.auto import tqdm

log = logging.getLogger(__name__)


class ProgressBar:
    """A tqdm bar over a training loop's chunks: `record[key]` is the position (epochs or
    steps), `total` its end (None: a counter), the record's other scalars the postfix."""

    def __init__(self, desc: str, total: int | None = None, key: str = "epoch"):
        self.desc, self.total, self.key = desc, total, key
        self._bar = None

    def __call__(self, state, record: dict) -> None:
        if self._bar is None:
            self._bar = tqdm(total=self.total, desc=self.desc, leave=False, dynamic_ncols=True)
        position = int(record.get(self.key, self._bar.n + 1))
        self._bar.update(position - self._bar.n)
        shown = {k: round(v, 4) for k, v in record.items() if k != self.key and isinstance(v, float)}
        self._bar.set_postfix(shown)
        log.info("%s %s %d: %s", self.desc, self.key, position, ", ".join(f"{k}={v}" for k, v in shown.items()))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def bar(enabled: bool, desc: str, total: int | None = None, key: str = "epoch") -> list[ProgressBar]:
    """`[ProgressBar(desc, total, key)]` when `enabled`, else `[]`: ready to splat into hooks."""
    return [ProgressBar(desc, total, key)] if enabled else []
