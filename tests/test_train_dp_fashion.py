"""DP-SGD on Fashion-MNIST: the models, the ScatterNet feature pipeline and the experiment's
ε × seed grid (tiny data here; the real runs are in the README)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ecos_jax import models, per_sample
from ecos_jax.privacy import layer_grads


def test_max_pool_2x2_stride1_matches_flax():
    x = jax.random.normal(jax.random.key(0), (2, 9, 7, 3))
    np.testing.assert_array_equal(models.max_pool_2x2_stride1(x),
                                  nn.max_pool(x, (2, 2), strides=(1, 1)))
    # Same gradient as reduce_window's where the window maximum is unique (no ties here).
    g_ours = jax.grad(lambda a: jnp.sum(models.max_pool_2x2_stride1(a) ** 2))(x)
    g_flax = jax.grad(lambda a: jnp.sum(nn.max_pool(a, (2, 2), strides=(1, 1)) ** 2))(x)
    np.testing.assert_allclose(g_ours, g_flax, rtol=1e-6)


def test_tramer_cnn_shape_params_and_layers_fast_path():
    model = models.get_model("tramer_cnn", 10)
    x = jax.random.uniform(jax.random.key(1), (6, 28, 28, 1))
    y = jnp.arange(6) % 10
    params = model.init(jax.random.key(0), x[:1])
    assert sum(p.size for p in jax.tree.leaves(params)) == 26_010   # as published
    assert model.apply(params, x).shape == (6, 10)
    assert model.apply(params, x, features=True).shape == (6, 32)
    # The layers path (per-example grads from layer inputs/outputs) against vmap(grad).
    fast, aux = layer_grads.clipped_grad_sum(model, params, x, y, l2_norm_clip=1e9,
                                             mask=jnp.ones(6))

    def loss(p, xi, yi):
        return layer_grads.softmax_xent(model.apply(p, xi[None]), yi[None])[0]

    ref = per_sample.per_example_grads(loss, params, x, y)
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b.sum(0), rtol=1e-4, atol=1e-6)


def test_linear_model_on_features():
    model = models.get_model("linear", 10)
    params = model.init(jax.random.key(0), jnp.zeros((1, 7, 7, 81)))
    assert params["params"]["Dense_0"]["kernel"].shape == (3969, 10)
    assert model.apply(params, jnp.ones((3, 7, 7, 81))).shape == (3, 10)
