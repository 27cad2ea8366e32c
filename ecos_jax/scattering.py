r"""2-D scattering transform (Mallat; the "ScatterNet" of Tramèr & Boneh, ICLR 2021) in JAX.

A fixed, data-independent feature map: Morlet wavelets ψ_{j,θ} (scales j < J, L orientations)
and a Gaussian low-pass φ_J, applied by products in the Fourier domain on the reflect-padded
image, with a modulus between wavelet layers. Up to order 2:

    S0 x = x ⋆ φ_J
    S1 x = |x ⋆ ψ_{j1,θ1}| ⋆ φ_J                           (J·L paths)
    S2 x = ||x ⋆ ψ_{j1,θ1}| ⋆ ψ_{j2,θ2}| ⋆ φ_J,  j2 > j1     (L²·J(J-1)/2 paths)

each subsampled by 2^J: for J = 2, L = 8 on 28 × 28 images, K = 1 + 16 + 64 = 81 paths of
7 × 7, i.e. 81 × 7 × 7 = 3,969 features per channel. Convolutions are computed at the
coarsest resolution each path allows (a filter is periodised to the path's current grid, and a
subsampling by k in space is an average of the k × k aliased Fourier blocks), so the output is
kymatio 0.3.0's `Scattering2D(J, shape, L, max_order=2)` to float32 tolerance
(`tests/test_scattering.py` checks it against kymatio's numpy frontend): same filters, padding,
path order and normalisation (kymatio's constant 3.1415 in the Gabor normalisation included,
so the two agree to float tolerance).

    >>> bank = filter_bank((28, 28), J=2, L=8)
    >>> scatter(bank, x).shape          # x [B, 28, 28] float32
    (B, 81, 7, 7)
    >>> scatter_features(bank, images)  # images [B, 28, 28, C] -> [B, 7, 7, C * 81]

`filter_bank` is numpy, computed once on the host; `scatter` is pure and jit/vmap friendly
(the bank is a static pytree of constants).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ecos_jax.utils import io

log = logging.getLogger(__name__)

# kymatio's Gabor normalisation uses 3.1415 rather than π; kept so the features match its.
_GABOR_PI = 3.1415


def padded_shape(shape: tuple[int, int], J: int) -> tuple[int, int]:
    """The padded support: the next multiple of 2^J above each side, plus one more 2^J, so a
    full 2^J border of reflected pixels surrounds the image (one pixel of it, at the coarsest
    grid, is cut off again at the end)."""
    return tuple(((s + 2 ** J) // 2 ** J + 1) * 2 ** J for s in shape)


def gabor_2d(M: int, N: int, sigma: float, theta: float, xi: float, slant: float = 1.0):
    """A Gabor filter on an M × N periodic grid, in space, complex128 `[M, N]`.

    g(u) = exp(-uᵀ A u + i ξ (cos θ, sin θ)·u) / (2π σ² / slant), A = R diag(1, slant²) Rᵀ / 2σ²,
    summed over the 5 × 5 nearest periodic copies of the grid so the filter is periodic.
    """
    c, s = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    rot = np.array([[c, -s], [s, c]], np.float32)
    rot_inv = np.array([[c, s], [-s, c]], np.float32)
    curv = rot @ np.diag([1.0, slant * slant]) @ rot_inv / (2 * sigma * sigma)
    xx, yy = np.mgrid[0:M, 0:N].astype(np.float64)
    shifts = np.arange(-2, 3)
    # [5, 5, M, N]: every periodic copy at once.
    x = xx[None, None] + shifts[:, None, None, None] * M
    y = yy[None, None] + shifts[None, :, None, None] * N
    arg = (-(curv[0, 0] * x * x + (curv[0, 1] + curv[1, 0]) * x * y + curv[1, 1] * y * y)
           + 1j * xi * (x * np.cos(theta) + y * np.sin(theta)))
    gab = np.exp(arg).sum(axis=(0, 1))
    return gab / (2 * _GABOR_PI * sigma * sigma / slant)


def morlet_2d(M: int, N: int, sigma: float, theta: float, xi: float, slant: float = 0.5):
    """A Morlet wavelet: the Gabor filter minus β times its envelope, β chosen so the sum over
    the grid is exactly zero (a band-pass filter with no DC response)."""
    wave = gabor_2d(M, N, sigma, theta, xi, slant)
    envelope = gabor_2d(M, N, sigma, theta, 0.0, slant)
    return wave - (wave.sum() / envelope.sum()) * envelope


def periodize(filter_hat: np.ndarray, res: int) -> np.ndarray:
    """A Fourier-domain filter `[M, N]` for a signal subsampled by 2^res: `[M/2^res, N/2^res]`.

    The frequencies above the coarse grid's Nyquist band are zeroed first (so the filter is
    band-limited there), then the 2^res × 2^res aliased blocks are summed.
    """
    M, N = filter_hat.shape
    k = 2 ** res
    keep = np.ones((M, N), filter_hat.dtype)
    start_m, len_m = int(M * 2.0 ** (-res - 1)), int(M * (1 - 2.0 ** -res))
    start_n, len_n = int(N * 2.0 ** (-res - 1)), int(N * (1 - 2.0 ** -res))
    keep[start_m:start_m + len_m, :] = 0
    keep[:, start_n:start_n + len_n] = 0
    return (filter_hat * keep).reshape(k, M // k, k, N // k).sum(axis=(0, 2))


@partial(jax.tree_util.register_dataclass, data_fields=["psi", "phi"],
         meta_fields=["shape", "J", "L"])
@dataclasses.dataclass(frozen=True)
class FilterBank:
    """Fourier-domain filters on the padded grid (real: the filters are real-symmetric in
    frequency after dropping a zero imaginary part).

    Attributes:
      psi: `psi[j][res]`, float32 `[L, Mp/2^res, Np/2^res]`: the L wavelets of scale j at
        resolution res ≤ j (the resolutions a path can be at when it meets this wavelet).
      phi: `phi[res]`, float32 `[Mp/2^res, Np/2^res]`: the low-pass at resolution res < J.
      shape: the input image (H, W); J: number of scales; L: orientations.
    """

    psi: tuple[tuple[jax.Array, ...], ...]
    phi: tuple[jax.Array, ...]
    shape: tuple[int, int]
    J: int
    L: int

    @property
    def num_paths(self) -> int:
        """K = 1 + J L + L² J (J - 1) / 2 (orders 0, 1 and 2): `num_paths(J, L)`."""
        return num_paths(self.J, self.L)

    @property
    def out_shape(self) -> tuple[int, int]:
        return tuple(s // 2 ** self.J for s in self.shape)


def num_paths(J: int, L: int) -> int:
    """Scattering paths per input channel, K = 1 + J L + L² J (J - 1) / 2 (orders 0, 1 and 2):
    81 for J = 2, L = 8; 49 for J = 2, L = 6."""
    return 1 + J * L + L ** 2 * J * (J - 1) // 2


def filter_bank(shape: tuple[int, int] = (28, 28), J: int = 2, L: int = 8) -> FilterBank:
    """Builds the Morlet bank on the padded grid (numpy, host; ~10 ms for 28 × 28, J = 2).

    Wavelet (j, θ): σ = 0.8·2^j, ξ = 3π / (4·2^j), orientation (⌊L/2⌋ - 1 - θ)·π / L,
    slant 4 / L (the design is tuned for L = 8). Low-pass: a Gaussian with σ = 0.8·2^(J-1).
    """
    H, W = shape
    if J < 1 or L < 1:
        raise ValueError(f"J and L must be >= 1, got J={J}, L={L}.")
    if 2 ** J > H or 2 ** J > W:
        raise ValueError(f"2^J = {2 ** J} exceeds the image shape {shape}.")
    M, N = padded_shape(shape, J)
    psi = []
    for j in range(J):
        levels = [[] for _ in range(min(j + 1, max(J - 1, 1)))]
        for theta in range(L):
            wave = morlet_2d(M, N, 0.8 * 2 ** j, (int(L - L / 2 - 1) - theta) * np.pi / L,
                             3.0 / 4.0 * np.pi / 2 ** j, 4.0 / L)
            wave_hat = np.real(np.fft.fft2(wave))
            for res, lv in enumerate(levels):
                lv.append(periodize(wave_hat, res))
        psi.append(tuple(jnp.asarray(np.stack(lv), jnp.float32) for lv in levels))
    phi_hat = np.real(np.fft.fft2(gabor_2d(M, N, 0.8 * 2 ** (J - 1), 0.0, 0.0)))
    phi = tuple(jnp.asarray(periodize(phi_hat, res), jnp.float32) for res in range(J))
    return FilterBank(psi=tuple(psi), phi=phi, shape=(H, W), J=J, L=L)


def _subsample(x_hat: jax.Array, k: int) -> jax.Array:
    """Fourier transform of the signal subsampled by k in space: the mean of the k × k aliased
    blocks of its spectrum. `[..., M, N] -> [..., M/k, N/k]`."""
    if k == 1:
        return x_hat
    *lead, M, N = x_hat.shape
    return x_hat.reshape(*lead, k, M // k, k, N // k).mean(axis=(-4, -2))


def _lowpass(bank: FilterBank, u_hat: jax.Array, res: int) -> jax.Array:
    """u ⋆ φ_J subsampled to the output grid, border cut: `[..., Mp/2^res, Np/2^res]` (Fourier)
    -> `[..., H/2^J, W/2^J]` (space, real)."""
    s = jnp.fft.ifft2(_subsample(u_hat * bank.phi[res], 2 ** (bank.J - res))).real
    return s[..., 1:-1, 1:-1]


def _modulus_hat(x_hat: jax.Array, k: int) -> jax.Array:
    """F(|F⁻¹(subsample_k(x_hat))|): the wavelet modulus, back in the Fourier domain."""
    return jnp.fft.fft2(jnp.abs(jnp.fft.ifft2(_subsample(x_hat, k))))


def scatter(bank: FilterBank, x: jax.Array) -> jax.Array:
    """The order-2 scattering transform of images `x [..., H, W]` (float32).

    Returns `[..., K, H/2^J, W/2^J]` float32 with K = `bank.num_paths`, paths in kymatio's order:
    S0; S1 for (j1, θ1) in order; then S2 for every (j1, θ1) in order and, within it, every
    (j2 > j1, θ2) in order.
    """
    x = jnp.asarray(x, jnp.float32)
    if tuple(x.shape[-2:]) != bank.shape:
        raise ValueError(f"expected images of shape [..., {bank.shape[0]}, {bank.shape[1]}], "
                         f"got {x.shape}.")
    lead = x.shape[:-2]
    x = x.reshape(-1, *bank.shape)
    H, W = bank.shape
    M, N = padded_shape(bank.shape, bank.J)
    pads = ((0, 0), ((M - H) // 2, (M - H + 1) // 2), ((N - W) // 2, (N - W + 1) // 2))
    x_hat = jnp.fft.fft2(jnp.pad(x, pads, mode="reflect").astype(jnp.complex64))   # [B, M, N]

    order0 = [_lowpass(bank, x_hat, 0)[:, None]]                                    # [B, 1, h, w]
    order1, order2 = [], []
    for j1 in range(bank.J):
        # [B, L, M/2^j1, N/2^j1]: |x ⋆ ψ_{j1,θ}| for the L orientations, at resolution j1.
        u1 = _modulus_hat(x_hat[:, None] * bank.psi[j1][0], 2 ** j1)
        order1.append(_lowpass(bank, u1, j1))
        second = []
        for j2 in range(j1 + 1, bank.J):
            # [B, L1, L2, ...]: every (θ1, θ2) pair at scales (j1, j2), at resolution j2.
            u2 = _modulus_hat(u1[:, :, None] * bank.psi[j2][j1], 2 ** (j2 - j1))
            second.append(_lowpass(bank, u2, j2))
        if second:
            s2 = jnp.concatenate(second, axis=2)        # [B, L1, (J-1-j1) L2, h, w]
            order2.append(s2.reshape(s2.shape[0], -1, *s2.shape[-2:]))
    out = jnp.concatenate(order0 + order1 + order2, axis=1)
    return out.reshape(*lead, *out.shape[1:])


def scatter_features(bank: FilterBank, images: jax.Array) -> jax.Array:
    """Channels-last scattering features: `[B, H, W, C] -> [B, H/2^J, W/2^J, C·K]`, feature
    c·K + k holding path k of channel c (kymatio's `[B, C, K, h, w]` moved to the end)."""
    images = jnp.asarray(images, jnp.float32)
    s = scatter(bank, jnp.moveaxis(images, -1, 1))       # [B, C, K, h, w]
    b, c, k, h, w = s.shape
    return jnp.moveaxis(s.reshape(b, c * k, h, w), 1, -1)


def group_normalize(features: jax.Array, num_groups: int, eps: float = 1e-5) -> jax.Array:
    """Per-example group normalisation of channels-last features `[B, h, w, F]` without affine
    parameters (PyTorch's `GroupNorm(G, F, affine=False)`): each example's F channels split into
    G consecutive groups, each standardised over its channels and positions.

    Data-independent: example i's output depends on example i only, so it costs no privacy.
    """
    b, h, w, f = features.shape
    if f % num_groups:
        raise ValueError(f"{f} channels do not split into {num_groups} groups.")
    g = features.reshape(b, h, w, num_groups, f // num_groups)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = g.var(axis=(1, 2, 4), keepdims=True)
    return ((g - mean) / jnp.sqrt(var + eps)).reshape(b, h, w, f)


def batched(fn, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """`fn` (jitted here) applied to `x [N, ...]` in row blocks of `batch_size` (the last one
    zero-padded so one shape compiles), concatenated as numpy."""
    fn = jax.jit(fn)
    out = []
    n = x.shape[0]
    for start in range(0, n, batch_size):
        block = np.asarray(x[start:start + batch_size])
        rows = block.shape[0]
        if rows < batch_size:
            block = np.concatenate([block, np.zeros((batch_size - rows, *block.shape[1:]),
                                                    block.dtype)])
        out.append(np.asarray(fn(block))[:rows])
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def features(images: np.ndarray, *, J: int = 2, L: int = 8, batch_size: int = 500,
             cache_dir: str | os.PathLike | None = None) -> np.ndarray:
    """`scatter_features` of every image, `[N, H, W, C] -> [N, H/2^J, W/2^J, C·K]` float32, in
    row blocks of `batch_size`, cached under `cache_dir` by a content hash of the images and
    (J, L) so a second run reads them back (70,000 Fashion-MNIST images: ~75 s here, 1.1 GB).
    None disables the cache."""
    images = np.asarray(images, np.float32)
    path = None
    if cache_dir is not None:
        key = io.content_hash("scattering2d", images, None, {"J": J, "L": L, "version": 1})
        path = Path(cache_dir).expanduser() / f"scattering-{key}.npz"
        if path.exists():
            log.info("Loaded cached scattering features from %s", path)
            return np.load(path)["features"]
    bank = filter_bank(images.shape[1:3], J=J, L=L)
    out = batched(partial(scatter_features, bank), images, batch_size)
    if path is not None:
        io.save_npz(path, features=out)
    return out


__all__ = ["FilterBank", "batched", "features", "filter_bank", "gabor_2d", "group_normalize", "morlet_2d",
           "padded_shape", "periodize", "scatter", "scatter_features"]
