"""Per-example gradients, norms and clipped sums from layer inputs and output gradients.

The fast path for DP-SGD (per-example gradients, clipping, clipped sum). For a Dense or Conv layer y = a·W + b, example i's
weight gradient is a sum of outer products of that example's layer input a_i and output
gradient δ_i = ∂ℓ_i/∂y_i:

    dense:  ∇W ℓ_i = a_iᵀ δ_i                      ‖∇W ℓ_i‖² = ‖a_i‖²‖δ_i‖²   (ghost norm)
    conv:   ∇W ℓ_i = Σ_t p_{i,t} δ_{i,t}ᵀ          p_{i,t}: the input patch under output t

One forward pass records each layer's input (`sow`) and adds a zero perturbation to its output
(`perturb`); one backward pass to those perturbations gives every δ at once, and never forms
weight gradients. From (a, δ) we get each example's gradient norm, either from a materialised
per-example gradient [B, K, C] or from Gram matrices Σ_{t,s}(p_t·p_s)(δ_t·δ_s) without
materialising it (when T² (K + C) < K·C: few positions, a large kernel), and then the
clipped sum Σ_i w_i ∇ℓ_i directly, with w_i = m_i·min(1, C/‖∇ℓ_i‖). This is the "book-keeping"
/ mixed ghost-clipping formulation (Bu et al. 2022, Li et al. 2022), and it replaces XLA's
CPU backward-filter convolution, which is several times slower than its forward one, by
patches and matrix products. The backward pass itself takes each conv's input gradient by
stride-1 sub-pixel convolutions (`conv_grads`) rather than XLA:CPU's dilated transposed one.

Rows that do not count contribute exact zeros whatever their values: padding rows (mask 0) and
examples whose gradient is not finite (a NaN/inf, or a norm overflowing float32). Their weight
is exactly 0 (`jnp.where`); the factors (a, δ) are left as they are, since 0 · v = 0 for finite
v, and a weight of 0 times a NaN/inf factor, which would be NaN, makes the whole total
non-finite: then the total is recomputed with those rows selected away from the factors too,
in row chunks. Zeroing a non-finite example keeps the sum's L2 sensitivity at C;
`aux["nonfinite"]` reports such rows so callers can count them.

Supported layers: `nn.Dense` and 2-D `nn.Conv` (any strides and padding; no dilation or
feature groups), each called once per forward pass; every parameter must belong to one of
them (so the ResNet's GroupNorm needs `ecos_jax.per_sample`). Others raise ValueError.

    >>> grads, aux = clipped_grad_sum(model, params, x, y, l2_norm_clip=1.0, mask=mask)
    >>> aux["norms"].shape == (x.shape[0],)
    True

DP-SGD reaches this module through `clipped_grads.clipped_grad(model, method="layers")`, which
carries the sum's sensitivity. The per-example helpers here take a flax *model* and a batch
loss on logits, hence their names (`per_example_layer_grads`, `per_example_layer_grad_norms`),
distinct from `ecos_jax.per_sample.per_example_grads(loss_fn, ...)`, which vmaps a
per-example loss function.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util
from jax import lax

from ecos_jax.privacy import conv_grads
from ecos_jax.privacy.pooling import fast_max_pool_grads

PyTree = Any
BatchLoss = Callable[[jax.Array, jax.Array], jax.Array]  # (logits [B, K], y [B]) -> [B]

_INPUTS = "layer_inputs"
_PERTURB = "perturbations"


def softmax_xent(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy: `[B, K], [B] int -> [B]`."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


@dataclasses.dataclass(frozen=True)
class _Layer:
    """What the per-example formulas need to know about one intercepted layer."""

    path: tuple[str, ...]
    kind: str  # "dense" | "conv"
    has_bias: bool
    kernel_size: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    padding: tuple[tuple[int, int], ...] = ()
    # True: the recorded input is already the conv's patches `[B, T, K]` (see `_make_tape`).
    patched: bool = False


def _conv_layer(mod: nn.Conv, x: jax.Array) -> _Layer:
    path = tuple(mod.path)
    if x.ndim != 4 or len(mod.kernel_size) != 2:
        raise ValueError(f"layer {path}: only 2-D convolutions on [B, H, W, C] are supported.")
    if mod.feature_group_count != 1:
        raise ValueError(f"layer {path}: grouped convolutions are not supported.")
    for name in ("input_dilation", "kernel_dilation"):
        d = getattr(mod, name)
        if d is not None and any(v != 1 for v in ((d,) * 2 if isinstance(d, int) else d)):
            raise ValueError(f"layer {path}: {name} != 1 is not supported.")
    if getattr(mod, "mask", None) is not None:
        raise ValueError(f"layer {path}: masked convolutions are not supported.")
    ks = tuple(mod.kernel_size)
    strides = mod.strides or 1
    strides = (strides,) * 2 if isinstance(strides, int) else tuple(strides)
    pad = mod.padding
    if isinstance(pad, str):
        if pad.upper() not in ("SAME", "VALID"):
            raise ValueError(f"layer {path}: padding {pad!r} is not supported.")
        pads = tuple(lax.padtype_to_pads(x.shape[1:3], ks, strides, pad.upper()))
    elif isinstance(pad, int):
        pads = ((pad, pad),) * 2
    else:
        pads = tuple((p, p) if isinstance(p, int) else tuple(p) for p in pad)
    return _Layer(path, "conv", mod.use_bias, ks, strides, tuple(map(tuple, pads)))


def _make_tape(layers: dict, model_input: jax.Array | None = None) -> Callable:
    """A flax interceptor recording Dense/Conv inputs and perturbing their outputs.

    A conv applied to `model_input` itself with fewer than `_SHIFTED_MIN_CHANNELS` input
    channels (the first conv on images) is computed as its patches times the kernel, and its
    patches are recorded in place of its input: the norm and the sum need those patches anyway,
    no gradient flows back to the input, and the product is cheaper than XLA:CPU's own
    convolution there (`_patched_conv`).
    """

    def interceptor(next_fun, args, kwargs, context):
        mod = context.module
        if context.method_name != "__call__" or type(mod) not in (nn.Dense, nn.Conv):
            return next_fun(*args, **kwargs)
        x = args[0] if args else kwargs["inputs"]
        path = tuple(mod.path)
        if path in layers:
            raise ValueError(
                f"layer {path} is called more than once per forward pass; per-example "
                "gradients from layer inputs need one call per layer (use ecos_jax.per_sample)."
            )
        if type(mod) is nn.Dense:
            layers[path] = _Layer(path, "dense", mod.use_bias)
        else:
            layers[path] = _conv_layer(mod, x)
        if (model_input is not None and x is model_input and layers[path].kind == "conv"
                and x.shape[-1] < _SHIFTED_MIN_CHANNELS):
            layers[path] = dataclasses.replace(layers[path], patched=True)
            patches, y = _patched_conv(mod, layers[path], x)
            mod.sow(_INPUTS, "x", patches)
            return mod.perturb("y", y, collection=_PERTURB)
        mod.sow(_INPUTS, "x", x)
        if layers[path].kind == "conv" and _fast_input_grad(mod, layers[path], x):
            return mod.perturb("y", _subpixel_conv(mod, layers[path], x), collection=_PERTURB)
        return mod.perturb("y", next_fun(*args, **kwargs), collection=_PERTURB)

    return interceptor


def _get(tree: dict, path: tuple[str, ...]):
    for k in path:
        tree = tree[k]
    return tree


# Below this many input channels a conv's per-example kernels come from one patches matrix
# product; above it, from kh·kw products over shifted input views (no [B, T, kh·kw·Cin] patches
# copy). Measured on 2 CPU cores at batch 256: 14x14x16 -> 32, 37 ms vs 17 ms; 28x28x1 -> 16,
# 6 ms vs 8 ms.
_SHIFTED_MIN_CHANNELS = 4


def _conv_views(x: jax.Array, layer: _Layer) -> list[jax.Array]:
    """The kh·kw shifted, strided views of the padded input, each `[B, Ho, Wo, Cin]`.

    View (i, j) holds the input pixel that kernel tap (i, j) multiplies for every output
    position; in row-major (kh, kw) order, matching an HWIO kernel.
    """
    (kh, kw), (sh, sw) = layer.kernel_size, layer.strides
    xp = jnp.pad(x, ((0, 0), layer.padding[0], layer.padding[1], (0, 0)))
    ho = (xp.shape[1] - kh) // sh + 1
    wo = (xp.shape[2] - kw) // sw + 1
    b, c = x.shape[0], x.shape[3]
    return [
        lax.slice(xp, (0, i, j, 0), (b, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c),
                  (1, sh, sw, 1))
        for i in range(kh)
        for j in range(kw)
    ]


# Above this many kernel taps a one-channel conv's patches come from XLA's one-hot patch
# convolution, below it from one strided slice per tap (unless `_grouped_patches` applies).
# Measured on 2 CPU cores at batch 2048 (load 9-16): 28x28x1, 3x3 stride 1 (9 taps): slices
# 178 ms, one-hot 320 ms.
_ONE_HOT_MIN_TAPS = 16


def _patches(x: jax.Array, layer: _Layer) -> jax.Array:
    """Input patches under each conv output: `[B, H, W, Cin] -> [B, Ho*Wo, kh*kw*Cin]`.

    Features in (kh, kw, Cin) order, matching an HWIO kernel reshaped to `[K, C]`. Plain data
    movement: `_grouped_patches` where the column stride s_w > 1 divides kw; otherwise one
    strided slice per tap, stacked on a new minor axis, except for one input channel and many
    taps, where `conv_general_dilated_patches` (a convolution with a one-hot kernel; its
    (Cin, kh, kw) feature order is (kh, kw) for Cin = 1) is faster (`_ONE_HOT_MIN_TAPS`).
    """
    (_, kw), (_, sw) = layer.kernel_size, layer.strides
    if sw > 1 and kw % sw == 0:
        return _grouped_patches(x, layer)
    if x.shape[-1] == 1 and math.prod(layer.kernel_size) >= _ONE_HOT_MIN_TAPS:
        p = lax.conv_general_dilated_patches(x, layer.kernel_size, layer.strides, layer.padding,
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return p.reshape(x.shape[0], -1, p.shape[-1])
    views = _conv_views(x, layer)
    b, ho, wo, c = views[0].shape
    return jnp.stack(views, axis=3).reshape(b, ho * wo, len(views) * c)


def _grouped_patches(x: jax.Array, layer: _Layer) -> jax.Array:
    """`_patches` for a column stride s_w that divides the kernel width, in two stages.

    The kh strided row slices of the padded input, stacked as `[B, Ho, kh, W, Cin]`; its
    columns regrouped as `[W/s_w, s_w·Cin]` (a free reshape: kernel column b·s_w + r reads
    grouped column j + b, entry r, under output column j), so that each of the kw/s_w column
    slices moves s_w taps at once; stacked and transposed into (kh, kw, Cin) order. Columns
    padded on the right up to a multiple of s_w are never read (the last one read is
    s_w·(Wo - 1) + kw - 1, as for the conv itself).

    tramer_cnn's first conv (28x28x1, 8x8 stride 2, pad 2) at batch 2048, jitted alone,
    medians of 20 calls in 4 interleaved rounds, idle 2 cores: 10.6 ms, against 25.1 ms for
    one slice per column group and ~47 ms for the one-hot patch convolution; in the DP step
    (`benchmarks/dpsgd.py --ab`) 1.16x faster than the former. The result is behind an
    optimization barrier: without it XLA fused the transpose into each consumer and the DP step
    gained only 1.04x. The same two stages without grouping were faster alone on cnn's and
    cnn_stride's first convs too (3x3 stride 1: 6.5 against 18.5 ms), but made their DP steps
    9-12% slower, so those keep one slice per tap.
    """
    (kh, kw), (sh, sw) = layer.kernel_size, layer.strides
    (top, bottom), (left, right) = layer.padding
    ho, wo = _out_hw(layer, x.shape)
    b, c = x.shape[0], x.shape[3]
    extra = (-(x.shape[2] + left + right)) % sw
    xp = jnp.pad(x, ((0, 0), (top, bottom), (left, right + extra), (0, 0)))
    wp = xp.shape[2]
    rows = jnp.stack([
        lax.slice(xp, (0, i, 0, 0), (b, i + (ho - 1) * sh + 1, wp, c), (1, sh, 1, 1))
        for i in range(kh)
    ], axis=2).reshape(b, ho, kh, wp // sw, sw * c)  # [B, Ho, kh, Wp/s_w, s_w·Cin]
    cols = [lax.slice(rows, (0, 0, 0, j, 0), (b, ho, kh, j + wo, sw * c))
            for j in range(kw // sw)]
    p = jnp.stack(cols, axis=4)  # [B, Ho, kh, Wo, kw/s_w, s_w·Cin]
    p = p.transpose(0, 1, 3, 2, 4, 5).reshape(b, ho * wo, -1)
    return lax.optimization_barrier(p)


def _out_hw(layer: _Layer, x_shape: tuple[int, ...]) -> tuple[int, int]:
    """(Ho, Wo) of a conv on `[B, H, W, Cin]` inputs."""
    return tuple(
        (n + lo + hi - k) // s + 1
        for n, (lo, hi), k, s in zip(x_shape[1:3], layer.padding, layer.kernel_size, layer.strides)
    )


def _patched_conv(mod: nn.Conv, layer: _Layer, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(patches `[B, T, K]`, output `[B, Ho, Wo, C]`) of `mod` on `x`, the output as
    patches · kernel (+ bias): the conv's values to float rounding. For a first conv on
    1-channel images this is cheaper than XLA:CPU's convolution, which ran 28x28x1 -> 16 (3x3
    SAME) in 415 ms where the slice patches took 178 ms at batch 2048 (load 16), and the
    patches are what the per-example norm and the clipped sum read."""
    kernel = mod.get_variable("params", "kernel")
    patches = _patches(x, layer)
    b, k, c = x.shape[0], patches.shape[-1], kernel.shape[-1]
    y = jnp.dot(patches.reshape(-1, k), kernel.reshape(k, c), precision=mod.precision)
    y = y.reshape(b, *_out_hw(layer, x.shape), c)
    if layer.has_bias:
        y = y + mod.get_variable("params", "bias")
    return patches, y.astype(jnp.result_type(x, kernel))


