"""Deterministic MNIST-C style domain transforms and resizing (pure numpy / scipy).

Every corruption is a pure function `f(image, seed) -> image` of a single greyscale image
`image: [H, W] float32 in [0, 1]` and an integer per-image seed; the same inputs always give
the same output, so a rebuilt dataset is bit-identical. Severities follow Mu & Gilmer's
MNIST-C (arXiv 1906.02337) in spirit: a clear shift in pixel statistics, digits still
readable by a person.

>>> import numpy as np
>>> img = np.zeros((28, 28), np.float32); img[8:20, 12:16] = 1.0
>>> out = CORRUPTIONS["rotate"](img, seed=3)
>>> out.shape, out.dtype, bool(np.all((out >= 0) & (out <= 1)))
((28, 28), dtype('float32'), True)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

Corruption = Callable[[np.ndarray, int], np.ndarray]

# Distinct salts keep two corruptions from drawing the same random numbers for one image.
_SALTS = {"rotate": 11, "noise": 13, "texture": 17, "blur": 19, "invert": 23}


def _rng(name: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([_SALTS[name], int(seed)])


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"corruptions take one greyscale image [H, W]; got shape {image.shape}")
    return image


def rotate(image: np.ndarray, seed: int) -> np.ndarray:
    """Rotation by 35..60 degrees, either direction (MNIST-C `rotate` is up to 45).

    image: [H, W] float32 in [0, 1] -> [H, W] float32 in [0, 1].
    """
    image = _check_image(image)
    rng = _rng("rotate", seed)
    angle = rng.uniform(35.0, 60.0) * rng.choice([-1.0, 1.0])
    out = ndimage.rotate(image, angle, reshape=False, order=1, mode="constant", cval=0.0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def invert(image: np.ndarray, seed: int) -> np.ndarray:
    """Photometric inversion (white background, dark strokes); the seed is unused.

    image: [H, W] float32 in [0, 1] -> [H, W] float32 in [0, 1].
    """
    del seed  # inversion is the same for every image; the argument keeps one signature
    return (1.0 - _check_image(image)).astype(np.float32)


def noise(image: np.ndarray, seed: int) -> np.ndarray:
    """Additive Gaussian noise, sigma 0.3, clipped (MNIST-C `shot_noise`-like severity).

    image: [H, W] float32 in [0, 1] -> [H, W] float32 in [0, 1].
    """
    image = _check_image(image)
    rng = _rng("noise", seed)
    out = image + rng.normal(0.0, 0.3, size=image.shape)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def blur(image: np.ndarray, seed: int) -> np.ndarray:
    """Gaussian blur with sigma 1.3..1.7 px, contrast restored so strokes stay visible.

    image: [H, W] float32 in [0, 1] -> [H, W] float32 in [0, 1].
    """
    image = _check_image(image)
    sigma = _rng("blur", seed).uniform(1.3, 1.7)
    out = ndimage.gaussian_filter(image, sigma=sigma, mode="constant")
    peak = out.max()
    # Rescale to the original peak: blur alone also dims thin strokes, which would make the
    # domain mostly a brightness change rather than a loss of high frequencies.
    if peak > 0:
        out = out * (image.max() / peak)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def texture(image: np.ndarray, seed: int) -> np.ndarray:
    """Digit over a textured background: smooth random blobs plus oriented stripes.

    The background stays below 0.55 so the (bright) strokes remain on top.
    image: [H, W] float32 in [0, 1] -> [H, W] float32 in [0, 1].
    """
    image = _check_image(image)
    rng = _rng("texture", seed)
    h, w = image.shape
    blobs = ndimage.gaussian_filter(rng.normal(size=(h, w)), sigma=2.0, mode="wrap")
    blobs = (blobs - blobs.min()) / max(float(np.ptp(blobs)), 1e-6)
    theta = rng.uniform(0.0, np.pi)
    period = rng.uniform(4.0, 7.0)
    yy, xx = np.mgrid[0:h, 0:w]
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period)
    background = 0.55 * (0.5 * blobs + 0.5 * stripes)
    return np.clip(np.maximum(image, background), 0.0, 1.0).astype(np.float32)


CORRUPTIONS: dict[str, Corruption] = {
    "rotate": rotate,
    "invert": invert,
    "noise": noise,
    "blur": blur,
    "texture": texture,
}


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize to `size x size`, Gaussian pre-filter when shrinking (anti-aliasing).

    image: [H, W] or [H, W, C], any real dtype -> same rank, float32, spatial dims `size`.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim not in (2, 3):
        raise ValueError(f"resize takes [H, W] or [H, W, C]; got shape {image.shape}")
    if size < 1:
        raise ValueError(f"size must be >= 1; got {size}")
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    factors = (size / h, size / w) + ((1.0,) if image.ndim == 3 else ())
    sigmas = tuple(max(0.0, (1.0 / f - 1.0) / 2.0) for f in factors)
    if any(s > 0 for s in sigmas):
        image = ndimage.gaussian_filter(image, sigma=sigmas, mode="nearest")
    out = ndimage.zoom(image, factors, order=1, mode="nearest", grid_mode=True)
    return out.astype(np.float32)


def box_in_frame(image: np.ndarray, box: int, frame: int) -> np.ndarray:
    """Resize a whole-image digit to `box x box` and zero-pad it centred in `frame x frame`.

    MNIST digits sit in a 20x20 box inside a 28x28 frame; UCI digits fill their 8x8 frame,
    so they are boxed the same way before they can share a domain-free image size.
    image: [H, W] float32 -> [frame, frame] float32.
    """
    if not 1 <= box <= frame:
        raise ValueError(f"need 1 <= box <= frame; got box={box}, frame={frame}")
    small = resize(image, box)
    out = np.zeros((frame, frame), np.float32)
    top = (frame - box) // 2
    out[top : top + box, top : top + box] = small
    return out
