"""Checkpoints of a DP-SGD run in progress, so that a killed run resumes where it stopped.

The checkpoint itself is the training loop's (`ecos_jax.training.checkpoint`): the whole
`TrainState` (parameters; the optimiser state, which carries the secret noise key and its step
counter, `noise.NoiseState`; the step; the sampling key) and the history, whose per-chunk
records hold the truncated and non-finite counts. Batches and noise are functions of (key,
step) only, so a resumed run draws exactly the batches and noise an uninterrupted run would,
and ends with the same parameters bit for bit.

What is DP-specific is the fingerprint each checkpoint stores: the `DPSGDConfig` (σ, q, C, N,
M, clipping, ...), the number of steps T, the seed, the chunk length, the shapes of every state
leaf, the loss and a hash of the training data. A run whose fingerprint differs refuses the
checkpoint (ValueError naming the fields) instead of mixing two runs, whose privacy accounting
would describe neither. The optimiser's hyper-parameters are not visible in its state and are
not checked.

Security: the checkpoint contains the noise key. With it (and the checkpointed parameters)
anyone can regenerate the noise of every remaining step, and from the parameters alone one
learns a model that has not been released. Protect a checkpoint directory like the training
data itself, and delete it when the run's model has been released.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ecos_jax.training.checkpoint import Checkpointer, data_hash, state_spec

PyTree = Any


def fingerprint(config, *, steps: int, seed: int | None, log_every: int, state: PyTree,
                x, y, loss, padding="full") -> dict:
    """What must match for a checkpoint to belong to this run (JSON-ready).

    Floats are written with `repr`, which round-trips exactly, so σ = 1.1 and σ = 1.1000001
    are different runs. `padding` ("full", or the prefix lengths a bucketed `dpsgd.train`
    runs at) is recorded only when it is not "full",
    so checkpoints written before the option existed still resume: the two paths agree only
    to float tolerance, and a run resumes bit for bit only on the path that wrote it.
    """
    fields = {f.name: repr(getattr(config, f.name)) for f in dataclasses.fields(config)}
    fields["max_batch_size"] = repr(config.sampler().max_batch_size)  # the resolved M
    extra = {} if isinstance(padding, str) and padding == "full" else {
        "padding": padding if isinstance(padding, str) else [int(n) for n in padding]}
    return {
        **extra,
        "config": fields,
        "steps": int(steps),
        "seed": seed if seed is None else int(seed),
        "log_every": int(log_every),
        "state": state_spec(state),
        "loss": f"{getattr(loss, '__module__', '')}.{getattr(loss, '__qualname__', repr(loss))}",
        "data_sha256": data_hash(x, y),
    }


def checkpointer(directory, fingerprint: dict, *, max_to_keep: int = 2) -> Checkpointer:
    """The training loop's checkpointer for one DP-SGD run in `directory`."""
    return Checkpointer(
        directory, fingerprint, what="DP-SGD run", max_to_keep=max_to_keep,
        why="Resuming would mix two runs whose privacy accounting describes neither. ")
