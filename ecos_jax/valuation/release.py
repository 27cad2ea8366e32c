"""Differentially private release of RAW valuation scores (following §4.7 of Usynin et al.).

A site that wants to tell others how valuable its samples are releases either

  * every sample's score:   s̃_i = clip(s_i, 0, B) + Laplace(B/ε)        (`release_scores`), or
  * a site-level summary:   DP mean and DP variance of the clipped scores  (`release_site_summary`),

where s_i is the raw score (VoG, PLIS, loss, ...) and B a PUBLIC bound in the score's own
units, fixed in advance (a config value), never computed from the private scores. Each release
is recorded in a `PrivacyLedger(relation="replace_one")`.

Neighbouring relation and sensitivity. The releases are private with respect to replacing one
of the site's N samples, with the list of sample ids and N public (both are part of the
output's shape, so add/remove-one cannot hold for them), and conditionally on the model that
computed the scores. That model (VoG: all its checkpoints) is released and accounted
separately: the DP-SGD entry composes every iterate, under add/remove-one. Given the model,
score i depends on sample i only, so replacing one sample moves

  * the clipped per-sample vector by at most B in L1 (one coordinate, both values in [0, B]),
  * the clipped sum by at most B, the clipped sum of squares by at most B².

This holds for raw scores only. A data-dependent normalisation before the release (per-class
min-max or z-score, dividing by the site's max, ...) breaks it: one sample that is its class's
min or max moves every other score of the class (L1 = 16 against a claimed B = 1, measured on
a 50-sample class in `tests/test_valuation_release_sensitivity.py`). The releases therefore refuse the arrays `per_class_minmax` / `per_class_zscore`
return. Normalising AFTER the noise is post-processing and costs nothing.

Because the training ledger (add/remove-one) and the release ledger (replace-one) hold under
different neighbouring relations, one ledger cannot compose both; report the two ε side by
side, each with its relation. The released vectors keep the noise (they can leave [0, B]):
clipping them again would be harmless post-processing but biases means.

    >>> key, seeded = noise_key(None)
    >>> k1, k2 = jax.random.split(key)
    >>> releases = PrivacyLedger(delta=1e-5, relation="replace_one")
    >>> noisy = release_scores(k1, vog_raw, bound=B, epsilon=1.0, ledger=releases)
    >>> ranking = per_class_minmax(noisy, y)           # post-processing: free
    >>> summary = release_site_summary(k2, vog_raw, bound=B, epsilon=1.0, ledger=releases)
    >>> releases.epsilon()                             # ≈ 2, replace-one, given the DP model
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
from ecos_jax.valuation.normalize import is_data_normalised, per_class_minmax

MECHANISMS = ("laplace", "gaussian")
RELATION = "replace_one"  # the neighbouring relation every release here is accounted under
_GIVEN = ("public: the N sample ids and N; private w.r.t. the site's samples given the model, "
          "which is accounted separately")


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
    if is_data_normalised(scores):
        raise ValueError(
            "scores are per-class normalised (per_class_minmax / per_class_zscore output): the "
            "normalisation uses every sample of the class, so one sample moves all of them and "
            "the release's sensitivity B would be false. Release the raw scores with a public "
            "bound B, then normalise the noisy release (post-processing)."
        )
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
    relation = getattr(ledger, "relation", RELATION)
    if relation != RELATION:
        raise ValueError(
            f"score releases hold under {RELATION!r} (public sample ids and N), but this ledger "
            f"composes {relation!r}: record them in their own "
            f"PrivacyLedger(relation={RELATION!r}), not in the DP-SGD ledger."
        )
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

    Args:
      key: PRNG key for the noise.
      scores: `[N]` RAW scores (finite), in score units; not a data-normalised vector (refused).
      bound: B > 0, public (fixed before seeing the scores), in score units.
      epsilon: ε of the release (pure ε-DP, replace-one).
      ledger: a `PrivacyLedger(relation="replace_one")`; gets one entry `"{name}/per_sample"`
        with `LaplaceDpEvent(1/ε)` (Laplace of scale B/ε on sensitivity B).

    Returns:
      `[N]` float32 noisy clipped scores (not re-clipped).
    """
    s = _check_release(scores, bound, epsilon, ledger)
    bound, epsilon = float(bound), float(epsilon)
    clipped = clip_scores(jnp.asarray(s, jnp.float32), jnp.float32(bound))
    noisy = laplace_mechanism(key, clipped, epsilon=epsilon, l1_sensitivity=bound)
    ledger.record(
        f"{name}/per_sample",
        laplace_event(epsilon),
        sensitivity=(
            f"L1 = B = {bound:g} under replace-one: raw scores clipped to [0, B] with B public; "
            "given the model, score i depends on sample i only, so replacing one sample moves "
            f"its own clipped score by at most B and no other; {_GIVEN}"
        ),
        relation=RELATION,
        mechanism="laplace",
        bound=bound,
        epsilon=epsilon,
        num_scores=int(s.size),
    )
    return noisy


