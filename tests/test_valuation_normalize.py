"""Per-class normalisation: each class spans [0, 1] (min-max) / has mean 0, std 1 (z-score),
and its outputs are flagged as data-normalised."""
import numpy as np
import pytest

from ecos_jax.valuation.normalize import per_class_minmax, per_class_zscore


def test_each_class_in_unit_interval_and_standardised():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=200).astype(np.int32)
    scores = rng.gamma(2.0, size=200) * (1 + 10 * labels)   # class-dependent scale
    mm = np.asarray(per_class_minmax(scores, labels))
    z = np.asarray(per_class_zscore(scores, labels))
    for c in range(4):
        m = labels == c
        assert mm[m].min() == 0.0 and mm[m].max() == 1.0
        np.testing.assert_allclose(z[m].mean(), 0.0, atol=1e-5)
        np.testing.assert_allclose(z[m].std(), 1.0, rtol=1e-5)
        # order within the class is preserved, and matches the direct formula
        ref = (scores[m] - scores[m].min()) / np.ptp(scores[m])
        np.testing.assert_allclose(mm[m], ref, rtol=1e-5, atol=1e-6)


def test_absent_and_constant_classes():
    labels = np.array([0, 0, 3, 3, 3], np.int32)          # classes 1, 2 absent
    scores = np.array([5.0, 5.0, 1.0, 2.0, 4.0])          # class 0 constant
    np.testing.assert_allclose(per_class_minmax(scores, labels), [0, 0, 0, 1 / 3, 1], rtol=1e-6)
    assert np.all(np.asarray(per_class_zscore(scores, labels))[:2] == 0.0)


def test_bad_input():
    with pytest.raises(ValueError, match=r"class\(es\) \[2\] have a single sample"):
        per_class_minmax(np.array([1.0, 2.0, 3.0]), np.array([0, 0, 2]))
    with pytest.raises(ValueError, match="non-finite"):
        per_class_zscore(np.array([1.0, np.nan, 3.0, 4.0]), np.array([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="shape"):
        per_class_zscore(np.array([1.0, 2.0]), np.array([0, 0, 1]))


def test_outputs_are_flagged_data_normalised():
    """The release refuses these outputs by this flag: the normalisation uses the whole class."""
    from ecos_jax.valuation.normalize import is_data_normalised

    scores, labels = np.array([1.0, 2.0, 3.0, 5.0]), np.array([0, 0, 1, 1])
    for fn in (per_class_minmax, per_class_zscore):
        out = fn(scores, labels)
        assert is_data_normalised(out)
    assert not is_data_normalised(scores) and not is_data_normalised(out + 0.0)
