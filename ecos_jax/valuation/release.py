"""Differentially private release of valuation scores (SPEC §2, following §4.7 of Usynin et al.).

A site that wants to tell others how valuable its samples are releases either

  * every sample's score:   s̃_i = clip(s_i, 0, B) + Laplace(B/ε)        (`release_scores`), or
  * a site-level summary:   DP mean and DP variance of the clipped scores  (`release_site_summary`),

and records each release in the run's `PrivacyLedger`, so the reported total ε covers DP-SGD
training and every score release together.

Sensitivity argument. Scores are computed from the site's own samples and a model (or its
checkpoints) whose privacy is accounted separately (the DP-SGD ledger entry composes all its
iterates, so VoG's checkpoints are covered). Given that model, score i depends on sample i
only; after clipping to [0, B] one sample moves one released score by at most B (L1 = B), the
clipped sum by at most B and the clipped sum of squares by at most B². Two things are treated
as public and NOT protected: the set of sample ids that scores are released for, and the site
size N. The released vectors keep the noise (they can leave [0, B]): clipping them again would
be harmless post-processing but biases means.

    >>> key, seeded = noise_key(None)
    >>> ledger = PrivacyLedger(delta=1e-5)
    >>> noisy = release_scores(key, per_class_minmax(vog, y), bound=1.0, epsilon=1.0, ledger=ledger)
    >>> summary = release_site_summary(key2, vog_mm, bound=1.0, epsilon=1.0, ledger=ledger)
    >>> ledger.epsilon()     # DP-SGD + both releases
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from ecos_jax.privacy import accounting
from ecos_jax.privacy.ledger import PrivacyLedger
from ecos_jax.privacy.mechanisms import (
    gaussian_event,
    gaussian_mechanism,
    laplace_event,
    laplace_mechanism,
)
from ecos_jax.valuation.inputs import check_scores

MECHANISMS = ("laplace", "gaussian")


@dataclasses.dataclass(frozen=True)
class SiteSummary:
    """A site's DP summary of its clipped scores.

    mean: DP estimate of mean(clip(s, 0, B)), in score units (noisy; may leave [0, B]).
    variance: DP estimate of the population variance, clamped to [0, B²/4] (the largest
      variance a [0, B] variable can have) — clamping is post-processing.
    n: the site size (public). bound: B. epsilon: the ε the two releases were calibrated to.
    """

    mean: float
    variance: float
    n: int
    bound: float
    epsilon: float
    mechanism: str


def _finite_positive(value) -> bool:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return False
    return math.isfinite(value) and value > 0


def _check_release(scores, bound: float, epsilon: float, ledger) -> np.ndarray:
    s = check_scores(scores)
    if s.size == 0:
        raise ValueError("scores are empty: nothing to release.")
    if not _finite_positive(bound):
        raise ValueError(f"bound B must be a finite float > 0, got {bound!r}.")
    if not _finite_positive(epsilon):
        raise ValueError(
            f"epsilon must be a finite float > 0, got {epsilon!r}; a non-private release needs "
            "no mechanism (and no ledger entry claiming privacy)."
        )
    if not isinstance(ledger, PrivacyLedger):
        raise ValueError("every score release must be recorded: pass ledger=PrivacyLedger(...).")
    return s


@jax.jit
def clip_scores(scores: jax.Array, bound: jax.Array) -> jax.Array:
    """clip(s, 0, B), `[N] -> [N]`: bounds each sample's influence on a release."""
    return jnp.clip(scores, 0.0, bound)


def release_scores(
    key: jax.Array,
    scores: jax.Array,
    *,
    bound: float,
    epsilon: float,
    ledger: PrivacyLedger,
    name: str = "scores",
) -> jax.Array:
    """Per-sample ε-DP release: clip(s_i, 0, B) + Laplace(B/ε) for every i, `[N] -> [N]`.

    Records one ledger entry `"{name}/per_sample"` with `LaplaceDpEvent(1/ε)`.
    """
    s = _check_release(scores, bound, epsilon, ledger)
    bound, epsilon = float(bound), float(epsilon)
    clipped = clip_scores(jnp.asarray(s, jnp.float32), jnp.float32(bound))
    noisy = laplace_mechanism(key, clipped, epsilon=epsilon, l1_sensitivity=bound)
    ledger.record(
        f"{name}/per_sample",
        laplace_event(epsilon),
        sensitivity=(
            f"L1 = B = {bound:g}: scores clipped to [0, B]; given the separately accounted "
            "model, one sample changes only its own score; the released ids are public"
        ),
        mechanism="laplace",
        bound=bound,
        epsilon=epsilon,
        num_scores=int(s.size),
    )
    return noisy


