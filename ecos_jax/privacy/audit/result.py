"""What one audit returns: the ε a mechanism's ledger claims beside the ε its runs certify."""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from ecos_jax.privacy.audit.estimator import EpsilonBound, epsilon_lower_bound
from ecos_jax.privacy.ledger import PrivacyLedger


def ledger_claims(ledger: PrivacyLedger) -> dict[str, float]:
    """{accountant: composed ε at the ledger's δ} for every accountant that can compose it."""
    if not len(ledger):
        raise ValueError("the ledger is empty: the audited release recorded nothing.")
    return {acc: float(ledger.epsilon(accountant=acc)) for acc in ledger.accountants()}


@dataclasses.dataclass(frozen=True)
class AuditResult:
    """One audit of one mechanism at one configured ε.

    mechanism: what was audited, e.g. "ecos_coverage".
    target_epsilon: the ε the release was configured (calibrated) for.
    claims: {accountant: ε} the release's own ledger reports, at `delta`.
    control: None for the real mechanism; otherwise how this run was deliberately broken
      (e.g. "sensitivity x4"): a control must be caught, its bound must exceed the claims.
    bound: the empirical lower bound (`EpsilonBound`).
    trials: runs per neighbouring input.
    relation: the neighbouring relation of the audited pair (that of the ledger).
    neighbours, statistic: the pair and the attack score, in words.
    seconds: wall time of the trials.
    """

    mechanism: str
    target_epsilon: float
    claims: dict
    delta: float
    control: str | None
    bound: EpsilonBound
    trials: int
    relation: str
    neighbours: str
    statistic: str
    seconds: float
    details: dict = dataclasses.field(default_factory=dict)

    @property
    def claimed_epsilon(self) -> float:
        """The tightest ε the library claims for this release (the smallest over accountants)."""
        return min(self.claims.values())

    @property
    def epsilon_lower_bound(self) -> float:
        return self.bound.epsilon

    @property
    def passed(self) -> bool:
        """Real mechanism: the bound does not exceed even the tightest claim. Control: the bound
        exceeds every claim (the audit caught the broken release)."""
        if self.control is None:
            return self.bound.epsilon <= self.claimed_epsilon
        return self.bound.epsilon > max(self.claims.values())

    def to_dict(self) -> dict:
        out = {
            "mechanism": self.mechanism, "target_epsilon": self.target_epsilon,
            "claims": self.claims, "claimed_epsilon": self.claimed_epsilon,
            "epsilon_lower_bound": self.bound.epsilon, "delta": self.delta,
            "control": self.control, "passed": self.passed, "trials": self.trials,
            "relation": self.relation, "neighbours": self.neighbours,
            "statistic": self.statistic, "seconds": round(self.seconds, 2),
            "bound": self.bound.to_dict(), "details": self.details,
        }
        return {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in out.items()}


def check_trials(trials: int, minimum: int = 4) -> int:
    if isinstance(trials, bool) or int(trials) != trials or trials < minimum:
        raise ValueError(f"trials must be an integer >= {minimum}, got {trials!r}.")
    return int(trials)


def check_control_factor(factor) -> float:
    factor = float(factor)
    if not factor > 1.0 or not math.isfinite(factor):
        raise ValueError(f"control_factor must be a finite number > 1, got {factor}.")
    return factor


def finish(*, mechanism: str, target_epsilon: float, ledger: PrivacyLedger, control: str | None,
           positive, negative, confidence: float, strategy: str, t0: float, neighbours: str,
           statistic: str, details: dict) -> AuditResult:
    """Bounds ε from the two score sets and packs the result with the ledger's claims."""
    positive, negative = np.asarray(positive, np.float64), np.asarray(negative, np.float64)
    bound = epsilon_lower_bound(positive, negative, delta=ledger.delta, confidence=confidence,
                                strategy=strategy)
    return AuditResult(
        mechanism=mechanism, target_epsilon=float(target_epsilon), claims=ledger_claims(ledger),
        delta=ledger.delta, control=control, bound=bound, trials=int(positive.size),
        relation=ledger.relation, neighbours=neighbours, statistic=statistic,
        seconds=time.perf_counter() - t0, details=details)


__all__ = ["AuditResult", "ledger_claims"]
