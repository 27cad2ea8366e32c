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

`poisson_batch` puts the sampled rows first (the smallest u_i), so a step need not compute all
M slots, only the shortest of a few static prefix lengths (`prefix_buckets`; q·N + 0.6 std
rows expected instead of q·N + 5 std) that holds every sampled row, with the same batch and so
the same recorded sampler. `dpsgd.train(..., padding="buckets")` does this from the host: it
reads each batch's row count and dispatches one compiled step per length.
`on_shortest_prefix(step, prefix_buckets(...))` does it inside one compiled step with a
`lax.switch`; DP-SGD does not use that: on XLA:CPU the CNN's clipped sum inside a
conditional ran 2x slower than the same computation outside one (median of 9, B = 256: 571 ms
in `lax.cond` with two identical branches vs 284 ms direct, load 12-23), which outweighs the
1.32x of padding at q·N = 256. It is exact and tested, for a backend whose conditionals cost
nothing (not measured here).

Shuffled fixed-size batches (`ShuffleSampler`) cut a fresh permutation into ⌊N/B⌋ batches per
epoch; they get no amplification-by-sampling credit (see `accounting.dpsgd_event`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
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


# Prefix lengths in binomial standard deviations around the expected batch q·N. Each length is
# one more compiled copy of the step (a CNN step's compile time grows with it), so few: with
# these four plus M, the expected rows computed are q·N + 0.6 std (simulated Binomial(N, q) at
# q·N = 256, 2048, 8192 of N = 60,000: 1.039, 1.013, 1.006 x q·N; eight lengths gave 0.3 std,
# 1.023, 1.007, 1.003 x, for twice the compile time; the M slots alone are 1.32, 1.11, 1.05 x).
_BUCKET_STDS = (-0.5, 0.5, 1.5, 2.5)


def prefix_buckets(
    num_slots: int, expected_batch_size: float, dataset_size: int, *,
    stds: tuple[float, ...] = _BUCKET_STDS, multiple: int = 8, min_padding: int = 64,
) -> tuple[int, ...]:
    """Static prefix lengths for a padded Poisson batch of `num_slots` slots, ending in `num_slots`.

    Lengths are q·N + k·std for k in `stds`, rounded up to a multiple of `multiple` (friendlier
    matrix shapes), kept in [1, num_slots). With fewer than `min_padding` padding slots beyond
    q·N the saving is not worth the extra compiled branches: `(num_slots,)` alone.

    Args:
      num_slots: M, the padded batch's rows.
      expected_batch_size: q·N.
      dataset_size: N (for the binomial std √(N q (1 - q))).

    Returns:
      Strictly increasing ints, the last one `num_slots`.
    """
    if num_slots - expected_batch_size < min_padding:
        return (int(num_slots),)
    q = expected_batch_size / dataset_size
    std = math.sqrt(dataset_size * q * (1.0 - q))
    sizes = set()
    for k in stds:
        size = multiple * math.ceil((expected_batch_size + k * std) / multiple)
        if 1 <= size < num_slots:
            sizes.add(int(size))
    return tuple(sorted(sizes)) + (int(num_slots),)


def on_shortest_prefix(step: Callable, buckets: tuple[int, ...]) -> Callable:
    """`step(state, x, y, mask)` run on the shortest prefix length in `buckets` that holds every
    row with mask ≠ 0.

    Exact for any `step` whose rows with mask 0 contribute nothing (DP-SGD's clipped sum, whose
    padding rows add exact zeros) and whose outputs do not depend on the number of rows (the new
    state and scalar metrics). Lengths ≥ M = `x.shape[0]` are dropped and M itself is always a
    branch, so any mask is handled; Poisson batches (sampled rows first) get the saving.

    Args:
      step: `(state, x [M, ...], y [M, ...], mask [M]) -> outputs`; x, y may be pytrees.
      buckets: candidate prefix lengths, e.g. from `prefix_buckets`.

    Returns:
      A function with `step`'s signature and outputs, one `lax.switch` over the lengths.
      Note the branch taken (and so the step's time) depends on the sampled batch size.
    """

    def wrapped(state, x, y, mask):
        m = mask.shape[0]
        sizes = tuple(sorted({int(b) for b in buckets if 1 <= b < m})) + (m,)
        if len(sizes) == 1:
            return step(state, x, y, mask)
        # 1 + the index of the last row that counts (0 if none): every row after it is padding.
        last = jnp.max(jnp.where(mask != 0, jnp.arange(1, m + 1), 0))
        branch = jnp.searchsorted(jnp.asarray(sizes), last)  # first length >= last

        def prefix(length):
            def run(state, x, y, mask):
                cut = partial(jax.tree.map, lambda a: a[:length])
                return step(state, cut(x), cut(y), mask[:length])

            return run

        return lax.switch(branch, [prefix(n) for n in sizes], state, x, y, mask)

    return wrapped


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
