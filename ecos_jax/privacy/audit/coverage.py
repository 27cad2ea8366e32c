"""Audit of the ECOS client's coverage response (`ecos_jax.ecos.protocol.Client.respond`).

Neighbouring pair (add-or-remove-one client sample, the relation the response is accounted
under): D₋ is a client's features spread over R well separated centroids; D₊ is D₋ plus one
sample placed on centroid 0, which moves the true count s₀ by one. Every trial is one call of
`Client.respond` (noise from OS entropy, as in a real run). The attack score is the released
noisy count of centroid 0: for a Gaussian release whose two means differ in that one
coordinate it orders the outputs as the likelihood ratio does, so it is the optimal test.

The claim is the ε the response's own ledger entry composes to. The control adds
`control_factor` samples instead of one (the sensitivity understated by that factor, which
for the Gaussian mechanism is the same as its noise scaled down by it) and keeps the claim
of the one-sample release.
"""

from __future__ import annotations

import time

import numpy as np

from ecos_jax.ecos import protocol
from ecos_jax.privacy.audit.result import (
    AuditResult,
    check_control_factor,
    check_trials,
    finish,
)
from ecos_jax.privacy.ledger import PrivacyLedger

MECHANISM = "ecos_coverage"


def neighbouring_clients(group: int, *, num_centroids: int = 4, client_size: int = 40,
                         seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centroids [R, R], features of D₊ [n + group, R], features of D₋ [n, R]).

    Centroids are 10·e_r (pairwise 14 apart); client samples sit within ~0.1 of a centroid, so
    every sample's nearest centroid is the one it was placed at. D₊ adds `group` samples at
    centroid 0.
    """
    rng = np.random.default_rng(seed)
    centroids = 10.0 * np.eye(num_centroids, dtype=np.float32)
    which = rng.integers(num_centroids, size=client_size)
    jitter = 0.1 * rng.standard_normal((client_size, num_centroids)).astype(np.float32)
    negative = centroids[which] + jitter
    extra = np.repeat(centroids[:1], group, axis=0) + np.float32(0.01)
    return centroids, np.concatenate([negative, extra]), negative


def audit_coverage(
    epsilon: float,
    *,
    trials: int = 2000,
    delta: float = 1e-5,
    accountant: str = "pld",
    confidence: float = 0.95,
    control: bool = False,
    control_factor: int = 4,
    num_centroids: int = 4,
    client_size: int = 40,
    strategy: str = "split",
    seed: int = 0,
) -> AuditResult:
    """Audits `Client(epsilon, delta, accountant).respond` with `trials` responses per input.

    Args:
      epsilon: the client's target ε per response.
      trials: responses on each of D₊ and D₋.
      delta, accountant: the client's δ and calibration accountant (also its ledger's).
      confidence, strategy: passed to `epsilon_lower_bound`.
      control: audit the broken variant (D₊ adds `control_factor` samples) instead.
      control_factor: an integer >= 2, the number of samples the control adds.
      num_centroids, client_size, seed: the neighbouring datasets (`neighbouring_clients`).
    """
    trials = check_trials(trials)
    factor = check_control_factor(control_factor)
    if factor != int(factor):
        raise ValueError(f"control_factor must be an integer here (samples added), got {factor}.")
    group = int(factor) if control else 1
    centroids, pos_x, neg_x = neighbouring_clients(group, num_centroids=num_centroids,
                                                   client_size=client_size, seed=seed)
    message = protocol.Centroids(centroids)
    pos = protocol.Client(pos_x, epsilon=epsilon, delta=delta, accountant=accountant)
    neg = protocol.Client(neg_x, epsilon=epsilon, delta=delta, accountant=accountant)
    # The claim: what one response records in the client's ledger.
    ledger = PrivacyLedger(delta, accountant=accountant, relation="add_or_remove_one")
    pos.respond(message, ledger)

    t0 = time.perf_counter()
    pos_scores, neg_scores = np.empty(trials), np.empty(trials)
    for i in range(trials):
        pos_scores[i] = float(pos.respond(message).counts[0])
        neg_scores[i] = float(neg.respond(message).counts[0])
    return finish(
        mechanism=MECHANISM, target_epsilon=epsilon, ledger=ledger,
        control=f"sensitivity x{group}: D+ adds {group} samples" if control else None,
        positive=pos_scores, negative=neg_scores, confidence=confidence, strategy=strategy,
        t0=t0, neighbours=f"client data with / without {group} sample(s) on centroid 0",
        statistic="released noisy count of centroid 0",
        details={"sigma": pos.sigma, "num_centroids": num_centroids, "client_size": client_size,
                 "true_counts": {"positive": int(protocol.coverage_counts(pos_x, centroids)[0]),
                                 "negative": int(protocol.coverage_counts(neg_x, centroids)[0])}})


__all__ = ["MECHANISM", "audit_coverage", "neighbouring_clients"]
