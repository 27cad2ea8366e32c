"""Knowledge distillation targets and loss for ECOS model compression.

A student learns from a teacher's logits on the cloud's picks: the temperature-scaled KL of
`losses.kl_distillation`, optionally mixed with cross-entropy on the pool label. Pure functions;
the experiment that trains the teacher and the students is `ecos_jax.experiments.model_compression`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ecos_jax.training import losses


def distillation_loss(temperature: float, alpha: float = 0.0) -> losses.LossFn:
    """Per-example `(1 − α) · T² · KL(teacher_T ‖ student_T) + α · CE(student, label)`.

    targets: `[B, K]` teacher logits when `alpha == 0` (then this is exactly
    `losses.kl_distillation(temperature)`); `[B, K + 1]` from `pack_targets` (teacher logits,
    then the pool label as a float) when `alpha > 0`. Returns `[B]` nats.

    Memoised: the loss is a static argument of the jitted train step, so the same function
    object for the same settings is what lets every student reuse the compiled step.
    """
    return _distillation_loss(float(temperature), float(alpha))


@functools.lru_cache(maxsize=32)
def _distillation_loss(temperature: float, alpha: float) -> losses.LossFn:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
    kl = losses.kl_distillation(temperature)  # rejects temperature <= 0
    if alpha == 0.0:
        return kl

    def loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
        teacher_logits, labels = targets[..., :-1], targets[..., -1].astype(jnp.int32)
        return (1.0 - alpha) * kl(logits, teacher_logits) + alpha * losses.softmax_xent(logits, labels)

    return loss


def pack_targets(teacher_logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """`[N, K]` logits and `[N]` int labels -> `[N, K + 1]` float32 (labels exact below 2**24)."""
    teacher_logits = np.asarray(teacher_logits, np.float32)
    labels = np.asarray(labels)
    if labels.shape != teacher_logits.shape[:1]:
        raise ValueError(f"labels must have shape [{teacher_logits.shape[0]}], got {labels.shape}.")
    return np.concatenate([teacher_logits, labels.astype(np.float32)[:, None]], axis=1)
