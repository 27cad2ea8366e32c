"""The ECOS data setting (client / cloud pool) and a stratified train/test split.

`ecos_split` cuts the client's domain into three disjoint parts: client-train, client-test
and a remainder. What the cloud holds (`pool`) is configurable:
  * "id+ood": the remainder plus every other domain (the ECOS setting),
  * "ood":    every other domain only (the client's domain is absent from the pool),
  * "id":     the remainder only.
`oracle_pool` is always the remainder: the in-domain data an oracle sampler would pick from.
For "ood" it is the part held back from the pool, so the oracle baseline still exists.

>>> from ecos_jax.data import load, ecos_split
>>> s = ecos_split(load(), "mnist_blur", n_client_train=200, n_client_test=300)  # doctest: +SKIP
>>> len(s.client_train), len(s.client_test), s.pool.domain_counts()["mnist_blur"]  # doctest: +SKIP
(200, 300, 333)
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ecos_jax.data.sources import ArrayDataset

POOL_KINDS = ("id+ood", "ood", "id")


@dataclasses.dataclass(frozen=True, eq=False)
class EcosSplit:
    """Client data, the cloud's pool and the in-domain oracle pool; ids pairwise disjoint
    between client_train, client_test and pool."""

    client_train: ArrayDataset
    client_test: ArrayDataset
    pool: ArrayDataset
    oracle_pool: ArrayDataset
    client_domain: str


def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer; got {value!r}")
    return int(value)


def ecos_split(
    ds: ArrayDataset,
    client_domain: str | int,
    *,
    n_client_train: int,
    n_client_test: int,
    pool: str = "id+ood",
    seed: int = 0,
) -> EcosSplit:
    """Split `ds` into the client's train/test data and the cloud's pool.

    client_domain: name or index of the client's domain in `ds.domain_names`.
    n_client_train, n_client_test: sizes drawn (uniformly, without replacement) from that
      domain; both >= 1 and together at most the domain's size.
    pool: "id+ood" | "ood" | "id", see the module docstring.
    Returns parts in the original order of `ds` (not shuffled).
    """
    if pool not in POOL_KINDS:
        raise ValueError(f"pool must be one of {POOL_KINDS}; got {pool!r}")
    n_train = _check_count("n_client_train", n_client_train)
    n_test = _check_count("n_client_test", n_client_test)
    if n_train < 1:
        raise ValueError(f"empty client: n_client_train must be >= 1; got {n_train}")
    if n_test < 1:
        raise ValueError(f"empty client test set: n_client_test must be >= 1; got {n_test}")
    d = ds.domain_index(client_domain)
    name = ds.domain_names[d]
    in_domain = np.flatnonzero(ds.domains == d)
    if n_train + n_test > len(in_domain):
        raise ValueError(
            f"domain {name!r} has {len(in_domain)} examples, fewer than n_client_train + "
            f"n_client_test = {n_train} + {n_test} = {n_train + n_test}"
        )
    perm = np.random.default_rng(seed).permutation(in_domain)
    train_idx = np.sort(perm[:n_train])
    test_idx = np.sort(perm[n_train : n_train + n_test])
    rest_idx = np.sort(perm[n_train + n_test :])
    other_idx = np.flatnonzero(ds.domains != d)

    if pool == "id+ood":
        pool_idx = np.sort(np.concatenate([rest_idx, other_idx]))
    elif pool == "ood":
        pool_idx = other_idx
    else:
        pool_idx = rest_idx
    if len(pool_idx) == 0:
        raise ValueError(
            f"pool={pool!r} is empty for client domain {name!r}: "
            + (
                "the dataset has no other domain"
                if pool == "ood"
                else "nothing is left of the domain after the client's share"
                + (" and there is no other domain" if pool == "id+ood" else "")
            )
        )
    return EcosSplit(
        client_train=ds.subset(train_idx),
        client_test=ds.subset(test_idx),
        pool=ds.subset(pool_idx),
        oracle_pool=ds.subset(rest_idx),
        client_domain=name,
    )


def train_test_split(
    ds: ArrayDataset, *, test_fraction: float, seed: int = 0
) -> tuple[ArrayDataset, ArrayDataset]:
    """Random split stratified by (domain, label); both parts non-empty.

    Each (domain, label) group sends round(test_fraction * size) of its examples to the test
    part (so tiny groups may send none); parts keep the original order of `ds`.
    """
    test_fraction = float(test_fraction)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1); got {test_fraction}")
    if len(ds) < 2:
        raise ValueError(f"need at least 2 examples to split; got {len(ds)}")
    rng = np.random.default_rng(seed)
    group = ds.domains.astype(np.int64) * ds.num_classes + ds.labels
    is_test = np.zeros(len(ds), bool)
    for g in np.unique(group):
        members = rng.permutation(np.flatnonzero(group == g))
        is_test[members[: int(round(test_fraction * len(members)))]] = True
    if is_test.all() or not is_test.any():
        # Only possible with very few examples per group: fall back to an unstratified split.
        k = min(max(1, int(round(test_fraction * len(ds)))), len(ds) - 1)
        is_test[:] = False
        is_test[rng.permutation(len(ds))[:k]] = True
    return ds.subset(~is_test), ds.subset(is_test)
