"""`clipped_grad`: a function transform, like `jax.grad`, for the clipped-gradient sum of DP-SGD.

    >>> grad_fn = clipped_grad(model, l2_norm_clip=1.0)            # loss: softmax cross-entropy
    >>> grad_fn.sensitivity                                        # C, adding/removing one example
    1.0
    >>> total, aux = grad_fn(params, x, y, mask)                   # total: shaped like params

`grad_fn(params, x [B, ...], y [B], mask [B])` returns Σ_i m_i · clip_C(∇ℓ_i), one array per
parameter (no batch axis), and `aux` with the per-example `norms` [B] (un-clipped ‖∇ℓ_i‖₂),
`losses` [B] and `nonfinite` [B] bool. Because the output is shaped like the parameters, it
is an ordinary optax update: Gaussian noise (`noise.add_gaussian_noise`, built from `grad_fn`
so C is stated once) and any optimiser chain after it, and `optax.MultiSteps` can accumulate
it over micro-batches of one logical batch.

What it guarantees. Under the add-or-remove-one relation (a neighbouring batch has one example
more or fewer) the output changes by at most C in L2 norm: every example contributes a vector
of norm ≤ C. Under replace-one the bound doubles to 2C (one contribution leaves, another
arrives), `sensitivity_under("replace_one")`. This holds for both clippings: flat scales the
whole gradient to ≤ C, per-layer scales each of the L layers to ≤ C/√L. Rows that do not
count add exact zeros whatever their values: padding rows (mask 0) and examples whose gradient
is not finite. Both add exact zeros (0 · NaN would still be NaN, so each method makes sure: see
`clipping` and `layer_grads`); a zeroed row has norm 0 ≤ C, so the bound is unchanged, and
`aux["nonfinite"]` reports such rows so a caller can count them.

Two ways to compute it, same numbers to float tolerance:
  method="layers"  per-example norms and the weighted sum from layer inputs and output
                   gradients (`layer_grads`): fast, for models built of Dense / 2-D Conv.
  method="vmap"    `vmap(grad)` per-example gradients (`ecos_jax.per_sample`), then
                   `clipping.clipped_sum`: any model, or a per-example loss function.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ecos_jax import per_sample
from ecos_jax.privacy import accounting, layer_grads
from ecos_jax.privacy import clipping as clipping_lib  # `clipping` is a keyword argument below
from ecos_jax.privacy.pooling import fast_max_pool_grads

PyTree = Any
BatchLoss = Callable[[jax.Array, jax.Array], jax.Array]  # (logits [B, K], y [B]) -> [B]
ExampleLoss = Callable[[PyTree, jax.Array, jax.Array], jax.Array]  # (params, x_i, y_i) -> []

METHODS = ("layers", "vmap")


@dataclasses.dataclass(frozen=True)
class ClippedGrad:
    """A clipped-gradient-sum function and the L2 bound it is built to respect.

    Call it as `(params, x, y, mask=None) -> (sum, aux)`. `sensitivity` is C under
    add-or-remove-one, the relation Poisson-sampled DP-SGD is accounted under.
    """

    fn: Callable[..., tuple[PyTree, dict]]
    l2_norm_clip: float
    method: str
    clipping: str
    microbatch_size: int | None = None

    @property
    def sensitivity(self) -> float:
        """L2 sensitivity of the sum when one example is added or removed: C."""
        return self.l2_norm_clip

    def sensitivity_under(self, relation: str) -> float:
        """L2 sensitivity under `relation`: C for add/remove-one, 2C for replace-one."""
        if relation not in accounting.RELATIONS:
            raise ValueError(f"relation must be one of {accounting.RELATIONS}, got {relation!r}.")
        return self.l2_norm_clip * (2.0 if relation == "replace_one" else 1.0)

    def __call__(self, params: PyTree, x: jax.Array, y: jax.Array,
                 mask: jax.Array | None = None) -> tuple[PyTree, dict]:
        return self.fn(params, x, y, mask)


def _model_example_loss(model: nn.Module, loss: BatchLoss) -> ExampleLoss:
    def example(params, x, y):
        return loss(model.apply(params, x[None]), y[None])[0]

    # Same values as the plain loss; on CPU its pooling gradient avoids select_and_scatter.
    return fast_max_pool_grads(example)


def clipped_grad(
    model_or_loss: nn.Module | ExampleLoss,
    *,
    l2_norm_clip: float,
    loss: BatchLoss = layer_grads.softmax_xent,
    method: str = "layers",
    clipping: str = "flat",
    microbatch_size: int | None = None,
) -> ClippedGrad:
    """Builds the clipped-gradient-sum function of a model (or of a per-example loss).

    Args:
      model_or_loss: a flax model (then `loss` is applied to its logits), or a per-example
        loss `(params, x_i, y_i) -> scalar` for method="vmap" (the "layers" method needs the
        model's Dense/Conv structure).
      l2_norm_clip: C > 0, a Python float; C = inf turns clipping off (sensitivity unbounded,
        so only for non-private runs).
      loss: per-example batch loss `(logits [B, K], y [B]) -> [B]`, used with a model.
      method: "layers" (from layer inputs and output gradients) or "vmap".
      clipping: "flat" (whole gradient to ≤ C) or "per_layer" (each of L layers to ≤ C/√L).
      microbatch_size: examples per chunk of per-example work (bounded memory); None: all.

    Returns:
      A `ClippedGrad`: `(params, x [B, ...], y [B], mask [B] | None) -> (sum, aux)`, `sum` a
      pytree like `params`, `aux` with `norms` [B], `losses` [B], `nonfinite` [B] bool.
    """
    c = clipping_lib.check_clip(l2_norm_clip)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    if clipping not in clipping_lib.CLIPPINGS:
        raise ValueError(f"clipping must be one of {clipping_lib.CLIPPINGS}, got {clipping!r}.")
    if microbatch_size is not None and microbatch_size < 1:
        raise ValueError(f"microbatch_size must be >= 1 or None, got {microbatch_size}.")
    is_model = isinstance(model_or_loss, nn.Module)
    if method == "layers" and not is_model:
        raise ValueError('method="layers" needs the flax model; pass method="vmap" for a loss function.')

    if method == "layers":
        model = model_or_loss

        def fn(params, x, y, mask):
            mask = jnp.ones(x.shape[0], jnp.float32) if mask is None else mask.astype(jnp.float32)
            total, aux = layer_grads.clipped_grad_sum(
                model, params, x, y, l2_norm_clip=c, mask=mask, clipping=clipping, loss=loss,
                microbatch_size=microbatch_size)
            return total, {k: aux[k] for k in ("norms", "losses", "nonfinite")}
    else:
        example = _model_example_loss(model_or_loss, loss) if is_model else model_or_loss

        def fn(params, x, y, mask):
            mask = None if mask is None else mask.astype(jnp.float32)
            grads = per_sample.per_example_grads(example, params, x, y,
                                                 microbatch_size=microbatch_size)
            total, norms = clipping_lib.clipped_sum(grads, c, mask=mask, clipping=clipping)
            if is_model:
                losses = loss(model_or_loss.apply(params, x), y)
            else:
                losses = jax.vmap(model_or_loss, in_axes=(None, 0, 0))(params, x, y)
            return total, {"norms": norms, "losses": losses,
                           "nonfinite": clipping_lib.nonfinite_rows(norms)}

    return ClippedGrad(fn, c, method, clipping, microbatch_size)

