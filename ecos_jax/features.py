"""The public feature extractor f shared by cloud and client (docs/algorithms.md#features).

f is fit on the cloud's public pool only — never on client data — then cached to disk and
reused; the client receives f (it is public) and computes f(x) on its own data.

Kinds (`kind=`):
  'autoencoder'  a conv autoencoder trained on pool images, no labels (default: it keeps the
                 low-level appearance that tells domains apart, which is what ECOS must see);
  'classifier'   the `cnn` model trained on the pool's labels, penultimate layer (uses the
                 open-source labels; features are label-aware and more domain-invariant);
  'pca'          PCA of raw pixels fit on the pool;
  'raw'          flattened pixels.

`stats_weight=w > 0` appends to any kind's features the `image_statistics` of each image
(intensity, high-frequency energy, a noise estimate, saturation, orientation), standardised
on the pool and scaled so that at w = 1 the block carries the same total variance as the base
features. They are functions of each image alone, the same on cloud and client, so they tell
corruption domains (noise, blur, inversion) apart without seeing client data.

    >>> f = fit_extractor("pca", pool_images, dim=32, cache_dir="~/.cache/ecos_jax/features")
    >>> f(pool_images).shape
    (N, 32)
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from ecos_jax import models, training
from ecos_jax.utils import io

log = logging.getLogger(__name__)
KINDS = ("autoencoder", "classifier", "pca", "raw")


class ConvAutoencoder(nn.Module):
    """Encoder: the `cnn` trunk to a `dim`-d code; decoder: dense + two transposed convs."""

    dim: int = 64
    image_shape: tuple[int, int, int] = (28, 28, 1)

    def setup(self):
        self.encoder = models.CNN(num_classes=1, embed_dim=self.dim)
        h, w, c = self.image_shape
        self.h4, self.w4 = -(-h // 4), -(-w // 4)
        self.dense = nn.Dense(self.h4 * self.w4 * 32)
        self.up1 = nn.ConvTranspose(16, (3, 3), strides=(2, 2), padding="SAME")
        self.up2 = nn.ConvTranspose(c, (3, 3), strides=(2, 2), padding="SAME")

    def __call__(self, x: jax.Array, *, features: bool = False) -> jax.Array:
        z = self.encoder(x, features=True)
        if features:
            return z
        y = nn.relu(self.dense(z)).reshape(x.shape[0], self.h4, self.w4, 32)
        y = self.up2(nn.relu(self.up1(y)))
        h, w, _ = self.image_shape
        # Reconstruction flattened so the train loop's per-example MSE applies: [B, H*W*C].
        return nn.sigmoid(y[:, :h, :w]).reshape(x.shape[0], -1)


@dataclasses.dataclass(frozen=True)
class FeatureExtractor:
    """A fitted, public feature map `images [N, H, W, C] -> features [N, dim] float32`."""

    kind: str
    dim: int
    apply: Callable[[np.ndarray], np.ndarray]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, np.float32)
        if images.ndim != 4:
            raise ValueError(f"images must be [N, H, W, C], got shape {images.shape}.")
        if images.shape[0] == 0:
            raise ValueError("Cannot extract features of an empty image set.")
        if not np.isfinite(images).all():
            raise ValueError("images contain NaN or inf.")
        return self.apply(images)


STATISTICS = ("mean", "std", "laplacian_energy", "residual_mad", "gradient", "saturated_high",
              "saturated_low", "border_mean", "orientation_cos", "orientation_sin")
_LAPLACIAN = np.array([[[0, 1, 0], [1, -4, 1], [0, 1, 0]]], np.float64)


def image_statistics(images: np.ndarray) -> np.ndarray:
    """Low-level statistics of each image alone, `[N, H, W, C] -> [N, len(STATISTICS)]` float32.

    Per image, on its channel mean (intensities in [0, 1]): mean and std of intensity;
    log(1 + 100 Var(Laplacian)) (high-frequency energy: high under noise, low under blur);
    log(1 + 100 MAD(x - 3x3 box blur)) (a noise level robust to edges); log(1 + 10 mean |∇x|);
    the fractions of pixels > 0.95 and < 0.05 (saturation, inversion); the mean of the 2-pixel
    border (inversion); and cos 2θ, sin 2θ of the intensity mass's second moments (its principal
    axis; changes under rotation). No parameters and no other image is read, so a row depends on
    its own image only.
    """
    x = np.asarray(images, np.float64).mean(-1)  # [N, H, W]
    n, h, w = x.shape
    flat = x.reshape(n, -1)
    lap = ndimage.convolve(x, _LAPLACIAN, mode="reflect").reshape(n, -1)
    resid = (x - ndimage.uniform_filter(x, size=(1, 3, 3), mode="reflect")).reshape(n, -1)
    mad = np.median(np.abs(resid - np.median(resid, 1, keepdims=True)), 1)
    grad = np.abs(np.diff(x, axis=2)).mean((1, 2)) + np.abs(np.diff(x, axis=1)).mean((1, 2))
    border = np.ones((h, w), bool)
    border[2:-2, 2:-2] = False
    # Second central moments of the intensity mass, from raw moments (one pass each, no [N, H, W]
    # temporaries); the 1e-8 keeps an all-zero image finite.
    mass = flat.sum(1) + 1e-8
    rows, cols_ = np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64)
    py, px = x.sum(2), x.sum(1)  # [N, H], [N, W] marginals
    cy, cx = py @ rows / mass, px @ cols_ / mass
    mu20 = px @ cols_**2 / mass - cx**2
    mu02 = py @ rows**2 / mass - cy**2
    mu11 = np.einsum("nhw,h,w->n", x, rows, cols_, optimize=True) / mass - cx * cy
    spread = mu20 + mu02 + 1e-8
    cols = (flat.mean(1), flat.std(1), np.log1p(100 * lap.var(1)), np.log1p(100 * mad),
            np.log1p(10 * grad), (flat > 0.95).mean(1), (flat < 0.05).mean(1), x[:, border].mean(1),
            (mu20 - mu02) / spread, 2 * mu11 / spread)
    return np.stack(cols, 1).astype(np.float32)


def output_dim(kind: str, dim: int, image_shape: Sequence[int], stats_weight: float = 0.0) -> int:
    """d of `fit_extractor(kind, ..., dim=dim, stats_weight=...)`'s features, without fitting
    ('raw' gives the pixels; appended statistics add len(STATISTICS))."""
    base = int(np.prod(image_shape)) if kind == "raw" else int(dim)
    return base + (len(STATISTICS) if stats_weight > 0 else 0)


def with_image_statistics(base: FeatureExtractor, pool_images: np.ndarray, weight: float
                          ) -> FeatureExtractor:
    """`base`'s features with `weight`-scaled, pool-standardised `image_statistics` appended.

    The standardisation (mean, std of each statistic) and the scale (so that at weight 1 the
    block's total variance equals that of `base` on the pool) are fit on the public pool only,
    then fixed: f(x) = [base(x), weight * scale * (stats(x) - mean) / std], `[N, base.dim + 10]`.
    """
    if not weight > 0:
        raise ValueError(f"stats weight must be > 0, got {weight}.")
    stats = image_statistics(pool_images).astype(np.float64)
    mean, std = stats.mean(0), stats.std(0)
    varying = std > 0
    std = np.where(varying, std, 1.0)  # a statistic constant over the pool stays 0, not NaN
    base_var = float(np.asarray(base(pool_images), np.float64).var(0).sum())
    scale = weight * np.sqrt(base_var / max(int(varying.sum()), 1))

    def apply(x: np.ndarray) -> np.ndarray:
        block = scale * (image_statistics(x) - mean) / std
        return np.concatenate([np.asarray(base(x), np.float32), block.astype(np.float32)], 1)

    return FeatureExtractor(f"{base.kind}+stats", base.dim + stats.shape[1], apply)


def _fit_pca(images: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    flat = images.reshape(len(images), -1).astype(np.float64)
    mean = flat.mean(0)
    centred = flat - mean
    # Eigenvectors of the D x D covariance: O(N D^2), far cheaper than an SVD of the N x D pool.
    evals, evecs = np.linalg.eigh(centred.T @ centred)
    comps = evecs[:, np.argsort(evals)[::-1][:dim]].T
    comps *= np.sign(comps[np.arange(dim), np.argmax(np.abs(comps), axis=1)])[:, None]  # fixed sign
    return mean.astype(np.float32), comps.astype(np.float32)


def fit_extractor(
    kind: str,
    pool_images: np.ndarray,
    *,
    pool_labels: np.ndarray | None = None,
    num_classes: int | None = None,
    dim: int = 64,
    epochs: int = 10,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    seed: int = 0,
    cache_dir: str | None = None,
    hooks: Sequence[training.loop.Hook] = (),
    stats_weight: float = 0.0,
) -> FeatureExtractor:
    """Fits feature extractor `kind` on the public pool (cached under `cache_dir` by content hash).

    Args:
      kind: one of KINDS.
      pool_images: `[N, H, W, C]` float32 in [0, 1], public pool only.
      pool_labels / num_classes: needed for 'classifier' only.
      dim: output dimension (PCA components, autoencoder code, classifier embedding).
      epochs, batch_size, learning_rate, seed: training of the learned kinds.
      cache_dir: where fitted extractors are stored and reused; None disables caching.
      hooks: the training loop's hooks for the learned kinds (e.g. a progress bar).
      stats_weight: > 0 appends `image_statistics` at that weight (`with_image_statistics`); the
        cached base extractor is the same at every weight (the statistics have no fitted state
        beyond the pool's mean, std and variance, recomputed here).
    """
    if kind not in KINDS:
        raise ValueError(f"Unknown feature extractor {kind!r}; choose one of {KINDS}.")
    if stats_weight < 0:
        raise ValueError(f"stats_weight must be >= 0, got {stats_weight}.")
    if stats_weight > 0:
        base = fit_extractor(kind, pool_images, pool_labels=pool_labels, num_classes=num_classes, dim=dim,
                             epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed,
                             cache_dir=cache_dir, hooks=hooks)
        return with_image_statistics(base, np.asarray(pool_images, np.float32), stats_weight)
    pool_images = np.asarray(pool_images, np.float32)
    if pool_images.ndim != 4 or pool_images.shape[0] == 0:
        raise ValueError(f"pool_images must be a non-empty [N, H, W, C] array, got {pool_images.shape}.")
    if not np.isfinite(pool_images).all():
        raise ValueError("pool_images contain NaN or inf.")
    if kind == "raw":
        d = int(np.prod(pool_images.shape[1:]))
        return FeatureExtractor("raw", d, lambda x: x.reshape(len(x), -1))
    if dim < 1:
        raise ValueError(f"feature dim must be >= 1, got {dim}.")
    if kind == "classifier" and (pool_labels is None or num_classes is None):
        raise ValueError("The 'classifier' extractor needs pool_labels and num_classes.")

    settings = {"dim": dim, "epochs": epochs, "batch_size": batch_size, "lr": learning_rate, "seed": seed}
    key = io.content_hash(kind, pool_images, pool_labels if kind == "classifier" else None, settings)
    path = Path(cache_dir).expanduser() / f"{kind}-{key}.npz" if cache_dir else None

    if kind == "pca":
        if dim > min(pool_images.shape[0], np.prod(pool_images.shape[1:])):
            raise ValueError(f"PCA dim {dim} exceeds min(N, D) of the pool {pool_images.shape}.")
        if path is not None and path.exists():
            z = np.load(path)
            mean, comps = z["mean"], z["components"]
        else:
            mean, comps = _fit_pca(pool_images, dim)
            if path is not None:
                io.save_npz(path, mean=mean, components=comps)
        return FeatureExtractor("pca", dim, lambda x: (x.reshape(len(x), -1) - mean) @ comps.T)

    if kind == "autoencoder":
        model = ConvAutoencoder(dim=dim, image_shape=tuple(pool_images.shape[1:]))
        targets, loss_fn = pool_images.reshape(len(pool_images), -1), training.mse_regression
    else:
        model = models.get_model("cnn", num_classes, embed_dim=dim)
        targets, loss_fn = np.asarray(pool_labels, np.int32), training.softmax_xent
    template = model.init(jax.random.key(seed), jnp.zeros((1, *pool_images.shape[1:])))
    if path is not None and path.exists():
        params = io.load_params(path, template)
        log.info("Loaded cached %s feature extractor from %s", kind, path)
    else:
        params = training.fit(
            model, pool_images, targets, optimizer=training.make_optimizer("adam", float(learning_rate)),
            epochs=epochs, batch_size=batch_size, seed=seed, loss_fn=loss_fn, hooks=hooks,
            desc=f"features[{kind}]",
        ).params
        if path is not None:
            io.save_params(path, params)

    def apply(x: np.ndarray) -> np.ndarray:
        return training.predict(model, params, x, features=True)

    return FeatureExtractor(kind, dim, apply)
