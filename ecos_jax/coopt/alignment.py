"""Aligning heterogeneous prior targets into one common distribution.

A design choice of ours (docs/algorithms.md#alignment).

Priors disagree in offset, scale, dimension and basis. Participant p's transform is

    A_p(t) = normalise( ((t - μ_p) / σ_p) · B_p · M_p )

  * standardise: μ_p `[d_p]` the mean, σ_p a single scale (root mean per-dimension variance,
    so the geometry within a prior is kept),
  * project: B_p `[d_p, k]`, the top-k principal directions, bringing every prior to the
    shared dimension k (k <= every d_p),
  * align bases: M_p `[k, k]` maps onto a common reference on a small shared **anchor** set
    (images every participant embeds with its own prior): an orthogonal Procrustes rotation
    (optionally times a scale), or a learned (ridge) linear map; the reference is the
    generalised-Procrustes mean of all participants (or one participant's own frame),
  * normalise: rows onto the unit sphere (optional).
Statistics (μ, σ, B) come from the anchors by default: the anchors are the one set every
participant sees, so under a non-IID split their statistics are comparable.

`disagreement` measures the inconsistency: the mean over pairs of participants and common
images of 1 - cos(t_p, t_q). `linear_cka` is a basis-invariant similarity (it does not change
under alignment by a rotation; it says how much the priors differ beyond their bases).

    >>> transforms = fit_alignment(anchor_targets, shared_dim=32, method="procrustes")
    >>> aligned = [tr(t) for tr, t in zip(transforms, participant_targets)]
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

METHODS = ("procrustes", "linear", "none")
STATS_ON = ("anchors", "own")


@jax.jit
def orthogonal_procrustes(source: jax.Array, target: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The rotation R `[k, k]` and scale s minimising ‖s · source · R − target‖_F.

    source, target: `[m, k]` paired rows (already centred if a translation is to be ignored).
    R = U Vᵀ from the SVD U Σ Vᵀ = sourceᵀ target (Schönemann, 1966), s = tr Σ / ‖source‖².
    R is orthogonal (reflections allowed: a prior's sign convention is arbitrary).
    """
    u, sigma, vt = jnp.linalg.svd(source.T @ target, full_matrices=False)
    return u @ vt, jnp.sum(sigma) / jnp.maximum(jnp.sum(source**2), 1e-12)


@jax.jit
def ridge_map(source: jax.Array, target: jax.Array, ridge: float) -> jax.Array:
    """The linear map W `[k, k]` minimising ‖source · W − target‖² + ridge · m · ‖W‖²."""
    k = source.shape[1]
    gram = source.T @ source + ridge * source.shape[0] * jnp.eye(k, dtype=source.dtype)
    return jnp.linalg.solve(gram, source.T @ target)


@jax.jit
def _standardise_stats(t: jax.Array) -> tuple[jax.Array, jax.Array]:
    mean = jnp.mean(t, axis=0)
    return mean, jnp.sqrt(jnp.mean(jnp.var(t, axis=0))) + 1e-8


@jax.jit
def _principal_directions(centred: jax.Array) -> jax.Array:
    """All principal directions `[d, d]` of centred rows, by decreasing variance."""
    _, _, vt = jnp.linalg.svd(centred, full_matrices=False)
    d = centred.shape[1]
    basis = vt.T
    if basis.shape[1] < d:  # fewer rows than dimensions: pad with zeros (never selected, m >= k)
        basis = jnp.pad(basis, ((0, 0), (0, d - basis.shape[1])))
    return basis


def unit_normalise(t: jax.Array) -> jax.Array:
    """Rows of `t: [n, k]` scaled to unit L2 norm."""
    return t / (jnp.linalg.norm(t, axis=-1, keepdims=True) + 1e-12)


@dataclasses.dataclass(frozen=True, eq=False)
class AlignmentTransform:
    """One participant's A_p: `__call__(targets [n, d_p]) -> [n, k]` (float32 numpy).

    mean `[d_p]`, scale (scalar), basis `[d_p, k]`, mapping `[k, k]`, normalise (bool).
    """

    mean: np.ndarray
    scale: float
    basis: np.ndarray
    mapping: np.ndarray
    normalise: bool

    @property
    def in_dim(self) -> int:
        return int(self.basis.shape[0])

    @property
    def out_dim(self) -> int:
        return int(self.mapping.shape[1])

    def __call__(self, targets: np.ndarray) -> np.ndarray:
        targets = np.asarray(targets, np.float32)
        if targets.ndim != 2 or targets.shape[1] != self.in_dim:
            raise ValueError(f"this transform takes targets [n, {self.in_dim}]; got shape {targets.shape} "
                             "(a prior whose output dimension differs from the one it was fit on).")
        return np.asarray(_apply(jnp.asarray(targets), self.mean, self.scale, self.basis, self.mapping,
                                 normalise=self.normalise))