def _fast_input_grad(mod: nn.Conv, layer: _Layer, x: jax.Array) -> bool:
    """Whether `mod`'s input gradient is taken by sub-pixel convolutions (`conv_grads`): a plain
    flax Conv (no custom convolution function) on CPU with non-negative padding."""
    kernel = mod.get_variable("params", "kernel")
    return (getattr(mod, "conv_general_dilated", None) is None
            and getattr(mod, "conv_general_dilated_cls", None) is None
            and conv_grads.eligible(x.shape, kernel.shape, layer.padding))


def _subpixel_conv(mod: nn.Conv, layer: _Layer, x: jax.Array) -> jax.Array:
    """`mod(x)` as `conv_grads.conv2d` (+ bias): the same values, and an input gradient from
    stride-1 sub-pixel convolutions instead of XLA:CPU's dilated transposed convolution, which
    was the largest op of the backward pass (`cnn_stride`'s second conv at batch 2048: 52 ms of
    a 221 ms DP step; the sub-pixel gradient of that conv alone 74 -> 31 ms)."""
    kernel = mod.get_variable("params", "kernel")
    bias = mod.get_variable("params", "bias") if layer.has_bias else None
    x, kernel, bias = mod.promote_dtype(x, kernel, bias, dtype=mod.dtype)
    y = conv_grads.conv2d(x, kernel, layer.strides, layer.padding, mod.precision)
    return y if bias is None else y + bias


