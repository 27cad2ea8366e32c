"""Per-example gradients equal a Python loop over examples, with and without micro-batching."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecos_jax import models, per_sample


# resnet is the slowest model to compile (18-25 s a case in the suite) and per_sample is
# model-agnostic (GroupNorm is per example): cnn and mlp run by default, resnet in `make test-slow`.
@pytest.mark.parametrize("name, microbatch_size", [
    (n, m) if n != "resnet" else pytest.param(n, m, marks=pytest.mark.slow)
    for m in (None, 3) for n in ("cnn", "mlp", "resnet")])
def test_per_example_grads_match_loop(name, microbatch_size):
    model = models.get_model(name, num_classes=4, **({"stage_channels": (8, 8)} if name == "resnet" else {}))
    params = models.init_params(model, jax.random.key(0), (12, 12, 1))
    x = jax.random.uniform(jax.random.key(1), (7, 12, 12, 1))
    y = jnp.array([0, 1, 2, 3, 0, 1, 2])
    loss = per_sample.example_loss(model)
    grads = per_sample.per_example_grads(loss, params, x, y, microbatch_size=microbatch_size)
    norms = per_sample.per_example_grad_norms(loss, params, x, y, microbatch_size=microbatch_size)
    reference = jax.jit(jax.grad(loss))  # one compiled per-example gradient for the loop (eager: ~2x slower)
    for i in range(x.shape[0]):
        g_i = reference(params, x[i], y[i])
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(g_i)):
            np.testing.assert_allclose(a[i], b, rtol=1e-4, atol=1e-6)
        flat = jnp.sqrt(sum(jnp.sum(l ** 2) for l in jax.tree.leaves(g_i)))
        np.testing.assert_allclose(norms[i], flat, rtol=1e-4)


def test_bad_microbatch():
    model = models.get_model("mlp", num_classes=2)
    params = models.init_params(model, jax.random.key(0), (4, 4, 1))
    with pytest.raises(ValueError, match="microbatch_size"):
        per_sample.per_example_grads(per_sample.example_loss(model), params, jnp.zeros((4, 4, 4, 1)),
                                     jnp.zeros(4, jnp.int32), microbatch_size=0)


def test_unknown_model():
    with pytest.raises(ValueError, match="Unknown model"):
        models.get_model("transformer", 10)


@pytest.mark.parametrize("microbatch_size", [None, 1, 3, 7, 20])
def test_map_microbatches_equals_one_call(microbatch_size):
    """Chunks (the last one zero-padded, then cut) give what one call on the batch gives."""
    x = np.arange(7 * 2, dtype=np.float32).reshape(7, 2)
    y = np.arange(7, dtype=np.float32)

    def fn(a, b):
        return {"s": a.sum(1) * b, "a": a + 1.0}

    got = per_sample.map_microbatches(fn, microbatch_size, x, y)
    want = fn(x, y)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    assert per_sample._chunked is per_sample.map_microbatches  # the valuation modules' old name
