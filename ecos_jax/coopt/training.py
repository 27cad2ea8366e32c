"""One epoch loop for every CoOpt method, so budgets and timings are comparable.

CoOpt, its ablations, distillation, SimCLR and the supervised reference all train through
`train_epochs`: the same optimiser, batch size, number of steps per epoch and jitted
`lax.scan` epoch; only the per-batch objective differs. The epoch function is compiled ahead
of time and its compile time is reported separately, so the per-epoch seconds are steady-state
training time (what a time-to-accuracy comparison should use).

    >>> obj = regression_objective(net, cosine_regression)
    >>> run = train_epochs(obj, params, x, targets, epochs=10, batch_size=128,
    ...                    learning_rate=1e-3, seed=0, eval_every=2, eval_fn=probe_fn)
    >>> run.evals  # [{"epoch": 0, ...}, {"epoch": 2, ...}, ...]
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from ecos_jax.train import LossFn, make_optimizer

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


def _compiled_epoch(objective: Objective, optimizer: str, learning_rate: float, weight_decay: float,
                    batch_size: int, args: tuple) -> tuple[Any, float]:
    """The AOT-compiled epoch for these settings and argument shapes, and its compile seconds
    (0 when an identical one was compiled before in this process)."""
    shapes = tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in jax.tree.leaves(args))
    key = (objective, optimizer, learning_rate, weight_decay, batch_size, jax.tree.structure(args), shapes)
    if key in _COMPILED:
        return _COMPILED[key], 0.0
    start = time.perf_counter()
    tx = make_optimizer(optimizer, learning_rate, weight_decay)
    compiled = _make_epoch(objective, tx, batch_size).lower(*args).compile()
    _COMPILED[key] = compiled
    return compiled, time.perf_counter() - start


def _make_epoch(objective: Objective, tx: optax.GradientTransformation, batch_size: int):
    def epoch(params, opt_state, key, x, targets):
        num_batches = x.shape[0] // batch_size  # drop the ragged tail: SimCLR's negatives need full batches
        perm = jax.random.permutation(key, x.shape[0])[: num_batches * batch_size]
        idx = perm.reshape(num_batches, batch_size)

        def step(carry, inputs):
            params, opt_state = carry
            b_idx, i = inputs
            loss, grads = jax.value_and_grad(objective)(
                params, x[b_idx], targets[b_idx], jax.random.fold_in(key, i))
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), losses = jax.lax.scan(
            step, (params, opt_state), (idx, jnp.arange(num_batches)))
        return params, opt_state, jnp.mean(losses)

    return jax.jit(epoch, donate_argnums=(0, 1))


def train_epochs(
    objective: Objective,
    params: PyTree,
    x: np.ndarray,
    targets: np.ndarray | None,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    eval_every: int | None = None,
    eval_fn: Callable[[PyTree], dict[str, float]] | None = None,
    progress: bool = True,
    desc: str = "train",
) -> TrainRun:
    """Trains `params` on `objective` for `epochs` passes over `x` in shuffled full batches.

    Args:
      objective: `(params, x [B, ...], targets [B, ...], key) -> scalar`.
      params: initial parameters (not modified; the returned ones are new buffers).
      x: `[N, H, W, C]` float32 inputs; targets: `[N, ...]` or None (self-supervised).
      epochs, batch_size, learning_rate, seed, optimizer, weight_decay: the usual; an epoch is
        `N // batch_size` steps (the ragged tail is left out, a different one each epoch).
      eval_every, eval_fn: `eval_fn(params) -> {name: value}` at epoch 0, every `eval_every`
        epochs and at the end; its time is not counted as training time.
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
    tx = make_optimizer(optimizer, learning_rate, weight_decay)
    key = jax.random.key(seed)
    xd = jnp.asarray(x)
    td = jnp.zeros((n,), jnp.float32) if targets is None else jnp.asarray(targets)
    params = jax.tree.map(jnp.array, params)  # private copies: the epoch donates its inputs
    opt_state = tx.init(params)

    epoch_fn, compile_seconds = _compiled_epoch(objective, optimizer, float(learning_rate), float(weight_decay),
                                                batch_size, (params, opt_state, jax.random.fold_in(key, 1), xd, td))

    evals: list[dict[str, float]] = []
    history: list[dict[str, float]] = []
    elapsed = 0.0

    def record_eval(epoch: int) -> None:
        if eval_fn is not None:
            evals.append({"epoch": epoch, "seconds": elapsed, **eval_fn(params)})

    record_eval(0)
    bar = tqdm(range(1, epochs + 1), desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    for epoch in bar:
        t0 = time.perf_counter()
        params, opt_state, loss = epoch_fn(params, opt_state, jax.random.fold_in(key, epoch), xd, td)
        loss = float(loss)  # blocks until the epoch is done
        seconds = time.perf_counter() - t0
        elapsed += seconds
        if not np.isfinite(loss):
            raise FloatingPointError(f"{desc}: loss became {loss} at epoch {epoch}; lower the learning rate.")
        history.append({"epoch": epoch, "loss": loss, "seconds": seconds})
        if eval_every is not None and (epoch % eval_every == 0 or epoch == epochs):
            record_eval(epoch)
            bar.set_postfix({k: round(v, 4) for k, v in evals[-1].items() if k not in ("epoch", "seconds")})
        log.info("%s epoch %d: loss=%.4f (%.2fs)", desc, epoch, loss, seconds)
    if eval_every is None and eval_fn is not None:
        record_eval(epochs)
    return TrainRun(params=params, history=history, evals=evals, compile_seconds=compile_seconds)
