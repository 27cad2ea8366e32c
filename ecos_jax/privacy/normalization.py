"""DP normalisation statistics: per-channel mean and variance of features, released with noise.

Tramèr & Boneh (ICLR 2021) standardise ScatterNet features per channel with the mean and
variance of the *training* features, estimated under DP and paid for in the same budget as
DP-SGD ("data normalization"). This module is that release; see docs/privacy.md (DP
normalisation statistics) and docs/algorithms.md (DP normalisation statistics).

For features `x [N, h, w, F]` (channels last), example i contributes its per-channel spatial
moments

    m_i = mean over (h, w) of x_i          [F]      (its channel means)
    s_i = mean over (h, w) of x_i ** 2     [F]      (its channel mean squares)

each clipped in L2 to a public bound (m_i to C_μ, s_i to C_s) and scaled by it, so that its
row u_i = [clip(m_i, C_μ) / C_μ, clip(s_i, C_s) / C_s, 1] (2F + 1 entries, the last one counts
it) has ||u_i||₂ ≤ √3. The release is the sum Σ_i u_i plus N(0, (σ·√3)²) on every entry:

- **Neighbouring relation**: add or remove one example (the relation of Poisson DP-SGD, so the
  two compose in one ledger). Adding or removing example i moves the sum by u_i, whose L2 norm
  is at most √3, so **Δ₂ = √3** and the release is one Gaussian mechanism with noise
  multiplier σ: `GaussianDpEvent(σ)` (`event`). The count is released with noise too (the
  last entry): under add/remove the dataset size is not public, so nothing divides by the
  true N.
- The sensitivity survives what runs before the release: the features are computed per
  example (the scattering transform, and GroupNorm per example, see image i only), and the
  clipping comes after them.
- Everything after the noisy sum is post-processing: mean = C_μ·S_μ / n̂ and E[x²] = C_s·S_s
  / n̂ with n̂ = max(noisy count, 1), var = max(E[x²] − mean², floor), the floor at least the
  noise std of E[x²] (C_s·σ·√3 / n̂, itself computed from released values) so that a channel
  whose variance drowns in the noise is not blown up; then `normalize` standardises any
  features (train and test) with the released values.

σ = 0 is the non-private reference (exact statistics, `NonPrivateDpEvent`, ε = ∞).

    >>> stats = release(key, features, clip_mean=3.0, clip_square=8.0, noise_multiplier=30.0)
    >>> ledger.record("feature_stats", event(30.0), sensitivity=sensitivity(3.0, 8.0), ...)
    >>> x = normalize(features, stats)
"""

from __future__ import annotations

import dataclasses
import math

import dp_accounting
import jax
import numpy as np

from ecos_jax.privacy import accounting, mechanisms

# ||u_i||₂ ≤ √(1 + 1 + 1): the two clipped, scaled moment vectors and the count.
L2_SENSITIVITY = math.sqrt(3.0)
RELATION = "add_or_remove_one"


@dataclasses.dataclass(frozen=True)
class ChannelStats:
    """Released per-channel statistics (float64 numpy).

    mean, var: `[F]`; count: the noisy count n̂ (≥ 1); clipped_mean, clipped_square: the
    fraction of examples whose moment vector was clipped (NOT private: for the log only, never
    released); noise_multiplier: σ (0: exact, non-private); released: the noisy sum `[2F + 1]`
    itself (what the mechanism releases; mean, var and count are computed from it)."""

    mean: np.ndarray
    var: np.ndarray
    count: float
    noise_multiplier: float
    clip_mean: float
    clip_square: float
    clipped_mean: float = 0.0
    clipped_square: float = 0.0
    released: np.ndarray | None = None

    def to_dict(self) -> dict:
        """The released values (mean, var, count) and settings, JSON-ready."""
        return {"mean": self.mean.tolist(), "var": self.var.tolist(), "count": self.count,
                "noise_multiplier": self.noise_multiplier, "clip_mean": self.clip_mean,
                "clip_square": self.clip_square}


