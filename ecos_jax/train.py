"""The jitted optax train / eval loop shared by every experiment.

The data live on the device and every batch has the same shape (the last one is padded and
masked), so a model compiles its step once per (dataset, batch size) and every later `fit`
with the same settings reuses it.

    >>> model = get_model("cnn", num_classes=10)
    >>> result = fit(model, x_train, y_train, epochs=5, batch_size=64, learning_rate=1e-3, seed=0)
    >>> evaluate(model, result.params, x_test, y_test)
    0.97

`fit` trains any supervised objective: the default is softmax cross-entropy on integer labels;
pass `loss_fn=kl_distillation(T)` with teacher logits as targets, or `cosine_regression` with
embedding targets and `apply_kwargs={"features": True}` (CoOpt).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

PyTree = Any
# (model outputs [B, ...], targets [B, ...]) -> per-example loss [B]
LossFn = Callable[[jax.Array, jax.Array], jax.Array]

log = logging.getLogger(__name__)


def softmax_xent(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Cross-entropy with integer labels: `[B, K], [B] -> [B]` (nats)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def kl_distillation(temperature: float) -> LossFn:
    """Temperature-scaled KL(teacher || student) · T² (Hinton et al.); targets are teacher logits."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")

    def loss(logits: jax.Array, teacher_logits: jax.Array) -> jax.Array:
        t = jax.nn.log_softmax(teacher_logits / temperature)
        s = jax.nn.log_softmax(logits / temperature)
        return jnp.sum(jnp.exp(t) * (t - s), axis=-1) * temperature**2

    return loss


def cosine_regression(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """1 − cos(outputs, targets) per example: `[B, d], [B, d] -> [B]`."""
    o = outputs / (jnp.linalg.norm(outputs, axis=-1, keepdims=True) + 1e-8)
    t = targets / (jnp.linalg.norm(targets, axis=-1, keepdims=True) + 1e-8)
    return 1.0 - jnp.sum(o * t, axis=-1)


def mse_regression(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean squared error per example: `[B, d], [B, d] -> [B]`."""
    return jnp.mean((outputs - targets) ** 2, axis=-1)


@dataclasses.dataclass
class FitResult:
    """What `fit` returns.

    params: the final parameters.
    history: one dict per epoch ({"epoch", "loss", and "eval_accuracy" when eval data given}).
    snapshots: (epoch, params) every `snapshot_every` epochs (VoG checkpoints), oldest first.
    """

    params: PyTree
    history: list[dict[str, float]]
    snapshots: list[tuple[int, PyTree]] = dataclasses.field(default_factory=list)


@functools.lru_cache(maxsize=128)
def make_optimizer(name: str, learning_rate: float, weight_decay: float = 0.0) -> optax.GradientTransformation:
    """'adam' | 'adamw' | 'sgd' (momentum 0.9).

    Memoised: the optimiser is a static argument of the jitted epoch, so returning the same
    object for the same settings is what lets a second `fit` reuse the compiled epoch.
    """
    if learning_rate <= 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}.")
    if name == "adam":
        return optax.adam(learning_rate)
    if name == "adamw":
        return optax.adamw(learning_rate, weight_decay=weight_decay)
    if name == "sgd":
        return optax.sgd(learning_rate, momentum=0.9)
    raise ValueError(f"Unknown optimizer {name!r}; choose 'adam', 'adamw' or 'sgd'.")


def _check_inputs(x: np.ndarray, targets: np.ndarray, weights: np.ndarray | None) -> None:
    if x.shape[0] == 0:
        raise ValueError("Cannot train on an empty dataset (0 examples).")
    if targets.shape[0] != x.shape[0]:
        raise ValueError(f"x has {x.shape[0]} examples but targets have {targets.shape[0]}.")
    if weights is not None and weights.shape != (x.shape[0],):
        raise ValueError(f"weights must have shape [{x.shape[0]}], got {weights.shape}.")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise ValueError("Training inputs contain NaN or inf.")
    if np.issubdtype(targets.dtype, np.floating) and not np.isfinite(targets).all():
        raise ValueError("Training targets contain NaN or inf.")


@partial(jax.jit, static_argnames=("model", "tx", "loss_fn", "apply_kwargs"), donate_argnums=(0, 1))
def _train_step(params, opt_state, x, targets, weights, idx, mask, *, model, tx, loss_fn, apply_kwargs):
    """One optimiser step on the batch `x[idx]` (`mask` zeroes padding). Returns (params, opt_state, loss)."""
    xb, tb, wb = x[idx], targets[idx], weights[idx] * mask

    def objective(p):
        per_example = loss_fn(model.apply(p, xb, **dict(apply_kwargs)), tb)
        return jnp.sum(per_example * wb) / jnp.maximum(jnp.sum(wb), 1e-12)

    loss, grads = jax.value_and_grad(objective)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def _epoch_batches(key: jax.Array, n: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled indices `[num_batches, batch_size]` and a mask that is 0 on the padded tail."""
    perm = np.asarray(jax.random.permutation(key, n))
    num_batches = -(-n // batch_size)
    pad = num_batches * batch_size - n
    idx = np.concatenate([perm, np.zeros(pad, perm.dtype)]).reshape(num_batches, batch_size)
    mask = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)]).reshape(num_batches, batch_size)
    return idx, mask


def _train_epoch(params, opt_state, key, x, targets, weights, *, model, tx, loss_fn, batch_size, apply_kwargs):
    """One epoch of jitted steps over fixed-shape batches. Returns (params, opt_state, mean loss).

    A Python loop over one compiled step, not a `lax.scan`: XLA's CPU backend runs
    convolutions inside a while-loop body several times slower (measured 7x for the small CNN),
    and per-step dispatch is negligible next to a step.
    """
    idx, mask = _epoch_batches(key, x.shape[0], batch_size)
    losses = []
    for b in range(idx.shape[0]):
        params, opt_state, loss = _train_step(params, opt_state, x, targets, weights, idx[b], mask[b],
                                              model=model, tx=tx, loss_fn=loss_fn, apply_kwargs=apply_kwargs)
        losses.append(loss)
    return params, opt_state, jnp.mean(jnp.stack(losses))