def _layer_factors(layer: _Layer, a: jax.Array, d: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(layer input, output gradient): dense as `[B, T, K]`, `[B, T, C]`; conv as recorded,
    `[B, H, W, Cin]` and `[B, Ho, Wo, C]` (its patches are formed only where needed)."""
    if layer.kind == "conv":
        return a, d
    b = a.shape[0]
    return a.reshape(b, -1, a.shape[-1]), d.reshape(b, -1, d.shape[-1])


def _dims(layer: _Layer, a: jax.Array, d: jax.Array) -> tuple[int, int, int]:
    """(T, K, C): positions per example, kernel fan-in, output channels."""
    if layer.kind == "conv" and not layer.patched:
        return d.shape[1] * d.shape[2], math.prod(layer.kernel_size) * a.shape[-1], d.shape[-1]
    if layer.kind == "conv":
        return a.shape[1], a.shape[2], d.shape[-1]
    return a.shape[1], a.shape[2], d.shape[2]


def _flat(layer: _Layer, a: jax.Array, d: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(A [B, T, K], D [B, T, C]) with example i's kernel gradient A_iᵀ D_i."""
    if layer.kind == "conv":
        b = d.shape[0]
        return a if layer.patched else _patches(a, layer), d.reshape(b, -1, d.shape[-1])
    return a, d


def _shifted(layer: _Layer, a: jax.Array) -> bool:
    """Whether a conv's kernel products run over shifted input views (see above)."""
    return layer.kind == "conv" and not layer.patched and a.shape[-1] >= _SHIFTED_MIN_CHANNELS


def _kernel_transposed(layer: _Layer, a: jax.Array, d: jax.Array) -> bool:
    """Whether `_per_example_kernel(..., any_layout=True)` returns `[B, C, K]`, not `[B, K, C]`.

    From a patches matrix with K > C: XLA:CPU's batched product is faster with the larger of
    K, C as the output's minor axis, as in `_rows_dot` (tramer_cnn's first conv, B = 2048,
    T = 169, K = 64, C = 16: kernels, norms and weighted sum 25.4 ms as `[B, C, K]` against
    29.1 ms as `[B, K, C]`, medians of 30 interleaved calls, 2 idle cores). A transpose after
    the product gave that back (31.5 ms): the consumers read the `[B, C, K]` layout itself.
    """
    return not _shifted(layer, a) and layer.kind == "conv" and _dims(layer, a, d)[1] > d.shape[-1]


def _per_example_kernel(layer: _Layer, a: jax.Array, d: jax.Array, *,
                        any_layout: bool = False) -> jax.Array:
    """Every example's kernel gradient, `[B, K, C]`; with `any_layout`, `[B, C, K]` where
    `_kernel_transposed` says so (the norm and the weighted sum read either)."""
    if _shifted(layer, a):
        taps = [jnp.einsum("bhwc,bhwd->bcd", v, d) for v in _conv_views(a, layer)]
        return jnp.stack(taps, axis=1).reshape(d.shape[0], -1, d.shape[-1])
    if any_layout and _kernel_transposed(layer, a, d):
        af, df = _flat(layer, a, d)
        return jnp.einsum("btc,btk->bck", df, af)
    return jnp.einsum("btk,btc->bkc", *_flat(layer, a, d))


def _rows_dot(a: jax.Array, d: jax.Array) -> jax.Array:
    """Σ_r a_rᵀ d_r = aᵀd over every leading axis: `a [..., K]`, `d [..., C]` -> `[K, C]`.

    As one 2-D product over R = all leading rows, oriented so the larger of K, C is the
    output's minor axis. On XLA:CPU (2 cores) a `[K, C]` product with a small minor C ran
    2-3x slower than the `[C, K]` one at R = 8192, K = 3,969, C = 10 (80 ms against 30 ms),
    and the 3-D einsum "btk,btc->kc" with T = 1 slower still (280 ms); so when C < K it forms
    dᵀa and transposes, behind an optimization barrier so XLA does not fold the transpose
    back into the product.
    """
    a = a.reshape(-1, a.shape[-1])
    d = d.reshape(-1, d.shape[-1])
    rows = (((0,), (0,)), ((), ()))
    if d.shape[1] < a.shape[1]:
        return lax.optimization_barrier(lax.dot_general(d, a, rows)).T
    return lax.dot_general(a, d, rows)


def _kernel_sum(layer: _Layer, a: jax.Array, d: jax.Array) -> jax.Array:
    """Σ_i A_iᵀ D_i, `[K, C]` (weights already folded into `d`)."""
    if _shifted(layer, a):
        taps = [_rows_dot(v, d) for v in _conv_views(a, layer)]
        return jnp.stack(taps).reshape(-1, d.shape[-1])
    return _rows_dot(*_flat(layer, a, d))


def _materialise(t: int, k: int, c: int) -> bool:
    """Whether the norm and the clipped sum together cost fewer multiply-adds per example from
    materialised [B, K, C] kernels than from T×T Gram matrices.

    Materialised: T·K·C to form the kernels, K·C to sum them with the weights. Gram: T²·(K + C)
    for the norms, then T·K·C again for the weighted kernel sum, which the Gram path still has
    to form from the factors. So materialise unless K·C > T²·(K + C), i.e. few positions and
    a large kernel. Counting the norms alone (the rule before) sent tramer_cnn's second conv
    (T = 25, K = 256, C = 32) to the Gram path, where its norms and sum took 235 + 145 ms
    against 283 + 8 ms materialised (batch 2048, 2 CPU cores at load 8, each piece jitted).
    """
    return k * c <= t * t * (k + c)


def _tape(model: nn.Module, params: PyTree, x: jax.Array, y: jax.Array, loss: BatchLoss):
    """Forward + one backward pass: per-layer (inputs, output grads), losses, logits, layers."""
    layers: dict = {}
    tape = _make_tape(layers, model_input=x)

    def run(perturbations):
        with nn.intercept_methods(tape):
            logits, state = model.apply(
                {**params, _PERTURB: perturbations}, x, mutable=[_INPUTS]
            )
        losses = loss(logits, y)
        # Examples are independent (no BatchNorm), so ∂Σℓ/∂y_i = ∂ℓ_i/∂y_i.
        return jnp.sum(losses), (state[_INPUTS], losses, logits)

    def zeros():
        with nn.intercept_methods(_make_tape({})):
            _, state = model.apply(params, x, mutable=[_PERTURB])
        return state[_PERTURB]

    perturb = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(zeros))
    # Pooling gradients through `max_pool`'s custom VJP: same values, no select_and_scatter.
    out_grads, (inputs, losses, logits) = jax.grad(fast_max_pool_grads(run), has_aux=True)(
        perturb
    )
    _check_coverage(params, layers)
    factors = {
        path: _layer_factors(layer, _get(inputs, path)["x"][0], _get(out_grads, path)["y"])
        for path, layer in layers.items()
    }
    return layers, factors, losses, logits


