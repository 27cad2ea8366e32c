"""Consistency metrics: identity gives 1 / 0, known cases give their known values."""
import numpy as np
import pytest
import scipy.ndimage
import scipy.stats

from ecos_jax.valuation import consistency as cm


def test_correlations_identity_and_known_cases():
    rng = np.random.default_rng(0)
    a = rng.normal(size=50)
    assert cm.pearson(a, a) == pytest.approx(1.0, abs=1e-6)
    assert cm.spearman(a, a) == pytest.approx(1.0, abs=1e-6)
    assert cm.pearson(a, -3 * a + 1) == pytest.approx(-1.0, abs=1e-6)
    # monotone but non-linear: ranks agree perfectly, values do not
    assert cm.spearman(a, np.exp(3 * a)) == pytest.approx(1.0, abs=1e-6)
    assert cm.pearson(a, np.exp(3 * a)) < 0.9
    b = rng.normal(size=50)
    ties = np.round(b)   # many ties: average ranks as in scipy
    assert cm.spearman(a, ties) == pytest.approx(scipy.stats.spearmanr(a, ties)[0], abs=1e-5)
    assert cm.pearson(a, b) == pytest.approx(scipy.stats.pearsonr(a, b)[0], abs=1e-5)


def test_top_k_overlap():
    a = np.arange(10.0)
    assert cm.top_k_overlap(a, a, 3) == 1.0
    assert cm.top_k_overlap(a, -a, 3) == 0.0                   # top of one = bottom of other
    b = a.copy()
    b[[9, 0]] = b[[0, 9]]                                       # swap best and worst
    assert cm.top_k_overlap(a, b, 3) == pytest.approx(2 / 3)
    assert cm.top_k_overlap(a, b, 3, largest=False) == pytest.approx(2 / 3)
    assert cm.top_k_indices(a, 2).tolist() == [9, 8]


def _ssim_reference(x, y, win=7, data_range=1.0):
    """Wang et al. with a uniform window (skimage's defaults), via scipy.ndimage, 2-D float64."""
    f = lambda im: scipy.ndimage.uniform_filter(im, size=win)  # noqa: E731
    cov = win * win / (win * win - 1)
    ux, uy = f(x), f(y)
    vx, vy, vxy = cov * (f(x * x) - ux**2), cov * (f(y * y) - uy**2), cov * (f(x * y) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    p = (win - 1) // 2
    return s[p:-p, p:-p].mean()


def test_ssim_identity_and_reference():
    rng = np.random.default_rng(1)
    imgs = rng.uniform(size=(4, 12, 12, 1)).astype(np.float32)
    assert cm.ssim(imgs[0], imgs[0]) == pytest.approx(1.0, abs=1e-5)
    assert cm.set_ssim(imgs, imgs) == pytest.approx(1.0, abs=1e-5)
    assert cm.set_ssim(imgs, imgs, mode="paired") == pytest.approx(1.0, abs=1e-5)
    ref = _ssim_reference(imgs[0, ..., 0].astype(np.float64), imgs[1, ..., 0].astype(np.float64))
    assert cm.ssim(imgs[0], imgs[1]) == pytest.approx(ref, abs=1e-5)
    # a noisy copy is more similar than an unrelated image
    noisy = np.clip(imgs[0] + rng.normal(scale=0.05, size=imgs[0].shape), 0, 1).astype(np.float32)
    assert cm.ssim(imgs[0], noisy) > cm.ssim(imgs[0], imgs[1])
    # rank-paired SSIM averages the pairs
    pairs = np.mean([_ssim_reference(imgs[i, ..., 0], imgs[3 - i, ..., 0]) for i in range(4)])
    assert cm.set_ssim(imgs, imgs[::-1], mode="paired") == pytest.approx(pairs, abs=1e-5)


def test_bhattacharyya_known_cases():
    rng = np.random.default_rng(2)
    a = rng.uniform(size=(5, 8, 8, 1)).astype(np.float32)
    assert cm.bhattacharyya_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert cm.bhattacharyya_distance(a, a[::-1]) == pytest.approx(0.0, abs=1e-6)  # order-free
    dark, bright = np.zeros((2, 8, 8, 1), np.float32), np.ones((2, 8, 8, 1), np.float32)
    assert cm.bhattacharyya_distance(dark, bright) == np.inf              # disjoint support
    half = np.concatenate([dark, bright])                                  # p = (½, 0, …, ½)
    assert cm.bhattacharyya_distance(dark, half, bins=4) == pytest.approx(-np.log(np.sqrt(0.5)), rel=1e-5)
    p = np.histogram(a, bins=4, range=(0, 1))[0] / a.size
    assert cm.bhattacharyya_distance(a, dark, bins=4) == pytest.approx(-np.log(np.sqrt(p[0])), rel=1e-5)


def test_bad_input():
    a = np.arange(5.0)
    with pytest.raises(ValueError, match="constant"):
        cm.pearson(a, np.ones(5))
    with pytest.raises(ValueError, match="non-finite"):
        cm.spearman(a, np.array([1, 2, np.nan, 4, 5.0]))
    with pytest.raises(ValueError, match="same samples"):
        cm.top_k_overlap(a, a[:4], 2)
    with pytest.raises(ValueError, match="k must be"):
        cm.top_k_overlap(a, a, 6)
    with pytest.raises(ValueError, match="pixels must lie"):
        cm.bhattacharyya_distance(np.full((1, 8, 8, 1), 2.0), np.zeros((1, 8, 8, 1)))
    with pytest.raises(ValueError, match="smaller than"):
        cm.set_ssim(np.zeros((1, 5, 5, 1)), np.zeros((1, 5, 5, 1)))