@partial(jax.jit, static_argnames=("normalise",))
def _apply(t, mean, scale, basis, mapping, *, normalise):
    z = ((t - mean) / scale) @ basis @ mapping
    return unit_normalise(z) if normalise else z


def _check_anchor_targets(anchor_targets: Sequence[np.ndarray], shared_dim: int) -> list[np.ndarray]:
    if len(anchor_targets) == 0:
        raise ValueError("fit_alignment needs the anchor targets of at least one participant.")
    arrays = [np.asarray(a, np.float32) for a in anchor_targets]
    for p, a in enumerate(arrays):
        if a.ndim != 2:
            raise ValueError(f"participant {p}: anchor targets must be [m, d]; got shape {a.shape}.")
        if not np.isfinite(a).all():
            raise ValueError(f"participant {p}: anchor targets contain NaN or inf.")
    sizes = {a.shape[0] for a in arrays}
    if len(sizes) != 1:
        raise ValueError(f"every participant must embed the same anchors; got anchor counts {sorted(sizes)}.")
    m = sizes.pop()
    if m < shared_dim + 1:
        raise ValueError(f"the anchor set has {m} images, smaller than the target dimension: aligning "
                         f"{shared_dim}-d targets needs at least shared_dim + 1 = {shared_dim + 1} anchors "
                         "(Procrustes / a linear map are underdetermined otherwise).")
    for p, a in enumerate(arrays):
        if a.shape[1] < shared_dim:
            raise ValueError(f"participant {p}'s prior outputs {a.shape[1]}-d targets, fewer than the shared "
                             f"dimension {shared_dim}; lower shared_dim to at most {min(x.shape[1] for x in arrays)}.")
    return arrays


