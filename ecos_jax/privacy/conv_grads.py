"""2-D convolution with a fast input gradient on XLA:CPU: the transposed conv as sub-pixel convs.

A conv's input gradient is a transposed convolution. XLA:CPU runs it as one convolution with
a dilated input ("base dilation": s - 1 zeros between the output gradient's pixels, for stride
s), most of whose multiply-adds hit those zeros, and on a slower path than a plain stride-1
convolution. The same gradient splits by the parity of the input position (Shi et al. 2016's
sub-pixel convolution, read backwards): input row u = s·m + r, r ∈ [0, s), only receives the
kernel rows k ≡ r (mod s), so

    dx_pad[s·m + r] = Σ_j d[m - j] · W[s·j + r]ᵀ          (per axis; d: output gradient)

is, for each of the s_h·s_w residues, a *stride-1* convolution of d with the flipped sub-kernel
W[r::s] (input and output channels swapped), and the s_h·s_w results interleave into the
padded input's gradient, from which the padding is cut. No multiply-add touches an inserted
zero. Measured at batch 2048 on 2 CPU cores (idle, jitted, medians of 9): 14x14x16 -> 32, 3x3
stride 2 SAME (the `cnn` model's second conv): XLA 73.7 ms, sub-pixel 31.0 ms; 13x13x16 -> 32,
4x4 stride 2 VALID (`tramer_cnn`'s): 71.9 ms against 20.1 ms; 14x14x16 -> 32, 3x3 stride 1
SAME: 94.3 ms against 61.2 ms (the one flipped-kernel convolution).

`conv2d` is `lax.conv_general_dilated` (NHWC, HWIO) with that input gradient as its custom
VJP (and, where each kernel side is a multiple of its stride, its forward pass as the sum of
s_h·s_w stride-1 convs of the input's polyphase components, the same decomposition forwards:
`tramer_cnn`'s 4x4 stride-2 conv 53.5 -> 19.9 ms); the kernel's gradient is XLA's own
(unused, and so compiled away, where only the input gradient is asked for, as in
`layer_grads`' tape). Values are the same to float rounding
(tested against `jax.vjp` of the plain convolution). Like `pooling.fast_max_pool_grads` it is
for XLA:CPU: on other backends `conv2d` differentiates through XLA's convolution untouched.

    >>> y = conv2d(x, kernel, strides=(2, 2), padding=((0, 1), (0, 1)))
    >>> dx = jax.grad(lambda x: jnp.sum(conv2d(x, kernel, (2, 2), ((0, 1), (0, 1)))))(x)
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

_DN = ("NHWC", "HWIO", "NHWC")

Pads = tuple[tuple[int, int], tuple[int, int]]


def _conv(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: Pads,
          precision) -> jax.Array:
    return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_DN,
                                    precision=precision)


def _polyphase(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: Pads,
               precision) -> jax.Array:
    """The strided conv as the sum of s_h·s_w stride-1 VALID convs of the padded input's
    polyphase components x_r[m] = x_pad[s·m + r] with the sub-kernels W[r::s]: y[o] =
    Σ_r Σ_j x_r[o + j] W[s·j + r]. Used where every kernel side is a multiple of its stride
    (equal sub-kernels, `_polyphase_forward`)."""
    (sh, sw), ((plh, phh), (plw, phw)) = strides, padding
    b, h, w, c = x.shape
    kh, kw = kernel.shape[:2]
    ho, wo = (h + plh + phh - kh) // sh + 1, (w + plw + phw - kw) // sw + 1
    xp = jnp.pad(x, ((0, 0), (plh, phh), (plw, phw), (0, 0)))
    y = None
    for rh in range(sh):
        for rw in range(sw):
            sub = kernel[rh::sh, rw::sw]
            jh, jw = sub.shape[:2]
            xr = lax.slice(xp, (0, rh, rw, 0),
                           (b, rh + (ho + jh - 2) * sh + 1, rw + (wo + jw - 2) * sw + 1, c),
                           (1, sh, sw, 1))
            t = _conv(xr, sub, (1, 1), ((0, 0), (0, 0)), precision)
            y = t if y is None else y + t
    return y


def _polyphase_forward(kernel_shape: tuple[int, ...], strides: tuple[int, int]) -> bool:
    """Whether the forward conv runs as `_polyphase`: strided, each kernel side a multiple of
    its stride. Measured at batch 2048 on 2 CPU cores: 13x13x16 -> 32, 4x4 stride 2 VALID
    (`tramer_cnn`'s second conv), XLA 53.5 ms, polyphase 19.9 ms; for 3x3 stride 2 (unequal
    sub-kernels 2x2, 2x1, 1x2, 1x1) XLA's own was faster, 17.0 ms against 57.9 ms."""
    return (any(s > 1 for s in strides)
            and all(s == 1 or k % s == 0 for k, s in zip(kernel_shape[:2], strides)))


