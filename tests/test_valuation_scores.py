"""Per-sample scores (loss, grad-norm, VoG, PLIS) against their formulas and autodiff references."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from ecos_jax import models
from ecos_jax.valuation import grad_norm, loss, plis, vog


# ---- a hand-built model whose input gradient is known in closed form -------------------------
# z_k(x) = Σ_p W[p,k] x_p + ½ Σ_p A[p,k] x_p²   =>   ∂z_k/∂x_p = W[p,k] + A[p,k] x_p
def quadratic_apply(params, x):
    flat = x.reshape(x.shape[0], -1)
    return flat @ params["W"] + 0.5 * (flat**2) @ params["A"]


def _quadratic_checkpoints(k, d, classes, seed=0):
    rng = np.random.default_rng(seed)
    return [{"W": jnp.asarray(rng.normal(size=(d, classes)), jnp.float32),
             "A": jnp.asarray(rng.normal(size=(d, classes)), jnp.float32)} for _ in range(k)]


def test_vog_equals_formula_on_hand_built_model():
    n, h, w, c, classes, k = 5, 3, 4, 2, 3, 4
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(n, h, w, c)).astype(np.float32)
    y = np.array([0, 1, 2, 1, 0], np.int32)
    ckpts = _quadratic_checkpoints(k, h * w * c, classes)

    flat = x.reshape(n, -1)
    s = np.stack([np.asarray(p["W"])[:, y].T + np.asarray(p["A"])[:, y].T * flat for p in ckpts])
    s = s.reshape(k, n, h, w, c).mean(-1)                    # S_t, channel-averaged [K,N,H,W]
    mu = s.mean(0)
    expected_map = np.sqrt(((s - mu) ** 2).mean(0))          # population std over K
    expected = expected_map.reshape(n, -1).mean(1)

    np.testing.assert_allclose(vog.vog_maps(quadratic_apply, ckpts, x, y), expected_map, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vog.vog_scores(quadratic_apply, ckpts, x, y), expected, rtol=1e-5)
    # micro-batching (with a ragged last chunk) changes nothing
    np.testing.assert_allclose(vog.vog_scores(quadratic_apply, ckpts, x, y, microbatch_size=2),
                               expected, rtol=1e-5)


def test_vog_identical_checkpoints_is_zero_and_stages_split():
    x = np.random.default_rng(0).uniform(size=(3, 2, 2, 1)).astype(np.float32)
    y = np.array([0, 1, 0], np.int32)
    same = _quadratic_checkpoints(1, 4, 2)[0]
    np.testing.assert_allclose(vog.vog_scores(quadratic_apply, [same] * 3, x, y), 0.0, atol=1e-6)

    ckpts = _quadratic_checkpoints(7, 4, 2, seed=3)
    groups = vog.stage_indices(7)
    assert [g.tolist() for g in groups.values()] == [[0, 1, 2], [3, 4], [5, 6]]
    stages = vog.vog_stages(quadratic_apply, ckpts, x, y)
    np.testing.assert_allclose(stages["late"], vog.vog_scores(quadratic_apply, ckpts[5:], x, y), rtol=1e-6)


def test_vog_bad_input():
    x = np.zeros((2, 2, 2, 1), np.float32)
    y = np.array([0, 1], np.int32)
    ckpts = _quadratic_checkpoints(5, 4, 2)
    with pytest.raises(ValueError, match="K >= 2"):
        vog.vog_scores(quadratic_apply, ckpts[:1], x, y)
    with pytest.raises(ValueError, match="K >= 6"):
        vog.vog_stages(quadratic_apply, ckpts, x, y)
    with pytest.raises(ValueError, match="NaN"):
        vog.vog_scores(quadratic_apply, ckpts, np.full_like(x, np.nan), y)
    with pytest.raises(ValueError, match="labels"):
        vog.vog_scores(quadratic_apply, ckpts, x, y[:1])


# ---- loss and gradient norm ------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_cnn():
    model = models.get_model("cnn", num_classes=3, channels=(2, 4), embed_dim=8)
    params = jax.jit(lambda k: models.init_params(model, k, (8, 8, 1)))(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (5, 8, 8, 1))
    y = jnp.array([0, 1, 2, 0, 1], jnp.int32)
    return model, params, x, y


def test_loss_and_grad_norm_match_per_example_autodiff(tiny_cnn):
    model, params, x, y = tiny_cnn
    ls = loss.loss_scores(model.apply, params, x, y, microbatch_size=2)
    ref = jax.jit(lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y))
    np.testing.assert_allclose(ls, ref(params), rtol=1e-5)
    gn = grad_norm.grad_norm_scores(model.apply, params, x, y, microbatch_size=2)
    single = grad_norm.single_example_loss(model.apply)
    single_grad = jax.jit(jax.grad(single))
    for i in (0, 3):  # a Python loop of plain jax.grad, nothing shared with the vmapped path
        g = single_grad(params, x[i], y[i])
        ref = np.sqrt(sum(float(jnp.sum(leaf**2)) for leaf in jax.tree.leaves(g)))
        np.testing.assert_allclose(gn[i], ref, rtol=1e-4)
    with pytest.raises(ValueError, match="microbatch_size"):
        loss.loss_scores(model.apply, params, x, y, microbatch_size=0)


# ---- PLIS ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_mlp():
    # tanh keeps the gradient's input-Jacobian smooth and full of non-trivial second derivatives
    model = models.MLP(num_classes=3, hidden=(6,), activation=nn.tanh)
    params = jax.jit(lambda k: models.init_params(model, k, (3, 3, 1)))(jax.random.key(2))
    x = jax.random.uniform(jax.random.key(3), (6, 3, 3, 1))
    y = jnp.array([0, 1, 2, 0, 1, 2], jnp.int32)
    return model, params, x, y


def _dense_spectral_norms(apply_fn, params, x, y, clip_norm):
    """‖J_i‖₂ from the materialised P×D Jacobian (jacfwd), SVD in float64."""

    def jac(xi, yi):
        h = plis.clipped_gradient_fn(apply_fn, params, yi, clip_norm)
        return jax.jacfwd(lambda v: ravel_pytree(h(v.reshape(xi.shape)))[0])(xi.reshape(-1))

    jacs = np.asarray(jax.jit(jax.vmap(jac))(x, y), np.float64)   # [N, P, D]
    return np.array([np.linalg.norm(j, 2) for j in jacs])


@pytest.mark.parametrize("clip_norm", [None, "median"])
def test_matrix_free_plis_matches_materialised_jacobian(tiny_mlp, clip_norm):
    model, params, x, y = tiny_mlp
    if clip_norm == "median":  # clip about half the samples, so both branches of ḡ are tested
        clip_norm = float(np.median(grad_norm.grad_norm_scores(model.apply, params, x, y)))
    ref = _dense_spectral_norms(model.apply, params, x, y, clip_norm)
    scores, iters = plis.plis_scores(model.apply, params, x, y, clip_norm=clip_norm, tol=1e-7,
                                     max_iters=500, microbatch_size=4, return_iterations=True)
    assert np.all(np.asarray(iters) < 500), iters
    np.testing.assert_array_less(np.abs(np.asarray(scores) - ref) / ref, 1e-3)
    if clip_norm is None:  # the library's own materialised reference (jacrev) agrees too
        dense = plis.plis_scores_dense(model.apply, params, x, y, clip_norm=None, mode="jacrev")
        np.testing.assert_allclose(dense, ref, rtol=1e-3)


@pytest.mark.slow  # ~20 s of compilation on a busy 2-core CPU
def test_plis_on_cnn_matches_dense(tiny_cnn):
    model, params, x, y = tiny_cnn
    ref = plis.plis_scores_dense(model.apply, params, x, y, clip_norm=None)
    got = plis.plis_scores(model.apply, params, x, y, clip_norm=None, tol=1e-7, max_iters=500)
    np.testing.assert_array_less(np.abs(np.asarray(got) - np.asarray(ref)) / np.asarray(ref), 1e-3)


def test_plis_attribution_is_gradient_of_clipped_norm(tiny_mlp):
    model, params, x, y = tiny_mlp

    def clipped_norm(xi, yi, clip_norm):
        g = plis.clipped_gradient_fn(model.apply, params, yi, clip_norm)(xi)
        return jnp.sqrt(sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(g)))

    unclipped = plis.plis_attribution(model.apply, params, x, y, clip_norm=None, microbatch_size=4)
    assert unclipped.shape == x.shape
    ref = jax.jit(jax.vmap(jax.grad(lambda xi, yi: clipped_norm(xi, yi, None))))(x, y)
    np.testing.assert_allclose(unclipped, jnp.abs(ref), rtol=1e-4, atol=1e-7)
    # C = 1e-3 clips every sample: ‖ḡ‖ = C is constant in x, so the map is 0 up to round-off
    clipped = plis.plis_attribution(model.apply, params, x, y, clip_norm=1e-3)
    assert float(jnp.max(clipped)) < 1e-6 * float(jnp.max(unclipped))


def test_plis_bad_input(tiny_mlp):
    model, params, x, y = tiny_mlp
    with pytest.raises(ValueError, match="clip_norm"):
        plis.plis_scores(model.apply, params, x, y, clip_norm=0.0)
    with pytest.raises(ValueError, match="max_iters"):
        plis.plis_scores(model.apply, params, x, y, max_iters=1)
    with pytest.raises(ValueError, match="mode"):
        plis.plis_scores_dense(model.apply, params, x, y, mode="svd")
