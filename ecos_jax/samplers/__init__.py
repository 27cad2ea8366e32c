"""Composable samplers over a feature pool [N, d]: each returns unique int32 indices.

Functions (pure pieces):  random_sample, kcenter_greedy, kmeans.kmeans, assign, allocate,
                          select_within, ecos_sample, remove_near_duplicates
(`samplers.kmeans` is the module, as are `samplers.ecos`, `samplers.kcenter`, `samplers.dedup`,
`samplers.random`: no function shadows a module name.)
Composable stages (optax-like, see base.py): random_sampler(), kcenter_sampler(),
                          ecos_sampler(), dedup_filter(), chain(...)

Pools that do not fit on the device are streamed from a host numpy array / np.memmap with
`chunk_size=`; results are identical to the in-memory run (see pool.py).
"""
from ecos_jax.samplers.base import (
    Sampler,
    chain,
    dedup_filter,
    ecos_sampler,
    kcenter_sampler,
    random_sampler,
)
from ecos_jax.samplers.dedup import remove_near_duplicates
from ecos_jax.samplers.ecos import allocate, ecos_sample, select_within
from ecos_jax.samplers.kcenter import kcenter_greedy
from ecos_jax.samplers.kmeans import KMeansResult, assign
from ecos_jax.samplers.random import random_sample

__all__ = [
    "KMeansResult", "Sampler", "allocate", "assign", "chain", "dedup_filter", "ecos_sample",
    "ecos_sampler", "kcenter_greedy", "kcenter_sampler", "random_sample",
    "random_sampler", "remove_near_duplicates", "select_within",
]
