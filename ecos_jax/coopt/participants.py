"""Splitting an unlabeled pool among CoOpt participants (docs/algorithms.md#participants).

A split is a list of index arrays, one per participant, that partition `range(N)`:
  * "iid":    a uniform random partition into near-equal shards,
  * "domain": whole domains are dealt to participants (round robin over a shuffled domain
              order); when there are more participants than domains, a domain is cut into
              equal parts so every participant still gets data from exactly one domain,
  * "class":  label skew: each class is divided among participants by Dirichlet(alpha)
              proportions (Hsu et al., 2019); small alpha -> each holds few classes.
Labels and domains are only used to *simulate* heterogeneity; participants never see labels.

>>> shards = split_pool(num_examples=10, num_participants=3, scheme="iid", seed=0)
>>> sorted(np.concatenate(shards).tolist()) == list(range(10))
True
"""

from __future__ import annotations

import numpy as np

SCHEMES = ("iid", "domain", "class")


def _check_shards(shards: list[np.ndarray], scheme: str) -> list[np.ndarray]:
    empty = [p for p, s in enumerate(shards) if len(s) == 0]
    if empty:
        raise ValueError(
            f"participants {empty} received no data under scheme={scheme!r}; use fewer "
            "participants, a larger pool or a less skewed split (larger dirichlet_alpha)."
        )
    return [np.sort(s).astype(np.int64) for s in shards]


def split_pool(
    *,
    num_examples: int,
    num_participants: int,
    scheme: str = "iid",
    seed: int = 0,
    domains: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    dirichlet_alpha: float = 0.5,
) -> list[np.ndarray]:
    """Partitions `range(num_examples)` into `num_participants` sorted index arrays.

    Args:
      num_examples: pool size N.
      num_participants: P >= 1.
      scheme: "iid" | "domain" (needs `domains [N] int`) | "class" (needs `labels [N] int`).
      seed: the split's randomness.
      dirichlet_alpha: concentration of the class-skew proportions ("class" only), > 0.
    Returns:
      P arrays of int64 indices; disjoint, together `range(N)`, each non-empty.
    Raises:
      ValueError: unknown scheme, missing domains/labels, or a participant left with no data.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown split scheme {scheme!r}; choose one of {SCHEMES}.")
    if isinstance(num_participants, bool) or int(num_participants) != num_participants or num_participants < 1:
        raise ValueError(f"num_participants must be an integer >= 1, got {num_participants!r}.")
    if num_examples < num_participants:
        raise ValueError(
            f"cannot give {num_participants} participants data from a pool of {num_examples} "
            "examples: some participant would have no data."
        )
    p = int(num_participants)
    rng = np.random.default_rng(seed)

    if scheme == "iid":
        return _check_shards(np.array_split(rng.permutation(num_examples), p), scheme)

    if scheme == "domain":
        if domains is None or len(domains) != num_examples:
            raise ValueError("scheme='domain' needs `domains`, one int per pool example.")
        names = rng.permutation(np.unique(domains))
        if p <= len(names):
            shards = [[] for _ in range(p)]
            for k, d in enumerate(names):
                shards[k % p].append(np.flatnonzero(domains == d))
            return _check_shards([np.concatenate(s) for s in shards], scheme)
        # More participants than domains: participant k takes a slice of domain k mod D.
        owners = [[k for k in range(p) if k % len(names) == j] for j in range(len(names))]
        out: list[np.ndarray] = [np.zeros(0, np.int64)] * p
        for j, d in enumerate(names):
            members = rng.permutation(np.flatnonzero(domains == d))
            for k, part in zip(owners[j], np.array_split(members, len(owners[j]))):
                out[k] = part
        return _check_shards(out, scheme)

    if labels is None or len(labels) != num_examples:
        raise ValueError("scheme='class' needs `labels`, one int per pool example.")
    if not dirichlet_alpha > 0:
        raise ValueError(f"dirichlet_alpha must be > 0, got {dirichlet_alpha}.")
    shards = [[] for _ in range(p)]
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        props = rng.dirichlet(np.full(p, dirichlet_alpha))
        cuts = (np.cumsum(props)[:-1] * len(members)).astype(int)
        for k, part in enumerate(np.split(members, cuts)):
            shards[k].append(part)
    return _check_shards([np.concatenate(s) for s in shards], scheme)