def moments(features: np.ndarray, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-example channel moments of `features [N, h, w, F]`: (m [N, F], s [N, F]) float64,
    the spatial mean of x and of x², in row blocks (bounded memory)."""
    features = np.asarray(features)
    if features.ndim != 4:
        raise ValueError(f"features must be [N, h, w, F], got shape {features.shape}.")
    m, s = [], []
    for start in range(0, features.shape[0], batch_size):
        block = features[start:start + batch_size].astype(np.float64)
        m.append(block.mean(axis=(1, 2)))
        s.append((block ** 2).mean(axis=(1, 2)))
    f = features.shape[-1]
    return (np.concatenate(m) if m else np.zeros((0, f)),
            np.concatenate(s) if s else np.zeros((0, f)))


def clip_rows(v: np.ndarray, clip: float) -> tuple[np.ndarray, np.ndarray]:
    """Each row of `v [N, F]` scaled to L2 norm ≤ `clip`; returns (clipped [N, F], was_clipped
    [N] bool)."""
    norms = np.linalg.norm(v, axis=1)
    scale = np.minimum(1.0, clip / np.maximum(norms, 1e-300))
    return v * scale[:, None], norms > clip


def clipped_sum(features: np.ndarray, clip_mean: float, clip_square: float):
    """Σ_i u_i `[2F + 1]` (see the module docstring) and the clipped fractions (m, s)."""
    clip_mean, clip_square = _check_clip(clip_mean, clip_square)
    m, s = moments(features)
    m, cm = clip_rows(m, clip_mean)
    s, cs = clip_rows(s, clip_square)
    total = np.concatenate([m.sum(0) / clip_mean, s.sum(0) / clip_square, [float(len(m))]])
    n = max(len(m), 1)
    return total, float(cm.sum() / n), float(cs.sum() / n)


def release(key: jax.Array, features: np.ndarray, *, clip_mean: float, clip_square: float,
            noise_multiplier: float, var_floor: float = 1e-6) -> ChannelStats:
    """The DP per-channel mean and variance of `features [N, h, w, F]` (module docstring).

    key: the noise key (`keys.noise_key`); noise_multiplier σ ≥ 0 (noise std σ·√3 on every
    entry of the scaled sum; 0 releases the exact statistics, non-private). The caller
    records `event(σ)` with `sensitivity(...)` in the run's ledger (add/remove one)."""
    total, cm, cs = clipped_sum(features, clip_mean, clip_square)
    noisy = np.asarray(mechanisms.gaussian_mechanism(
        key, total.astype(np.float32), sigma=noise_multiplier, l2_sensitivity=L2_SENSITIVITY),
        np.float64) if noise_multiplier > 0 else total
    return from_noisy_sum(noisy, clip_mean=clip_mean, clip_square=clip_square,
                          noise_multiplier=noise_multiplier, var_floor=var_floor,
                          clipped=(cm, cs))


def from_noisy_sum(noisy: np.ndarray, *, clip_mean: float, clip_square: float,
                   noise_multiplier: float, var_floor: float = 1e-6,
                   clipped: tuple[float, float] = (0.0, 0.0)) -> ChannelStats:
    """Post-processing of the released sum `[2F + 1]` into mean and variance `[F]`."""
    noisy = np.asarray(noisy, np.float64)
    f = (noisy.shape[0] - 1) // 2
    count = max(float(noisy[-1]), 1.0)
    mean = clip_mean * noisy[:f] / count
    square = clip_square * noisy[f:2 * f] / count
    # The noise std of E[x²] (computed from released values): a variance below it is noise.
    floor = max(var_floor, clip_square * noise_multiplier * L2_SENSITIVITY / count)
    var = np.maximum(square - mean ** 2, floor)
    return ChannelStats(mean=mean, var=var, count=count, noise_multiplier=float(noise_multiplier),
                        clip_mean=float(clip_mean), clip_square=float(clip_square),
                        clipped_mean=clipped[0], clipped_square=clipped[1], released=noisy)


def normalize(features: np.ndarray, stats: ChannelStats, eps: float = 1e-5) -> np.ndarray:
    """(x − mean) / √(var + eps) per channel of `features [N, h, w, F]` -> float32 (post-
    processing of the release: any split may be normalised with it)."""
    mean = stats.mean.astype(np.float32)
    inv = (1.0 / np.sqrt(stats.var + eps)).astype(np.float32)
    return ((np.asarray(features, np.float32) - mean) * inv).astype(np.float32)


def event(noise_multiplier: float) -> dp_accounting.DpEvent:
    """The release's DpEvent: `GaussianDpEvent(σ)` (Δ₂ = √3 in units where the noise std is
    σ·√3); σ = 0: `NonPrivateDpEvent`."""
    return mechanisms.gaussian_event(noise_multiplier)


def calibrate_after(prefix: dp_accounting.DpEvent, make_event, target_epsilon: float,
                    delta: float, accountant: str = "pld") -> float:
    """σ for the release that follows `prefix` so the composition reaches `target_epsilon`.

    `make_event(σ)` is the later release's event (e.g. DP-SGD's); the returned σ is the
    smallest (to ~1e-6 relative, `accounting.calibrate`) with ε(Composed([prefix,
    make_event(σ)])) ≤ target at δ. Raises ValueError when `prefix` alone spends the target.
    inf gives 0."""
    if math.isinf(float(target_epsilon)):
        return 0.0
    alone = accounting.epsilon(prefix, delta, accountant)
    if not alone < target_epsilon:
        raise ValueError(f"the statistics alone spend epsilon = {alone:.3g} >= the target "
                         f"{target_epsilon:g}: raise their noise multiplier.")
    return accounting.calibrate(
        lambda s: dp_accounting.ComposedDpEvent([prefix, make_event(s)]), target_epsilon,
        delta, accountant)


def sensitivity(clip_mean: float, clip_square: float) -> str:
    """The sensitivity statement the ledger entry carries."""
    return (f"L2 = sqrt(3) on the sum of [clip(m_i, {clip_mean:g}) / {clip_mean:g}, "
            f"clip(s_i, {clip_square:g}) / {clip_square:g}, 1] (example i's per-channel "
            "spatial means m_i and mean squares s_i, each vector clipped in L2, and its count); "
            "adding or removing one example")


def _check_clip(clip_mean: float, clip_square: float) -> tuple[float, float]:
    for name, c in (("clip_mean", clip_mean), ("clip_square", clip_square)):
        if not (isinstance(c, (int, float)) and math.isfinite(c) and c > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {c!r}.")
    return float(clip_mean), float(clip_square)


__all__ = ["ChannelStats", "L2_SENSITIVITY", "RELATION", "calibrate_after", "clip_rows", "clipped_sum", "event",
           "from_noisy_sum", "moments", "normalize", "release", "sensitivity"]
