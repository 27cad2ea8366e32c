"""SimCLR (Chen et al., 2020) and BYOL (Grill et al., 2020) in JAX: jitted image augmentations,
the NT-Xent loss, and BYOL's predictor, loss and moving-average target (at the end of the module).

The self-supervised baseline of CoOpt (docs/algorithms.md#coopt-baselines): two augmented
views of each image go through the same backbone + MLP projector (`HeadNet(hidden>0)`), and
NT-Xent pulls the two views together against the other 2B-2 views of the batch.
Augmentations are per-image and random (`vmap` over keys): an affine warp (rotation, scale,
shift), brightness / contrast jitter, Gaussian noise and an optional inversion, which suit
greyscale digits.

    >>> obj = simclr_objective(HeadNet(get_model("cnn", 10), out_dim=64, hidden=128),
    ...                        temperature=0.2, augment=Augment())
    >>> run = train_epochs(obj, params, x, None, epochs=10, batch_size=256, ...)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ecos_jax.coopt.networks import BatchStatNorm
from ecos_jax.coopt.training import Objective


@dataclasses.dataclass(frozen=True)
class Augment:
    """Random augmentation strengths (all hashable, so the augmentation is static under jit).

    max_rotate_deg: rotation uniform in ±this (degrees).
    scale: zoom factor uniform in [1 - scale, 1 + scale].
    max_shift: translation uniform in ±this (pixels).
    brightness, contrast: x -> (x - m)·c + m + b, c ∈ [1 - contrast, 1 + contrast],
      b ∈ ±brightness, m the image mean.
    noise_std: maximum std of additive Gaussian noise (per image uniform in [0, noise_std]).
    invert_prob: probability of x -> 1 - x.
    """

    max_rotate_deg: float = 20.0
    scale: float = 0.15
    max_shift: float = 3.0
    brightness: float = 0.2
    contrast: float = 0.4
    noise_std: float = 0.1
    invert_prob: float = 0.0

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if getattr(self, f.name) < 0:
                raise ValueError(f"Augment.{f.name} must be >= 0, got {getattr(self, f.name)}.")
        if self.scale >= 1 or self.contrast >= 1 or self.invert_prob > 1:
            raise ValueError("Augment.scale and .contrast must be < 1 and invert_prob <= 1.")

    def __call__(self, key: jax.Array, images: jax.Array) -> jax.Array:
        """`images: [B, H, W, C]` in [0, 1] -> one random view per image, same shape, in [0, 1]."""
        return _augment(self, key, images)

    def _one(self, key: jax.Array, image: jax.Array) -> jax.Array:
        k_rot, k_scale, k_shift, k_b, k_c, k_ns, k_n, k_inv = jax.random.split(key, 8)
        h, w, _ = image.shape
        angle = jnp.deg2rad(jax.random.uniform(k_rot, (), minval=-1, maxval=1) * self.max_rotate_deg)
        zoom = 1.0 + jax.random.uniform(k_scale, (), minval=-1, maxval=1) * self.scale
        shift = jax.random.uniform(k_shift, (2,), minval=-1, maxval=1) * self.max_shift
        # Inverse map: each output pixel samples the input at R(-θ)·(p - c)/zoom + c - shift.
        cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
        yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
        dy, dx = (yy - cy) / zoom, (xx - cx) / zoom
        cos, sin = jnp.cos(angle), jnp.sin(angle)
        src_y = cos * dy - sin * dx + cy - shift[0]
        src_x = sin * dy + cos * dx + cx - shift[1]
        # 'nearest' extends the border, so inverted digits keep a white background.
        warp = jax.vmap(
            lambda ch: jax.scipy.ndimage.map_coordinates(ch, [src_y, src_x], order=1, mode="nearest"),
            in_axes=-1, out_axes=-1)
        out = warp(image)
        mean = jnp.mean(out)
        c = 1.0 + jax.random.uniform(k_c, (), minval=-1, maxval=1) * self.contrast
        b = jax.random.uniform(k_b, (), minval=-1, maxval=1) * self.brightness
        out = (out - mean) * c + mean + b
        out = out + jax.random.uniform(k_ns, ()) * self.noise_std * jax.random.normal(k_n, out.shape)
        out = jnp.where(jax.random.bernoulli(k_inv, self.invert_prob), 1.0 - out, out)
        return jnp.clip(out, 0.0, 1.0)


@functools.partial(jax.jit, static_argnums=0)
def _augment(aug: Augment, key: jax.Array, images: jax.Array) -> jax.Array:
    return jax.vmap(aug._one)(jax.random.split(key, images.shape[0]), images)


@jax.jit
def nt_xent(z: jax.Array, temperature: float) -> jax.Array:
    """NT-Xent loss (nats) of `z: [2B, d]` where rows i and i + B are two views of one image.

    Each row's positive is its pair; the other 2B - 2 rows are negatives; cosine similarity
    divided by `temperature`. Returns the mean over the 2B rows.
    """
    n = z.shape[0]
    half = n // 2
    z = z / (jnp.linalg.norm(z, axis=-1, keepdims=True) + 1e-8)
    sim = (z @ z.T) / temperature
    sim = jnp.where(jnp.eye(n, dtype=bool), -jnp.inf, sim)  # a view is not its own negative
    pos = jnp.concatenate([jnp.arange(half, n), jnp.arange(0, half)])
    logp = jax.nn.log_softmax(sim, axis=-1)
    return -jnp.mean(logp[jnp.arange(n), pos])


@functools.cache
def simclr_objective(model: nn.Module, *, temperature: float, augment: Augment) -> Objective:
    """SimCLR's objective for `train_epochs` (targets are ignored): NT-Xent of two views.

    Cached, like `training.regression_objective`, so repeated runs reuse one compilation.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")

    def objective(params, xb, tb, key):
        del tb  # self-supervised
        k1, k2 = jax.random.split(key)
        views = jnp.concatenate([augment(k1, xb), augment(k2, xb)])
        return nt_xent(model.apply(params, views), temperature)

    return objective


