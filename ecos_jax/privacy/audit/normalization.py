"""Audit of the DP normalisation statistics (`ecos_jax.privacy.normalization.release`).

Neighbouring pair (add-or-remove-one example, the relation the release is accounted under):
D₋ is `dataset_size` random features `[n, 2, 2, F]` with values in [0, 0.3]; D₊ is D₋ plus one
example that is 1 on channel 0 and 0 elsewhere at every position, so its channel means and
mean squares are both e₀ (L2 norm 1 = the clipping bounds C_μ = C_s = 1) and its row of the
released sum is u = [e₀, e₀, 1] with ||u|| = √3, the claimed sensitivity, reached. Every
trial is one call of `normalization.release` (noise from OS entropy, as in a real run). The
attack score is ⟨released sum, u⟩: the two outputs are Gaussians whose means differ by u, so
this projection orders them as the likelihood ratio does (the optimal test).

The claim is the ε the release's ledger entry composes to (σ calibrated for the target ε).
The control adds `control_factor` such examples instead of one (the sensitivity understated
by that factor) and keeps the claim of the one-example release.
"""

from __future__ import annotations

import time

import numpy as np

from ecos_jax.privacy import accounting, keys, normalization
from ecos_jax.privacy.audit.result import (
    AuditResult,
    check_control_factor,
    check_trials,
    finish,
)
from ecos_jax.privacy.ledger import PrivacyLedger

MECHANISM = "feature_stats"


def neighbouring_features(group: int, *, dataset_size: int = 30, channels: int = 3,
                          seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features of D₊ [n + group, 2, 2, F], of D₋ [n, 2, 2, F], the added row u [2F + 1])."""
    rng = np.random.default_rng(seed)
    negative = rng.uniform(0.0, 0.3, size=(dataset_size, 2, 2, channels)).astype(np.float32)
    extra = np.zeros((group, 2, 2, channels), np.float32)
    extra[..., 0] = 1.0
    e0 = np.eye(channels)[0]
    u = np.concatenate([e0, e0, [1.0]])
    return np.concatenate([negative, extra]), negative, u


def audit_normalization(
    epsilon: float,
    *,
    trials: int = 2000,
    delta: float = 1e-5,
    accountant: str = "pld",
    confidence: float = 0.95,
    control: bool = False,
    control_factor: int = 4,
    dataset_size: int = 30,
    strategy: str = "split",
    seed: int = 0,
) -> AuditResult:
    """Audits `normalization.release` at the σ that reaches `epsilon` alone, `trials` releases
    on each of D₊ and D₋ (C_μ = C_s = 1).

    control: D₊ adds `control_factor` (an integer >= 2) examples instead of one.
    """
    trials = check_trials(trials)
    factor = check_control_factor(control_factor)
    if factor != int(factor):
        raise ValueError(f"control_factor must be an integer here (examples added), got {factor}.")
    group = int(factor) if control else 1
    pos_x, neg_x, u = neighbouring_features(group, dataset_size=dataset_size, seed=seed)
    sigma = accounting.calibrate_gaussian_sigma(epsilon, delta, accountant=accountant)
    # The claim: what the release records in a run's ledger.
    ledger = PrivacyLedger(delta, accountant=accountant, relation=normalization.RELATION)
    ledger.record(MECHANISM, normalization.event(sigma),
                  sensitivity=normalization.sensitivity(1.0, 1.0), relation=normalization.RELATION)

    def score(x) -> float:
        key, _ = keys.noise_key(None)
        stats = normalization.release(key, x, clip_mean=1.0, clip_square=1.0,
                                      noise_multiplier=sigma)
        return float(stats.released @ u)

    t0 = time.perf_counter()
    pos_scores = np.array([score(pos_x) for _ in range(trials)])
    neg_scores = np.array([score(neg_x) for _ in range(trials)])
    return finish(
        mechanism=MECHANISM, target_epsilon=epsilon, ledger=ledger,
        control=f"sensitivity x{group}: D+ adds {group} examples" if control else None,
        positive=pos_scores, negative=neg_scores, confidence=confidence, strategy=strategy,
        t0=t0, neighbours=f"features with / without {group} example(s) at the clipping bounds",
        statistic="projection of the released noisy sum on the added row u",
        details={"sigma": sigma, "dataset_size": dataset_size,
                 "l2_sensitivity": float(np.linalg.norm(u))})


__all__ = ["MECHANISM", "audit_normalization", "neighbouring_features"]