def fit_alignment(
    anchor_targets: Sequence[np.ndarray],
    *,
    shared_dim: int,
    method: str = "procrustes",
    reference: str | int = "generalised",
    own_targets: Sequence[np.ndarray] | None = None,
    stats_on: str = "anchors",
    with_scale: bool = True,
    ridge: float = 1e-3,
    iterations: int = 10,
    normalise: bool = True,
) -> list[AlignmentTransform]:
    """Fits A_p for every participant from its prior's targets on the shared anchors.

    Args:
      anchor_targets: P arrays `[m, d_p]`: participant p's prior applied to the m anchors.
      shared_dim: k, the common dimension (<= every d_p, < m).
      method: "procrustes" (rotation, times a scale if `with_scale`), "linear" (ridge map), or
        "none" (standardise + project only: no basis alignment).
      reference: "generalised" (iterate to the mean of all aligned participants) or a
        participant index whose frame the others are mapped into.
      own_targets, stats_on: statistics μ, σ, B from the anchors ("anchors") or from each
        participant's own targets ("own", then `own_targets` is needed).
      ridge: "linear" only, relative ridge penalty. iterations: generalised-Procrustes rounds.
      normalise: project the results onto the unit sphere.
    Returns: P `AlignmentTransform`s, each mapping `[n, d_p] -> [n, shared_dim]`.
    """
    if method not in METHODS:
        raise ValueError(f"unknown alignment method {method!r}; choose one of {METHODS}.")
    if stats_on not in STATS_ON:
        raise ValueError(f"stats_on must be one of {STATS_ON}, got {stats_on!r}.")
    if isinstance(shared_dim, bool) or int(shared_dim) != shared_dim or shared_dim < 1:
        raise ValueError(f"shared_dim must be an integer >= 1, got {shared_dim!r}.")
    arrays = _check_anchor_targets(anchor_targets, int(shared_dim))
    if reference != "generalised" and not (isinstance(reference, int) and 0 <= reference < len(arrays)):
        raise ValueError(f"reference must be 'generalised' or a participant index < {len(arrays)}, got {reference!r}.")
    if stats_on == "own":
        if own_targets is None or len(own_targets) != len(arrays):
            raise ValueError("stats_on='own' needs own_targets, one array per participant.")
        stats_src = [np.asarray(t, np.float32) for t in own_targets]
        for p, (a, t) in enumerate(zip(arrays, stats_src)):
            if t.ndim != 2 or t.shape[1] != a.shape[1]:
                raise ValueError(f"participant {p}: own targets {t.shape} and anchor targets {a.shape} "
                                 "differ in dimension.")
            if t.shape[0] <= shared_dim:
                raise ValueError(f"participant {p} has {t.shape[0]} targets, too few for a {shared_dim}-d projection.")
    else:
        stats_src = arrays

    k = int(shared_dim)
    stats, projected = [], []
    for a, src in zip(arrays, stats_src):
        mean, scale = _standardise_stats(jnp.asarray(src))
        basis = _principal_directions((jnp.asarray(src) - mean) / scale)[:, :k]
        stats.append((mean, scale, basis))
        z = ((jnp.asarray(a) - mean) / scale) @ basis
        projected.append(z - jnp.mean(z, axis=0))  # rotations are fit between centred anchors

    eye = jnp.eye(k, dtype=jnp.float32)
    maps = [eye] * len(arrays)
    if method != "none":
        def fit_one(z, ref):
            if method == "linear":
                return ridge_map(z, ref, ridge)
            rot, s = orthogonal_procrustes(z, ref)
            return rot * s if with_scale else rot

        if reference == "generalised":
            ref = projected[0]
            for _ in range(max(1, iterations)):
                maps = [fit_one(z, ref) for z in projected]
                ref = jnp.mean(jnp.stack([z @ m for z, m in zip(projected, maps)]), axis=0)
                # Keep the reference at the participants' scale: averaging shrinks it.
                ref = ref * jnp.sqrt(jnp.mean(jnp.stack([jnp.sum(z**2) for z in projected])) / jnp.sum(ref**2))
        else:
            maps = [fit_one(z, projected[reference]) for z in projected]
        if method == "procrustes" and with_scale:
            # An overall scale is arbitrary: fix it so that the mean scale is 1.
            overall = np.mean([float(jnp.linalg.norm(m, 2)) for m in maps])
            maps = [m / overall for m in maps]
    return [AlignmentTransform(mean=np.asarray(mu), scale=float(s), basis=np.asarray(b), mapping=np.asarray(m),
                               normalise=normalise) for (mu, s, b), m in zip(stats, maps)]


def disagreement(common_targets: Sequence[np.ndarray]) -> float:
    """Inconsistency of P >= 2 participants' targets on the same images, in [0, 2].

    common_targets: P arrays `[m, d]` (same d): each participant's targets for the same m
    images. Returns the mean over pairs p < q and images of 1 - cos(t_p, t_q); 0 means the
    participants agree on every image's direction.
    """
    arrays = [np.asarray(t, np.float32) for t in common_targets]
    if len(arrays) < 2:
        raise ValueError("disagreement needs at least two participants.")
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(f"disagreement needs targets of one shape [m, d]; got {[a.shape for a in arrays]} "
                         "(align them to a shared dimension first).")
    units = [np.asarray(unit_normalise(jnp.asarray(a))) for a in arrays]
    return float(np.mean([1.0 - np.mean(np.sum(u * v, axis=1)) for u, v in itertools.combinations(units, 2)]))


def linear_cka(a: np.ndarray, b: np.ndarray) -> float:
    """Linear CKA (Kornblith et al., 2019) of `a: [m, d1]` and `b: [m, d2]`, in [0, 1]."""
    a = np.asarray(a, np.float64) - np.mean(a, axis=0)
    b = np.asarray(b, np.float64) - np.mean(b, axis=0)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"linear_cka needs paired rows; got {a.shape[0]} and {b.shape[0]}.")
    num = np.linalg.norm(a.T @ b) ** 2
    den = np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b)
    return float(num / max(den, 1e-30))


def mean_pairwise_cka(common_targets: Sequence[np.ndarray]) -> float:
    """Mean linear CKA over pairs of participants' targets on the same images (any dims)."""
    if len(common_targets) < 2:
        raise ValueError("mean_pairwise_cka needs at least two participants.")
    return float(np.mean([linear_cka(a, b) for a, b in itertools.combinations(common_targets, 2)]))
