"""An ε lower bound from the scores of an attack on many runs of a mechanism.

A mechanism M is (ε, δ)-DP for a neighbouring pair (D₊, D₋) only if every test T of "was the
input D₊?" satisfies, in both directions of the pair,

    P[T(M(D₊)) = 1] ≤ e^ε · P[T(M(D₋)) = 1] + δ,     i.e.  ε ≥ log((TPR − δ) / FPR),

and the same with the roles swapped: ε ≥ log((TNR − δ) / FNR). Running M many times on each
input and thresholding a score s (higher = "D₊ more likely") estimates TPR, FPR, TNR, FNR at
every threshold t. With one-sided Clopper–Pearson bounds FPR ≤ FPR_ub and FNR ≤ FNR_ub, each
holding with probability ≥ 1 − α/2, both inequalities give, with probability ≥ 1 − α,

    ε ≥ max( log((1 − FNR_ub − δ) / FPR_ub),  log((1 − FPR_ub − δ) / FNR_ub) )

(the two directions share the two bounds, so taking their max costs no extra confidence).
This is the estimator of Jagielski, Ullman & Oprea (2020) and Nasr et al. (2021), as in
`jax_privacy.auditing.CanaryScoreAuditor.epsilon_clopper_pearson(one_sided=False)`.

Choosing the best of many thresholds on the same data would overstate the confidence, so the
threshold is chosen in one of two ways (`strategy`):

  "split"       pick the threshold (best bound at level α) on a random half of each score set,
                then bound ε at that one threshold on the other half (default; the halves are
                independent, so the confidence is at least 1 − α);
  "bonferroni"  take the best of K thresholds on all the data, each bounded at level α/K,
                with K = every distinct score plus +inf. The thresholds are the observed scores
                (the usual practice, and CanaryScoreAuditor's), so the union bound is over
                data-chosen tests; "split" has no such caveat.

    >>> bound = epsilon_lower_bound(scores_with_canary, scores_without, delta=1e-5)
    >>> bound.epsilon, bound.confidence       # ε ≥ bound.epsilon with 95% confidence

Scores: `[n₊]` and `[n₋]` finite floats, any units (only their order matters), oriented so
that D₊ tends to score higher (negate them otherwise): the two directions are the two
directions of the neighbouring pair, with "s ≥ t" meaning "D₊" in both.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import optimize, stats

STRATEGIES = ("split", "bonferroni")
DIRECTIONS = ("tpr_over_fpr", "tnr_over_fnr")


@dataclasses.dataclass(frozen=True)
class EpsilonBound:
    """ε ≥ `epsilon` with probability ≥ `confidence` (over the mechanism's randomness).

    strategy: "split", "bonferroni", or "fixed" (`epsilon_at_threshold`).
    threshold: the score threshold of the test that gave the bound ("positive" iff s ≥ t).
    direction: "tpr_over_fpr" (log((TPR−δ)/FPR)) or "tnr_over_fnr" (the reverse direction).
    tpr, fpr: the empirical rates at `threshold` on the scores the bound was computed from.
    num_positive, num_negative: how many scores of each kind the bound was computed from
      (half of them under "split").
    num_tests: K, the number of thresholds the confidence was divided over (1 under "split").
    max_epsilon: the bound a perfect separation would give with these counts: the audit's
      resolution (no attack on this many trials can certify more).
    """

    epsilon: float
    confidence: float
    delta: float
    strategy: str
    threshold: float
    direction: str
    tpr: float
    fpr: float
    num_positive: int
    num_negative: int
    num_tests: int
    max_epsilon: float

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in d.items()}


def clopper_pearson(k, n: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """One-sided Clopper–Pearson bounds on a binomial rate p from k successes in n trials.

    Returns `(lower, upper)`, each a valid one-sided bound at level 1 − α on its own:
    P[p < lower] ≤ α and P[p > upper] ≤ α. Broadcasts over `k`.
    """
    k = np.asarray(k, np.float64)
    with np.errstate(invalid="ignore"):
        lower = np.where(k > 0, stats.beta.ppf(alpha, k, n - k + 1), 0.0)
        upper = np.where(k < n, stats.beta.ppf(1.0 - alpha, k + 1, n - k), 1.0)
    return lower, upper


def _check_scores(name: str, scores) -> np.ndarray:
    s = np.asarray(scores, np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"{name} scores must be a non-empty 1-D array, got shape {s.shape}.")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"{name} scores contain NaN or inf.")
    return s


def _check_levels(delta, confidence) -> tuple[float, float]:
    delta, confidence = float(delta), float(confidence)
    if not 0.0 <= delta < 1.0:
        raise ValueError(f"delta must be in [0, 1), got {delta}.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
    return delta, confidence


def _bounds(pos: np.ndarray, neg: np.ndarray, thresholds: np.ndarray, delta: float,
            alpha: float) -> np.ndarray:
    """`[2, K]` ε bounds (clamped at 0) of both directions at each threshold, level 1 − α."""
    n_pos, n_neg = pos.size, neg.size
    tp = n_pos - np.searchsorted(np.sort(pos), thresholds, side="left")  # #{s ≥ t}
    fp = n_neg - np.searchsorted(np.sort(neg), thresholds, side="left")
    _, fpr_ub = clopper_pearson(fp, n_neg, alpha / 2)
    _, fnr_ub = clopper_pearson(n_pos - tp, n_pos, alpha / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        forward = np.log(np.maximum(1.0 - fnr_ub - delta, 0.0)) - np.log(fpr_ub)
        reverse = np.log(np.maximum(1.0 - fpr_ub - delta, 0.0)) - np.log(fnr_ub)
    return np.maximum(np.nan_to_num(np.stack([forward, reverse]), nan=0.0, neginf=0.0), 0.0)


def _rates(pos, neg, threshold) -> tuple[float, float]:
    return float(np.mean(pos >= threshold)), float(np.mean(neg >= threshold))


def _max_epsilon(n_pos: int, n_neg: int, delta: float, alpha: float) -> float:
    """The bound at a threshold that separates the two score sets perfectly."""
    _, fpr_ub = clopper_pearson(0, n_neg, alpha / 2)
    _, fnr_ub = clopper_pearson(0, n_pos, alpha / 2)
    best = max(math.log(max(1.0 - float(fnr_ub) - delta, 1e-300)) - math.log(float(fpr_ub)),
               math.log(max(1.0 - float(fpr_ub) - delta, 1e-300)) - math.log(float(fnr_ub)))
    return max(best, 0.0)


def epsilon_lower_bound(
    positive,
    negative,
    *,
    delta: float = 0.0,
    confidence: float = 0.95,
    strategy: str = "split",
    split_fraction: float = 0.5,
    seed: int = 0,
) -> EpsilonBound:
    """Lower bound on the ε of a mechanism from attack scores on its two neighbouring inputs.

    Args:
      positive: `[n₊]` scores of runs on D₊ (the input with the target / canary); the attack
        should score these higher.
      negative: `[n₋]` scores of runs on D₋ (without it).
      delta: the δ of the (ε, δ) claim being tested, in [0, 1).
      confidence: 1 − α, in (0, 1).
      strategy: "split" or "bonferroni" (see the module docstring).
      split_fraction: share of each score set used to choose the threshold ("split" only).
      seed: seed of the random split. It only has to be independent of the scores; fixed by
        default so that an audit can be recomputed from saved scores.

    Returns:
      `EpsilonBound`; `epsilon` is 0 when no test beats chance at this confidence.
    """
    pos, neg = _check_scores("positive", positive), _check_scores("negative", negative)
    delta, confidence = _check_levels(delta, confidence)
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}.")
    alpha = 1.0 - confidence

    if strategy == "bonferroni":
        thresholds = np.append(np.union1d(pos, neg), np.inf)
        level = alpha / thresholds.size
        bounds = _bounds(pos, neg, thresholds, delta, level)
        d, i = np.unravel_index(np.argmax(bounds), bounds.shape)
        return _result(pos, neg, float(thresholds[i]), int(d), float(bounds[d, i]), delta,
                       confidence, strategy, thresholds.size, level)

    if not 0.0 < split_fraction < 1.0:
        raise ValueError(f"split_fraction must be in (0, 1), got {split_fraction}.")
    # The same partition as CanaryScoreAuditor's Split (one generator, positives first), so the
    # two can be compared on equal terms.
    rng = np.random.default_rng(seed)
    halves = []
    for name, scores in (("positive", pos), ("negative", neg)):
        cut = int(scores.size * split_fraction)
        if not 0 < cut < scores.size:
            raise ValueError(f"{scores.size} {name} scores cannot be split at {split_fraction}: "
                             "each part needs at least one score.")
        perm = rng.permutation(scores.size)
        halves.append((scores[perm[:cut]], scores[perm[cut:]]))
    (sel_pos, eval_pos), (sel_neg, eval_neg) = halves
    thresholds = np.append(np.union1d(sel_pos, sel_neg), np.inf)
    choice = _bounds(sel_pos, sel_neg, thresholds, delta, alpha)
    threshold = float(thresholds[np.unravel_index(np.argmax(choice), choice.shape)[1]])
    return _at_threshold(eval_pos, eval_neg, threshold, delta, confidence, "split")


def _result(pos, neg, threshold, d, eps, delta, confidence, strategy, num_tests, level):
    tpr, fpr = _rates(pos, neg, threshold)
    return EpsilonBound(
        epsilon=eps, confidence=confidence, delta=delta, strategy=strategy, threshold=threshold,
        direction=DIRECTIONS[d], tpr=tpr, fpr=fpr, num_positive=int(pos.size),
        num_negative=int(neg.size), num_tests=int(num_tests),
        max_epsilon=_max_epsilon(pos.size, neg.size, delta, level))


def _at_threshold(pos, neg, threshold, delta, confidence, strategy) -> EpsilonBound:
    alpha = 1.0 - confidence
    bounds = _bounds(pos, neg, np.array([threshold], np.float64), delta, alpha)
    d = int(np.argmax(bounds[:, 0]))
    return _result(pos, neg, float(threshold), d, float(bounds[d, 0]), delta, confidence,
                   strategy, 1, alpha)


def epsilon_at_threshold(positive, negative, threshold: float, *, delta: float = 0.0,
                         confidence: float = 0.95) -> EpsilonBound:
    """The bound of the single test "s ≥ threshold" (both directions), fixed before the data
    were seen (e.g. chosen on an earlier audit run): no correction for choosing is needed."""
    pos, neg = _check_scores("positive", positive), _check_scores("negative", negative)
    delta, confidence = _check_levels(delta, confidence)
    if math.isnan(float(threshold)):
        raise ValueError("threshold must be a number, got NaN.")
    return _at_threshold(pos, neg, float(threshold), delta, confidence, "fixed")


def gaussian_epsilon(mu: float, delta: float) -> float:
    """The exact ε(δ) of one Gaussian mechanism with shift / noise std = μ (Balle & Wang 2018):

        δ(ε) = Φ(−ε/μ + μ/2) − e^ε · Φ(−ε/μ − μ/2),   solved for ε ≥ 0.

    The reference for audits whose two outputs are N(0, 1) and N(μ, 1).
    """
    mu, delta = float(mu), float(delta)
    if not mu > 0 or not math.isfinite(mu):
        raise ValueError(f"mu must be finite and > 0, got {mu}.")
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}.")

    def gap(eps):
        return (stats.norm.cdf(-eps / mu + mu / 2)
                - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2) - delta)

    if gap(0.0) <= 0:
        return 0.0
    hi = 1.0
    while gap(hi) > 0:
        hi *= 2
    return float(optimize.brentq(gap, 0.0, hi, xtol=1e-10))


__all__ = ["EpsilonBound", "STRATEGIES", "clopper_pearson", "epsilon_at_threshold",
           "epsilon_lower_bound", "gaussian_epsilon"]