def _summary_sensitivity(norm: str, d: float, bound: float, label: str) -> str:
    what = label.replace("_", " ")
    return (f"{norm} = {d:g} under replace-one: the replaced and the new raw score, clipped to "
            f"[0, B = {bound:g}] with B public, both lie in [0, B], so the clipped {what} moves "
            f"by at most {d:g}; {_GIVEN}")


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

    Releases the noisy clipped sum S̃ and the noisy clipped sum of squares Q̃, then
    post-processes with the public N: mean = S̃/N, variance = Q̃/N − mean². Under replace-one
    (public N) both the replaced and the new clipped score lie in [0, B], so S moves by at most
    B and Q by at most B² (the sensitivities used, in L1 for Laplace and L2 for Gaussian; for
    a scalar they are the same number).

    Args:
      key: PRNG key for the noise.
      scores: `[N]` the site's RAW scores (finite); not a data-normalised vector (refused).
      bound: B > 0, public, in score units; scores are clipped to [0, B].
      epsilon: total ε of the two releases.
      ledger: a `PrivacyLedger(relation="replace_one")`; gets `"{name}/sum"` and
        `"{name}/sum_of_squares"`.
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
    noisy = []
    if mechanism == "laplace":
        shares = (mean_fraction * epsilon, (1.0 - mean_fraction) * epsilon)
        for k, value, d, eps, label in zip((k_sum, k_sq), sums, sens, shares, labels):
            noisy.append(float(laplace_mechanism(k, value, epsilon=eps, l1_sensitivity=d)))
            ledger.record(f"{name}/{label}", laplace_event(eps),
                          sensitivity=_summary_sensitivity("L1", d, bound, label),
                          relation=RELATION, mechanism="laplace", bound=bound, epsilon=eps, n=n)
    else:
        # Two Gaussians of multiplier σ compose to one of σ/√2, so calibrate that one to ε.
        sigma = math.sqrt(2.0) * accounting.calibrate_gaussian_sigma(epsilon, ledger.delta)
        for k, value, d, label in zip((k_sum, k_sq), sums, sens, labels):
            noisy.append(float(gaussian_mechanism(k, value, sigma=sigma, l2_sensitivity=d)))
            ledger.record(f"{name}/{label}", gaussian_event(sigma),
                          sensitivity=_summary_sensitivity("L2", d, bound, label),
                          relation=RELATION, mechanism="gaussian", bound=bound, sigma=sigma, n=n)
    mean = noisy[0] / n
    variance = min(max(noisy[1] / n - mean**2, 0.0), bound**2 / 4.0)
    return SiteSummary(mean=mean, variance=variance, n=n, bound=float(bound),
                       epsilon=float(epsilon), mechanism=mechanism)


def release_vog(
    key: jax.Array,
    vog_raw: np.ndarray,
    y: np.ndarray,
    *,
    bound: float,
    epsilon: float,
    ledger: PrivacyLedger,
    name: str,
) -> tuple[np.ndarray, np.ndarray, SiteSummary]:
    """A run's DP releases of its raw VoG scores, all recorded in `ledger` (replace-one).

    Args:
      key: noise key of this run's releases.
      vog_raw: `[N]` raw VoG scores (VoG units), never a per-class normalised vector.
      y: `[N]` labels, used only to normalise the NOISY release (post-processing).
      bound: public B in VoG units; scores are clipped to [0, B] inside the releases.
      epsilon: ε of each of the two releases (per-sample, site summary).
      ledger: `PrivacyLedger(relation="replace_one")`.
      name: ledger entry prefix; entries `"{name}/per_sample"`, `"{name}_site/sum"`,
        `"{name}_site/sum_of_squares"`.

    Returns:
      `(released [N] float64` noisy clipped raw VoG, `released_normalised [N]` its per-class
      min-max, `summary)`.
    """
    k1, k2 = jax.random.split(key)
    released = np.asarray(release_scores(k1, vog_raw, bound=bound, epsilon=epsilon,
                                         ledger=ledger, name=name), np.float64)
    summary = release_site_summary(k2, vog_raw, bound=bound, epsilon=epsilon, ledger=ledger,
                                   name=f"{name}_site")
    return released, np.asarray(per_class_minmax(released, y), np.float64), summary
