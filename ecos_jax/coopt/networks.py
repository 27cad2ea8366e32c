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


class HeadNet(nn.Module):
    """`backbone` (any core model) followed by a linear (hidden=0) or one-hidden-layer MLP head.

    `__call__(x)` gives the head output `[B, out_dim]`; `__call__(x, features=True)` the
    backbone embedding `[B, d]`, so `ecos_jax.training.predict(..., features=True)` embeds.
    """

    backbone: nn.Module
    out_dim: int
    hidden: int = 0

    @nn.compact
    def __call__(self, x: jax.Array, *, features: bool = False) -> jax.Array:
        f = self.backbone(x, features=True)
        if features:
            return f
        if self.hidden:
            f = nn.relu(nn.Dense(self.hidden, name="head_hidden")(f))
        return nn.Dense(self.out_dim, name="head_out")(f)


def backbone_params(params: dict) -> dict:
    """The backbone's own variables out of a `HeadNet`'s, usable with `backbone.apply`."""
    return {"params": params["params"]["backbone"]}
