"""Supervised training on device-resident arrays: `fit`, `evaluate`, `predict`.

The data live on the device and every batch has the same shape (the last one is padded and
masked), so a model compiles its step once per (dataset, batch size, optimiser) and every later
`fit` with the same settings reuses it.

    >>> model = get_model("cnn", num_classes=10)
    >>> result = fit(model, x_train, y_train, optimizer=make_optimizer("adam", 1e-3),
    ...              epochs=5, batch_size=64, seed=0)
    >>> evaluate(model, result.params, x_test, y_test)
    0.97

`fit` is `loop.train_loop` over epochs of `steps.gradient_step` on any supervised objective:
the default is softmax cross-entropy on integer labels; pass `loss_fn=kl_distillation(T)` with
teacher logits as targets, or `cosine_regression` with embedding targets and
`apply_kwargs={"features": True}`. The optimiser is any optax transformation; the compiled
step takes it as a static argument, so pass the same object (e.g. the memoised
`make_optimizer`) to reuse the compilation across runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ecos_jax.training import hooks as hooks_lib
from ecos_jax.training.checkpoint import Checkpointer, data_hash, state_spec
from ecos_jax.training.loop import Hook, train_loop
from ecos_jax.training.losses import LossFn, softmax_xent
from ecos_jax.training.state import TrainState, init_state
from ecos_jax.training.steps import gradient_step

PyTree = Any


@dataclasses.dataclass
class FitResult:
    """What `fit` returns.

    params: the final parameters.
    history: one dict per epoch ({"epoch", "loss", and "eval_accuracy" when eval data given}).
    snapshots: (epoch, params) every `snapshot_every` epochs (VoG checkpoints), oldest first;
      the optimiser state is carried through them (one run, not restarts).
    state: the final `TrainState` (optimiser state included).
    """

    params: PyTree
    history: list[dict[str, float]]
    snapshots: list[tuple[int, PyTree]] = dataclasses.field(default_factory=list)
    state: TrainState | None = None


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


def weighted_loss(params, batch, key=None, *, model, loss_fn, apply_kwargs):
    """Σ_i w_i ℓ(model(x_i), t_i) / Σ_i w_i over `batch = (x [B, ...], t [B, ...], w [B])`
    (w: example weights times the padding mask)."""
    xb, tb, wb = batch
    per_example = loss_fn(model.apply(params, xb, **dict(apply_kwargs)), tb)
    return jnp.sum(per_example * wb) / jnp.maximum(jnp.sum(wb), 1e-12)


def _objective(model, loss_fn, apply_kwargs):
    return partial(weighted_loss, model=model, loss_fn=loss_fn, apply_kwargs=apply_kwargs)


@partial(jax.jit, static_argnames=("model", "tx", "loss_fn", "apply_kwargs"), donate_argnums=(0,))
def _train_step(state, x, targets, weights, idx, mask, *, model, tx, loss_fn, apply_kwargs):
    """One optimiser step on the batch `x[idx]` (`mask` zeroes padding). Returns (state, loss)."""
    batch = (x[idx], targets[idx], weights[idx] * mask)
    state, metrics = gradient_step(_objective(model, loss_fn, apply_kwargs), tx)(state, batch)
    return state, metrics["loss"]


@partial(jax.jit, static_argnames=("model", "tx", "loss_fn", "apply_kwargs"), donate_argnums=(0,))
def _sharded_step(state, batch, *, model, tx, loss_fn, apply_kwargs):
    """One step on a batch already gathered and sharded over a mesh (`parallel.shard_batch`)."""
    state, metrics = gradient_step(_objective(model, loss_fn, apply_kwargs), tx)(state, batch)
    return state, metrics["loss"]


def epoch_batches(key: jax.Array, n: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled indices `[num_batches, batch_size]` and a mask that is 0 on the padded tail."""
    perm = np.asarray(jax.random.permutation(key, n))
    num_batches = -(-n // batch_size)
    pad = num_batches * batch_size - n
    idx = np.concatenate([perm, np.zeros(pad, perm.dtype)]).reshape(num_batches, batch_size)
    mask = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)]).reshape(num_batches, batch_size)
    return idx, mask


