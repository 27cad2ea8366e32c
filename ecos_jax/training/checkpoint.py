"""Orbax checkpoints of a training run in progress, so that a killed run resumes where it stopped.

A checkpoint holds the whole `TrainState` (parameters, optimiser state, step, data key) and the
host-side history, and a fingerprint of the run that wrote it; a run whose fingerprint differs
refuses the checkpoint (ValueError naming the fields) instead of mixing two runs. Batches are
functions of (key, step) only, so a resumed run draws exactly the batches an uninterrupted run
would, and ends with the same parameters bit for bit.

Writes go through orbax (`CheckpointManager`): each step's checkpoint is written to a temporary
directory and renamed when complete, so a run killed mid-write leaves the previous checkpoint
intact. Typed PRNG keys are stored as their raw key data and re-wrapped on restore.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any


def _is_key(leaf) -> bool:
    return jnp.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key)


def _leaf_spec(leaf) -> list:
    if _is_key(leaf):
        return [list(leaf.shape), f"key<{jax.random.key_impl(leaf)}>"]
    return [list(np.shape(leaf)), str(jnp.asarray(leaf).dtype)]


def state_spec(tree: PyTree) -> dict[str, list]:
    """Shape and dtype of every leaf by its path (part of a run's fingerprint)."""
    paths = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(p): _leaf_spec(v) for p, v in paths}


def data_hash(*arrays) -> str:
    """SHA-256 over the arrays' shapes, dtypes and bytes (identifies the training data)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(a.data)
    return h.hexdigest()


def _differences(saved: dict, current: dict) -> list[str]:
    out = []
    for k in sorted(set(saved) | set(current)):
        a, b = saved.get(k), current.get(k)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict) and k != "state":
            out += [f"{k}.{d}" for d in _differences(a, b)]
        elif k in ("state", "data_sha256"):
            out.append(f"{k} (differs)")
        else:
            out.append(f"{k} (checkpoint {a!r}, this run {b!r})")
    return out


def _flatten(tree: PyTree) -> dict[str, jax.Array]:
    """Leaves by position, typed PRNG keys as their raw uint32 data (what orbax can store)."""
    leaves = jax.tree.leaves(tree)
    return {f"leaf{i:05d}": jax.random.key_data(v) if _is_key(v) else v
            for i, v in enumerate(leaves)}


def _unflatten(flat: dict[str, jax.Array], template: PyTree) -> PyTree:
    leaves, treedef = jax.tree.flatten(template)
    out = []
    for i, t in enumerate(leaves):
        v = flat[f"leaf{i:05d}"]
        out.append(jax.random.wrap_key_data(v, impl=jax.random.key_impl(t)) if _is_key(t) else v)
    return jax.tree.unflatten(treedef, out)


class Checkpointer:
    """Saves and restores one run's state in `directory` (see the module docstring).

    Args:
      directory: where checkpoints live (created if missing); one run per directory.
      fingerprint: JSON-ready dict of what must match (config, seed, data hash, state spec);
        a checkpoint written with another one is refused.
      what: the run's name in the refusal ("DP-SGD run").
      why: a sentence after the refusal saying what mixing the runs would break.
      max_to_keep: how many of the latest checkpoints to keep.
    """

    def __init__(self, directory, fingerprint: dict, *, what: str = "training run", why: str = "",
                 max_to_keep: int = 2):
        self.directory = Path(directory).absolute()
        # Through JSON once, so tuples and lists compare equal to what a checkpoint holds.
        self.fingerprint = json.loads(json.dumps(fingerprint))
        self.what, self.why = what, why
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True,
                # Synchronous: the training loop donates its state buffers to the next chunk.
                enable_async_checkpointing=False,
            ),
            item_names=("state", "host"),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def restore(self, template: PyTree) -> tuple[PyTree, dict] | None:
        """`(state, host)` from the latest checkpoint, None if there is none; `template` is a
        state of the right structure, shapes and shardings (the restore target).

        Raises:
          ValueError: the checkpoint was written by a run with a different fingerprint.
        """
        step = self._manager.latest_step()
        if step is None:
            return None
        host = self._manager.restore(step, args=ocp.args.Composite(host=ocp.args.JsonRestore()))["host"]
        diffs = _differences(host["fingerprint"], self.fingerprint)
        if diffs:
            raise ValueError(
                f"the checkpoint in {self.directory} (step {step}) was written by a different "
                f"{self.what}: {'; '.join(diffs)}. {self.why}Use a new checkpoint directory or "
                "delete this one.")
        abstract = {
            k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=v.sharding)
            for k, v in _flatten(template).items()
        }
        flat = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
        )["state"]
        return _unflatten(flat, template), host

    def save(self, step: int, state: PyTree, host: dict) -> None:
        """Writes the checkpoint of step `step` (atomically; old ones beyond max_to_keep go)."""
        self._manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(_flatten(state)),
                host=ocp.args.JsonSave({**host, "fingerprint": self.fingerprint}),
            ),
            force=True,
        )
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