def release_site_summary(
    key: jax.Array,
    scores: jax.Array,
    *,
    bound: float,
    epsilon: float,
    ledger: PrivacyLedger,
    name: str = "site_scores",
    mechanism: str = "laplace",
    mean_fraction: float = 0.5,
) -> SiteSummary:
    """DP mean and variance of a site's clipped scores, together (ε, δ_ledger)-DP.

    Releases the noisy clipped sum S̃ (sensitivity B) and the noisy clipped sum of squares Q̃
    (sensitivity B²), then post-processes: mean = S̃/N, variance = Q̃/N − mean².

    Args:
      key: PRNG key for the noise.
      scores: `[N]` the site's scores (finite).
      bound: B, scores are clipped to [0, B].
      epsilon: total ε of the two releases.
      ledger: where the two releases are recorded (`"{name}/sum"`, `"{name}/sum_of_squares"`).
      mechanism: 'laplace' — pure ε-DP, ε split as `mean_fraction`·ε and the rest (basic
        composition is exact for pure DP); 'gaussian' — both sums get the same noise
        multiplier, calibrated so that the composed pair reaches ε at the ledger's δ.
      mean_fraction: share of ε spent on the sum (Laplace only), in (0, 1).
    """
    s = _check_release(scores, bound, epsilon, ledger)
    bound, epsilon = float(bound), float(epsilon)
    if mechanism not in MECHANISMS:
        raise ValueError(f"mechanism must be one of {MECHANISMS}, got {mechanism!r}.")
    if not 0.0 < mean_fraction < 1.0:
        raise ValueError(f"mean_fraction must be in (0, 1), got {mean_fraction}.")
    n = int(s.size)
    clipped = clip_scores(jnp.asarray(s, jnp.float32), jnp.float32(bound))
    sums = (jnp.sum(clipped), jnp.sum(clipped**2))
    sens = (bound, bound**2)
    labels = ("sum", "sum_of_squares")
    k_sum, k_sq = jax.random.split(key)
    public = "the site size N is public"
    noisy = []
    if mechanism == "laplace":
        shares = (mean_fraction * epsilon, (1.0 - mean_fraction) * epsilon)
        for k, value, d, eps, label in zip((k_sum, k_sq), sums, sens, shares, labels):
            noisy.append(float(laplace_mechanism(k, value, epsilon=eps, l1_sensitivity=d)))
            ledger.record(f"{name}/{label}", laplace_event(eps),
                          sensitivity=f"L1 = {d:g}: one sample in [0, B={bound:g}] moves the "
                                      f"clipped {label.replace('_', ' ')} by at most {d:g}; {public}",
                          mechanism="laplace", bound=bound, epsilon=eps, n=n)
    else:
        # Two Gaussians of multiplier σ compose to one of σ/√2, so calibrate that one to ε.
        sigma = math.sqrt(2.0) * accounting.calibrate_gaussian_sigma(epsilon, ledger.delta)
        for k, value, d, label in zip((k_sum, k_sq), sums, sens, labels):
            noisy.append(float(gaussian_mechanism(k, value, sigma=sigma, l2_sensitivity=d)))
            ledger.record(f"{name}/{label}", gaussian_event(sigma),
                          sensitivity=f"L2 = {d:g}: one sample in [0, B={bound:g}] moves the "
                                      f"clipped {label.replace('_', ' ')} by at most {d:g}; {public}",
                          mechanism="gaussian", bound=bound, sigma=sigma, n=n)
    mean = noisy[0] / n
    variance = min(max(noisy[1] / n - mean**2, 0.0), bound**2 / 4.0)
    return SiteSummary(mean=mean, variance=variance, n=n, bound=float(bound),
                       epsilon=float(epsilon), mechanism=mechanism)