def _check_coverage(params: PyTree, layers: dict) -> None:
    if set(params) != {"params"}:
        raise ValueError(f"only 'params' variables are supported, got collections {set(params)}.")
    covered = {path + (leaf,) for path in layers for leaf in ("kernel", "bias")}
    missing = [k for k in traverse_util.flatten_dict(params["params"]) if k not in covered]
    if missing:
        names = ", ".join("/".join(k) for k in missing)
        raise ValueError(
            f"parameters outside Dense/Conv layers ({names}) have no per-example formula "
            "here; use ecos_jax.per_sample (vmap) for this model."
        )


def _per_layer_sq_norms(layer: _Layer, a: jax.Array, d: jax.Array):
    """Squared per-example gradient norm of one layer [B], and the materialised kernel or None
    (`[B, K, C]`, or `[B, C, K]` where `_kernel_transposed`)."""
    t, k, c = _dims(layer, a, d)
    b = d.shape[0]
    kernel = None
    if t == 1:  # dense on one position: ‖a_i δ_iᵀ‖² = ‖a_i‖²‖δ_i‖², nothing materialised
        sq = jnp.sum(a.reshape(b, -1) ** 2, -1) * jnp.sum(d.reshape(b, -1) ** 2, -1)
    elif _materialise(t, k, c):
        kernel = _per_example_kernel(layer, a, d, any_layout=True)
        sq = jnp.sum(kernel**2, axis=(1, 2))
    else:  # ghost norm: Σ_{t,s} (a_t·a_s)(δ_t·δ_s)
        af, df = _flat(layer, a, d)
        sq = jnp.sum(jnp.einsum("btk,bsk->bts", af, af) * jnp.einsum("btc,bsc->bts", df, df),
                     axis=(1, 2))
    if layer.has_bias:
        sq = sq + jnp.sum(jnp.sum(d.reshape(b, -1, d.shape[-1]), axis=1) ** 2, -1)
    return sq, kernel


