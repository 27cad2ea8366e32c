"""Empirical privacy auditing: how much ε do many runs of a mechanism certify?

  estimator.py  ε lower bound from attack scores (Clopper–Pearson, both      epsilon_lower_bound,
                directions, split or Bonferroni over thresholds)            epsilon_at_threshold
  result.py     an audit's claimed ε (from the release's ledger) beside     AuditResult
                its lower bound
  coverage.py   ECOS client coverage response (`Client.respond`)            audit_coverage
  knn.py        private kNN / GNMax labels (`private_knn_labels`)           audit_knn
  scores.py     valuation-score releases (`release_vog`, old min-max path)  audit_scores
  dpsgd.py      DP-SGD with a gradient canary (`make_dp_step`, `train`)     audit_dpsgd
  normalization.py  DP normalisation statistics (`normalization.release`)   audit_normalization

Each `audit_*` runs the real release through the public API many times on two neighbouring
inputs, bounds ε from an attack score, and returns it beside the ε the release's own ledger
claims. `control=True` audits a deliberately broken variant (noise scaled down, sensitivity
understated, or the old per-class-normalised score release) that the audit must catch.

    >>> r = audit_coverage(1.0, trials=2000)
    >>> r.epsilon_lower_bound <= r.claimed_epsilon       # ≈ 0.2 vs 1.0
    >>> audit_coverage(1.0, trials=2000, control=True).passed    # bound above the claim

A lower bound is only that: passing says no attack in this family, with this many trials,
caught a violation. Resolution grows with log(trials) (`EpsilonBound.max_epsilon`), and for
Gaussian mechanisms at δ = 1e-5 the last part of ε lives in tails few trials reach.
"""

from ecos_jax.privacy.audit.coverage import audit_coverage
from ecos_jax.privacy.audit.dpsgd import audit_dpsgd
from ecos_jax.privacy.audit.estimator import (
    EpsilonBound,
    clopper_pearson,
    epsilon_at_threshold,
    epsilon_lower_bound,
    gaussian_epsilon,
)
from ecos_jax.privacy.audit.knn import audit_knn
from ecos_jax.privacy.audit.normalization import audit_normalization
from ecos_jax.privacy.audit.result import AuditResult, ledger_claims
from ecos_jax.privacy.audit.scores import audit_scores

AUDITS = {"ecos_coverage": audit_coverage, "private_knn_labels": audit_knn,
          "vog_release": audit_scores, "dpsgd": audit_dpsgd,
          "feature_stats": audit_normalization}

__all__ = ["AUDITS", "AuditResult", "EpsilonBound", "audit_coverage", "audit_dpsgd", "audit_knn",
           "audit_normalization", "audit_scores", "clopper_pearson", "epsilon_at_threshold", "epsilon_lower_bound",
           "gaussian_epsilon", "ledger_claims"]