# BYOL (Grill et al., 2020): no negatives. An online network (backbone + projector) and a
# predictor regress a slowly moving target network's projection of the other view; the target
# is an exponential moving average of the online network, never a gradient step.


class Predictor(nn.Module):
    """BYOL's predictor: `[B, d] -> [B, out_dim]` through one hidden ReLU layer of `hidden` units.

    batch_norm: a `BatchStatNorm` before the ReLU, as in Grill et al. (their projector and
    predictor are Linear -> BN -> ReLU -> Linear).
    """

    hidden: int
    out_dim: int
    batch_norm: bool = False

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        h = nn.Dense(self.hidden, name="hidden")(z)
        if self.batch_norm:
            h = BatchStatNorm(name="norm")(h)
        return nn.Dense(self.out_dim, name="out")(nn.relu(h))


def byol_init(model: nn.Module, predictor: Predictor, key: jax.Array, x: jax.Array) -> dict:
    """BYOL's parameters `{"online", "predictor", "target"}`; the target starts as the online copy.

    model: backbone + projector (`HeadNet(hidden>0)`); x: an example batch `[B, H, W, C]`.
    """
    k_net, k_pred = jax.random.split(key)
    online = model.init(k_net, x)
    z = model.apply(online, x)
    return {"online": online, "predictor": predictor.init(k_pred, z),
            "target": jax.tree.map(jnp.array, online)}


def byol_regression(p: jax.Array, t: jax.Array) -> jax.Array:
    """BYOL's loss per row, `2 - 2 cos(p, t)` in [0, 4], of `p, t: [B, d]` -> `[B]`."""
    p = p / (jnp.linalg.norm(p, axis=-1, keepdims=True) + 1e-8)
    t = t / (jnp.linalg.norm(t, axis=-1, keepdims=True) + 1e-8)
    return 2.0 - 2.0 * jnp.sum(p * t, axis=-1)


@functools.cache
def byol_objective(model: nn.Module, predictor: Predictor, *,
                   augment: Callable[[jax.Array, jax.Array], jax.Array]) -> Objective:
    """BYOL's symmetrised objective for `train_epochs` on `byol_init`'s parameters (targets ignored).

    augment: `augment(key, x) -> x'`, one random view (an `Augment`, hashable for the cache).
    The target network's outputs pass through `stop_gradient`: its gradient is exactly zero, and
    `byol_optimizer` moves it by the moving average alone.
    """

    def objective(params, xb, tb, key):
        del tb  # self-supervised
        k1, k2 = jax.random.split(key)
        views = jnp.concatenate([augment(k1, xb), augment(k2, xb)])
        p = predictor.apply(params["predictor"], model.apply(params["online"], views))
        t = jax.lax.stop_gradient(model.apply(params["target"], views))
        half = xb.shape[0]
        swapped = jnp.concatenate([t[half:], t[:half]])  # view 1 predicts view 2's target and back
        return jnp.mean(byol_regression(p, swapped))

    return objective


@functools.cache
def byol_optimizer(inner: optax.GradientTransformation, tau: float) -> optax.GradientTransformation:
    """`inner` on the online network and predictor; the target moves to `tau·target + (1-tau)·online'`,
    online' the online parameters after this step's update. Cached, so runs reuse one compilation."""
    if not 0.0 <= tau < 1.0:
        raise ValueError(f"tau must lie in [0, 1), got {tau}.")

    def trainable(tree):
        return {"online": tree["online"], "predictor": tree["predictor"]}

    def init(params):
        return inner.init(trainable(params))

    def update(grads, state, params=None):
        if params is None:
            raise ValueError("byol_optimizer needs the parameters to move the target network.")
        updates, state = inner.update(trainable(grads), state, trainable(params))
        online = optax.apply_updates(params["online"], updates["online"])
        target = jax.tree.map(lambda t, o: (1.0 - tau) * (o - t), params["target"], online)
        return {**updates, "target": target}, state

    return optax.GradientTransformation(init, update)
