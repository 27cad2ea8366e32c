"""Variance of Gradients (VoG) score (Agarwal, D'souza & Hooker, CVPR 2022;
docs/algorithms.md#vog).

For checkpoints t = 1..K of one training run, the saliency map of sample (x, y) is

    S_t = ∂ z_y(x) / ∂x            z_y: the pre-softmax logit of the TRUE class,
                                    averaged over the channel axis for images -> [H, W]

and the score is the mean over pixels of the per-pixel population standard deviation across
checkpoints:

    μ_p = (1/K) Σ_t S_t,p,    VoG_p = sqrt((1/K) Σ_t (S_t,p − μ_p)²),    VoG(x) = mean_p VoG_p.

High VoG marks samples whose explanation keeps changing during training (hard, atypical,
mislabelled); low VoG the easy, prototypical ones. Normalise per class with
`ecos_jax.valuation.normalize` before comparing classes.

Cost: exactly K input-gradient passes per sample (one `vmap(grad)` per checkpoint). The
variance is accumulated with Welford's update in a `lax.scan` over checkpoints, so memory holds
two [B, H, W] maps per micro-batch, never K of them.

    >>> ckpts = [p for _, p in fit_result.snapshots]            # K >= 2 params pytrees
    >>> scores = vog_scores(model.apply, ckpts, x, y, microbatch_size=256)   # [N]
    >>> stages = vog_stages(model.apply, ckpts, x, y)          # {"early", "middle", "late"}
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ecos_jax.per_sample import map_microbatches
from ecos_jax.valuation.inputs import ApplyFn, PyTree, check_examples, check_microbatch

STAGE_NAMES = {1: ("all",), 2: ("early", "late"), 3: ("early", "middle", "late")}


def saliency(apply_fn: ApplyFn, params: PyTree, x: jax.Array, y: jax.Array) -> jax.Array:
    """S = ∂z_y/∂x per sample, channel-averaged for images: `[B,H,W,C] -> [B,H,W]`.

    For non-image inputs `[B, D]` the gradient itself `[B, D]` is returned. Each sample is
    differentiated on its own (`vmap(grad)`), so the result is exact even for a model that
    mixed examples in a batch.
    """

    def true_logit(xi: jax.Array, yi: jax.Array) -> jax.Array:
        return apply_fn(params, xi[None])[0, yi]

    g = jax.vmap(jax.grad(true_logit))(x, y)
    return jnp.mean(g, axis=-1) if x.ndim == 4 else g


@partial(jax.jit, static_argnames=("apply_fn", "microbatch_size"))
def _vog_maps(apply_fn: ApplyFn, stacked: PyTree, x: jax.Array, y: jax.Array,
              microbatch_size: int | None) -> jax.Array:
    def chunk(xs, ys):
        def welford(carry, params_t):
            t, mean, m2 = carry
            s = saliency(apply_fn, params_t, xs, ys)
            t = t + 1.0
            delta = s - mean
            mean = mean + delta / t
            return (t, mean, m2 + delta * (s - mean)), None

        zeros = jnp.zeros(xs.shape[:-1] if xs.ndim == 4 else xs.shape, xs.dtype)
        (k, _, m2), _ = jax.lax.scan(welford, (jnp.zeros((), xs.dtype), zeros, zeros), stacked)
        return jnp.sqrt(m2 / k)  # population std: divide by K, not K - 1

    return map_microbatches(chunk, microbatch_size, x, y)


def _stack(checkpoints: Sequence[PyTree]) -> PyTree:
    if isinstance(checkpoints, dict) or not isinstance(checkpoints, Sequence):
        raise ValueError(
            "checkpoints must be a list of K params pytrees (e.g. [p for _, p in fit.snapshots]), "
            f"got {type(checkpoints).__name__}."
        )
    if len(checkpoints) < 2:
        raise ValueError(
            f"VoG needs K >= 2 checkpoints (a variance across one checkpoint is 0), got K = "
            f"{len(checkpoints)}; train with a smaller `checkpoints_every`."
        )
    structures = {jax.tree.structure(c) for c in checkpoints}
    if len(structures) != 1:
        raise ValueError("checkpoints must all have the same pytree structure (one architecture).")
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *checkpoints)


def vog_maps(
    apply_fn: ApplyFn,
    checkpoints: Sequence[PyTree],
    x: jax.Array,
    y: jax.Array,
    *,
    microbatch_size: int | None = None,
) -> jax.Array:
    """Per-pixel VoG_p, `[N, H, W]` for images `[N, H, W, C]` (`[N, D]` for flat inputs).

    Args:
      apply_fn: batched logits function `(params, x [B, ...]) -> [B, K_classes]` (pre-softmax).
      checkpoints: K >= 2 params pytrees of the same model, in training order.
      x: `[N, ...]` inputs; y: `[N]` int labels (the true class whose logit is differentiated).
      microbatch_size: samples per chunk; peak memory ≈ this × (activations + 2 maps).
    """
    check_examples(x, y)
    check_microbatch(microbatch_size)
    return _vog_maps(apply_fn, _stack(checkpoints), x, y, microbatch_size)


def vog_scores(
    apply_fn: ApplyFn,
    checkpoints: Sequence[PyTree],
    x: jax.Array,
    y: jax.Array,
    *,
    microbatch_size: int | None = None,
) -> jax.Array:
    """VoG(x) = mean over pixels of `vog_maps`, `[N]` float32 (logit units per input unit)."""
    maps = vog_maps(apply_fn, checkpoints, x, y, microbatch_size=microbatch_size)
    return jnp.mean(maps.reshape(maps.shape[0], -1), axis=1)


def stage_indices(num_checkpoints: int, num_stages: int = 3) -> dict[str, np.ndarray]:
    """Splits checkpoint indices 0..K-1 into contiguous early/middle/late groups.

    Each group must hold at least 2 checkpoints (VoG needs a variance), so K >= 2·num_stages.
    Uneven splits give the earlier groups one more checkpoint (`np.array_split`).
    """
    if num_stages not in STAGE_NAMES:
        raise ValueError(f"num_stages must be 1, 2 or 3, got {num_stages}.")
    if num_checkpoints < 2 * num_stages:
        raise ValueError(
            f"{num_stages} VoG stages need K >= {2 * num_stages} checkpoints (>= 2 per stage), "
            f"got K = {num_checkpoints}."
        )
    groups = np.array_split(np.arange(num_checkpoints), num_stages)
    return dict(zip(STAGE_NAMES[num_stages], groups))


def vog_stages(
    apply_fn: ApplyFn,
    checkpoints: Sequence[PyTree],
    x: jax.Array,
    y: jax.Array,
    *,
    num_stages: int = 3,
    microbatch_size: int | None = None,
) -> dict[str, jax.Array]:
    """Early / middle / late VoG from disjoint checkpoint subsets: `{stage: [N]}`.

    The subsets are disjoint, so all stages together still cost K input-gradient passes.
    """
    groups = stage_indices(len(checkpoints), num_stages)
    return {
        name: vog_scores(apply_fn, [checkpoints[i] for i in idx], x, y,
                         microbatch_size=microbatch_size)
        for name, idx in groups.items()
    }
