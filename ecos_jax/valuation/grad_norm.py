"""Per-sample gradient-norm score: ‖g_i‖₂ with g_i = ∇_θ ℓ(θ; x_i, y_i), un-clipped.

See docs/algorithms.md#grad-norm.

The norm DP-SGD would clip: samples with large gradients are the ones that move the model
most (and that clipping hides). One forward and one backward pass per sample, micro-batched
through `ecos_jax.per_sample`.

    >>> scores = grad_norm_scores(model.apply, params, x, y, microbatch_size=64)   # [N]
"""

from __future__ import annotations

from functools import partial

import jax
import optax

from ecos_jax.per_sample import per_example_grad_norms
from ecos_jax.valuation.inputs import ApplyFn, PyTree, check_examples, check_microbatch


def single_example_loss(apply_fn: ApplyFn):
    """Cross-entropy on ONE example, `(params, x [...], y []) -> []`, from a batched apply."""

    def loss(params: PyTree, x: jax.Array, y: jax.Array) -> jax.Array:
        return optax.softmax_cross_entropy_with_integer_labels(apply_fn(params, x[None])[0], y)

    return loss


@partial(jax.jit, static_argnames=("apply_fn", "microbatch_size"))
def _grad_norm_scores(apply_fn: ApplyFn, params: PyTree, x: jax.Array, y: jax.Array,
                      microbatch_size: int | None) -> jax.Array:
    return per_example_grad_norms(single_example_loss(apply_fn), params, x, y, microbatch_size)


def grad_norm_scores(
    apply_fn: ApplyFn,
    params: PyTree,
    x: jax.Array,
    y: jax.Array,
    *,
    microbatch_size: int | None = None,
) -> jax.Array:
    """Un-clipped per-sample parameter-gradient L2 norm, `[N]` float32 (loss units per param).

    Args:
      apply_fn: batched logits function `(params, x [B, ...]) -> [B, K]`, e.g. `model.apply`.
      params: model parameters at the checkpoint being scored.
      x: `[N, ...]` inputs; y: `[N]` int labels.
      microbatch_size: per-example gradients alive at once (peak memory ≈ this × #params).
    """
    check_examples(x, y)
    check_microbatch(microbatch_size)
    return _grad_norm_scores(apply_fn, params, x, y, microbatch_size)
