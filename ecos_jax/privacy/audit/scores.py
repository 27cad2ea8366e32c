"""Audit of the valuation-score releases, on the path the data-valuation experiment runs.

The real path is `ecos_jax.valuation.release.release_vog`: raw scores clipped to a
public bound B, released per sample (`release_scores`, Laplace of scale B/ε) and as a site
summary (`release_site_summary`: noisy clipped sum and sum of squares), into one replace-one
ledger. The control is the path the experiment used to run: per-class min-max normalisation
first, then the same two releases with B = 1, the sensitivity a normalised score would have
if one sample changed only its own score (it does not: the sample that is its class's min or
max moves every other score of the class).

Neighbouring pair (replace-one, sample ids and N public, given the model that computed the
scores): a site of N samples in two classes whose raw scores lie in [0.2B, 0.8B]; in D₋ the
target sample (class 0) scores 0, in D₊ it scores 3B (clipped to B by the real path; the class
maximum for the min-max path). Each trial is one call of the release path with fresh noise.

Attack score: the log-likelihood ratio of everything released — the noisy per-sample vector
and the summary's mean and variance, from which the noisy sums are recomputed with the public
N — between the two noise-free outputs, which the auditor computes from D₊ and D₋. The noises
are independent Laplace draws, so the sum of their log-ratios is the Neyman–Pearson test.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from ecos_jax.privacy.audit.result import AuditResult, check_trials, finish
from ecos_jax.privacy.keys import noise_key
from ecos_jax.privacy.ledger import PrivacyLedger
from ecos_jax.valuation.normalize import per_class_minmax
from ecos_jax.valuation.release import release_scores, release_site_summary, release_vog

MECHANISM = "vog_release"
MEAN_FRACTION = 0.5  # release_site_summary's default split of ε between the two sums


def neighbouring_sites(bound: float, *, per_class: int = 50, seed: int = 0):
    """(raw scores of D₊ [2·per_class], raw scores of D₋, labels [2·per_class]); the target is
    sample 0 (class 0)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(2), per_class).astype(np.int32)
    neg = rng.uniform(0.2 * bound, 0.8 * bound, size=labels.size)
    neg[0] = 0.0
    pos = neg.copy()
    pos[0] = 3.0 * bound
    return pos, neg, labels


def _old_path(key, scores, labels, *, epsilon, ledger, name):
    """The pre-fix release: min-max per class, then both releases with bound 1. The copy
    (np.asarray) is what a caller holding any derived array would pass; the releases refuse
    only the normalisation's own output objects."""
    normalised = np.asarray(per_class_minmax(scores, labels), np.float64)
    k1, k2 = jax.random.split(key)
    released = np.asarray(release_scores(k1, normalised, bound=1.0, epsilon=epsilon,
                                         ledger=ledger, name=name), np.float64)
    summary = release_site_summary(k2, normalised, bound=1.0, epsilon=epsilon, ledger=ledger,
                                   name=f"{name}_site")
    return released, summary


def _real_path(key, scores, labels, *, bound, epsilon, ledger, name):
    released, _, summary = release_vog(key, scores, labels, bound=bound, epsilon=epsilon,
                                       ledger=ledger, name=name)
    return released, summary


def _laplace_llr(y, a_neg, a_pos, scale):
    """log p₊(y)/p₋(y) of y = a + Laplace(scale) (elementwise, summed over the last axis)."""
    return np.sum(np.abs(y - a_neg) - np.abs(y - a_pos), axis=-1) / scale


