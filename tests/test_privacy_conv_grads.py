"""The sub-pixel conv input gradient equals XLA's, and the tape uses it only where it applies."""
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ecos_jax import per_sample
from ecos_jax.privacy import clipping, conv_grads, layer_grads

RNG = np.random.default_rng(0)

# (input H, W, Cin, kernel kh, kw, Cout, strides, padding): the benchmark models' strided convs
# (3x3/2 SAME on an even input, tramer_cnn's 4x4/2 VALID on an odd one), stride 1, a kernel
# smaller than its stride (residues with no taps: zero gradient there), unequal strides and
# pads, an input the strides do not tile, and a stride the kernel does not divide.
CASES = [
    (14, 14, 3, 3, 3, 4, (2, 2), ((0, 1), (0, 1))),
    (13, 13, 2, 4, 4, 3, (2, 2), ((0, 0), (0, 0))),
    (9, 8, 2, 3, 3, 3, (1, 1), ((1, 1), (1, 1))),
    (7, 7, 2, 1, 1, 3, (2, 2), ((0, 0), (0, 0))),
    (11, 9, 2, 3, 2, 2, (3, 1), ((2, 0), (1, 1))),
    (10, 12, 1, 5, 5, 2, (3, 2), ((2, 2), (0, 3))),
    (6, 6, 2, 2, 2, 2, (3, 3), ((0, 0), (1, 0))),
    (8, 10, 2, 4, 2, 3, (2, 1), ((1, 1), (0, 0))),   # polyphase forward on one strided axis
    (12, 12, 2, 6, 6, 2, (3, 3), ((1, 2), (0, 0))),  # and on both, s = 3
]


def _plain(x, k, strides, padding):
    return lax.conv_general_dilated(x, k, strides, padding,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_input_and_kernel_gradients_equal_xla_on_every_case():
    data = []
    for h, w, cin, kh, kw, cout, s, p in CASES:
        x = RNG.normal(size=(3, h, w, cin)).astype(np.float32)
        k = RNG.normal(size=(kh, kw, cin, cout)).astype(np.float32)
        d = RNG.normal(size=_plain(x, k, s, p).shape).astype(np.float32)
        data.append((x, k, d))

    @jax.jit
    def run(data):
        out = []
        for (x, k, d), (*_, s, p) in zip(data, CASES):
            y, vjp = jax.vjp(partial(_plain, strides=s, padding=p), x, k)
            y_fast, vjp_fast = jax.vjp(partial(conv_grads.conv2d, strides=s, padding=p), x, k)
            direct = conv_grads.conv_input_grad(d, k, x.shape[1:3], s, p)
            out.append((y, y_fast, vjp(d), vjp_fast(d), direct))
        return out

    for (y, y_fast, (dx, dk), (dx_fast, dk_fast), direct), case in zip(run(data), CASES):
        np.testing.assert_allclose(y_fast, y, rtol=1e-5, atol=1e-5, err_msg=str(case))
        np.testing.assert_allclose(dx_fast, dx, rtol=1e-5, atol=1e-5, err_msg=str(case))
        np.testing.assert_allclose(direct, dx, rtol=1e-5, atol=1e-5, err_msg=str(case))
        np.testing.assert_allclose(dk_fast, dk, rtol=1e-5, atol=1e-5, err_msg=str(case))
        assert dx_fast.shape == dx.shape


def test_polyphase_forward_only_where_each_kernel_side_is_a_multiple_of_its_stride():
    picks = [conv_grads._polyphase_forward((kh, kw), s) for _, _, _, kh, kw, _, s, _ in CASES]
    assert picks == [False, True, False, False, True, False, False, True, True]


def test_eligible_only_on_cpu_with_non_negative_padding(monkeypatch):
    assert conv_grads.eligible((2, 8, 8, 3), (3, 3, 3, 4), ((1, 1), (0, 0)))
    assert not conv_grads.eligible((2, 8, 8, 3), (3, 3, 3, 4), ((-1, 1), (0, 0)))
    d, k = np.zeros((1, 4, 4, 2), np.float32), np.zeros((3, 3, 1, 2), np.float32)
    with pytest.raises(ValueError, match="padding >= 0"):
        conv_grads.conv_input_grad(d, k, (6, 6), (1, 1), ((-1, 1), (0, 0)))
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert not conv_grads.eligible((2, 8, 8, 3), (3, 3, 3, 4), ((1, 1), (0, 0)))


class _Net(nn.Module):
    """A first conv (patched), then strided and stride-1 convs the sub-pixel gradient takes,
    and one with a custom convolution function, which the tape must leave to flax."""

    @nn.compact
    def __call__(self, x):
        x = jnp.tanh(nn.Conv(4, (3, 3), strides=2, padding="SAME")(x))
        x = jnp.tanh(nn.Conv(5, (4, 4), strides=2, padding="VALID")(x))
        x = jnp.tanh(nn.Conv(3, (3, 3), padding=((2, 0), (1, 1)), use_bias=False)(x))
        x = jnp.tanh(nn.Conv(3, (2, 2), conv_general_dilated=lax.conv_general_dilated)(x))
        return nn.Dense(4)(x.reshape(x.shape[0], -1))


def test_tape_takes_the_subpixel_gradient_and_matches_vmap_grad(monkeypatch):
    model = _Net()
    x = RNG.normal(size=(6, 15, 15, 1)).astype(np.float32)
    y = np.arange(6) % 4
    mask = np.array([1, 0, 1, 1, 1, 1])
    params = jax.jit(model.init)(jax.random.key(0), x[:1])
    used = []
    real = conv_grads.conv2d
    monkeypatch.setattr(conv_grads, "conv2d", lambda *a: used.append(a[2:4]) or real(*a))

    @jax.jit
    def run(params):
        ref = per_sample.per_example_grads(per_sample.example_loss(model), params, x, y)
        got = layer_grads.clipped_grad_sum(model, params, x, y, l2_norm_clip=0.3, mask=mask)
        return clipping.clipped_sum(ref, 0.3, mask=mask), got

    (want, want_norms), (got, aux) = run(params)
    # The strided VALID conv and the stride-1 one take it; the custom one does not. (The first
    # conv is patched in the tape; `_tape` also traces the model once, for its perturbations'
    # shapes only, without patching.)
    assert ((2, 2), ((0, 0), (0, 0))) in used and ((1, 1), ((2, 0), (1, 1))) in used
    assert ((1, 1), ((0, 1), (0, 1))) not in used
    np.testing.assert_allclose(aux["norms"], want_norms, rtol=2e-5, atol=1e-6)
    for u, v in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(u, v, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["gpu"])
def test_tape_leaves_convs_to_flax_off_cpu(monkeypatch, backend):
    model = _Net()
    x = RNG.normal(size=(2, 15, 15, 1)).astype(np.float32)
    params = jax.jit(model.init)(jax.random.key(0), x[:1])
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    monkeypatch.setattr(conv_grads, "conv2d", lambda *a: pytest.fail("sub-pixel path off CPU"))
    layer_grads._tape(model, params, x, np.arange(2), layer_grads.softmax_xent)
