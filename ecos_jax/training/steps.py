"""Pure training steps `step(state, batch, key) -> (state, metrics)`, ready for `jax.jit`.

Two ways to get the update's gradient, then any optax transformation:

  gradient_step(objective, tx)          jax.value_and_grad of a scalar objective
  clipped_gradient_step(grad_fn, tx)    a DP gradient function (`privacy.clipped_grads.clipped_grad`):
                                        the param-shaped sum of clipped per-example gradients;
                                        `tx` must begin with the noise transform built from it
                                        (`privacy.noise.add_gaussian_noise`), so the update is
                                        released only after noise is added.

Neither knows where batches come from or how many steps run: `loop.train_loop` runs compiled
chunks of these steps (a Python loop over a jitted step, or a `lax.scan`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ecos_jax.training.state import TrainState

PyTree = Any
# (params, batch, key) -> scalar loss (already averaged over the batch)
Objective = Callable[[PyTree, Any, jax.Array | None], jax.Array]
Step = Callable[[TrainState, Any, Any], tuple[TrainState, dict[str, jax.Array]]]


def _apply(state: TrainState, grads: PyTree, tx: optax.GradientTransformation) -> TrainState:
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return state._replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state,
                          step=state.step + 1)


def gradient_step(objective: Objective, tx: optax.GradientTransformation) -> Step:
    """`step(state, batch, key=None) -> (state, {"loss": []})`: one `tx` update on ∇objective."""

    def step(state: TrainState, batch, key=None):
        loss, grads = jax.value_and_grad(objective)(state.params, batch, key)
        return _apply(state, grads, tx), {"loss": loss}

    return step


def clipped_gradient_step(grad_fn, tx: optax.GradientTransformation) -> Step:
    """`step(state, (x [M, ...], y [M], mask [M]), key=None) -> (state, metrics)` for DP-SGD.

    `grad_fn(params, x, y, mask) -> (Σ_i m_i·clip_C(∇ℓ_i), aux)` with `aux["norms"]`,
    `aux["losses"]` [M] and `grad_fn.l2_norm_clip` = C. Rows with mask 0 (padding) and rows
    whose gradient is not finite add exact zeros (the grad function selects them away), so
    the sum's L2 sensitivity stays C.

    metrics: `loss`, `grad_norm`, `clipped_fraction` (means over the rows that contributed),
    `batch_size` (rows sampled), `nonfinite` (sampled rows zeroed), all float32 [].
    """
    c = grad_fn.l2_norm_clip

    def step(state: TrainState, batch, key=None):
        x, y, mask = batch
        mask = mask.astype(jnp.float32)
        grads, aux = grad_fn(state.params, x, y, mask)
        norms, losses = aux["norms"], aux["losses"]
        state = _apply(state, grads, tx)
        return state, dp_step_metrics(norms, losses, mask != 0, c)

    return step


def dp_step_metrics(norms: jax.Array, losses: jax.Array, sampled: jax.Array,
                    l2_norm_clip: float) -> dict[str, jax.Array]:
    """A DP step's metrics from its per-example norms and losses [B] and sampled mask [B] bool.

    Padding and non-finite rows are selected away with `where` (0 · NaN would keep the NaN):
    loss and grad_norm are means over the kept rows, clipped_fraction the share of them whose
    norm exceeded `l2_norm_clip`, batch_size the sampled count, nonfinite the sampled rows whose
    gradient was zeroed before clipping.
    """
    finite = jnp.isfinite(norms)
    kept = sampled & finite
    n = jnp.maximum(jnp.sum(kept), 1).astype(jnp.float32)
    return {
        "loss": jnp.sum(jnp.where(kept, losses, 0.0)) / n,
        "grad_norm": jnp.sum(jnp.where(kept, norms, 0.0)) / n,
        "clipped_fraction": jnp.sum(kept & (norms > l2_norm_clip)) / n,
        "batch_size": jnp.sum(sampled).astype(jnp.float32),
        "nonfinite": jnp.sum(sampled & ~finite).astype(jnp.float32),
    }
