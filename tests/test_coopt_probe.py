"""The linear probe separates linearly separable features and sits at chance on noise."""
import numpy as np
import pytest

from ecos_jax.coopt.probe import linear_probe


def _features(n, informative, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    f = rng.normal(size=(n, 8)).astype(np.float32)
    if informative:
        f[np.arange(n), y] += 4.0
    return f, y


@pytest.mark.parametrize("informative, low, high", [(True, 0.95, 1.0), (False, 0.1, 0.4)])
def test_probe_accuracy(informative, low, high):
    f_tr, y_tr = _features(400, informative, 0)
    f_te, y_te = _features(400, informative, 1)
    res = linear_probe(f_tr, y_tr, f_te, y_te, num_classes=4)
    assert low <= res.test_accuracy <= high


def test_probe_rejects_bad_input():
    f, y = _features(10, True, 0)
    with pytest.raises(ValueError, match="labels must lie"):
        linear_probe(f, y, f, y, num_classes=2)
    with pytest.raises(ValueError, match="features must be"):
        linear_probe(f, y, f[:, :3], y, num_classes=4)