def fit(
    model: nn.Module,
    x: np.ndarray,
    targets: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    loss_fn: LossFn = softmax_xent,
    weights: np.ndarray | None = None,
    apply_kwargs: Mapping[str, Any] | None = None,
    init_params: PyTree | None = None,
    eval_data: tuple[np.ndarray, np.ndarray] | None = None,
    snapshot_every: int | None = None,
    progress: bool = True,
    desc: str = "train",
) -> FitResult:
    """Trains `model` on (x, targets) with optax; returns final params, history and snapshots.

    Args:
      model: a flax module (see `ecos_jax.models`).
      x: `[N, H, W, C]` float32 inputs.
      targets: `[N]` int labels, or `[N, ...]` float targets for a custom `loss_fn`.
      epochs, batch_size, learning_rate, seed: the usual; batch_size is clipped to N.
      loss_fn: per-example loss `(outputs [B,...], targets [B,...]) -> [B]`.
      weights: optional `[N]` per-example weights (data reweighting); default all ones.
      apply_kwargs: extra keyword arguments for `model.apply` (e.g. `{"features": True}`).
      init_params: start from these parameters instead of a fresh init.
      eval_data: (x, y) evaluated for accuracy after every epoch.
      snapshot_every: keep a copy of the params every this many epochs (VoG checkpoints).
      progress: show a tqdm bar over epochs and log one line per epoch.
    """
    x = np.asarray(x, np.float32)
    targets = np.asarray(targets)
    _check_inputs(x, targets, weights)
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if snapshot_every is not None and snapshot_every < 1:
        raise ValueError(f"snapshot_every must be >= 1, got {snapshot_every}.")
    batch_size = min(batch_size, x.shape[0])
    apply_kwargs = tuple(sorted((apply_kwargs or {}).items()))
    key = jax.random.key(seed)
    # The step donates its params buffers; copy the caller's so they stay alive after `fit`.
    params = (jax.tree.map(jnp.copy, init_params) if init_params is not None
              else _init(model, jax.random.fold_in(key, 0), x[:1]))
    tx = make_optimizer(optimizer, float(learning_rate), float(weight_decay))
    opt_state = tx.init(params)
    w = jnp.ones((x.shape[0],), jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
    xd, td = jnp.asarray(x), jnp.asarray(targets)

    history: list[dict[str, float]] = []
    snapshots: list[tuple[int, PyTree]] = []
    bar = tqdm(range(1, epochs + 1), desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    for epoch in bar:
        params, opt_state, loss = _train_epoch(
            params, opt_state, jax.random.fold_in(key, epoch), xd, td, w,
            model=model, tx=tx, loss_fn=loss_fn, batch_size=batch_size, apply_kwargs=apply_kwargs,
        )
        record = {"epoch": epoch, "loss": float(loss)}
        if not np.isfinite(record["loss"]):
            raise FloatingPointError(f"{desc}: training loss became {record['loss']} at epoch {epoch}; "
                                     "lower the learning rate.")
        if eval_data is not None:
            record["eval_accuracy"] = evaluate(model, params, *eval_data)
        history.append(record)
        if snapshot_every is not None and epoch % snapshot_every == 0:
            snapshots.append((epoch, jax.tree.map(jnp.copy, params)))  # the next step donates params
        if progress:
            bar.set_postfix({k: round(v, 4) for k, v in record.items() if k != "epoch"})
            log.info("%s epoch %d: %s", desc, epoch, ", ".join(f"{k}={v:.4f}" for k, v in record.items() if k != "epoch"))
    return FitResult(params=params, history=history, snapshots=snapshots)


@partial(jax.jit, static_argnames=("model",))
def _init(model, key, x):
    """`model.init` as one compiled program (eagerly, every initialiser op compiles on its own)."""
    return model.init(key, x)


@partial(jax.jit, static_argnames=("model", "apply_kwargs"))
def _apply(model, params, x, apply_kwargs=()):
    return model.apply(params, x, **dict(apply_kwargs))


def predict(
    model: nn.Module,
    params: PyTree,
    x: np.ndarray,
    *,
    batch_size: int = 1024,
    features: bool = False,
) -> np.ndarray:
    """Model outputs for `x: [N, ...]` in batches (logits `[N, K]`, or embeddings `[N, d]`)."""
    x = np.asarray(x, np.float32)
    if x.shape[0] == 0:
        raise ValueError("predict got an empty input (0 examples).")
    kw = (("features", True),) if features else ()
    outs = []
    for start in range(0, x.shape[0], batch_size):
        chunk = x[start:start + batch_size]
        n = chunk.shape[0]
        if n < batch_size and x.shape[0] > batch_size:  # pad the tail: one compiled shape
            chunk = np.concatenate([chunk, np.zeros((batch_size - n, *chunk.shape[1:]), chunk.dtype)])
        outs.append(np.asarray(_apply(model, params, chunk, kw))[:n])
    return np.concatenate(outs)


def evaluate(model: nn.Module, params: PyTree, x: np.ndarray, y: np.ndarray, *, batch_size: int = 1024) -> float:
    """Top-1 accuracy in [0, 1] of `model` on (x `[N, ...]`, y `[N]` int)."""
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)}.")
    logits = predict(model, params, x, batch_size=batch_size)
    return float(np.mean(np.argmax(logits, axis=-1) == np.asarray(y)))