def _weighted_sum(layer: _Layer, a, d, kernel, w: jax.Array, kernel_shape) -> dict:
    """Σ_i w_i ∇ℓ_i for one layer's kernel (and bias); `kernel` as `_per_layer_sq_norms`
    returns it."""
    if kernel is not None:
        spec = "b,bck->kc" if _kernel_transposed(layer, a, d) else "b,bkc->kc"
        k_sum = jnp.einsum(spec, w, kernel)
    else:
        k_sum = _kernel_sum(layer, a, d * w.reshape(-1, *[1] * (d.ndim - 1)))
    out = {"kernel": k_sum.reshape(kernel_shape)}
    if layer.has_bias:
        out["bias"] = jnp.einsum("b,bc->c", w, jnp.sum(d.reshape(d.shape[0], -1, d.shape[-1]), 1))
    return out


def _assemble(params: PyTree, per_layer: dict) -> PyTree:
    flat = {}
    for path, leaves in per_layer.items():
        for name, value in leaves.items():
            flat[path + (name,)] = value
    tree = traverse_util.unflatten_dict(flat)
    # Same structure and leaf order as params (dicts from flax are plain dicts here).
    return {"params": jax.tree.map(lambda p, g: g.astype(p.dtype), params["params"], tree)}


def _clipped_chunk(model, loss, l2_norm_clip, clipping, params, x, y, mask):
    layers, factors, losses, logits = _tape(model, params, x, y, loss)
    sq, kernels = {}, {}
    for path, layer in layers.items():
        sq[path], kernels[path] = _per_layer_sq_norms(layer, *factors[path])
    layer_norms = jnp.sqrt(jnp.stack([sq[p] for p in layers], axis=1))  # [B, L]
    norms = jnp.sqrt(jnp.sum(layer_norms**2, axis=1))
    # Rows that count: included and with a finite gradient. Every other row (padding, or an
    # example whose gradient has a NaN/inf) gets weight exactly 0 by `where`, and where its
    # factors hold a NaN/inf (0 · NaN = NaN) it is selected away from them too (below).
    finite = jnp.isfinite(norms)
    keep = finite & (mask != 0)
    m = mask.astype(jnp.float32)
    if clipping == "per_layer":
        # Each of the L layers gets C/sqrt(L), so the whole update still has sensitivity C.
        clip = l2_norm_clip / jnp.sqrt(len(layers))
        w = m[:, None] * jnp.minimum(1.0, clip / jnp.maximum(layer_norms, 1e-12))
        w = jnp.where(keep[:, None], w, 0.0)
        weights = {p: w[:, i] for i, p in enumerate(layers)}
    else:
        w = m * jnp.minimum(1.0, l2_norm_clip / jnp.maximum(norms, 1e-12))
        w = jnp.where(keep, w, 0.0)
        weights = {p: w for p in layers}
    def weighted_sums(factors, kernels, weights, keep, zero_rows: bool) -> dict:
        sums = {}
        for path, layer in layers.items():
            a, d, kernel = *factors[path], kernels[path]
            if zero_rows:
                a, d = _zero_rows(keep, a), _zero_rows(keep, d)
                kernel = None if kernel is None else _zero_rows(keep, kernel)
            sums[path] = _weighted_sum(layer, a, d, kernel, weights[path],
                                       _get(params["params"], path)["kernel"].shape)
        return sums

    def exact_sums() -> dict:
        # Row chunks, so the zeroed copies of the factors are one chunk's, not the batch's
        # (whole-batch copies doubled the step's temporary memory, even unused).
        rows = (factors, kernels, weights, keep)
        return _sum_row_chunks(lambda *r: weighted_sums(*r, zero_rows=True), _EXACT_ROWS, *rows)

    # The fast sum folds the weights (0 on rows that do not count) into the products and
    # leaves the factors as they are: selecting rows away from a [B, 3969] input cost more
    # than the product itself (linear at B = 8192 on XLA:CPU: 309 ms with the row `where`,
    # 149 ms without). A row that does not count then adds 0 · v, which is an exact 0 unless
    # v is a NaN or inf; any such product makes the total non-finite (NaN and inf propagate
    # through every sum), so a finite total equals the exact one, and a non-finite total is
    # recomputed with the rows selected away. A step only pays for the second pass when its
    # batch holds a non-finite value in a row that does not count.
    fast = weighted_sums(factors, kernels, weights, keep, zero_rows=False)
    ok = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(fast)]))
    sums = lax.cond(ok, lambda: fast, exact_sums)
    aux = {"norms": norms, "losses": losses, "logits": logits, "nonfinite": ~finite}
    return _assemble(params, sums), aux


