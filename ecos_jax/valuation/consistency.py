"""Consistency of two data selections: do two runs value the same samples?

The two runs differ in privacy (DP vs non-DP, two ε) or in architecture; the measures are
written out in docs/algorithms.md#consistency.

On score vectors a, b: `[N]` (the same N samples scored twice)
  * `pearson(a, b)`, `spearman(a, b)`     correlation of values / of ranks (ties averaged), [−1, 1]
  * `top_k_overlap(a, b, k)`              |top_k(a) ∩ top_k(b)| / k, [0, 1]
On the images the two selections pick, `[k, H, W, C]` in [0, 1]
  * `set_ssim(A, B)`                      SSIM of the mean images (or the mean of paired SSIMs)
  * `bhattacharyya_distance(A, B)`        −ln Σ_b sqrt(p_b q_b) over pixel-intensity histograms
References a DP-vs-non-private figure is read against
  * chance: `chance_scores(N, k)` (0, 0, k/N), `chance_images(x, k)` (two random k-subsets)
  * ceiling: the same measure between two non-private runs that differ only in their seed
  * `relative_agreement(v, ceiling, chance)`  (v − chance) / (ceiling − chance)

Identical inputs give 1 (correlations, overlap, SSIM) and 0 (distance). Undefined cases are
errors, never NaN in a table: NaN/inf scores, a constant score vector (correlation 0/0),
k outside [1, N]. Disjoint histograms give a distance of +inf (BC = 0), which is the correct
value, not an error.

    >>> idx_a, idx_b = top_k_indices(vog_eps1, 100), top_k_indices(vog_nonprivate, 100)
    >>> top_k_overlap(vog_eps1, vog_nonprivate, 100), set_ssim(x[idx_a], x[idx_b])
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ecos_jax.valuation.inputs import check_scores


def _check_pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = check_scores(a, name="a"), check_scores(b, name="b")
    if a.shape != b.shape:
        raise ValueError(f"score vectors must score the same samples: shapes {a.shape} vs {b.shape}.")
    if a.size < 2:
        raise ValueError("need at least 2 samples to compare score vectors.")
    return a, b


def _check_not_constant(a: np.ndarray, b: np.ndarray) -> None:
    for name, v in (("a", a), ("b", b)):
        if np.all(v == v[0]):
            raise ValueError(f"score vector {name} is constant: its correlation is undefined (0/0).")


@jax.jit
def _pearson(a: jax.Array, b: jax.Array) -> jax.Array:
    a, b = a - jnp.mean(a), b - jnp.mean(b)
    r = jnp.sum(a * b) / jnp.sqrt(jnp.sum(a * a) * jnp.sum(b * b))
    return jnp.clip(r, -1.0, 1.0)


def average_ranks(v: jax.Array) -> jax.Array:
    """Ranks 1..N with ties given their average rank (as `scipy.stats.rankdata`), `[N]`."""
    s = jnp.sort(v)
    lo = jnp.searchsorted(s, v, side="left")
    hi = jnp.searchsorted(s, v, side="right")
    return (lo + hi + 1) / 2.0


@jax.jit
def _spearman(a: jax.Array, b: jax.Array) -> jax.Array:
    return _pearson(average_ranks(a), average_ranks(b))


def pearson(a: jax.Array, b: jax.Array) -> float:
    """Pearson correlation of two score vectors over the same N samples."""
    a, b = _check_pair(a, b)
    _check_not_constant(a, b)
    return float(_pearson(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)))


def spearman(a: jax.Array, b: jax.Array) -> float:
    """Spearman rank correlation (Pearson of tie-averaged ranks)."""
    a, b = _check_pair(a, b)
    _check_not_constant(a, b)
    return float(_spearman(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)))


def top_k_indices(scores: jax.Array, k: int, *, largest: bool = True) -> np.ndarray:
    """Indices of the k highest (or lowest) scores, best first, `[k]` int.

    Ties are broken by sample index (stable sort), so the result is deterministic.
    """
    s = check_scores(scores)
    if not 1 <= int(k) <= s.size:
        raise ValueError(f"k must be in [1, N = {s.size}], got {k}.")
    order = np.argsort(-s if largest else s, kind="stable")
    return order[: int(k)]


def top_k_overlap(a: jax.Array, b: jax.Array, k: int, *, largest: bool = True) -> float:
    """|top_k(a) ∩ top_k(b)| / k ∈ [0, 1]."""
    a, b = _check_pair(a, b)
    ia, ib = top_k_indices(a, k, largest=largest), top_k_indices(b, k, largest=largest)
    return len(np.intersect1d(ia, ib)) / int(k)


def _box_mean(img: jax.Array, win: int) -> jax.Array:
    """Mean over every win×win window fully inside the image: `[H, W] -> [H-win+1, W-win+1]`."""
    total = jax.lax.reduce_window(img, 0.0, jax.lax.add, (win, win), (1, 1), "VALID")
    return total / (win * win)


@partial(jax.jit, static_argnames=("data_range", "win_size"))
def _ssim_2d(x: jax.Array, y: jax.Array, data_range: float, win_size: int) -> jax.Array:
    # Wang et al. (2004) with a uniform window and sample covariance, averaged over windows
    # that lie fully inside the image: the same numbers as skimage's structural_similarity
    # with its defaults (7×7 window, K1 = 0.01, K2 = 0.03).
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    cov_norm = win_size**2 / (win_size**2 - 1.0)
    ux, uy = _box_mean(x, win_size), _box_mean(y, win_size)
    vx = cov_norm * (_box_mean(x * x, win_size) - ux * ux)
    vy = cov_norm * (_box_mean(y * y, win_size) - uy * uy)
    vxy = cov_norm * (_box_mean(x * y, win_size) - ux * uy)
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return jnp.mean(s)


def _check_images(images: jax.Array, name: str, value_range=(0.0, 1.0)) -> np.ndarray:
    a = np.asarray(images)
    if a.ndim != 4 or a.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty image set [k, H, W, C], got shape {a.shape}.")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf pixels.")
    lo, hi = value_range
    if a.min() < lo or a.max() > hi:
        raise ValueError(f"{name} pixels must lie in [{lo}, {hi}], got [{a.min()}, {a.max()}].")
    return a


def ssim(x: jax.Array, y: jax.Array, *, data_range: float = 1.0, win_size: int = 7) -> float:
    """SSIM of two images `[H, W, C]` (mean over channels), in [−1, 1]; 1 iff identical."""
    xa, ya = (_check_images(np.asarray(v)[None], n, (0.0, data_range)) for v, n in ((x, "x"), (y, "y")))
    if xa.shape != ya.shape:
        raise ValueError(f"images must have the same shape: {xa.shape[1:]} vs {ya.shape[1:]}.")
    _check_window(xa.shape, win_size)
    return float(_ssim_hwc(jnp.asarray(xa[0]), jnp.asarray(ya[0]), float(data_range), win_size))


def _check_window(shape, win_size: int) -> None:
    if win_size < 3 or win_size % 2 == 0:
        raise ValueError(f"win_size must be odd and >= 3, got {win_size}.")
    if min(shape[1], shape[2]) < win_size:
        raise ValueError(f"images {shape[1:3]} are smaller than the {win_size}×{win_size} SSIM window.")


def _ssim_hwc(x: jax.Array, y: jax.Array, data_range: float, win_size: int) -> jax.Array:
    per_channel = jax.vmap(lambda a, b: _ssim_2d(a, b, data_range, win_size), in_axes=(2, 2))
    return jnp.mean(per_channel(x.astype(jnp.float32), y.astype(jnp.float32)))


def set_ssim(
    images_a: jax.Array,
    images_b: jax.Array,
    *,
    mode: str = "mean_image",
    data_range: float = 1.0,
    win_size: int = 7,
) -> float:
    """SSIM between two selected image sets `[k, H, W, C]` in [0, data_range].

    mode: 'mean_image' — SSIM of the two sets' mean images (order-free; the default);
          'paired' — mean SSIM of the i-th image of A with the i-th of B (rank-paired; both
          sets must be the same size, pass them best first).
    """
    a = _check_images(images_a, "images_a", (0.0, data_range))
    b = _check_images(images_b, "images_b", (0.0, data_range))
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"image shapes differ: {a.shape[1:]} vs {b.shape[1:]}.")
    _check_window(a.shape, win_size)
    if mode == "mean_image":
        return float(_ssim_hwc(jnp.mean(jnp.asarray(a), 0), jnp.mean(jnp.asarray(b), 0),
                               float(data_range), win_size))
    if mode == "paired":
        if a.shape[0] != b.shape[0]:
            raise ValueError(f"'paired' SSIM needs sets of equal size, got {a.shape[0]} and {b.shape[0]}.")
        pair = jax.vmap(lambda u, v: _ssim_hwc(u, v, float(data_range), win_size))
        return float(jnp.mean(pair(jnp.asarray(a), jnp.asarray(b))))
    raise ValueError(f"mode must be 'mean_image' or 'paired', got {mode!r}.")


@partial(jax.jit, static_argnames=("bins", "value_range"))
def _bhattacharyya(a: jax.Array, b: jax.Array, bins: int, value_range: tuple[float, float]):
    p, _ = jnp.histogram(a.reshape(-1), bins=bins, range=value_range)
    q, _ = jnp.histogram(b.reshape(-1), bins=bins, range=value_range)
    p, q = p / jnp.sum(p), q / jnp.sum(q)
    bc = jnp.minimum(jnp.sum(jnp.sqrt(p * q)), 1.0)  # rounding can push BC a hair above 1
    return -jnp.log(bc)


def bhattacharyya_distance(
    images_a: jax.Array,
    images_b: jax.Array,
    *,
    bins: int = 32,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> float:
    """Bhattacharyya distance −ln BC between the pixel-intensity histograms of two image sets.

    All pixels of a set form one histogram of `bins` equal bins over `value_range`; sets may
    differ in size. 0 for identical histograms, +inf for histograms with disjoint support.
    """
    if int(bins) < 2:
        raise ValueError(f"bins must be >= 2, got {bins}.")
    a = _check_images(images_a, "images_a", value_range)
    b = _check_images(images_b, "images_b", value_range)
    vr = (float(value_range[0]), float(value_range[1]))
    return float(_bhattacharyya(jnp.asarray(a), jnp.asarray(b), int(bins), vr))


# ---- references: what a measure reads at chance, and where it sits between chance and ceiling --

def chance_top_k_overlap(n: int, k: int) -> float:
    """k / N: the expected top-k overlap of two k-subsets of N drawn uniformly and independently
    (E|A ∩ B| = k · k/N, divided by k)."""
    n, k = int(n), int(k)
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, N = {n}], got {k}.")
    return k / n


def chance_images(images: jax.Array, k: int, *, seed: int = 0, ssim_mode: str = "mean_image",
                  bins: int = 32) -> dict[str, float]:
    """SSIM and Bhattacharyya distance between two independent uniform k-subsets of `images`
    `[N, H, W, C]` (one seeded draw): what the two image measures read for selections that
    share nothing but the data. Unlike the correlations (chance 0) and the overlap (k/N),
    these have no closed form: a mean image of a random k-subset is close to the data's mean
    image, so chance SSIM is near 1 for large k."""
    x = _check_images(images, "images")
    n = x.shape[0]
    if not 1 <= int(k) <= n:
        raise ValueError(f"k must be in [1, N = {n}], got {k}.")
    rng = np.random.default_rng(seed)
    ia, ib = rng.choice(n, int(k), replace=False), rng.choice(n, int(k), replace=False)
    return {"ssim": set_ssim(x[ia], x[ib], mode=ssim_mode),
            "bhattacharyya": bhattacharyya_distance(x[ia], x[ib], bins=bins)}


def chance_scores(n: int, k: int) -> dict[str, float]:
    """The closed-form chance levels of the score measures: Pearson and Spearman 0 (independent
    scores), top-k overlap k/N."""
    return {"pearson": 0.0, "spearman": 0.0, "top_k_overlap": chance_top_k_overlap(n, k)}


def relative_agreement(value: float, ceiling: float, chance: float) -> float:
    """(value − chance) / (ceiling − chance): 0 at chance, 1 at the ceiling (the agreement of
    two runs that differ only in their seed). The same formula serves a distance (lower is
    closer: ceiling < chance). Raises where the ceiling equals chance (no room to measure)."""
    value, ceiling, chance = float(value), float(ceiling), float(chance)
    if not all(np.isfinite(v) for v in (value, ceiling, chance)):
        raise ValueError(f"relative agreement needs finite values, got {value}, {ceiling}, {chance}.")
    if ceiling == chance:
        raise ValueError(f"the ceiling equals chance ({ceiling}): a relative agreement is undefined.")
    return (value - chance) / (ceiling - chance)
