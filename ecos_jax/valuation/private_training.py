"""Training a model at a target ε while keeping the K checkpoints VoG needs.

The valuation experiments train one architecture at several privacy levels and score every
training sample with the result. This module is that one step, one run of the training loop
with a `Snapshots` hook that copies the parameters every `checkpoints_every` epochs; the
optimiser state (Adam's moments; DP-SGD's noise key and step counter) is carried through the
snapshots, as in a run that keeps no checkpoints:

* ε = ∞: ordinary training (`training.fit`, Adam);
* finite ε: DP-SGD (`privacy.dpsgd.train`, Poisson sampling, flat clipping, plain SGD) with σ
  calibrated so the run of T = K · round(checkpoints_every·N/batch_size) steps reaches ε at δ,
  for the event the run records (Poisson batches have M = q·N + 5 std slots, so it is
  truncated Poisson, which only PLD accounts: pass a `PrivacyLedger(accountant="pld")` to read
  `ledger.epsilon()`). One release of T steps is recorded.

    >>> ledger = PrivacyLedger(delta=1e-5, accountant="pld")
    >>> run = train_at_epsilon(model, x, y, epsilon=3.0, epochs=6, checkpoints_every=1,
    ...                        ledger=ledger)
    >>> len(run.checkpoints), ledger.epsilon()      # 6, ≈ 3.0
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax

from ecos_jax.privacy import dpsgd
from ecos_jax.privacy.ledger import PrivacyLedger
from ecos_jax.training import hooks as hooks_lib
from ecos_jax.training import supervised
from ecos_jax.training.loop import Hook
from ecos_jax.training.optimizers import make_optimizer

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


def _on_host(params, snaps: hooks_lib.Snapshots):
    """The final parameters and the snapshots as host arrays (a mesh run leaves them replicated
    over its devices; scoring them needs one copy)."""
    return jax.device_get(params), [jax.device_get(p) for _, p in snaps.snapshots]


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
    dp_momentum: float = 0.0,
    dp_batch_size: int | None = None,
    l2_norm_clip: float = 1.0,
    ledger: PrivacyLedger | None = None,
    accountant: str = "rdp",
    seed: int = 0,
    noise_seed: int | None = None,
    name: str = "dpsgd_model",
    hooks: Sequence[Hook] = (),
    mesh: jax.sharding.Mesh | None = None,
) -> TrainedModel:
    """Trains `model` on (x `[N,H,W,C]`, y `[N]`) at privacy level `epsilon` (inf = non-private).

    Args:
      epochs: training length; DP-SGD runs round(epochs·N/batch_size) steps in total.
      checkpoints_every: epochs between kept checkpoints (VoG's K = epochs // this).
      batch_size: batch size (the expected Poisson batch size for DP-SGD).
      learning_rate: Adam step size of the non-private run.
      dp_learning_rate: SGD step size of DP-SGD (on the noisy mean of clipped gradients).
      dp_momentum: SGD momentum of DP-SGD (0: plain SGD); post-processing of the noisy
        gradients, so it costs no privacy.
      dp_batch_size: the expected Poisson batch size of DP-SGD (None: `batch_size`); DP-SGD
        wants far larger batches than the non-private run (Tramèr & Boneh use 8192).
      l2_norm_clip: DP-SGD clipping norm C.
      ledger: required for finite ε: the training release is recorded there (δ from it). Its
        relation must be add_or_remove_one (Poisson); truncated Poisson needs PLD to compose.
      accountant: calibration accountant where it applies (PLD is forced under truncation).
      seed: parameter-init and non-private shuffling seed.
      noise_seed: DP noise / sampling seed; None = OS entropy (then the ledger must not be
        seeded; see `PrivacyLedger(reproducible_seed=...)`).
      hooks: the training loop's hooks after each chunk (an epoch; a checkpoint's worth of
        DP-SGD steps): a progress bar, a metric writer.
      mesh: train data-parallel over this mesh's devices (None: one device); the DP-SGD
        release and its ledger entry do not depend on it. The returned parameters and
        checkpoints are host arrays, so whatever scores them runs on one device.
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
        snaps = hooks_lib.Snapshots(checkpoints_every, key="epoch")
        res = supervised.fit(model, x, y, optimizer=make_optimizer("adam", float(learning_rate)),
                             epochs=epochs, batch_size=batch_size, seed=seed,
                             hooks=[snaps, *hooks], desc=f"{name} ε=∞", mesh=mesh)
        steps = epochs * math.ceil(n / batch_size)
        return TrainedModel(*_on_host(res.params, snaps), epsilon, 0.0, steps,
                            time.perf_counter() - t0, res.history)

    if ledger is None:
        raise ValueError("DP training must be recorded: pass ledger=PrivacyLedger(...).")
    batch_size = min(dp_batch_size or batch_size, n)
    segments = epochs // checkpoints_every
    seg_steps = max(1, round(checkpoints_every * n / batch_size))
    steps = segments * seg_steps
    # Calibrated for the event the run records (truncated Poisson when M < N).
    config = dpsgd.DPSGDConfig(dataset_size=n, batch_size=batch_size, l2_norm_clip=l2_norm_clip
                               ).calibrated(epsilon, ledger.delta, steps=steps,
                                            accountant=accountant)
    params = model.init(jax.random.key(seed), x[:1])
    # One chunk per checkpoint: the snapshot is taken after each chunk of seg_steps steps.
    snaps = hooks_lib.Snapshots(seg_steps, key="step")
    res = dpsgd.train(model, params, x, y, config,
                      optax.sgd(dp_learning_rate, momentum=dp_momentum or None), steps=steps,
                      ledger=ledger, name=name, seed=noise_seed, log_every=seg_steps,
                      hooks=[snaps, *hooks], desc=f"{name} ε={epsilon:g}", mesh=mesh)
    return TrainedModel(*_on_host(res.params, snaps), epsilon,
                        config.noise_multiplier, steps, time.perf_counter() - t0, res.history)