# Rows per chunk of the exact (rows selected away) recomputation of a non-finite sum.
_EXACT_ROWS = 256


def _sum_row_chunks(fn: Callable, rows: int, *trees):
    """Σ_chunks fn(*chunk): `trees` are pytrees of `[B, ...]` arrays, cut into chunks of `rows`
    rows (a `fori_loop` of dynamic slices, then the remainder), so `fn`'s temporaries are one
    chunk's. `fn` returns a pytree of arrays without a batch axis."""
    leaves, treedef = jax.tree.flatten(trees)
    n = leaves[0].shape[0]
    # Carried as [B, -1] (a free reshape): a [B, 1, K] dense input could otherwise be laid
    # out differently inside the loop than outside, and copied whole to change layouts.
    shapes = [v.shape[1:] for v in leaves]
    leaves = [v.reshape(n, -1) for v in leaves]

    def call(chunk):
        chunk = [c.reshape(c.shape[0], *shape) for c, shape in zip(chunk, shapes)]
        return fn(*jax.tree.unflatten(treedef, chunk))

    if n <= rows:
        return call(leaves)
    k = n // rows

    def body(i, acc):
        chunk = [lax.dynamic_slice_in_dim(v, i * rows, rows) for v in leaves]
        return jax.tree.map(jnp.add, acc, call(chunk))

    init = jax.tree.map(lambda sd: jnp.zeros(sd.shape, sd.dtype),
                        jax.eval_shape(call, [v[:rows] for v in leaves]))
    total = lax.fori_loop(0, k, body, init)
    if k * rows < n:
        total = jax.tree.map(jnp.add, total, call([v[k * rows:] for v in leaves]))
    return total


