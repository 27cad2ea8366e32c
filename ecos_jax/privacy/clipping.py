"""Per-example gradient clipping, as pure functions and an optax-style transform.

Flat clipping scales example i's whole gradient to norm ≤ C: ḡ_i = g_i · min(1, C/‖g_i‖₂).
Per-layer clipping scales each of the L layers (parameter groups) to ≤ C/√L, so the example's
whole clipped gradient still has norm ≤ C and the sum's L2 sensitivity is C either way.

`clipped_sum(per_example, C, mask=...)` takes per-example gradients (leaves with a leading
`[B]` axis, e.g. from `ecos_jax.per_sample.per_example_grads`) and an inclusion mask, and
returns the masked sum of clipped gradients (no batch axis). DP-SGD reaches it through
`clipped_grads.clipped_grad(..., method="vmap")`, whose output is param-shaped and so composes
with every optax wrapper. `clip_and_sum(C)` is the older optax-style form: its *input* has the
batch axis, so wrappers that keep param-shaped state (`optax.MultiSteps`, `apply_if_finite`)
cannot hold it; prefer `clipped_grad`.

Rows that do not count contribute exactly zero, whatever their values. Two kinds of rows do not
count: padding (mask 0) and examples whose gradient is not finite (a NaN or inf coordinate, or
a norm that overflows float32). Both are *selected away* with `jnp.where`, never multiplied by
0: 0 · NaN = NaN, so a masked-by-multiplication NaN row would poison the whole sum. Zeroing a
non-finite example before clipping keeps the sum's sensitivity at C (its contribution, 0, has
norm ≤ C like any clipped gradient), so the rule costs no privacy; callers count such rows
(`nonfinite_rows`) so they are never silently dropped.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

PyTree = Any

CLIPPINGS = ("flat", "per_layer")


def check_clip(l2_norm_clip: float) -> float:
    """C must be a finite or infinite positive number (C = inf disables clipping)."""
    try:
        c = float(l2_norm_clip)
    except (TypeError, jax.errors.ConcretizationTypeError) as err:
        raise ValueError(f"l2_norm_clip must be a Python float, got {l2_norm_clip!r}.") from err
    if not c > 0.0:  # also NaN
        raise ValueError(f"l2_norm_clip must be > 0, got {l2_norm_clip}.")
    return c


def layer_groups(tree: PyTree) -> list[list[int]]:
    """Leaf indices grouped by layer: leaves sharing a parent (kernel + bias of one module)."""
    paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(paths):
        groups.setdefault(tuple(p[:-1]), []).append(i)
    return list(groups.values())


def _sq_norms(leaves: list[jax.Array]) -> jax.Array:
    return sum(jnp.sum(jnp.reshape(x, (x.shape[0], -1)).astype(jnp.float32) ** 2, 1) for x in leaves)


def nonfinite_rows(norms: jax.Array) -> jax.Array:
    """`[B]` bool: rows whose gradient norm is NaN or inf (these rows are zeroed, not clipped)."""
    return ~jnp.isfinite(norms)


def _keep(norms: jax.Array, mask: jax.Array | None) -> jax.Array:
    """`[B]` bool: rows that contribute: included by `mask` (nonzero) and with a finite gradient."""
    keep = jnp.isfinite(norms)
    return keep if mask is None else keep & (mask != 0)


def _rows(keep: jax.Array, x: jax.Array) -> jax.Array:
    """`x` `[B, ...]` with the rows where `keep` is False replaced by exact zeros."""
    return jnp.where(keep.reshape(-1, *[1] * (x.ndim - 1)), x, jnp.zeros((), x.dtype))


def clip_weights(
    per_example: PyTree, l2_norm_clip: float, *, clipping: str = "flat"
) -> tuple[list[jax.Array], jax.Array]:
    """Per-leaf scale factors `[B]` (one list entry per leaf) and the un-clipped norms `[B]`."""
    leaves = jax.tree.leaves(per_example)
    norms = jnp.sqrt(_sq_norms(leaves))
    if clipping == "flat":
        w = jnp.minimum(1.0, l2_norm_clip / jnp.maximum(norms, 1e-12))
        return [w] * len(leaves), norms
    if clipping != "per_layer":
        raise ValueError(f"clipping must be one of {CLIPPINGS}, got {clipping!r}.")
    groups = layer_groups(per_example)
    per_layer_clip = l2_norm_clip / jnp.sqrt(len(groups))
    weights: list = [None] * len(leaves)
    for g in groups:
        n = jnp.sqrt(_sq_norms([leaves[i] for i in g]))
        w = jnp.minimum(1.0, per_layer_clip / jnp.maximum(n, 1e-12))
        for i in g:
            weights[i] = w
    return weights, norms


def clip_per_example(
    per_example: PyTree, l2_norm_clip: float, *, clipping: str = "flat"
) -> tuple[PyTree, jax.Array]:
    """Clipped per-example gradients (same structure, leading `[B]`) and un-clipped norms `[B]`.

    A row with a non-finite gradient comes back as exact zeros (see the module docstring).
    """
    weights, norms = clip_weights(per_example, l2_norm_clip, clipping=clipping)
    keep = _keep(norms, None)
    leaves, treedef = jax.tree.flatten(per_example)
    clipped = [_rows(keep, x * w.reshape(-1, *([1] * (x.ndim - 1))).astype(x.dtype))
               for x, w in zip(leaves, weights)]
    return jax.tree.unflatten(treedef, clipped), norms


def clipped_sum(
    per_example: PyTree,
    l2_norm_clip: float,
    *,
    mask: jax.Array | None = None,
    clipping: str = "flat",
) -> tuple[PyTree, jax.Array]:
    """Σ_i m_i ḡ_i (no batch axis) and the un-clipped norms `[B]`; L2 sensitivity C.

    Rows with mask 0 or a non-finite gradient contribute exact zeros whatever their values.
    """
    weights, norms = clip_weights(per_example, l2_norm_clip, clipping=clipping)
    keep = _keep(norms, mask)
    m = jnp.ones_like(norms) if mask is None else mask.astype(jnp.float32)
    leaves, treedef = jax.tree.flatten(per_example)
    sums = [jnp.tensordot(jnp.where(keep, m * w, 0.0), _rows(keep, x).astype(jnp.float32), 1)
            .astype(x.dtype) for x, w in zip(leaves, weights)]
    return jax.tree.unflatten(treedef, sums), norms


class ClipState(NamedTuple):
    """Stateless transform; kept as a NamedTuple for optax chaining."""


def clip_and_sum(
    l2_norm_clip: float, *, clipping: str = "flat"
) -> optax.GradientTransformationExtraArgs:
    """optax transform: per-example gradients `[B, ...]` -> Σ_i m_i · clip(g_i) (sensitivity C).

    `update(per_example_grads, state, params=None, *, mask=None)`; `mask` `[B]` marks real
    examples (padding rows of a Poisson batch get 0). C is a Python float (validated here).
    Padding rows and rows with a non-finite gradient add exact zeros (module docstring).
    """
    c = check_clip(l2_norm_clip)
    if clipping not in CLIPPINGS:
        raise ValueError(f"clipping must be one of {CLIPPINGS}, got {clipping!r}.")

    def init(params):
        del params
        return ClipState()

    def update(updates, state, params=None, *, mask=None, **extra):
        del params, extra
        total, _ = clipped_sum(updates, c, mask=mask, clipping=clipping)
        return total, state

    return optax.GradientTransformationExtraArgs(init, update)
