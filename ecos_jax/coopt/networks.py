"""A backbone with a head: what CoOpt, distillation and SimCLR train (probes use the backbone).

The core models end their embedding in a ReLU, so their features are non-negative and cannot
point at a zero-mean (aligned) target; like SimCLR's projector, a small head maps the
backbone's embedding `[B, d]` to the target space `[B, out_dim]`. Linear probes are always
on the backbone features, so every method is judged on the same representation.

    >>> net = HeadNet(backbone=get_model("cnn", 10), out_dim=32)
    >>> params = net.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    >>> net.apply(params, x).shape, net.apply(params, x, features=True).shape
    ((B, 32), (B, 64))
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class BatchStatNorm(nn.Module):
    """Batch normalisation on the batch's own statistics: `[B, d] -> [B, d]`, no running averages.

    Each feature is standardised by its mean and variance over the `B` rows of this call, then
    scaled and shifted by learnt `scale, bias: [d]`. BYOL's projector and predictor need it
    (Grill et al., 2020, Sec. 3.3; without it BYOL collapses): the statistics couple the rows,
    so a constant output is no longer a fixed point. Stateless, so it adds no mutable
    collection (flax's `nn.BatchNorm` keeps running averages in a `batch_stats` collection that
    every training step would have to thread); it is only used in heads, which probes and
    predictions never evaluate.
    """

    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        d = h.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (d,))
        bias = self.param("bias", nn.initializers.zeros, (d,))
        mean = jnp.mean(h, axis=0)
        var = jnp.var(h, axis=0)
        return (h - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias


class HeadNet(nn.Module):
    """`backbone` (any core model) followed by a linear (hidden=0) or one-hidden-layer MLP head.

    `__call__(x)` gives the head output `[B, out_dim]`; `__call__(x, features=True)` the
    backbone embedding `[B, d]`, so `ecos_jax.training.predict(..., features=True)` embeds.
    batch_norm: a `BatchStatNorm` before the hidden ReLU (BYOL's projector); off for SimCLR
    and regression heads, which were measured without it.
    """

    backbone: nn.Module
    out_dim: int
    hidden: int = 0
    batch_norm: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, *, features: bool = False) -> jax.Array:
        f = self.backbone(x, features=True)
        if features:
            return f
        if self.hidden:
            f = nn.Dense(self.hidden, name="head_hidden")(f)
            if self.batch_norm:
                f = BatchStatNorm(name="head_norm")(f)
            f = nn.relu(f)
        return nn.Dense(self.out_dim, name="head_out")(f)


def backbone_params(params: dict) -> dict:
    """The backbone's own variables out of a `HeadNet`'s, usable with `backbone.apply`."""
    return {"params": params["params"]["backbone"]}
