"""The one training loop: compiled chunks of steps at the edge, hooks for everything else.

See docs/algorithms.md#training-loop.

    state = init_state(params, tx, rng)
    result = train_loop(chunk, state, num_chunks=epochs, hooks=[Snapshots(2), Evaluate(fn)])

`chunk(state, i) -> (state, record)` runs the i-th (1-based) compiled chunk of pure steps
(`steps.gradient_step` or `steps.clipped_gradient_step`): an epoch of jitted steps over
shuffled batches (`supervised.fit`), an AOT-compiled `lax.scan` epoch (`coopt.training`), or
`log_every` DP-SGD steps over Poisson batches drawn inside one `lax.scan` (`privacy.dpsgd`).
`record` is a flat dict of scalars with the chunk's counter ("epoch" or "step") and metrics;
the loop turns it into Python floats, checks the loss is finite, and hands it to every hook.

Hooks are callables `hook(state, record) -> None` run in order after each chunk: they may add
keys to `record` (evaluation), keep copies of the parameters (`Snapshots`, the checkpoints
VoG needs), write metrics (`WriteMetrics`), draw a progress bar (the experiments layer passes
one in; this package draws none) or stop the run by raising. A hook with a `close()` method is
closed when the loop ends, however it ends. The records, after the hooks, are the returned
history.

Checkpoints (`checkpointer`, a `training.checkpoint.Checkpointer`): the whole `TrainState`
(optimiser state and data key included) and the history are written every `checkpoint_every`
chunks and after the last; a loop given a checkpointer that holds one resumes after the chunk
it was written at, so the optimiser state is carried exactly as in an uninterrupted run.

Data parallelism (`mesh`): with a `jax.sharding.Mesh` the state is replicated over its devices
(`parallel.mesh.replicate`) before the first chunk; the chunk shards its batches
(`parallel.mesh.shard_batch`) and XLA partitions the step. None: one device, as before.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ecos_jax.training.state import TrainState

PyTree = Any
Record = dict[str, float]
Chunk = Callable[[TrainState, int], tuple[TrainState, Mapping[str, Any]]]
Hook = Callable[[TrainState, Record], None]


@dataclasses.dataclass
class LoopResult:
    """state: the final `TrainState`; history: one record per chunk run (restored ones
    included); resumed_from: the chunks restored from a checkpoint (0: a fresh run)."""

    state: TrainState
    history: list[Record]
    resumed_from: int = 0


def _floats(record: Mapping[str, Any]) -> Record:
    return {k: v if isinstance(v, int | str) else float(v) for k, v in record.items()}


def train_loop(
    chunk: Chunk,
    state: TrainState,
    *,
    num_chunks: int,
    hooks: Sequence[Hook] = (),
    checkpointer=None,
    checkpoint_every: int = 1,
    mesh: jax.sharding.Mesh | None = None,
    desc: str = "train",
) -> LoopResult:
    """Runs chunks 1..num_chunks of `chunk` on `state` with `hooks` (see the module docstring).

    Raises:
      FloatingPointError: a record's loss is NaN or inf (the chunk it happened in is named).
      ValueError: the checkpointer holds a checkpoint of another run.
    """
    if isinstance(num_chunks, bool) or int(num_chunks) != num_chunks or num_chunks < 1:
        raise ValueError(f"num_chunks must be a positive integer, got {num_chunks!r}.")
    if int(checkpoint_every) != checkpoint_every or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be a positive integer, got {checkpoint_every!r}.")
    if mesh is not None:
        # Imported here: only mesh runs need it, and parallel.scores builds on valuation, which
        # builds on this package; a lazy import keeps training free of that edge.
        from ecos_jax.parallel import mesh as mesh_lib

        state = mesh_lib.replicate(mesh, state)
    history: list[Record] = []
    done = 0
    if checkpointer is not None:
        restored = checkpointer.restore(state)
        if restored is not None:
            state, host = restored
            done, history = int(host["done"]), [dict(h) for h in host["history"]]
    resumed_from = done
    try:
        for i in range(done + 1, int(num_chunks) + 1):
            state, raw = chunk(state, i)
            record = _floats(raw)
            if "loss" in record and not math.isfinite(record["loss"]):
                where = ", ".join(f"{k} {record[k]}" for k in ("epoch", "step") if k in record) or f"chunk {i}"
                raise FloatingPointError(f"{desc}: training loss became {record['loss']} at {where}; "
                                         "lower the learning rate.")
            for hook in hooks:
                hook(state, record)
            history.append(record)
            if checkpointer is not None and (i % checkpoint_every == 0 or i == num_chunks):
                checkpointer.save(i, state, {"done": i, "history": history})
    finally:
        for hook in hooks:
            if hasattr(hook, "close"):
                hook.close()
        if checkpointer is not None:
            checkpointer.close()
    return LoopResult(state=state, history=history, resumed_from=resumed_from)


def copy_tree(tree: PyTree) -> PyTree:
    """Fresh buffers for every leaf (a later step that donates its inputs cannot delete them)."""
    return jax.tree.map(jnp.copy, tree)
