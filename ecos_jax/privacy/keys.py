"""Where DP noise keys come from: OS entropy unless a seed is set on purpose.

A DP guarantee assumes the noise is unknown to the adversary. A key derived from a fixed, often
published seed (0, 42, a config value) is not: anyone with the seed regenerates the noise and
subtracts it. So the key for noise comes from `secrets` (the OS CSPRNG) by default, and a
seeded key is reported as reproducible-research-only (`PrivacyLedger(reproducible_seed=...)`).

    >>> key, reproducible = noise_key(None)     # 64 bits from the OS, reproducible=False
    >>> key, reproducible = noise_key(0)        # jax.random.key(0), reproducible=True

Caveat: JAX's threefry generator and floating-point Gaussian sampling are not a certified
cryptographic noise source (cf. Mironov 2012 on floating-point Laplace); this module fixes the
seed problem, not that one.
"""

from __future__ import annotations

import secrets

import jax
import jax.numpy as jnp
import numpy as np


def noise_key(seed: int | None) -> tuple[jax.Array, bool]:
    """A typed PRNG key for DP noise and whether it is reproducible.

    Args:
      seed: None draws 64 bits from OS entropy; an int >= 0 gives `jax.random.key(seed)`.

    Returns:
      `(key, reproducible)`: `reproducible` is True exactly when `seed` was given.
    """
    if seed is None:
        words = np.array([secrets.randbits(32), secrets.randbits(32)], dtype=np.uint32)
        return jax.random.wrap_key_data(jnp.asarray(words), impl="threefry2x32"), False
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be None (OS entropy) or an int >= 0, got {seed!r}.")
    return jax.random.key(int(seed)), True
