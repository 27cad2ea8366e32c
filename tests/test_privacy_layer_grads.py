"""Per-example gradients from layer inputs/output grads equal vmap(grad) on the real models."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from ecos_jax import per_sample
from ecos_jax.models import get_model
from ecos_jax.privacy import clipping, layer_grads
from ecos_jax.privacy.pooling import fast_max_pool_grads, max_pool

B = 6
MASK = np.array([1, 0, 1, 1, 0, 1])


RNG = np.random.default_rng(0)


def _setup(name, size=28, **kw):
    # numpy data and a jitted init: eager JAX ops each compile, which dominates tiny tests.
    model = get_model(name, 10, **kw)
    params = jax.jit(model.init)(jax.random.key(0), np.zeros((1, size, size, 1), np.float32))
    x = RNG.normal(size=(B, size, size, 1)).astype(np.float32)
    y = np.arange(B) % 10
    return model, params, x, y


def _close(a, b, rtol=2e-5, atol=1e-6):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol)


def _both_ways(model, full=True):
    """Every quantity by both formulations, in ONE compiled function (compile time dominates)."""

    @jax.jit
    def run(params, x, y):
        ref = per_sample.per_example_grads(per_sample.example_loss(model), params, x, y)
        out = {"ref": ref, "ref_norms": per_sample.global_norms(ref)}
        out["grads"] = layer_grads.per_example_layer_grads(model, params, x, y)
        out["norms"] = layer_grads.per_example_layer_grad_norms(model, params, x, y)
        for mode in clipping.CLIPPINGS if full else ("flat",):
            out["want_" + mode] = clipping.clipped_sum(ref, 0.3, mask=MASK, clipping=mode)
            out["got_" + mode] = layer_grads.clipped_grad_sum(
                model, params, x, y, l2_norm_clip=0.3, mask=MASK, clipping=mode
            )
        if not full:
            return out
        out["chunked"] = layer_grads.clipped_grad_sum(
            model, params, x, y, l2_norm_clip=0.3, mask=MASK, microbatch_size=4
        )[0]
        out["sum"] = layer_grads.grad_sum(model, params, x, y)
        out["sum_ref"] = jax.grad(
            lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y).sum()
        )(params)
        return out

    return run


def _check(out):
    _close(out["grads"], out["ref"])
    _close(out["norms"], out["ref_norms"])
    for mode in clipping.CLIPPINGS if "sum" in out else ("flat",):
        want, want_norms = out["want_" + mode]
        got, aux = out["got_" + mode]
        _close(got, want)
        _close(aux["norms"], want_norms)
    if "sum" not in out:
        return
    _close(out["chunked"], out["got_flat"][0])
    _close(out["sum"], out["sum_ref"], rtol=1e-4)


@pytest.mark.parametrize(
    "name, kw, size, full",
    [
        ("cnn", {}, 28, False),  # the default CNN: stride-2 SAME convs
        pytest.param("cnn", {"pooling": "max"}, 28, False, marks=pytest.mark.slow),
        ("mlp", {"hidden": (16, 8)}, 8, True),  # clipping modes, micro-batches, plain sum
        ("linear", {}, 12, False),  # one dense layer, K = 144 > C = 10: the transposed product
    ],
)
def test_matches_vmap_grad_on_real_models(name, kw, size, full):
    model, params, x, y = _setup(name, size, **kw)
    _check(_both_ways(model, full)(params, x, y))


@pytest.mark.slow
def test_matches_vmap_grad_on_wide_cnn():
    model, params, x, y = _setup("wide_cnn")
    _check(_both_ways(model)(params, x, y))


def test_strided_valid_and_gram_norm_branch():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(8, (2, 2), strides=2, padding="VALID")(x))  # 10x10 -> 5x5
            x = nn.Conv(32, (4, 4), padding="VALID", use_bias=False)(x)  # T = 4: Gram norms
            return nn.Dense(4)(x.reshape(x.shape[0], -1))

    model = Net()
    x = RNG.normal(size=(B, 10, 10, 1)).astype(np.float32)
    y = np.arange(B) % 4
    params = jax.jit(model.init)(jax.random.key(0), x[:1])
    assert not layer_grads._materialise(t=4, k=128, c=32)
    assert layer_grads._materialise(t=25, k=256, c=32)  # tramer_cnn's second conv

    @jax.jit
    def run(params):
        ref = per_sample.per_example_grads(per_sample.example_loss(model), params, x, y)
        return (ref, per_sample.global_norms(ref), layer_grads.per_example_layer_grads(model, params, x, y),
                layer_grads.per_example_layer_grad_norms(model, params, x, y))

    ref, ref_norms, grads, norms = run(params)
    _close(grads, ref)
    _close(norms, ref_norms)


def test_unsupported_layers_raise():
    model = get_model("resnet", 10, stage_channels=(8,))
    x, y = np.zeros((B, 8, 8, 1), np.float32), np.zeros(B, np.int32)
    params = jax.eval_shape(model.init, jax.random.key(0), x[:1])  # shapes suffice: no compile
    with pytest.raises(ValueError, match="GroupNorm"):
        jax.eval_shape(lambda p: layer_grads.per_example_layer_grad_norms(model, p, x, y), params)


def test_fast_pool_gradient_equals_select_and_scatter_with_ties():
    x = np.round(RNG.normal(size=(2, 7, 9, 3)) * 2).astype(np.float32) / 2  # many ties
    model, params, xs, y = _setup("cnn", size=12, channels=(4, 4), embed_dim=8, pooling="max")

    def loss(p):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, xs), y).sum()

    fast = jax.grad(fast_max_pool_grads(loss))
    assert "select_and_scatter" in str(jax.make_jaxpr(jax.grad(loss))(params))
    assert "select_and_scatter" not in str(jax.make_jaxpr(fast)(params))

    cotangents = {
        win: RNG.normal(size=[s // w for s, w in zip(x.shape, win)]).astype(np.float32)
        for win in [(1, 2, 2, 1), (1, 3, 3, 1)]
    }

    @jax.jit
    def run(x, params):
        out = []
        for win in [(1, 2, 2, 1), (1, 3, 3, 1)]:
            def ref(v, win=win):
                return jax.lax.reduce_window(v, -jnp.inf, jax.lax.max, win, win, "VALID")

            g = cotangents[win]
            out.append((max_pool(x, win), ref(x),
                        jax.vjp(lambda v, win=win: max_pool(v, win), x)[1](g)[0],
                        jax.vjp(ref, x)[1](g)[0]))
        return out, fast(params), jax.grad(loss)(params)

    pools, got, want = run(x, params)
    for y_fast, y_ref, dx_fast, dx_ref in pools:
        np.testing.assert_array_equal(y_fast, y_ref)
        np.testing.assert_array_equal(dx_fast, dx_ref)
    _close(got, want, rtol=1e-5)


def test_fast_pool_rewrite_applies_on_cpu_only(monkeypatch):
    """On CPU the pooling gradient is rewritten; on GPU/TPU the model's own one is kept."""
    model, params, xs, y = _setup("cnn", size=12, channels=(4, 4), embed_dim=8, pooling="max")

    def loss(p):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, xs), y).sum()

    assert jax.default_backend() == "cpu"
    assert "select_and_scatter" not in str(jax.make_jaxpr(jax.grad(fast_max_pool_grads(loss)))(params))
    for backend in ("gpu", "tpu"):
        monkeypatch.setattr(jax, "default_backend", lambda backend=backend: backend)
        jaxpr = str(jax.make_jaxpr(jax.grad(fast_max_pool_grads(loss)))(params))
        assert "select_and_scatter" in jaxpr and "reduce_window_max" in jaxpr