def _forward(x, kernel, strides, padding, precision):
    if _polyphase_forward(kernel.shape, strides):
        return _polyphase(x, kernel, strides, padding, precision)
    return _conv(x, kernel, strides, padding, precision)


def conv_input_grad(d: jax.Array, kernel: jax.Array, in_hw: tuple[int, int],
                    strides: tuple[int, int], padding: Pads, precision=None) -> jax.Array:
    """∂⟨d, conv(x, kernel)⟩/∂x by sub-pixel stride-1 convolutions (see the module docstring).

    Args:
      d: output gradient `[B, Ho, Wo, Cout]` of `conv(x, kernel, strides, padding)`.
      kernel: `[kh, kw, Cin, Cout]` (HWIO).
      in_hw: (H, W) of x.
      strides: (sh, sw) ≥ 1.
      padding: ((lo, hi), (lo, hi)) per spatial axis, each ≥ 0.
      precision: passed to every convolution.

    Returns:
      `[B, H, W, Cin]`, the input gradient.
    """
    if any(s < 1 for s in strides) or any(p < 0 for pair in padding for p in pair):
        raise ValueError(f"conv_input_grad needs strides >= 1 and padding >= 0, got strides "
                         f"{strides}, padding {padding} (see `eligible`).")
    kh, kw, cin, _ = kernel.shape
    (sh, sw), ((plh, phh), (plw, phw)) = strides, padding
    b, ho, wo, _ = d.shape
    # Padded input length U; residue r of axis length M = ceil(U / s) covers rows s·m + r.
    mh, mw = -(-(in_hw[0] + plh + phh) // sh), -(-(in_hw[1] + plw + phw) // sw)
    rows = []
    for rh in range(sh):
        cols = []
        for rw in range(sw):
            sub = kernel[rh::sh, rw::sw]                    # [Jh, Jw, Cin, Cout]
            jh, jw = sub.shape[:2]
            if jh == 0 or jw == 0:                          # kernel smaller than the stride
                cols.append(jnp.zeros((b, mh, mw, cin), d.dtype))
                continue
            flipped = jnp.flip(sub, (0, 1)).transpose(0, 1, 3, 2)   # [Jh, Jw, Cout, Cin]
            # out[m] = Σ_j d[m - j] sub[j], m ∈ [0, M): d padded by J - 1 before, M - Ho after.
            dp = lax.pad(d, jnp.zeros((), d.dtype),
                         ((0, 0, 0), (jh - 1, mh - ho, 0), (jw - 1, mw - wo, 0), (0, 0, 0)))
            cols.append(_conv(dp, flipped, (1, 1), ((0, 0), (0, 0)), precision))
        rows.append(jnp.stack(cols, axis=3))               # [B, Mh, Mw, sw, Cin]
    dx = jnp.stack(rows, axis=2).reshape(b, mh * sh, mw * sw, cin)   # rows s·m + r interleaved
    return dx[:, plh:plh + in_hw[0], plw:plw + in_hw[1]]


def eligible(x_shape: tuple[int, ...], kernel_shape: tuple[int, ...], padding: Pads) -> bool:
    """Whether `conv2d`'s sub-pixel gradient applies: 2-D NHWC input, non-negative padding, and
    the CPU backend (elsewhere XLA's own transposed convolution is used)."""
    return (len(x_shape) == 4 and len(kernel_shape) == 4
            and all(p >= 0 for pair in padding for p in pair)
            and jax.default_backend() == "cpu")


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv2d(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: Pads,
           precision=None) -> jax.Array:
    """`lax.conv_general_dilated(x, kernel, strides, padding)` in NHWC / HWIO, whose input
    gradient is `conv_input_grad` (sub-pixel stride-1 convolutions).

    Args:
      x: `[B, H, W, Cin]`; kernel: `[kh, kw, Cin, Cout]`.
      strides: (sh, sw); padding: ((lo, hi), (lo, hi)), non-negative (explicit pads, as
        `lax.padtype_to_pads` gives for "SAME" / "VALID").
      precision: as for `lax.conv_general_dilated`.

    Returns:
      `[B, Ho, Wo, Cout]`.
    """
    return _forward(x, kernel, strides, padding, precision)


def _conv2d_fwd(x, kernel, strides, padding, precision):
    return _forward(x, kernel, strides, padding, precision), (x, kernel)


def _conv2d_bwd(strides, padding, precision, res, d):
    x, kernel = res
    dx = conv_input_grad(d, kernel, x.shape[1:3], strides, padding, precision)
    # The kernel's gradient as XLA computes it; compiled away where nobody reads it.
    _, kernel_vjp = jax.vjp(lambda k: _conv(x, k, strides, padding, precision), kernel)
    (dk,) = kernel_vjp(d)
    return dx.astype(x.dtype), dk


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)
