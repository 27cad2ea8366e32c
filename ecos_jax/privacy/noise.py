"""Gaussian noise on a clipped-gradient sum, as an optax transform on param-shaped updates.

    G = Σ_i m_i ḡ_i + N(0, σ²Δ²I),      update = G / (q·N)

Δ is the L2 sensitivity of the incoming sum. The transform takes it from the clipped-gradient
function itself (`clipped_grads.ClippedGrad.sensitivity`, = C when adding or removing one
example), so the clip norm is stated once, where the clipping happens:

    >>> grad_fn = clipped_grad(model, l2_norm_clip=C)
    >>> key, reproducible = noise_key(config_seed)        # OS entropy unless seeded
    >>> tx = optax.chain(add_gaussian_noise(sigma, grad_fn, expected_batch_size=q * N,
    ...                                     key=key), optax.adam(1e-3))
    >>> total, aux = grad_fn(params, x, y, mask)
    >>> updates, state = tx.update(total, state, params)

The divisor is the expected batch size q·N, never the realised one (which would reveal how
many examples were sampled). The state holds the key and a step counter; step t uses
`fold_in(key, t)`, so no two applied steps share noise and a jitted step needs no key argument.

Because the updates are shaped like the parameters, optax's wrappers compose with it:

- `optax.MultiSteps(optax.chain(noise, opt), every_k_schedule=k)` accumulates the clipped sums
  of k micro-batches of ONE logical batch (Poisson-sampled once, then split) and runs the inner
  chain on their mean; its state, and so the noise counter, advances only when the logical step
  is applied, so noise is drawn once per logical batch. Build the noise with
  `accumulation_steps=k` and the *logical* expected batch size q·N: it then expects the mean
  S/k of the k sums (sensitivity Δ/k) and returns (S + N(0, σ²Δ²)) / (q·N), exactly the
  update of one step on the whole logical batch. (With `use_grad_mean=False` the inner chain
  sees the sum S itself: keep `accumulation_steps=1`.) Accounting: one DP-SGD step of rate
  q = E[logical batch] / N per applied update. This needs the micro-batches to partition one
  sampled batch: drawn separately, one example could land in several of them and move S by
  up to k·C, which this accounting does not cover.
- `optax.apply_if_finite`: wrap the optimiser, `chain(noise, apply_if_finite(opt, n))`, so the
  noise counter advances on every step, skipped or not. Wrapped around the noise as well, a
  skipped step leaves the counter where it was and the next step reuses that step's noise.
- `optax.inject_hyperparams(optax.adam)(learning_rate=schedule)` after the noise, as usual.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax


class HasSensitivity(Protocol):
    """A function carrying the L2 sensitivity of its output (e.g. `clipped_grads.ClippedGrad`)."""

    @property
    def sensitivity(self) -> float: ...


class NoiseState(NamedTuple):
    key: jax.Array  # typed PRNG key
    count: jax.Array  # int32 scalar, steps taken


def add_gaussian_noise(
    noise_multiplier: float,
    sensitivity: float | HasSensitivity,
    *,
    expected_batch_size: float,
    key: jax.Array,
    accumulation_steps: int = 1,
) -> optax.GradientTransformationExtraArgs:
    """optax transform: `sum -> (sum + N(0, (σ·Δ)²)) / expected_batch_size`.

    Args:
      noise_multiplier: σ ≥ 0 (0 adds no noise: non-private).
      sensitivity: the clipped-gradient function whose output this noises (anything with a
        `.sensitivity`, e.g. `clipped_grad(...)`), or its L2 sensitivity Δ > 0 as a number
        (C for a sum of gradients clipped to C, adding or removing one example).
      expected_batch_size: q·N > 0, the expected (logical) batch size; 1.0 keeps the sum.
      key: PRNG key for the noise (see `ecos_jax.privacy.keys.noise_key`).
      accumulation_steps: k ≥ 1; k > 1 when the incoming update is the mean of k clipped sums
        of one logical batch (inside `optax.MultiSteps`): the std becomes σΔ/k and the divisor
        q·N/k, so the result is (Σ sums + N(0, σ²Δ²)) / (q·N), noised once.
    """
    sigma = float(noise_multiplier)
    if not sigma >= 0.0 or math.isinf(sigma):
        raise ValueError(f"noise_multiplier must be a finite number >= 0, got {noise_multiplier}.")
    c = float(getattr(sensitivity, "sensitivity", sensitivity))
    if not c > 0.0:
        raise ValueError(f"the L2 sensitivity (clip norm) must be > 0, got {c}.")
    if sigma > 0.0 and math.isinf(c):
        raise ValueError("noise needs a finite L2 sensitivity: clip with a finite norm.")
    b = float(expected_batch_size)
    if not b > 0.0 or math.isinf(b):
        raise ValueError(f"expected_batch_size must be finite and > 0, got {expected_batch_size}.")
    if isinstance(accumulation_steps, bool) or int(accumulation_steps) != accumulation_steps \
            or accumulation_steps < 1:
        raise ValueError(f"accumulation_steps must be an integer >= 1, got {accumulation_steps!r}.")
    k = int(accumulation_steps)
    # The mean of k sums has sensitivity Δ/k; dividing the noisy mean by q·N/k undoes the mean.
    std = sigma * c / k if sigma > 0.0 else 0.0
    if k > 1:
        b = b / k

    def init(params):
        del params
        return NoiseState(key=key, count=jnp.zeros([], jnp.int32))

    def update(updates, state, params=None, **extra):
        del params, extra
        leaves, treedef = jax.tree.flatten(updates)
        if std:
            # One draw for all leaves: a single RNG kernel compiles far faster on CPU than
            # one per leaf, and the coordinates are i.i.d. N(0, 1) all the same.
            sizes = [x.size for x in leaves]
            step_key = jax.random.fold_in(state.key, state.count)
            z = jax.random.normal(step_key, (sum(sizes),), jnp.float32)
            offsets = np.cumsum([0, *sizes])
            leaves = [
                x + (std * z[lo:hi]).reshape(x.shape).astype(x.dtype)
                for x, lo, hi in zip(leaves, offsets[:-1], offsets[1:])
            ]
        out = [x / b for x in leaves]
        return jax.tree.unflatten(treedef, out), NoiseState(state.key, state.count + 1)

    return optax.GradientTransformationExtraArgs(init, update)
