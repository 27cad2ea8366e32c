"""BYOL pieces: the target network moves by its moving average only, and the loss is BYOL's."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ecos_jax.coopt.networks import HeadNet
from ecos_jax.coopt.ssl import (
    Predictor,
    byol_init,
    byol_objective,
    byol_optimizer,
    byol_regression,
)
from ecos_jax.models import get_model


def _jitter(key, x):
    return x + 0.05 * jax.random.normal(key, x.shape)


def _setup():
    net = HeadNet(backbone=get_model("mlp", 10, hidden=(16, 8)), out_dim=4, hidden=8)
    pred = Predictor(hidden=8, out_dim=4)
    x = jax.random.uniform(jax.random.key(0), (6, 6, 6, 1))
    return net, pred, x, byol_init(net, pred, jax.random.key(1), x)


def test_byol_regression_values():
    p = jnp.asarray([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    t = jnp.asarray([[3.0, 0.0], [0.0, 2.0], [-1.0, 0.0]])  # same direction, orthogonal, opposite
    np.testing.assert_allclose(byol_regression(p, t), [0.0, 2.0, 4.0], atol=1e-6)


def test_target_gets_no_gradient_and_moves_by_its_average():
    net, pred, x, params = _setup()
    # Gaussian jitter as the views: Augment's warp would add a long XLA compile and tests nothing here.
    objective = byol_objective(net, pred, augment=_jitter)
    grads = jax.jit(jax.grad(objective))(params, x, None, jax.random.key(2))
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads["target"]))
    assert any(float(jnp.abs(g).max()) > 0.0 for g in jax.tree.leaves(grads["online"]))
    # Start from a target unlike the online network, so the average has somewhere to go.
    params = {**params, "target": jax.tree.map(lambda a: a + 1.0, params["target"])}
    tau = 0.9
    tx = byol_optimizer(optax.sgd(0.1), tau)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    online_after = jax.tree.map(lambda p, g: p - 0.1 * g, params["online"], grads["online"])
    expected = jax.tree.map(lambda t, o: tau * t + (1 - tau) * o, params["target"], online_after)
    for got, want in zip(jax.tree.leaves(new["target"]), jax.tree.leaves(expected)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for got, want in zip(jax.tree.leaves(new["online"]), jax.tree.leaves(online_after)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_byol_optimizer_rejects_bad_tau():
    with pytest.raises(ValueError, match="tau"):
        byol_optimizer(optax.sgd(0.1), 1.0)


def test_batch_stat_norm_standardises_each_feature_over_the_batch():
    from ecos_jax.coopt.networks import BatchStatNorm
    h = jax.random.normal(jax.random.key(3), (32, 5)) * jnp.arange(1.0, 6.0) + 7.0
    norm = BatchStatNorm()
    params = norm.init(jax.random.key(0), h)
    out = norm.apply(params, h)
    np.testing.assert_allclose(out.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(0), 1.0, atol=1e-3)
    # The statistics couple the rows: a constant batch maps to the learnt bias, not to itself.
    np.testing.assert_allclose(norm.apply(params, jnp.ones((4, 5))), 0.0, atol=1e-6)


def test_batch_norm_heads_add_their_parameters_and_keep_the_backbone_features():
    net = HeadNet(backbone=get_model("mlp", 10, hidden=(16, 8)), out_dim=4, hidden=8, batch_norm=True)
    pred = Predictor(hidden=8, out_dim=4, batch_norm=True)
    x = jax.random.uniform(jax.random.key(0), (6, 6, 6, 1))
    params = byol_init(net, pred, jax.random.key(1), x)
    assert "head_norm" in params["online"]["params"] and "norm" in params["predictor"]["params"]
    plain = HeadNet(backbone=get_model("mlp", 10, hidden=(16, 8)), out_dim=4, hidden=8)
    feats = net.apply(params["online"], x, features=True)
    np.testing.assert_allclose(feats, plain.apply({"params": {k: v for k, v in params["online"]["params"].items()
                                                              if k != "head_norm"}}, x, features=True))
    loss = byol_objective(net, pred, augment=_jitter)(params, x, None, jax.random.key(2))
    assert np.isfinite(float(loss)) and 0.0 <= float(loss) <= 4.0
