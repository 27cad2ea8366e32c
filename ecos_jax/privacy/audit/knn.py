"""Audit of private kNN (GNMax) labels (`ecos_jax.ecos.private_knn.private_knn_labels`).

Neighbouring pair (add-or-remove-one client sample, the relation the labels are accounted
under), two classes, k neighbours: in D₋ the k client points nearest to the query are v₀
points of class 0 (the farthest ones) and k − v₀ of class 1; D₊ adds `group` class-1 points
nearer than all of them, which push `group` class-0 points out of the k nearest and move the
vote histogram from (v₀, k − v₀) to (v₀ − group, k − v₀ + group). With group = 1 that is the
worst case the release's sensitivity (L2 = √2 per query) allows. v₀ is chosen so that the two
vote margins sit either side of a tie, where the noisy argmax is most informative.

Each trial is one call of `private_knn_labels` on Q copies of the query (noise and subsampling
from OS entropy): Q labels whose ε together is what the call's ledger entry claims. With every
coin independent across queries, the number of labels equal to class 1 is a sufficient
statistic for the pair, and it is the attack score.

The control adds `control_factor` class-1 points (sensitivity understated by that factor)
and keeps the claim of the one-point release.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ecos_jax.ecos import private_knn
from ecos_jax.privacy.audit.result import (
    AuditResult,
    check_control_factor,
    check_trials,
    finish,
)
from ecos_jax.privacy.ledger import PrivacyLedger

MECHANISM = "private_knn_labels"


def neighbouring_votes(group: int, *, k: int = 8, dim: int = 2, num_far: int = 8, seed: int = 0):
    """(query [1, d], D₊ features [n + group, d], D₊ labels, D₋ features [n, d], D₋ labels).

    The query is the origin. Class-1 points sit at distance 1, class-0 points at distances
    2, 2.01, ... (the farthest of the k), D₊'s extra points at 0.5, and `num_far` points of
    random class at distance 100 (outside every k-neighbourhood; the client has more data
    than k).
    """
    if not 1 <= group <= k:
        raise ValueError(f"the pair needs 1 <= group <= k, got group={group}, k={k}.")
    rng = np.random.default_rng(seed)
    v0 = math.ceil((k + group) / 2)
    direction = rng.standard_normal((k + num_far + group, dim))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    radius = np.concatenate([2.0 + 0.01 * np.arange(v0), np.ones(k - v0), np.full(num_far, 100.0)])
    labels = np.concatenate([np.zeros(v0), np.ones(k - v0), rng.integers(2, size=num_far)])
    neg_x = (direction[: k + num_far] * radius[:, None]).astype(np.float32)
    extra = (0.5 * direction[k + num_far:]).astype(np.float32)
    pos_x = np.concatenate([neg_x, extra])
    pos_y = np.concatenate([labels, np.ones(group)]).astype(np.int32)
    query = np.zeros((1, dim), np.float32)
    return query, pos_x, pos_y, neg_x, labels.astype(np.int32)


def audit_knn(
    epsilon: float,
    *,
    trials: int = 2000,
    delta: float = 1e-5,
    accountant: str = "pld",
    num_queries: int = 8,
    k: int = 8,
    sampling_rate: float = 1.0,
    confidence: float = 0.95,
    control: bool = False,
    control_factor: int = 8,
    strategy: str = "split",
    seed: int = 0,
) -> AuditResult:
    """Audits `private_knn_labels(epsilon, delta)` on Q = `num_queries` copies of one query.

    Args:
      epsilon: target ε of the Q labels together.
      trials: calls on each of D₊ and D₋.
      delta, accountant, k, sampling_rate: the release's parameters (as in
        `private_knn_labels`).
      confidence, strategy: passed to `epsilon_lower_bound`.
      control: audit the broken variant (D₊ adds `control_factor` points) instead.
      control_factor: integer in [2, k], the number of points the control adds (default 8:
        labels are one bit per query, so a weaker control is not caught at a few thousand
        trials).
      seed: the datasets' layout (`neighbouring_votes`).
    """
    trials = check_trials(trials)
    factor = check_control_factor(control_factor)
    if factor != int(factor):
        raise ValueError(f"control_factor must be an integer here (points added), got {factor}.")
    group = int(factor) if control else 1
    query, pos_x, pos_y, neg_x, neg_y = neighbouring_votes(group, k=k, seed=seed)
    queries = np.repeat(query, num_queries, axis=0)
    args = dict(num_classes=2, k=k, epsilon=epsilon, delta=delta, sampling_rate=sampling_rate,
                accountant=accountant)
    ledger = PrivacyLedger(delta, accountant=accountant, relation="add_or_remove_one")
    first = private_knn.private_knn_labels(queries, pos_x, pos_y, ledger=ledger, **args)

    t0 = time.perf_counter()
    pos_scores, neg_scores = np.empty(trials), np.empty(trials)
    for i in range(trials):
        pos_scores[i] = private_knn.private_knn_labels(queries, pos_x, pos_y, **args).labels.sum()
        neg_scores[i] = private_knn.private_knn_labels(queries, neg_x, neg_y, **args).labels.sum()
    v0 = math.ceil((k + group) / 2)
    return finish(
        mechanism=MECHANISM, target_epsilon=epsilon, ledger=ledger,
        control=f"sensitivity x{group}: D+ adds {group} points" if control else None,
        positive=pos_scores, negative=neg_scores, confidence=confidence, strategy=strategy,
        t0=t0, neighbours=(f"client data with / without {group} class-1 point(s) nearest the "
                           f"query: votes ({v0 - group}, {k - v0 + group}) vs ({v0}, {k - v0})"),
        statistic=f"number of the {num_queries} labels equal to class 1",
        details={"sigma": first.sigma, "num_queries": num_queries, "k": k,
                 "sampling_rate": sampling_rate})


__all__ = ["MECHANISM", "audit_knn", "neighbouring_votes"]
