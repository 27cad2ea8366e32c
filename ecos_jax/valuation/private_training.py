"""Training a model at a target ε while keeping the K checkpoints VoG needs.

The valuation experiments train one architecture at several privacy levels and score every
training sample with the result. This module is that one step:

* ε = ∞: ordinary training (`ecos_jax.train.fit`, Adam), a checkpoint every
  `checkpoints_every` epochs (`fit_with_checkpoints`);
* finite ε: DP-SGD (`ecos_jax.privacy.dpsgd.train`, Poisson sampling, flat clipping, plain SGD)
  with σ calibrated so the whole run reaches ε at δ, for the event the runs record (Poisson
  batches have M = q·N + 5 std slots, so it is truncated Poisson, which only PLD accounts: pass
  a `PrivacyLedger(accountant="pld")` to read `ledger.epsilon()`). The run is executed as K
  segments of `checkpoints_every` epochs, continuing from the previous segment's parameters;
  plain SGD has no optimiser state, so the segments are exactly one run, and the K segment
  events the ledger records compose to the event of one T-step run (same ε).

    >>> ledger = PrivacyLedger(delta=1e-5, accountant="pld")
    >>> run = train_at_epsilon(model, x, y, epsilon=3.0, epochs=6, checkpoints_every=1,
    ...                        ledger=ledger)
    >>> len(run.checkpoints), ledger.epsilon()      # 6, ≈ 3.0
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ecos_jax import train as trainer
from ecos_jax.privacy import dpsgd
from ecos_jax.privacy.ledger import PrivacyLedger

PyTree = Any


@dataclasses.dataclass
class TrainedModel:
    """params: final parameters; checkpoints: K params pytrees in training order (the last is
    `params`); epsilon: the target (inf for non-private); noise_multiplier: σ (0 if
    non-private); steps: optimiser steps; seconds: wall time of the training."""

    params: PyTree
    checkpoints: list[PyTree]
    epsilon: float
    noise_multiplier: float
    steps: int
    seconds: float
    history: list[dict[str, float]]


def _copy(tree: PyTree) -> PyTree:
    return jax.tree.map(jnp.copy, tree)


def fit_with_checkpoints(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    checkpoints_every: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    progress: bool = False,
    desc: str = "train",
) -> tuple[PyTree, list[PyTree], list[dict[str, float]]]:
    """Non-private Adam training that keeps a copy of the params every `checkpoints_every` epochs.

    Runs `ecos_jax.train.fit` one segment of `checkpoints_every` epochs at a time, continuing
    from a copy of the previous segment's parameters; the Adam moments restart with each
    segment. (Why not `fit(snapshot_every=...)`: `fit` donates its parameter buffers to the
    next step, so its stored snapshots are deleted arrays by the time it returns.)

    Returns (final params, checkpoints [K], history).
    """
    params, ckpts, history = None, [], []
    for k in range(epochs // checkpoints_every):
        res = trainer.fit(model, x, y, epochs=checkpoints_every, batch_size=batch_size,
                          learning_rate=learning_rate, seed=seed + 7919 * k,
                          init_params=None if params is None else _copy(params),
                          progress=progress, desc=desc)
        params = res.params
        ckpts.append(_copy(params))
        history += [{**h, "epoch": h["epoch"] + k * checkpoints_every} for h in res.history]
    return params, ckpts, history


def train_at_epsilon(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epsilon: float,
    epochs: int,
    checkpoints_every: int = 1,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    dp_learning_rate: float = 1.0,
    l2_norm_clip: float = 1.0,
    ledger: PrivacyLedger | None = None,
    accountant: str = "rdp",
    seed: int = 0,
    noise_seed: int | None = None,
    name: str = "dpsgd_model",
    progress: bool = False,
) -> TrainedModel:
    """Trains `model` on (x `[N,H,W,C]`, y `[N]`) at privacy level `epsilon` (inf = non-private).

    Args:
      epochs: training length; DP-SGD runs round(epochs·N/batch_size) steps in total.
      checkpoints_every: epochs between kept checkpoints (VoG's K = epochs // this).
      batch_size: batch size (the expected Poisson batch size for DP-SGD).
      learning_rate: Adam step size of the non-private run.
      dp_learning_rate: SGD step size of DP-SGD (on the noisy mean of clipped gradients).
      l2_norm_clip: DP-SGD clipping norm C.
      ledger: required for finite ε: the training release is recorded there (δ from it). Its
        relation must be add_or_remove_one (Poisson); truncated Poisson needs PLD to compose.
      accountant: calibration accountant where it applies (PLD is forced under truncation).
      seed: parameter-init and non-private shuffling seed.
      noise_seed: DP noise / sampling seed; None = OS entropy (then the ledger must not be
        seeded; see `PrivacyLedger(reproducible_seed=...)`).
    """
    epsilon = float(epsilon)
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0 (inf for non-private), got {epsilon}.")
    if epochs < 1 or checkpoints_every < 1 or epochs % checkpoints_every:
        raise ValueError(
            f"epochs ({epochs}) must be a positive multiple of checkpoints_every ({checkpoints_every})."
        )
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32)
    n = x.shape[0]
    batch_size = min(batch_size, n)
    t0 = time.perf_counter()

    if math.isinf(epsilon):
        params, ckpts, history = fit_with_checkpoints(
            model, x, y, epochs=epochs, checkpoints_every=checkpoints_every,
            batch_size=batch_size, learning_rate=learning_rate, seed=seed, progress=progress,
            desc=f"{name} ε=∞")
        steps = epochs * math.ceil(n / batch_size)
        return TrainedModel(params, ckpts, epsilon, 0.0, steps, time.perf_counter() - t0, history)

    if ledger is None:
        raise ValueError("DP training must be recorded: pass ledger=PrivacyLedger(...).")
    segments = epochs // checkpoints_every
    seg_steps = max(1, round(checkpoints_every * n / batch_size))
    steps = segments * seg_steps
    # Calibrated for the event the segments record (truncated Poisson when M < N).
    config = dpsgd.DPSGDConfig(dataset_size=n, batch_size=batch_size, l2_norm_clip=l2_norm_clip
                               ).calibrated(epsilon, ledger.delta, steps=steps,
                                            accountant=accountant)
    sigma = config.noise_multiplier
    params = model.init(jax.random.key(seed), x[:1])
    ckpts, history = [], []
    for k in range(segments):
        res = dpsgd.train(model, params, x, y, config, optax.sgd(dp_learning_rate),
                          steps=seg_steps, ledger=ledger, name=f"{name}/segment{k}",
                          seed=None if noise_seed is None else noise_seed + 7919 * k,
                          log_every=seg_steps, progress=progress, desc=f"{name} ε={epsilon:g}")
        params = res.params
        ckpts.append(_copy(params))
        history += [{**h, "segment": k} for h in res.history]
    return TrainedModel(params, ckpts, epsilon, sigma, steps, time.perf_counter() - t0, history)