def fit(
    model: nn.Module,
    x: np.ndarray,
    targets: np.ndarray,
    *,
    optimizer: optax.GradientTransformation,
    epochs: int,
    batch_size: int,
    seed: int,
    loss_fn: LossFn = softmax_xent,
    weights: np.ndarray | None = None,
    apply_kwargs: Mapping[str, Any] | None = None,
    init_params: PyTree | None = None,
    eval_data: tuple[np.ndarray, np.ndarray] | None = None,
    snapshot_every: int | None = None,
    hooks: Sequence[Hook] = (),
    checkpoint_dir: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
    desc: str = "train",
) -> FitResult:
    """Trains `model` on (x, targets) with `optimizer`; returns final params, history and snapshots.

    Args:
      model: a flax module (see `ecos_jax.models`).
      x: `[N, H, W, C]` float32 inputs.
      targets: `[N]` int labels, or `[N, ...]` float targets for a custom `loss_fn`.
      optimizer: any optax transformation (`make_optimizer(name, lr)` for a config's name).
      epochs, batch_size, seed: the usual; batch_size is clipped to N. An epoch is one pass
        over a fresh shuffle (key `fold_in(key(seed), epoch)`), the last batch padded and masked.
      loss_fn: per-example loss `(outputs [B,...], targets [B,...]) -> [B]`.
      weights: optional `[N]` per-example weights (data reweighting); default all ones.
      apply_kwargs: extra keyword arguments for `model.apply` (e.g. `{"features": True}`).
      init_params: start from these parameters instead of a fresh init (they are copied).
      eval_data: (x, y) evaluated for accuracy after every epoch.
      snapshot_every: keep a copy of the params every this many epochs (VoG checkpoints).
      hooks: more `hook(state, record)` after each epoch (progress bar, metric writer, ...).
      checkpoint_dir: orbax checkpoints of the run there after every epoch; a second call
        with the same arguments resumes after the last epoch written.
      mesh: a data-parallel `jax.sharding.Mesh`: each batch is split over its devices
        (padded to a multiple of them and masked, `parallel.mesh.shard_batch`) and the state
        replicated; the result equals the one-device run to float tolerance. None: one device.
    """
    x = np.asarray(x, np.float32)
    targets = np.asarray(targets)
    _check_inputs(x, targets, weights)
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"optimizer must be an optax.GradientTransformation, got {optimizer!r}; "
                        "make_optimizer(name, learning_rate) builds one from a config's name.")
    batch_size = min(batch_size, x.shape[0])
    apply_kwargs = tuple(sorted((apply_kwargs or {}).items()))
    key = jax.random.key(seed)
    # The step donates its state; copy the caller's params so they stay alive after `fit`.
    params = (jax.tree.map(jnp.copy, init_params) if init_params is not None
              else _init(model, jax.random.fold_in(key, 0), x[:1]))
    state = init_state(params, optimizer, rng=key)
    w = np.ones((x.shape[0],), np.float32) if weights is None else np.asarray(weights, np.float32)
    static = dict(model=model, tx=optimizer, loss_fn=loss_fn, apply_kwargs=apply_kwargs)
    if mesh is None:
        xd, td, wd = jnp.asarray(x), jnp.asarray(targets), jnp.asarray(w)
    else:  # imported here: ecos_jax.parallel builds on privacy, which builds on this package
        from ecos_jax.parallel import mesh as mesh_lib

    def epoch(state: TrainState, e: int):
        idx, mask = epoch_batches(jax.random.fold_in(state.rng, e), x.shape[0], batch_size)
        # A Python loop over one compiled step, not a `lax.scan`: XLA's CPU backend runs
        # convolutions inside a while-loop body several times slower (measured 7x for the
        # small CNN), and per-step dispatch is negligible next to a step.
        losses = []
        for b in range(idx.shape[0]):
            if mesh is None:
                state, loss = _train_step(state, xd, td, wd, idx[b], mask[b], **static)
            else:
                i = idx[b]
                (xs, ts, ws), _ = mesh_lib.shard_batch(mesh, x[i], targets[i], w[i] * mask[b])
                state, loss = _sharded_step(state, (xs, ts, ws), **static)  # padding has weight 0
            losses.append(loss)
        return state, {"epoch": e, "loss": jnp.mean(jnp.stack(losses))}

    hook_list: list[Hook] = []
    if eval_data is not None:
        hook_list.append(hooks_lib.Evaluate(lambda p: {"eval_accuracy": evaluate(model, p, *eval_data)}))
    snaps = hooks_lib.Snapshots(snapshot_every) if snapshot_every is not None else None
    if snaps is not None:
        hook_list.append(snaps)
    ckpt = None
    if checkpoint_dir is not None:
        ckpt = Checkpointer(checkpoint_dir, {
            "epochs": int(epochs), "batch_size": int(batch_size), "seed": int(seed),
            "state": state_spec(state), "loss": getattr(loss_fn, "__qualname__", repr(loss_fn)),
            "data_sha256": data_hash(x, targets, w)}, what="fit run")
    out = train_loop(epoch, state, num_chunks=int(epochs), hooks=[*hook_list, *hooks], checkpointer=ckpt,
                     mesh=mesh, desc=desc)
    return FitResult(params=out.state.params, history=out.history,
                     snapshots=snaps.snapshots if snaps is not None else [], state=out.state)


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
