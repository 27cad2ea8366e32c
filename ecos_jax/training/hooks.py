"""Hooks for `loop.train_loop`: `hook(state, record)` after each chunk.

  Snapshots(every, key)    copies of the params every `every` chunks (VoG's K checkpoints)
  Evaluate(fn, every, key) adds `fn(params)`'s values to the record
  WriteMetrics(writer)     hands each record to a metric writer (`write_scalars(step, dict)`,
                           e.g. `reporting.metrics.JsonlWriter`) instead of keeping lists
  Callback(fn)             calls `fn(record)` (e.g. to stop a run by raising)

A progress bar is a hook too; the experiments layer passes one in
(`experiments.progress.ProgressBar`), so nothing here draws.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from ecos_jax.training.state import TrainState

PyTree = Any


class MetricWriter(Protocol):
    """What `WriteMetrics` writes to: clu's `metric_writers` interface, scalars only."""

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None: ...


class Snapshots:
    """Keeps `(record[key], params copy)` whenever `record[key] % every == 0`, oldest first.

    Copies, because the next step donates the parameter buffers it is given."""

    def __init__(self, every: int, key: str = "epoch"):
        if every < 1:
            raise ValueError(f"snapshot every must be >= 1, got {every}.")
        self.every, self.key = int(every), key
        self.snapshots: list[tuple[int, PyTree]] = []

    def __call__(self, state: TrainState, record: dict) -> None:
        n = int(record[self.key])
        if n % self.every == 0:
            self.snapshots.append((n, jax.tree.map(jnp.copy, state.params)))


class Evaluate:
    """Adds `fn(params) -> {name: value}` to the record every `every` chunks (1: each)."""

    def __init__(self, fn: Callable[[PyTree], Mapping[str, float]], every: int = 1, key: str = "epoch"):
        if every < 1:
            raise ValueError(f"evaluate every must be >= 1, got {every}.")
        self.fn, self.every, self.key = fn, int(every), key

    def __call__(self, state: TrainState, record: dict) -> None:
        if int(record[self.key]) % self.every == 0:
            record.update({k: float(v) for k, v in self.fn(state.params).items()})


class WriteMetrics:
    """Writes each record's scalars to `writer` at step `record[key]` (the counter itself is
    not repeated among the scalars)."""

    def __init__(self, writer: MetricWriter, key: str = "epoch", prefix: str = ""):
        self.writer, self.key, self.prefix = writer, key, prefix

    def __call__(self, state: TrainState, record: dict) -> None:
        self.writer.write_scalars(int(record[self.key]), {
            f"{self.prefix}{k}": v for k, v in record.items()
            if k != self.key and isinstance(v, int | float)})

    def close(self) -> None:
        """Flushes the writer when the loop ends (the writer itself stays open for others)."""
        if hasattr(self.writer, "flush"):
            self.writer.flush()


class Callback:
    """Calls `fn(record)` after each chunk; an exception it raises stops the run there."""

    def __init__(self, fn: Callable[[dict], None]):
        self.fn = fn

    def __call__(self, state: TrainState, record: dict) -> None:
        self.fn(record)
