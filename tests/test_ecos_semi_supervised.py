"""Pseudo-labelling pieces of semi-supervised selective labelling."""
import jax
import numpy as np
import pytest

from ecos_jax.ecos import semi_supervised


def test_confident_pseudo_labels_keeps_rows_above_threshold():
    logits = np.array([[5.0, 0.0, 0.0],     # p_max ≈ 0.987
                       [0.0, 0.1, 0.0],     # p_max ≈ 0.36
                       [0.0, 0.0, 9.0],     # p_max ≈ 0.9998
                       [1.0, 1.0, 0.0]])    # p_max ≈ 0.42
    keep, labels = semi_supervised.confident_pseudo_labels(logits, threshold=0.95)
    np.testing.assert_array_equal(keep, [0, 2])
    np.testing.assert_array_equal(labels, [0, 2])
    keep_all, _ = semi_supervised.confident_pseudo_labels(logits, threshold=0.0)
    np.testing.assert_array_equal(keep_all, np.arange(4))
    none, _ = semi_supervised.confident_pseudo_labels(logits, threshold=1.0)
    assert none.size == 0


@pytest.mark.parametrize("logits, threshold, match", [
    (np.zeros((3,)), 0.5, "must be \\[N, K\\]"),
    (np.zeros((3, 1)), 0.5, "K >= 2"),
    (np.array([[np.nan, 0.0]]), 0.5, "NaN"),
    (np.zeros((2, 3)), 1.5, "threshold"),
])
def test_confident_pseudo_labels_bad_input(logits, threshold, match):
    with pytest.raises(ValueError, match=match):
        semi_supervised.confident_pseudo_labels(logits, threshold)


def test_unlabeled_indices_exclude_picks_and_respect_size():
    picked = np.array([0, 3, 5, 9])
    u = semi_supervised.unlabeled_indices(jax.random.key(0), 20, picked, 6)
    assert len(u) == 6 and len(np.unique(u)) == 6
    assert not np.isin(u, picked).any() and (u < 20).all()
    every = semi_supervised.unlabeled_indices(jax.random.key(0), 20, picked, -1)
    np.testing.assert_array_equal(every, np.setdiff1d(np.arange(20), picked))
    # Asking for more than exists returns all of the rest.
    assert len(semi_supervised.unlabeled_indices(jax.random.key(1), 20, picked, 100)) == 16