def audit_scores(
    epsilon: float,
    *,
    trials: int = 2000,
    delta: float = 1e-5,
    bound: float = 1.0,
    per_class: int = 50,
    confidence: float = 0.95,
    control: bool = False,
    strategy: str = "split",
    seed: int = 0,
) -> AuditResult:
    """Audits the VoG releases (per-sample + site summary, each at `epsilon`).

    Args:
      epsilon: ε of each of the two releases (the ledger composes both).
      trials: release calls on each of D₊ and D₋.
      delta: the ledger's δ (the releases are pure ε-DP; δ only enters the bound).
      bound: the public bound B of the real path (score units).
      per_class: samples per class of the site (two classes).
      confidence, strategy: passed to `epsilon_lower_bound`.
      control: audit the old per-class-min-max path (bound 1) instead of the real one.
      seed: the sites' scores (`neighbouring_sites`).
    """
    trials = check_trials(trials)
    pos_raw, neg_raw, labels = neighbouring_sites(bound, per_class=per_class, seed=seed)
    if control:
        release = _old_path
        b = 1.0
        clean = {k: np.clip(np.asarray(per_class_minmax(s, labels), np.float64), 0.0, b)
                 for k, s in (("pos", pos_raw), ("neg", neg_raw))}
    else:
        release = lambda *a, **kw: _real_path(*a, bound=bound, **kw)  # noqa: E731
        b = float(bound)
        clean = {"pos": np.clip(pos_raw, 0.0, b), "neg": np.clip(neg_raw, 0.0, b)}
    n = labels.size
    sums = {k: (v.sum(), (v**2).sum()) for k, v in clean.items()}
    scale_vec = b / epsilon
    scale_sum = b / (MEAN_FRACTION * epsilon)
    scale_sq = b**2 / ((1.0 - MEAN_FRACTION) * epsilon)

    def llr(released, summary):
        s_noisy = summary.mean * n
        q_noisy = (summary.variance + summary.mean**2) * n
        return (_laplace_llr(released, clean["neg"], clean["pos"], scale_vec)
                + _laplace_llr(np.array([s_noisy]), sums["neg"][0], sums["pos"][0], scale_sum)
                + _laplace_llr(np.array([q_noisy]), sums["neg"][1], sums["pos"][1], scale_sq))

    ledger = PrivacyLedger(delta, accountant="pld", relation="replace_one", dataset_size=n)
    release(noise_key(None)[0], pos_raw, labels, epsilon=epsilon, ledger=ledger, name="audit")
    scratch = PrivacyLedger(delta, accountant="pld", relation="replace_one", dataset_size=n)

    t0 = time.perf_counter()
    keys = jax.random.split(noise_key(None)[0], 2 * trials)
    pos_scores, neg_scores = np.empty(trials), np.empty(trials)
    for i in range(trials):
        pos_scores[i] = llr(*release(keys[2 * i], pos_raw, labels, epsilon=epsilon,
                                     ledger=scratch, name=f"p{i}"))
        neg_scores[i] = llr(*release(keys[2 * i + 1], neg_raw, labels, epsilon=epsilon,
                                     ledger=scratch, name=f"n{i}"))
        if len(scratch) > 300:  # only the claim's ledger matters; keep this one small
            scratch = PrivacyLedger(delta, accountant="pld", relation="replace_one",
                                    dataset_size=n)
    l1 = float(np.abs(clean["pos"] - clean["neg"]).sum())
    return finish(
        mechanism=MECHANISM, target_epsilon=epsilon, ledger=ledger,
        control="old path: per-class min-max, then bound 1" if control else None,
        positive=pos_scores, negative=neg_scores, confidence=confidence, strategy=strategy,
        t0=t0, neighbours=(f"site of {n} with the target's raw score 0 vs 3B (replace-one); "
                           f"released vector moves by L1 = {l1:.3g} (B = {b:g})"),
        statistic="log-likelihood ratio of the per-sample vector and the summary's noisy sums",
        details={"bound": b, "l1_change": l1, "site_size": n,
                 "path": "per_class_minmax -> release_scores / release_site_summary (bound 1)"
                 if control else "release.release_vog (raw, clipped to public B)"})


__all__ = ["MECHANISM", "audit_scores", "neighbouring_sites"]
