"""Per-example losses for the training loop: `(outputs [B, ...], targets [B, ...]) -> [B]`.

`softmax_xent` is the default supervised objective; `kl_distillation(T)` takes teacher logits
as targets; `cosine_regression` and `mse_regression` regress embedding targets (CoOpt, the
cloud's feature extractor).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

# (model outputs [B, ...], targets [B, ...]) -> per-example loss [B]
LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def softmax_xent(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Cross-entropy with integer labels: `[B, K], [B] -> [B]` (nats)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def kl_distillation(temperature: float) -> LossFn:
    """Temperature-scaled KL(teacher || student) · T² (Hinton et al.); targets are teacher logits."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")

    def loss(logits: jax.Array, teacher_logits: jax.Array) -> jax.Array:
        t = jax.nn.log_softmax(teacher_logits / temperature)
        s = jax.nn.log_softmax(logits / temperature)
        return jnp.sum(jnp.exp(t) * (t - s), axis=-1) * temperature**2

    return loss


def cosine_regression(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """1 − cos(outputs, targets) per example: `[B, d], [B, d] -> [B]`."""
    o = outputs / (jnp.linalg.norm(outputs, axis=-1, keepdims=True) + 1e-8)
    t = targets / (jnp.linalg.norm(targets, axis=-1, keepdims=True) + 1e-8)
    return 1.0 - jnp.sum(o * t, axis=-1)


def mse_regression(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean squared error per example: `[B, d], [B, d] -> [B]`."""
    return jnp.mean((outputs - targets) ** 2, axis=-1)