def test_padding_and_nonfinite_rows_add_exact_zeros():
    # 0 * NaN = NaN: rows that do not count must be selected away, in both formulations.
    model, params, x, y = _setup("mlp", 8, hidden=(16, 8))
    bad = np.array(x)
    bad[1] = np.nan  # padding (MASK[1] = 0)
    bad[2] = np.inf  # sampled, non-finite gradient: zeroed and reported
    keep = MASK * (np.arange(B) != 2)

    @jax.jit
    def run(params, x, bad):
        ref = per_sample.per_example_grads(per_sample.example_loss(model), params, bad, y)
        return (layer_grads.clipped_grad_sum(model, params, bad, y, l2_norm_clip=0.3, mask=MASK),
                clipping.clipped_sum(ref, 0.3, mask=MASK)[0],
                layer_grads.clipped_grad_sum(model, params, x, y, l2_norm_clip=0.3, mask=keep)[0])

    (got, aux), got_vmap, want = run(params, x, bad)
    for u, v, w in zip(*map(jax.tree.leaves, (got, got_vmap, want))):
        assert np.isfinite(u).all() and np.isfinite(v).all()
        np.testing.assert_allclose(u, w, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(v, w, rtol=2e-5, atol=1e-6)
    np.testing.assert_array_equal(aux["nonfinite"], [False, True, True, False, False, False])


def test_nonfinite_recompute_in_row_chunks(monkeypatch):
    # A non-finite total is recomputed with the rows selected away, chunk by chunk (here a
    # chunk of 4 rows and a remainder of 2): the same sum as the clean batch without them.
    monkeypatch.setattr(layer_grads, "_EXACT_ROWS", 4)
    model = get_model("linear", 10)
    x = RNG.normal(size=(B, 12, 12, 1)).astype(np.float32)
    y = np.arange(B) % 10
    params = jax.jit(model.init)(jax.random.key(0), x[:1])
    bad = x.copy()
    bad[4] = np.nan  # padding (MASK[4] = 0), in the remainder chunk
    bad[0, 0, 0, 0] = np.inf  # sampled: zeroed and reported
    keep = MASK * (np.arange(B) != 0)

    def clipped(x, mask):  # traced here, so the patched chunk size applies
        return layer_grads._clipped_chunk(model, layer_grads.softmax_xent, 0.3, "flat", params,
                                          x, y, mask.astype(np.float32))

    (got, aux), (want, _) = jax.jit(clipped)(bad, MASK), jax.jit(clipped)(x, keep)
    _close(got, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(aux["nonfinite"], [True, False, False, False, True, False])



def _layers(model, params, x, y):
    """The tape's layer records, from tracing alone (no compile)."""
    out = {}
    jax.eval_shape(lambda p: out.update(
        layer_grads._tape(model, p, x, y, layer_grads.softmax_xent)[0]), params)
    return list(out.values())


def test_tramer_cnn_first_conv_runs_from_its_patches():
    # tramer_cnn's first conv (8x8 stride 2, pad 2, one input channel: 64 taps) runs as its
    # patches (`_grouped_patches`) times the kernel, recorded as patches; its second (16
    # channels) does not. tests/test_train_dp_fashion.py checks its sum against vmap(grad);
    # the slow test below its clipped sum and norms.
    model, params, x, y = _setup("tramer_cnn", 16)
    layers = _layers(model, params, x, y)
    assert [layer.patched for layer in layers] == [True, False, False, False]
    first = layers[0]
    want = lax.conv_general_dilated_patches(jnp.asarray(x), first.kernel_size, first.strides,
                                            first.padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_array_equal(layer_grads._patches(jnp.asarray(x), first),
                                  want.reshape(x.shape[0], -1, want.shape[-1]))


@pytest.mark.parametrize("shape,kernel,strides,padding", [
    ((7, 9, 1), (8, 8), (2, 2), ((2, 2), (2, 2))),   # tramer_cnn's first conv, odd sizes
    ((10, 11, 2), (4, 6), (2, 3), ((1, 0), (0, 2))),  # unequal strides, 2 channels, grouped
    ((9, 9, 1), (4, 4), (3, 2), ((0, 0), (1, 1))),   # row stride not dividing the kernel
    ((8, 7, 1), (3, 3), (2, 2), ((1, 1), (1, 1))),   # kernel width not a multiple: per tap
    ((6, 6, 1), (5, 4), (1, 1), ((1, 2), (0, 1))),   # stride 1, 20 taps: one-hot
    ((6, 5, 3), (3, 2), (1, 1), ((1, 1), (0, 1))),   # stride 1, 3 channels: per tap
])
def test_patches_equal_xla_patches_in_kernel_order(shape, kernel, strides, padding):
    layer = layer_grads._Layer(("c",), "conv", True, kernel, strides, padding)
    x = jnp.asarray(RNG.normal(size=(3, *shape)).astype(np.float32))
    # XLA's feature order is (Cin, kh, kw); ours (kh, kw, Cin), an HWIO kernel's [K, C] rows
    want = lax.conv_general_dilated_patches(x, kernel, strides, padding,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
    n, ho, wo, _ = want.shape
    want = want.reshape(n, ho, wo, shape[2], *kernel).transpose(0, 1, 2, 4, 5, 3)
    got = jax.jit(layer_grads._patches, static_argnums=1)(x, layer)
    np.testing.assert_array_equal(got, want.reshape(n, ho * wo, -1))


@pytest.mark.slow
def test_tramer_cnn_matches_vmap_grad():
    model, params, x, y = _setup("tramer_cnn", 16)
    _check(_both_ways(model, full=False)(params, x, y))


def test_patched_conv_equals_the_conv_and_only_for_the_model_input():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            a = nn.Conv(2, (3, 3), strides=2, padding="SAME")(x)  # patched: slices (9 taps)
            b = nn.Conv(2, (5, 4), padding=((1, 2), (0, 1)), use_bias=False)(x)  # one-hot
            c = nn.Conv(2, (2, 2))(jnp.tanh(x))  # not the model input itself: left alone
            return a.sum((1, 2)) + b.mean((1, 2)) + c.mean((1, 2))

    model = Net()
    x = RNG.normal(size=(B, 7, 6, 1)).astype(np.float32)
    y = np.arange(B) % 2
    params = jax.jit(model.init)(jax.random.key(0), x[:1])
    assert [layer.patched for layer in _layers(model, params, x, y)] == [True, True, False]
    # Every conv here has K > C, so its per-example kernels are formed as [B, C, K]
    # (`_kernel_transposed`): the sums and norms below check that layout too.
    factors = jax.eval_shape(
        lambda p, x: layer_grads._tape(model, p, x, y, layer_grads.softmax_xent)[1], params, x)
    assert all(layer_grads._kernel_transposed(layer, *factors[layer.path])
               for layer in _layers(model, params, x, y))

    @jax.jit
    def run(params):
        ref = per_sample.per_example_grads(per_sample.example_loss(model), params, x, y)
        got = layer_grads.clipped_grad_sum(model, params, x, y, l2_norm_clip=0.3, mask=MASK)
        logits = layer_grads._tape(model, params, x, y, layer_grads.softmax_xent)[3]
        return clipping.clipped_sum(ref, 0.3, mask=MASK), got, logits, model.apply(params, x)

    (want, want_norms), (got, aux), logits, want_logits = run(params)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-5, atol=1e-5)
    _close(got, want)
    _close(aux["norms"], want_norms)
