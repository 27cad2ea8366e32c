"""Flax models used across ecos_jax: a small CNN, a wider CNN, a small ResNet, an MLP, Tramèr &
Boneh's DP CNN and a linear classifier.

Every model maps images `x: [B, H, W, C] float32` to logits `[B, num_classes]`, and with
`features=True` to its penultimate embedding `[B, d]` (the cloud's public feature space, the
CoOpt target space). None uses BatchNorm: per-sample gradients and DP-SGD need each example's
output to depend on that example only, so the ResNet normalises with GroupNorm.

    >>> model = get_model("cnn", num_classes=10)
    >>> params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    >>> model.apply(params, jnp.zeros((4, 28, 28, 1))).shape
    (4, 10)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class CNN(nn.Module):
    """Two downsampling conv blocks and a dense head (the 'small CNN' of the DP-SGD literature).

    Each block halves the resolution. By default with a stride-2 3x3 conv ('stride'): on XLA's
    CPU backend the gradient of max-pooling (select-and-scatter) costs ~15x a strided conv's
    (measured: 0.24 s vs 0.017 s per batch-128 gradient), and DP-SGD, VoG and PLIS all
    differentiate through it. 'max' (conv + 2x2 max-pool) and 'avg' remain available.

    Attributes:
      num_classes: logits dimension.
      channels: output channels of the two conv blocks.
      embed_dim: width of the penultimate dense layer (the feature dimension).
      pooling: 'stride' | 'max' | 'avg'.
    """

    num_classes: int = 10
    channels: Sequence[int] = (16, 32)
    embed_dim: int = 64
    pooling: str = "stride"
    activation: Callable[[jax.Array], jax.Array] = nn.relu

    @nn.compact
    def __call__(self, x: jax.Array, *, features: bool = False) -> jax.Array:
        if self.pooling not in ("stride", "max", "avg"):
            raise ValueError(f"pooling must be 'stride', 'max' or 'avg', got {self.pooling!r}.")
        for c in self.channels:
            if self.pooling == "stride":
                x = self.activation(nn.Conv(c, (3, 3), strides=2, padding="SAME")(x))
                continue
            x = self.activation(nn.Conv(c, (3, 3), padding="SAME")(x))
            pool = nn.max_pool if self.pooling == "max" else nn.avg_pool
            x = pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        x = self.activation(nn.Dense(self.embed_dim)(x))
        if features:
            return x
        return nn.Dense(self.num_classes)(x)


def max_pool_2x2_stride1(x: jax.Array) -> jax.Array:
    """2 × 2 max-pooling with stride 1, VALID: `[B, H, W, C] -> [B, H-1, W-1, C]`.

    The same values as `nn.max_pool(x, (2, 2), strides=(1, 1))`, as the maximum of four shifted
    views: its gradient is element-wise selects, which XLA:CPU fuses, instead of the
    select-and-scatter of an overlapping `reduce_window` (one DP-SGD step of `tramer_cnn` at
    batch 2048 took 2.0 s instead of 3.4 s on the 2-core CPU at load ~12). On exact ties the gradient is split between the
    tied inputs rather than sent to the first one (a measure-zero event for tanh activations).
    """
    top = jnp.maximum(x[:, :-1, :-1], x[:, :-1, 1:])
    bottom = jnp.maximum(x[:, 1:, :-1], x[:, 1:, 1:])
    return jnp.maximum(top, bottom)


class TramerCNN(nn.Module):
    """The end-to-end DP CNN of Tramèr & Boneh (ICLR 2021) for 28 × 28 greyscale images.

    conv 16 (8 × 8, stride 2, pad 2) → tanh → max-pool 2 × 2 stride 1 → conv 32 (4 × 4,
    stride 2) → tanh → max-pool 2 × 2 stride 1 → dense 32 → tanh → dense `num_classes`
    (26,010 parameters for 10 classes). tanh rather than ReLU: bounded activations keep the
    clipped gradients informative under DP-SGD (Papernot et al., AAAI 2021). The overlapping
    (stride-1) pooling is kept as published, computed by `max_pool_2x2_stride1`.
    """

    num_classes: int = 10
    channels: Sequence[int] = (16, 32)
    hidden: int = 32

    @nn.compact
    def __call__(self, x: jax.Array, *, features: bool = False) -> jax.Array:
        x = jnp.tanh(nn.Conv(self.channels[0], (8, 8), strides=2, padding=((2, 2), (2, 2)))(x))
        x = max_pool_2x2_stride1(x)
        x = jnp.tanh(nn.Conv(self.channels[1], (4, 4), strides=2, padding="VALID")(x))
        x = max_pool_2x2_stride1(x)
        x = x.reshape(x.shape[0], -1)
        x = jnp.tanh(nn.Dense(self.hidden)(x))
        if features:
            return x
        return nn.Dense(self.num_classes)(x)


class ScatterCNN(nn.Module):
    """Tramèr & Boneh's "ScatterNet + CNN" for 28 × 28 greyscale images: a small tanh CNN on
    the scattering features `[B, 7, 7, 81]` (normalised before, by GroupNorm or DP statistics:
    `ecos_jax.privacy.normalization`), after their code's MNIST-family model for scattering
    inputs: conv `channels[0]` (3 × 3, stride 2, pad 1; 7 × 7 -> 4 × 4) → tanh → conv
    `channels[1]` (3 × 3, stride 1, pad 1) → tanh → dense `hidden` → tanh → dense
    `num_classes` (33,066 parameters with the defaults). Only Dense and Conv layers, so DP-SGD's
    fast "layers" per-example path covers it exactly (tested against vmap(grad))."""

    num_classes: int = 10
    channels: Sequence[int] = (16, 32)
    hidden: int = 32

    @nn.compact
    def __call__(self, x: jax.Array, *, features: bool = False) -> jax.Array:
        pad = ((1, 1), (1, 1))
        x = jnp.tanh(nn.Conv(self.channels[0], (3, 3), strides=2, padding=pad)(x))
        x = jnp.tanh(nn.Conv(self.channels[1], (3, 3), strides=1, padding=pad)(x))
        x = x.reshape(x.shape[0], -1)
        x = jnp.tanh(nn.Dense(self.hidden)(x))
        if features:
            return x
        return nn.Dense(self.num_classes)(x)


class Linear(nn.Module):
    """A linear classifier on flattened inputs (logistic regression; e.g. on ScatterNet
    features). `features=True` returns the flattened input."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, *, features: bool = False) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        if features:
            return x
        return nn.Dense(self.num_classes)(x)


