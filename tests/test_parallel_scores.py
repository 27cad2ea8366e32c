"""Scores over a sharded batch (ecos_jax.parallel.scores) and k-means equal one device's.

On 1, 2 and 4 of the host devices tests/conftest.py forces, with a row count (7) that no
device count above 1 divides, so the padding is exercised and must never reach the output.
"""
import jax
import numpy as np
import pytest

from ecos_jax import valuation
from ecos_jax.models import get_model
from ecos_jax.parallel import mesh as mesh_lib
from ecos_jax.parallel import scores
from ecos_jax.samplers.kmeans import kmeans

B, D, K = 7, 5, 3


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(B, D)).astype(np.float32)
    y = rng.integers(0, K, B).astype(np.int32)
    model = get_model("mlp", K, hidden=(6,))
    checkpoints = [model.init(jax.random.key(i), x[:1]) for i in range(3)]
    return model.apply, checkpoints, x, y


def _all_scores(apply, ckpts, x, y, **kw):
    return {
        "loss": scores.loss_scores(apply, ckpts[0], x, y, **kw),
        "grad_norm": scores.grad_norm_scores(apply, ckpts[0], x, y, **kw),
        "vog": scores.vog_scores(apply, ckpts, x, y, **kw),
        "plis": scores.plis_scores(apply, ckpts[0], x, y, clip_norm=0.5, **kw),
    }


# Each device compiles its own copy of a score function, so the default suite runs 2 devices
# (7 rows padded to 8) and the slow suite the rest.
@pytest.mark.parametrize("n,microbatch", [
    (2, None), *[pytest.param(*c, marks=pytest.mark.slow) for c in [(1, None), (4, None), (4, 1), (2, 3)]]])
def test_sharded_scores_equal_one_device(problem, n, microbatch):
    apply, ckpts, x, y = problem
    ref = {
        "loss": valuation.loss_scores(apply, ckpts[0], x, y),
        "grad_norm": valuation.grad_norm_scores(apply, ckpts[0], x, y),
        "vog": valuation.vog_scores(apply, ckpts, x, y),
        "plis": valuation.plis_scores(apply, ckpts[0], x, y, clip_norm=0.5),
    }
    got = _all_scores(apply, ckpts, x, y, mesh=mesh_lib.local_mesh(n), microbatch_size=microbatch)
    for name, value in got.items():
        assert value.shape == (B,), name
        np.testing.assert_allclose(value, np.asarray(ref[name]), rtol=2e-5, atol=1e-6,
                                   err_msg=name)


def test_sharded_scores_reject_bad_input(problem):
    apply, ckpts, x, y = problem
    mesh = mesh_lib.local_mesh(2)
    with pytest.raises(ValueError, match="no axis 'rows'"):
        scores.loss_scores(apply, ckpts[0], x, y, mesh=mesh, axis="rows")
    with pytest.raises(ValueError, match="labels must be"):
        scores.loss_scores(apply, ckpts[0], x, y[:-1], mesh=mesh)
    with pytest.raises(ValueError, match="NaN"):
        scores.vog_scores(apply, ckpts, np.full_like(x, np.nan), y, mesh=mesh)


@pytest.mark.slow  # 1 and 4 devices are in the default suite (test_samplers_scale.py)
def test_kmeans_equal_on_one_two_and_four_devices():
    rng = np.random.default_rng(2)
    pool = rng.normal(size=(600, 4)).astype(np.float32)
    devices = jax.local_devices()
    fits = [kmeans(jax.random.key(0), pool, 5, iters=4, devices=devices[:n]) for n in (1, 2, 4)]
    for fit in fits[1:]:
        np.testing.assert_array_equal(np.asarray(fit.centroids), np.asarray(fits[0].centroids))
        np.testing.assert_array_equal(np.asarray(fit.assignments), np.asarray(fits[0].assignments))
