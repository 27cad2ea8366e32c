"""Per-sample loss score: ℓ(θ; x_i, y_i), the softmax cross-entropy at one checkpoint.

See docs/algorithms.md#loss.

The cheapest valuation score: one forward pass per sample. High loss marks hard, atypical or
mislabelled samples.

    >>> scores = loss_scores(model.apply, params, x, y, microbatch_size=256)   # [N] nats
"""

from __future__ import annotations

from functools import partial

import jax
import optax

from ecos_jax.per_sample import map_microbatches
from ecos_jax.valuation.inputs import ApplyFn, PyTree, check_examples, check_microbatch


@partial(jax.jit, static_argnames=("apply_fn", "microbatch_size"))
def _loss_scores(apply_fn: ApplyFn, params: PyTree, x: jax.Array, y: jax.Array,
                 microbatch_size: int | None) -> jax.Array:
    def chunk(xs, ys):
        return optax.softmax_cross_entropy_with_integer_labels(apply_fn(params, xs), ys)

    return map_microbatches(chunk, microbatch_size, x, y)


def loss_scores(
    apply_fn: ApplyFn,
    params: PyTree,
    x: jax.Array,
    y: jax.Array,
    *,
    microbatch_size: int | None = None,
) -> jax.Array:
    """Softmax cross-entropy of each sample, `[N]` float32 (nats).

    Args:
      apply_fn: batched logits function `(params, x [B, ...]) -> [B, K]`, e.g. `model.apply`
        (hashable; pass the same object each call so the jit cache hits).
      params: model parameters at the checkpoint being scored.
      x: `[N, ...]` inputs; y: `[N]` int labels.
      microbatch_size: samples per forward pass (bounds memory); None = all at once.
    """
    check_examples(x, y)
    check_microbatch(microbatch_size)
    return _loss_scores(apply_fn, params, x, y, microbatch_size)