class MLP(nn.Module):
    """Fully connected network on flattened pixels."""

    num_classes: int = 10
    hidden: Sequence[int] = (256, 128)
    activation: Callable[[jax.Array], jax.Array] = nn.relu

    @nn.compact
    def __call__(self, x: jax.Array, *, features: bool = False) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        for h in self.hidden:
            x = self.activation(nn.Dense(h)(x))
        if features:
            return x
        return nn.Dense(self.num_classes)(x)


class ResidualBlock(nn.Module):
    channels: int
    stride: int = 1
    groups: int = 8

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.Conv(self.channels, (3, 3), strides=self.stride, padding="SAME", use_bias=False)(x)
        y = nn.relu(nn.GroupNorm(num_groups=min(self.groups, self.channels))(y))
        y = nn.Conv(self.channels, (3, 3), padding="SAME", use_bias=False)(y)
        y = nn.GroupNorm(num_groups=min(self.groups, self.channels))(y)
        if x.shape[-1] != self.channels or self.stride != 1:
            x = nn.Conv(self.channels, (1, 1), strides=self.stride, use_bias=False)(x)
        return nn.relu(x + y)


class ResNet(nn.Module):
    """A small ResNet (one block per stage) with GroupNorm, for 28x28-ish images."""

    num_classes: int = 10
    stage_channels: Sequence[int] = (16, 32, 64)

    @nn.compact
    def __call__(self, x: jax.Array, *, features: bool = False) -> jax.Array:
        x = nn.Conv(self.stage_channels[0], (3, 3), padding="SAME", use_bias=False)(x)
        x = nn.relu(nn.GroupNorm(num_groups=min(8, self.stage_channels[0]))(x))
        for i, c in enumerate(self.stage_channels):
            x = ResidualBlock(c, stride=1 if i == 0 else 2)(x)
        x = jnp.mean(x, axis=(1, 2))
        if features:
            return x
        return nn.Dense(self.num_classes)(x)


def _wide_cnn(num_classes: int, **kw) -> CNN:
    kw.setdefault("channels", (32, 64))
    kw.setdefault("embed_dim", 128)
    return CNN(num_classes=num_classes, **kw)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "cnn": lambda num_classes, **kw: CNN(num_classes=num_classes, **kw),
    "wide_cnn": _wide_cnn,
    "resnet": lambda num_classes, **kw: ResNet(num_classes=num_classes, **kw),
    "mlp": lambda num_classes, **kw: MLP(num_classes=num_classes, **kw),
    "tramer_cnn": lambda num_classes, **kw: TramerCNN(num_classes=num_classes, **kw),
    "linear": lambda num_classes, **kw: Linear(num_classes=num_classes, **kw),
    "scatter_cnn": lambda num_classes, **kw: ScatterCNN(num_classes=num_classes, **kw),
}


def get_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Builds a model by name: one of `MODELS` ('cnn', 'wide_cnn', 'resnet', 'mlp',
    'tramer_cnn', 'linear', 'scatter_cnn')."""
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}; choose one of {sorted(MODELS)}.")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    return MODELS[name](num_classes, **kwargs)


def init_params(model: nn.Module, key: jax.Array, input_shape: Sequence[int]):
    """Initialises `model` for inputs of shape `[1, *input_shape]` (input_shape = (H, W, C))."""
    return model.init(key, jnp.zeros((1, *input_shape), jnp.float32))
