"""Gaussian noise on a clipped-gradient sum, then division by the expected batch size.

G = Σ_i m_i ḡ_i + N(0, σ²C²I), and the update is G / (q·N). The noise is
calibrated to the **sum** (L2 sensitivity C), and the divisor is the expected batch size
q·N, never the realised one (which would reveal how many examples were sampled).

    >>> key, reproducible = noise_key(config_seed)        # OS entropy unless seeded
    >>> tx = optax.chain(clip_and_sum(C), add_gaussian_noise(sigma, C,
    ...                  expected_batch_size=q * N, key=key), optax.sgd(0.1))

The transform's state holds the key and a step counter; step t uses `fold_in(key, t)`, so no
two steps share noise and a jitted step needs no key argument.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


class NoiseState(NamedTuple):
    key: jax.Array  # typed PRNG key
    count: jax.Array  # int32 scalar, steps taken


def add_gaussian_noise(
    noise_multiplier: float,
    l2_sensitivity: float,
    *,
    expected_batch_size: float,
    key: jax.Array,
) -> optax.GradientTransformationExtraArgs:
    """optax transform: `sum -> (sum + N(0, (σ·C)²)) / expected_batch_size`.

    Args:
      noise_multiplier: σ ≥ 0 (0 adds no noise: non-private).
      l2_sensitivity: C > 0, the L2 sensitivity of the incoming sum (the clip norm).
      expected_batch_size: q·N > 0; use 1.0 to keep the noisy sum itself.
      key: PRNG key for the noise (see `ecos_jax.privacy.keys.noise_key`).
    """
    sigma = float(noise_multiplier)
    if not sigma >= 0.0 or math.isinf(sigma):
        raise ValueError(f"noise_multiplier must be a finite number >= 0, got {noise_multiplier}.")
    c = float(l2_sensitivity)
    if not c > 0.0:
        raise ValueError(f"l2_sensitivity (clip norm) must be > 0, got {l2_sensitivity}.")
    if sigma > 0.0 and math.isinf(c):
        raise ValueError("noise needs a finite l2_sensitivity: clip with a finite norm.")
    b = float(expected_batch_size)
    if not b > 0.0 or math.isinf(b):
        raise ValueError(f"expected_batch_size must be finite and > 0, got {expected_batch_size}.")
    std = sigma * c if sigma > 0.0 else 0.0

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