def _zero_rows(keep: jax.Array, x: jax.Array) -> jax.Array:
    """`x` `[B, ...]` with the rows where `keep` is False replaced by exact zeros."""
    return jnp.where(keep.reshape(-1, *[1] * (x.ndim - 1)), x, jnp.zeros((), x.dtype))


def _scan_chunks(fn, microbatch_size: int | None, *batched):
    """Sums `fn`'s first output over chunks of the batch; concatenates the aux.

    ⌊n / size⌋ full chunks run in one `lax.scan`; the remainder n mod size runs as one more,
    smaller chunk (its own compiled shape) rather than padded up to a full chunk, so a batch of
    any length costs its own rows (a Poisson prefix of 8,240 rows in chunks of 2,048 is not
    computed as 10,240).
    """
    n = batched[0].shape[0]
    if microbatch_size is None or microbatch_size >= n:
        return fn(*batched)
    if microbatch_size < 1:
        raise ValueError(f"microbatch_size must be >= 1, got {microbatch_size}.")
    full = (n // microbatch_size) * microbatch_size
    chunks = [a[:full].reshape(-1, microbatch_size, *a.shape[1:]) for a in batched]
    init = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                        jax.eval_shape(fn, *[c[0] for c in chunks])[0])

    def body(acc, chunk):
        total, aux = fn(*chunk)
        return jax.tree.map(jnp.add, acc, total), aux

    total, aux = lax.scan(body, init, chunks)
    aux = jax.tree.map(lambda o: o.reshape(-1, *o.shape[2:]), aux)
    if full < n:
        rest_total, rest_aux = fn(*[a[full:] for a in batched])
        total = jax.tree.map(jnp.add, total, rest_total)
        aux = jax.tree.map(lambda u, v: jnp.concatenate([u, v]), aux, rest_aux)
    return total, aux


