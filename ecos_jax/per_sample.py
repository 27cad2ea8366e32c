"""Per-sample (per-example) gradients: `vmap(grad)` under `jit`, micro-batched.

The primitive behind DP-SGD clipping and the gradient-based valuation scores (VoG, PLIS).
`loss_fn(params, x, y) -> scalar` is written for ONE example (`x: [H, W, C]`, `y: []`); these
helpers lift it to a batch. A non-finite example gives a non-finite gradient row here; DP-SGD
zeroes such rows before clipping (`privacy.clipping`) and counts them.

    >>> grads = per_example_grads(loss_fn, params, x, y, microbatch_size=64)
    >>> jax.tree.leaves(grads)[0].shape[0] == x.shape[0]
    True

Micro-batching runs `lax.map` over chunks of `microbatch_size` examples so the peak memory
is that of one chunk's per-example gradients, whatever the batch size (`map_microbatches`, the
one helper for it, also used by the valuation scores).

Not to be confused with `ecos_jax.privacy.layer_grads.per_example_layer_grads(model, ...)`,
which takes a flax model and a batch loss and reads the gradients off layer inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

PyTree = Any
ExampleLoss = Callable[[PyTree, jax.Array, jax.Array], jax.Array]


def example_loss(model: nn.Module) -> ExampleLoss:
    """Softmax cross-entropy of `model` on one example: `(params, x [H,W,C], y []) -> []`."""

    def loss(params: PyTree, x: jax.Array, y: jax.Array) -> jax.Array:
        logits = model.apply(params, x[None])[0]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y)

    return loss


def map_microbatches(fn: Callable, microbatch_size: int | None, *batched: jax.Array):
    """`fn(*batched)`, computed over chunks of the leading axis with `lax.map` (bounded memory).

    Args:
      fn: a batched function `(*arrays [b, ...]) -> pytree of [b, ...]`, row-wise independent.
      microbatch_size: rows per chunk; None (or >= B) calls `fn` once on the whole batch.
      *batched: arrays sharing a leading axis `[B, ...]`.

    Returns:
      What `fn(*batched)` returns, leaves `[B, ...]`. The last chunk is zero-padded up to
      `microbatch_size` and the padded rows are cut off again, so `fn` must not mix rows.
    """
    n = batched[0].shape[0]
    if microbatch_size is None or microbatch_size >= n:
        return fn(*batched)
    if microbatch_size < 1:
        raise ValueError(f"microbatch_size must be >= 1, got {microbatch_size}.")
    pad = (-n) % microbatch_size
    padded = [jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)) for a in batched]
    chunks = [a.reshape(-1, microbatch_size, *a.shape[1:]) for a in padded]
    out = jax.lax.map(lambda c: fn(*c), chunks)
    return jax.tree.map(lambda o: o.reshape(-1, *o.shape[2:])[:n], out)


# The old private name; the valuation modules still import it until they switch.
_chunked = map_microbatches


@partial(jax.jit, static_argnames=("loss_fn", "microbatch_size"))
def per_example_grads(
    loss_fn: ExampleLoss,
    params: PyTree,
    x: jax.Array,
    y: jax.Array,
    microbatch_size: int | None = None,
) -> PyTree:
    """Per-example parameter gradients g_i = ∇_θ ℓ(θ; x_i, y_i).

    Args:
      loss_fn: single-example loss `(params, x_i, y_i) -> scalar` (hashable: define it once).
      params: model parameters.
      x: `[B, ...]` inputs; y: `[B]` targets.
      microbatch_size: examples per vmapped chunk; None vmaps the whole batch at once.

    Returns:
      A pytree like `params` whose leaves have a leading `[B]` axis.
    """
    grad_fn = jax.vmap(jax.grad(loss_fn), in_axes=(None, 0, 0))
    return map_microbatches(lambda xs, ys: grad_fn(params, xs, ys), microbatch_size, x, y)


def global_norms(tree: PyTree) -> jax.Array:
    """L2 norm over all leaves of a per-example pytree: `[B]`."""
    sq = [jnp.sum(jnp.reshape(leaf, (leaf.shape[0], -1)) ** 2, axis=1) for leaf in jax.tree.leaves(tree)]
    return jnp.sqrt(sum(sq))


@partial(jax.jit, static_argnames=("loss_fn", "microbatch_size"))
def per_example_grad_norms(
    loss_fn: ExampleLoss,
    params: PyTree,
    x: jax.Array,
    y: jax.Array,
    microbatch_size: int | None = None,
) -> jax.Array:
    """‖g_i‖₂ for each example, `[B]`; only one chunk of gradients is alive at a time."""
    grad_fn = jax.vmap(jax.grad(loss_fn), in_axes=(None, 0, 0))
    return map_microbatches(lambda xs, ys: global_norms(grad_fn(params, xs, ys)), microbatch_size, x, y)
