"""One epoch loop for every CoOpt method, so budgets and timings are comparable.

CoOpt, its ablations, distillation, SimCLR and the supervised reference all train through
`train_epochs`: the same optimiser, batch size, number of steps per epoch and jitted
`lax.scan` epoch of `training.steps.gradient_step`; only the per-batch objective differs. The
epochs run in the training loop (`training.loop.train_loop`), one AOT-compiled epoch per
chunk; its compile time is reported separately, so the per-epoch seconds are steady-state
training time (what a time-to-accuracy comparison should use).

    >>> obj = regression_objective(net, cosine_regression)
    >>> run = train_epochs(obj, params, x, targets, optimizer=make_optimizer("adam", 1e-3),
    ...                    epochs=10, batch_size=128, seed=0, eval_every=2, eval_fn=probe_fn)
    >>> run.evals  # [{"epoch": 0, ...}, {"epoch": 2, ...}, ...]
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ecos_jax.training.loop import Hook, train_loop
from ecos_jax.training.losses import LossFn
from ecos_jax.training.state import TrainState, init_state
from ecos_jax.training.steps import gradient_step

PyTree = Any
# (params, x [B, ...], targets [B, ...], key) -> scalar loss averaged over the batch
Objective = Callable[[PyTree, jax.Array, jax.Array, jax.Array], jax.Array]

log = logging.getLogger(__name__)


@functools.cache
def regression_objective(model: nn.Module, loss_fn: LossFn,
                         augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None) -> Objective:
    """Mean of `loss_fn(model(x), targets)` over the batch (regression, distillation, labels).

    augment: optional `augment(key, x) -> x'` (e.g. `ssl.Augment`); x' keeps x's target, as
    when a supervised model trains with data augmentation.
    Cached: equal arguments give the same function, so `train_epochs` reuses its compiled
    epoch across runs (seeds, ablations) instead of recompiling.
    """

    def objective(params, xb, tb, key):
        if augment is not None:
            xb = augment(key, xb)
        return jnp.mean(loss_fn(model.apply(params, xb), tb))

    return objective


@dataclasses.dataclass
class TrainRun:
    """What `train_epochs` returns.

    params: final parameters.
    history: per epoch {"epoch", "loss", "seconds"} (seconds: wall time of that epoch's
      training only, after compilation).
    evals: `{"epoch": e, "seconds": cumulative training seconds, **eval_fn(params)}` at
      epoch 0 (the initialisation), every `eval_every` epochs and at the last epoch.
    compile_seconds: ahead-of-time compilation of the epoch function (0 if it was reused).
    """

    params: PyTree
    history: list[dict[str, float]]
    evals: list[dict[str, float]]
    compile_seconds: float


_COMPILED: dict[tuple, Any] = {}


def _compiled_epoch(objective: Objective, tx: optax.GradientTransformation, batch_size: int,
                    args: tuple) -> tuple[Any, float]:
    """The AOT-compiled epoch for these settings and argument shapes, and its compile seconds
    (0 when an identical one was compiled before in this process)."""
    shapes = tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in jax.tree.leaves(args))
    key = (objective, tx, batch_size, jax.tree.structure(args), shapes)
    if key in _COMPILED:
        return _COMPILED[key], 0.0
    start = time.perf_counter()
    compiled = _make_epoch(objective, tx, batch_size).lower(*args).compile()
    _COMPILED[key] = compiled
    return compiled, time.perf_counter() - start


def _make_epoch(objective: Objective, tx: optax.GradientTransformation, batch_size: int):
    step = gradient_step(lambda params, batch, key: objective(params, *batch, key), tx)

    def epoch(state: TrainState, key, x, targets):
        num_batches = x.shape[0] // batch_size  # drop the ragged tail: SimCLR's negatives need full batches
        perm = jax.random.permutation(key, x.shape[0])[: num_batches * batch_size]
        idx = perm.reshape(num_batches, batch_size)

        def body(state, inputs):
            b_idx, i = inputs
            state, metrics = step(state, (x[b_idx], targets[b_idx]), jax.random.fold_in(key, i))
            return state, metrics["loss"]

        state, losses = jax.lax.scan(body, state, (idx, jnp.arange(num_batches)))
        return state, jnp.mean(losses)

    return jax.jit(epoch, donate_argnums=(0,))


def train_epochs(
    objective: Objective,
    params: PyTree,
    x: np.ndarray,
    targets: np.ndarray | None,
    *,
    optimizer: optax.GradientTransformation,
    epochs: int,
    batch_size: int,
    seed: int,
    eval_every: int | None = None,
    eval_fn: Callable[[PyTree], dict[str, float]] | None = None,
    hooks: Sequence[Hook] = (),
    desc: str = "train",
) -> TrainRun:
    """Trains `params` on `objective` for `epochs` passes over `x` in shuffled full batches.

    Args:
      objective: `(params, x [B, ...], targets [B, ...], key) -> scalar`.
      params: initial parameters (not modified; the returned ones are new buffers).
      x: `[N, H, W, C]` float32 inputs; targets: `[N, ...]` or None (self-supervised).
      optimizer: any optax transformation; pass the same object (`training.make_optimizer`
        is memoised) to reuse the compiled epoch across runs.
      epochs, batch_size, seed: the usual; an epoch is `N // batch_size` steps (the ragged
        tail is left out, a different one each epoch).
      eval_every, eval_fn: `eval_fn(params) -> {name: value}` at epoch 0, every `eval_every`
        epochs and at the end; its time is not counted as training time.
      hooks: more `hook(state, record)` after each epoch (a progress bar, a metric writer).
    """
    x = np.asarray(x, np.float32)
    n = x.shape[0]
    if n == 0:
        raise ValueError("Cannot train on an empty dataset (0 examples).")
    if targets is not None and len(targets) != n:
        raise ValueError(f"x has {n} examples but targets have {len(targets)}.")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}.")
    if eval_every is not None and eval_every < 1:
        raise ValueError(f"eval_every must be >= 1, got {eval_every}.")
    if not np.isfinite(x).all():
        raise ValueError("Training inputs contain NaN or inf.")
    batch_size = min(batch_size, n)
    key = jax.random.key(seed)
    xd = jnp.asarray(x)
    td = jnp.zeros((n,), jnp.float32) if targets is None else jnp.asarray(targets)
    # Private copies: the epoch donates its inputs.
    state = init_state(jax.tree.map(jnp.array, params), optimizer, rng=key)

    epoch_fn, compile_seconds = _compiled_epoch(objective, optimizer, batch_size,
                                                (state, jax.random.fold_in(key, 1), xd, td))

    evals: list[dict[str, float]] = []
    elapsed = 0.0

    def record_eval(epoch: int, params) -> None:
        if eval_fn is not None:
            evals.append({"epoch": epoch, "seconds": elapsed, **eval_fn(params)})

    def epoch(state: TrainState, e: int):
        nonlocal elapsed
        t0 = time.perf_counter()
        state, loss = epoch_fn(state, jax.random.fold_in(state.rng, e), xd, td)
        loss = float(loss)  # blocks until the epoch is done
        seconds = time.perf_counter() - t0
        elapsed += seconds
        log.info("%s epoch %d: loss=%.4f (%.2fs)", desc, e, loss, seconds)
        return state, {"epoch": e, "loss": loss, "seconds": seconds}

    def evaluate(state: TrainState, record: dict) -> None:
        e = record["epoch"]
        if eval_every is not None and (e % eval_every == 0 or e == epochs):
            record_eval(e, state.params)

    record_eval(0, state.params)
    out = train_loop(epoch, state, num_chunks=int(epochs), hooks=[evaluate, *hooks], desc=desc)
    if eval_every is None and eval_fn is not None:
        record_eval(epochs, out.state.params)
    return TrainRun(params=out.state.params, history=out.history, evals=evals, compile_seconds=compile_seconds)