@partial(jax.jit, static_argnames=("model", "loss", "clipping", "microbatch_size"))
def clipped_grad_sum(
    model: nn.Module,
    params: PyTree,
    x: jax.Array,
    y: jax.Array,
    *,
    l2_norm_clip: float | jax.Array,
    mask: jax.Array | None = None,
    clipping: str = "flat",
    loss: BatchLoss = softmax_xent,
    microbatch_size: int | None = None,
) -> tuple[PyTree, dict]:
    """Σ_i m_i · clip(∇ℓ_i) without materialising every per-example gradient.

    Args:
      model: flax model whose parameters all sit in Dense / 2-D Conv layers.
      params: `{"params": ...}` variables of `model`.
      x: `[B, ...]` inputs; y: `[B]` targets for `loss`.
      l2_norm_clip: C > 0. Flat: each example's whole gradient is scaled to norm ≤ C.
        Per-layer: each of the L layers is scaled to norm ≤ C/√L (total still ≤ C).
      mask: `[B]` bool/0-1 inclusion mask (padding rows get 0; they add exact zeros whatever
        their values); None includes all.
      clipping: "flat" or "per_layer" (as in `ecos_jax.privacy.clipping`).
      loss: per-example loss `(logits [B, K], y [B]) -> [B]`.
      microbatch_size: examples per chunk (bounded memory), None for the whole batch.

    Returns:
      `(grad_sum, aux)`: a pytree like `params`, and `aux` with `norms` [B] (un-clipped
      ‖∇ℓ_i‖₂), `losses` [B], `logits` [B, K] and `nonfinite` [B] bool (gradient with a NaN
      or inf: that row, like a padding row, adds exact zeros to the sum).
    """
    if clipping not in ("flat", "per_layer"):
        raise ValueError(f"clipping must be 'flat' or 'per_layer', got {clipping!r}.")
    if mask is None:
        mask = jnp.ones(x.shape[0], jnp.float32)
    fn = partial(_clipped_chunk, model, loss, l2_norm_clip, clipping, params)
    return _scan_chunks(fn, microbatch_size, x, y, mask)


@partial(jax.jit, static_argnames=("model", "loss"))
def grad_sum(
    model: nn.Module, params: PyTree, x: jax.Array, y: jax.Array, *,
    mask: jax.Array | None = None, loss: BatchLoss = softmax_xent,
) -> PyTree:
    """The non-private Σ_i m_i ∇ℓ_i by the same formulation (batched matmuls, no clipping).

    The fair non-private baseline for `clipped_grad_sum`: same forward, same backward to
    layer outputs, one [K, T·B] x [T·B, C] product per layer instead of per-example work.
    """
    layers, factors, _, _ = _tape(model, params, x, y, loss)
    w = jnp.ones(x.shape[0], jnp.float32) if mask is None else mask.astype(jnp.float32)
    sums = {
        path: _weighted_sum(
            layer, *factors[path], None, w, _get(params["params"], path)["kernel"].shape
        )
        for path, layer in layers.items()
    }
    return _assemble(params, sums)


@partial(jax.jit, static_argnames=("model", "loss"))
def per_example_layer_grads(
    model: nn.Module, params: PyTree, x: jax.Array, y: jax.Array, *,
    loss: BatchLoss = softmax_xent,
) -> PyTree:
    """Every ∇ℓ_i materialised: a pytree like `params` with a leading `[B]` axis."""
    layers, factors, _, _ = _tape(model, params, x, y, loss)
    out = {}
    for path, layer in layers.items():
        a, d = factors[path]
        shape = _get(params["params"], path)["kernel"].shape
        leaves = {"kernel": _per_example_kernel(layer, a, d).reshape(x.shape[0], *shape)}
        if layer.has_bias:
            leaves["bias"] = jnp.sum(d.reshape(d.shape[0], -1, d.shape[-1]), axis=1)
        out[path] = leaves
    flat = {p + (n,): v for p, leaves in out.items() for n, v in leaves.items()}
    return {"params": traverse_util.unflatten_dict(flat)}


@partial(jax.jit, static_argnames=("model", "loss"))
def per_example_layer_grad_norms(
    model: nn.Module, params: PyTree, x: jax.Array, y: jax.Array, *,
    loss: BatchLoss = softmax_xent,
) -> jax.Array:
    """‖∇ℓ_i‖₂ for each example, `[B]`, by ghost norms where they are cheaper."""
    layers, factors, _, _ = _tape(model, params, x, y, loss)
    sq = sum(_per_layer_sq_norms(layer, *factors[p])[0] for p, layer in layers.items())
    return jnp.sqrt(sq)
