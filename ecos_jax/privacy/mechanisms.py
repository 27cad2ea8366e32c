"""Additive noise mechanisms on arrays: Gaussian (L2 sensitivity) and Laplace (L1 sensitivity).

Pure functions; the caller records the matching event in its `PrivacyLedger`:

    >>> noisy = gaussian_mechanism(key, counts, sigma=6.68)          # counts: L2 sensitivity 1
    >>> ledger.record("counts", dp_accounting.GaussianDpEvent(6.68), sensitivity="L2 = 1: ...")
    >>> noisy = laplace_mechanism(key, scores, epsilon=1.0, l1_sensitivity=B)
    >>> ledger.record("scores", dp_accounting.LaplaceDpEvent(1.0 / 1.0), sensitivity="L1 = B")

`dp_accounting.LaplaceDpEvent(b)` takes the noise scale per unit L1 sensitivity, so the event
for `laplace_mechanism(epsilon=ε)` is `LaplaceDpEvent(1 / ε)` (see `laplace_event`).
Mechanism parameters are finite Python floats, validated before any tracing: ε = inf or
σ = inf is refused rather than silently releasing exact values or infinities.
"""

from __future__ import annotations

import math

import dp_accounting
import jax
import jax.numpy as jnp


def _positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    try:
        value = float(value)
    except (TypeError, jax.errors.ConcretizationTypeError) as err:
        raise ValueError(f"{name} must be a concrete Python float, got {value!r}.") from err
    ok = value >= 0.0 if allow_zero else value > 0.0
    if not ok or math.isnan(value):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}.")
    if math.isinf(value):
        # ε = inf would silently release exact values; σ = inf returns ±inf, not a release.
        raise ValueError(
            f"{name} must be finite, got {value}: a non-private release needs no mechanism "
            "(and no ledger entry); infinite noise releases nothing."
        )
    return value


@jax.jit
def _add_gaussian(key: jax.Array, values: jax.Array, std: jax.Array) -> jax.Array:
    noise = jax.random.normal(key, values.shape, jnp.result_type(values.dtype, jnp.float32))
    return values + std * noise


@jax.jit
def _add_laplace(key: jax.Array, values: jax.Array, scale: jax.Array) -> jax.Array:
    noise = jax.random.laplace(key, values.shape, jnp.result_type(values.dtype, jnp.float32))
    return values + scale * noise


def gaussian_mechanism(
    key: jax.Array, values: jax.Array, *, sigma: float, l2_sensitivity: float = 1.0
) -> jax.Array:
    """Adds N(0, (σ·Δ₂)²) independently to every entry of `values`.

    Assumes changing one individual moves `values` (as a whole vector) by at most
    `l2_sensitivity` = Δ₂ in L2 norm; then the release is `GaussianDpEvent(sigma)`.

    Args:
      key: PRNG key (see `keys.noise_key`).
      values: `[...]` array (ints are promoted to float32).
      sigma: noise multiplier ≥ 0 (0 releases `values` unchanged: non-private).
      l2_sensitivity: Δ₂ > 0, in the units of `values`.
    """
    sigma = _positive("sigma", sigma, allow_zero=True)
    l2_sensitivity = _positive("l2_sensitivity", l2_sensitivity)
    return _add_gaussian(key, jnp.asarray(values), jnp.float32(sigma * l2_sensitivity))


def laplace_mechanism(
    key: jax.Array, values: jax.Array, *, epsilon: float, l1_sensitivity: float
) -> jax.Array:
    """Adds Laplace(Δ₁/ε) independently to every entry of `values`: (ε, 0)-DP.

    Assumes changing one individual moves `values` by at most `l1_sensitivity` = Δ₁ in L1
    norm; the release is `laplace_event(epsilon)`.
    """
    epsilon = _positive("epsilon", epsilon)
    l1_sensitivity = _positive("l1_sensitivity", l1_sensitivity)
    return _add_laplace(key, jnp.asarray(values), jnp.float32(l1_sensitivity / epsilon))


def gaussian_event(sigma: float) -> dp_accounting.DpEvent:
    """The DpEvent of one `gaussian_mechanism(sigma=sigma)` release."""
    sigma = _positive("sigma", sigma, allow_zero=True)
    return dp_accounting.GaussianDpEvent(sigma) if sigma > 0 else dp_accounting.NonPrivateDpEvent()


def laplace_event(epsilon: float) -> dp_accounting.DpEvent:
    """The DpEvent of one `laplace_mechanism(epsilon=epsilon)` release (ε-DP)."""
    return dp_accounting.LaplaceDpEvent(1.0 / _positive("epsilon", epsilon))
