"""Batch samplers for DP-SGD: Poisson with fixed-shape padded batches, and shuffled batches.

Poisson sampling includes each of the N examples independently with probability q,
so the batch size varies; to keep one compiled step, a batch is returned as `max_batch_size`
indices plus a mask. If more than `max_batch_size` examples are drawn, a uniformly random
subset of them is kept (the truncated Poisson sampler that
`dp_accounting.TruncatedSubsampledGaussianDpEvent` describes, and which DP-SGD records whenever
`max_batch_size` < N) and the overflow is counted.

    >>> sampler = PoissonSampler(dataset_size=60_000, sampling_rate=256 / 60_000)
    >>> batch = sampler.sample(key)          # batch.indices [M] int32, batch.mask [M] bool
    >>> x[batch.indices], batch.mask, batch.truncated

Shuffled fixed-size batches (`ShuffleSampler`) cut a fresh permutation into ⌊N/B⌋ batches per
epoch; they get no amplification-by-sampling credit (see `accounting.dpsgd_event`).
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax


class Batch(NamedTuple):
    """Fixed-shape batch: `indices [M] int32` into the dataset, `mask [M] bool`."""

    indices: jax.Array
    mask: jax.Array
    num_sampled: jax.Array  # int32 []: examples drawn before truncation
    truncated: jax.Array  # int32 []: examples dropped because the batch was over-full


def default_max_batch_size(dataset_size: int, sampling_rate: float, *, num_std: float = 5.0) -> int:
    """q·N + `num_std` binomial standard deviations (overflow ~3e-7 per step at 5), ≤ N."""
    mean = dataset_size * sampling_rate
    std = math.sqrt(dataset_size * sampling_rate * (1.0 - sampling_rate))
    return int(min(dataset_size, math.ceil(mean + num_std * std) + 1))


@partial(jax.jit, static_argnames=("dataset_size", "max_batch_size"))
def poisson_batch(
    key: jax.Array, *, dataset_size: int, sampling_rate: float | jax.Array, max_batch_size: int
) -> Batch:
    """One Poisson-sampled batch padded/truncated to `max_batch_size` slots.

    Each example gets u_i ~ U(0, 1) and is included iff u_i < q. The `max_batch_size` smallest
    u_i are kept: if more than that were included, these are a uniformly random subset of the
    included ones (u_i given u_i < q is uniform and independent), so truncation picks at random.
    """
    u = jax.random.uniform(key, (dataset_size,))
    neg_u, indices = lax.top_k(-u, max_batch_size)
    mask = -neg_u < sampling_rate
    num_sampled = jnp.sum(u < sampling_rate, dtype=jnp.int32)
    truncated = jnp.maximum(num_sampled - max_batch_size, 0)
    # Padding rows point at index 0 with mask False. Callers must select them away
    # (jnp.where), not weight them by 0: row 0 may hold NaN/inf, and 0 · NaN = NaN.
    indices = jnp.where(mask, indices, 0).astype(jnp.int32)
    return Batch(indices, mask, num_sampled, truncated)


@dataclasses.dataclass(frozen=True)
class PoissonSampler:
    """Poisson sampling with rate q over N examples, padded to `max_batch_size` slots.

    Attributes:
      dataset_size: N ≥ 1.
      sampling_rate: q in (0, 1]; the expected batch size is q·N.
      max_batch_size: slots per batch; default q·N + 5 std (see `default_max_batch_size`).
    """

    dataset_size: int
    sampling_rate: float
    max_batch_size: int | None = None

    def __post_init__(self):
        if isinstance(self.dataset_size, bool) or int(self.dataset_size) != self.dataset_size or self.dataset_size < 1:
            raise ValueError(f"dataset_size must be a positive integer, got {self.dataset_size!r}.")
        if not 0.0 < float(self.sampling_rate) <= 1.0:
            raise ValueError(f"sampling_rate q must be in (0, 1], got {self.sampling_rate}.")
        if self.max_batch_size is None:
            object.__setattr__(
                self, "max_batch_size",
                default_max_batch_size(self.dataset_size, self.sampling_rate),
            )
        elif not 1 <= int(self.max_batch_size) <= self.dataset_size:
            raise ValueError(
                f"max_batch_size must be in [1, N={self.dataset_size}], got {self.max_batch_size}."
            )

    @property
    def expected_batch_size(self) -> float:
        return self.sampling_rate * self.dataset_size

    def sample(self, key: jax.Array) -> Batch:
        return poisson_batch(
            key, dataset_size=self.dataset_size, sampling_rate=self.sampling_rate,
            max_batch_size=self.max_batch_size,
        )


@dataclasses.dataclass(frozen=True)
class ShuffleSampler:
    """Shuffled fixed-size batches: each epoch a new permutation cut into ⌊N/B⌋ batches.

    The sampling rate used for accounting is q = B/N; the remainder N mod B of each epoch is
    skipped. No amplification by sampling is claimed for it.
    """

    dataset_size: int
    batch_size: int

    def __post_init__(self):
        if isinstance(self.dataset_size, bool) or int(self.dataset_size) != self.dataset_size or self.dataset_size < 1:
            raise ValueError(f"dataset_size must be a positive integer, got {self.dataset_size!r}.")
        if not 1 <= int(self.batch_size) <= self.dataset_size:
            raise ValueError(
                f"batch_size must be in [1, N={self.dataset_size}], got {self.batch_size}."
            )

    @property
    def sampling_rate(self) -> float:
        return self.batch_size / self.dataset_size

    @property
    def max_batch_size(self) -> int:
        return self.batch_size

    @property
    def expected_batch_size(self) -> float:
        return float(self.batch_size)

    @property
    def steps_per_epoch(self) -> int:
        return self.dataset_size // self.batch_size

    def epoch(self, key: jax.Array) -> jax.Array:
        """`[steps_per_epoch, batch_size]` int32 indices of one shuffled epoch."""
        perm = jax.random.permutation(key, self.dataset_size)
        n = self.steps_per_epoch * self.batch_size
        return perm[:n].reshape(self.steps_per_epoch, self.batch_size).astype(jnp.int32)

    def sample(self, key: jax.Array, step: int) -> Batch:
        """Batch number `step` of the run; the epoch's permutation comes from `fold_in(key, epoch)`."""
        epoch, within = divmod(int(step), self.steps_per_epoch)
        idx = self.epoch(jax.random.fold_in(key, epoch))[within]
        zero = jnp.zeros([], jnp.int32)
        return Batch(idx, jnp.ones(self.batch_size, bool), zero + self.batch_size, zero)
