"""Per-sample privacy loss / input sensitivity (PLIS) score (Mueller et al., arXiv 2211.10173;
docs/algorithms.md#plis).

For one sample, let ḡ(x) = clip_C(∇_θ ℓ(θ; x, y)) be its clipped parameter gradient, a map from
the input (D numbers) to the parameters (P numbers), and J = ∂ḡ/∂x its P×D Jacobian. The score

    PLIS(x) = ‖J‖₂ (largest singular value)

says how far the released (clipped) gradient moves per unit change of the input: how much of
this sample the DP-SGD update exposes. It is computed MATRIX-FREE by power iteration on JᵀJ:
each step is one forward-mode product u = J v (`jax.linearize`) and one reverse-mode product
w = Jᵀu (`jax.linear_transpose`), so memory is that of a few gradients, never P×D. The per-
attribute map

    a(x) = |Jᵀḡ| / ‖ḡ‖ = |∂‖ḡ‖₂ / ∂x|       (one VJP)

shows which input attributes (pixels) carry the privacy loss. Note: when the sample's gradient
is clipped (‖g‖ > C) the norm ‖ḡ‖ = C is constant in x, so a(x) = 0 exactly; pass
`clip_norm=None` for the un-clipped map. Normalise per class with
`ecos_jax.valuation.normalize.per_class_minmax`.

    >>> scores, iters = plis_scores(model.apply, params, x, y, clip_norm=1.0, return_iterations=True)
    >>> attr = plis_attribution(model.apply, params, x, y, clip_norm=None)   # [N, H, W, C]

`plis_scores_dense` materialises J with `jax.jacfwd`/`jax.jacrev` (P×D floats per sample); it
is the reference for tests and the baseline in `benchmarks/scores.py`, not for real use.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ecos_jax.per_sample import map_microbatches
from ecos_jax.valuation.grad_norm import single_example_loss
from ecos_jax.valuation.inputs import ApplyFn, PyTree, check_examples, check_microbatch


def _tree_sq_norm(tree: PyTree) -> jax.Array:
    return sum(jnp.sum(leaf.astype(jnp.float32) ** 2) for leaf in jax.tree.leaves(tree))


def clipped_gradient_fn(apply_fn: ApplyFn, params: PyTree, y: jax.Array,
                        clip_norm: float | None):
    """x [...] -> ḡ = g · min(1, C/‖g‖₂) (a params pytree) for ONE sample of label `y`.

    `clip_norm=None` leaves the gradient un-clipped. Differentiable in x everywhere except on
    the sphere ‖g‖ = C; at g = 0 the scale is 1 (no 0/0).
    """
    loss = single_example_loss(apply_fn)

    def gbar(x: jax.Array) -> PyTree:
        g = jax.grad(loss)(params, x, y)
        if clip_norm is None:
            return g
        sq = _tree_sq_norm(g)
        clipped = sq > clip_norm**2
        # Double `where` keeps the derivative of sqrt finite when sq = 0.
        scale = jnp.where(clipped, clip_norm / jnp.sqrt(jnp.where(clipped, sq, 1.0)), 1.0)
        return jax.tree.map(lambda leaf: leaf * scale.astype(leaf.dtype), g)

    return gbar


def _power_iteration(h, x: jax.Array, v0: jax.Array, tol: float, max_iters: int):
    """Largest singular value of J = ∂h/∂x at x by power iteration on JᵀJ; (σ, iterations)."""
    _, jvp_fn = jax.linearize(h, x)
    vjp_fn = jax.linear_transpose(jvp_fn, x)

    def body(state):
        i, v, sigma, _ = state
        u = jvp_fn(v)                                # J v       [P]
        new_sigma = jnp.sqrt(_tree_sq_norm(u))       # ‖J v‖ with ‖v‖ = 1: Rayleigh estimate
        (w,) = vjp_fn(u)                             # Jᵀ J v    [D]
        w_norm = jnp.linalg.norm(w)
        # J v = 0 means J = 0 on this direction (e.g. a zero gradient); keep v, σ = 0.
        v = jnp.where(w_norm > 0, w / jnp.where(w_norm > 0, w_norm, 1.0), v)
        return i + 1, v, new_sigma, sigma

    def cond(state):
        i, _, sigma, prev = state
        not_converged = jnp.abs(sigma - prev) > tol * sigma
        return (i < max_iters) & ((i < 2) | not_converged)

    v0 = v0 / jnp.linalg.norm(v0)
    init = (jnp.array(0, jnp.int32), v0, jnp.array(0.0, jnp.float32), jnp.array(-1.0, jnp.float32))
    iters, _, sigma, _ = jax.lax.while_loop(cond, body, init)
    return sigma, iters


@partial(jax.jit, static_argnames=("apply_fn", "clip_norm", "tol", "max_iters", "microbatch_size"))
def _plis_scores(apply_fn, params, x, y, key, clip_norm, tol, max_iters, microbatch_size):
    v0 = jax.random.normal(key, x.shape[1:], jnp.float32)  # same start for every sample

    def one(xi, yi):
        return _power_iteration(clipped_gradient_fn(apply_fn, params, yi, clip_norm), xi, v0,
                                tol, max_iters)

    return map_microbatches(jax.vmap(one), microbatch_size, x, y)


def _check_plis(x, y, clip_norm, microbatch_size, tol=1e-5, max_iters=1):
    check_examples(x, y)
    check_microbatch(microbatch_size)
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"clip_norm must be > 0 or None, got {clip_norm}.")
    if not 0 < tol < 1:
        raise ValueError(f"tol (relative change of σ between iterations) must be in (0, 1), got {tol}.")
    if int(max_iters) < 2:
        raise ValueError(f"max_iters must be >= 2, got {max_iters}.")


def plis_scores(
    apply_fn: ApplyFn,
    params: PyTree,
    x: jax.Array,
    y: jax.Array,
    *,
    clip_norm: float | None = 1.0,
    tol: float = 1e-5,
    max_iters: int = 100,
    key: jax.Array | None = None,
    microbatch_size: int | None = None,
    return_iterations: bool = False,
):
    """Matrix-free PLIS = ‖∂ḡ/∂x‖₂ per sample, `[N]` float32.

    Args:
      apply_fn: batched logits function `(params, x [B, ...]) -> [B, K]`, e.g. `model.apply`.
      params: model parameters (the checkpoint being scored).
      x: `[N, ...]` inputs; y: `[N]` int labels.
      clip_norm: DP-SGD clipping norm C of ḡ; None for the un-clipped gradient.
      tol: stop when |σ_t − σ_{t−1}| <= tol · σ_t.
      max_iters: iteration cap; a sample that hits it gets a lower bound on ‖J‖₂ (check the
        returned iteration counts).
      key: PRNG key of the random start vector (default `jax.random.key(0)`).
      microbatch_size: samples per vmapped chunk (memory ≈ this × a few gradients).
      return_iterations: also return the iterations each sample used, `[N]` int32.

    Returns:
      scores `[N]`, or `(scores, iterations)` if `return_iterations`.
    """
    _check_plis(x, y, clip_norm, microbatch_size, tol, max_iters)
    key = jax.random.key(0) if key is None else key
    clip = None if clip_norm is None else float(clip_norm)
    sigma, iters = _plis_scores(apply_fn, params, x, y, key, clip, float(tol), int(max_iters),
                                microbatch_size)
    return (sigma, iters) if return_iterations else sigma


@partial(jax.jit, static_argnames=("apply_fn", "clip_norm", "microbatch_size"))
def _plis_attribution(apply_fn, params, x, y, clip_norm, microbatch_size):
    def one(xi, yi):
        gbar, vjp_fn = jax.vjp(clipped_gradient_fn(apply_fn, params, yi, clip_norm), xi)
        (jt_g,) = vjp_fn(gbar)                           # Jᵀ ḡ, one VJP
        norm = jnp.sqrt(_tree_sq_norm(gbar))
        return jnp.abs(jt_g) / jnp.where(norm > 0, norm, 1.0)

    return map_microbatches(jax.vmap(one), microbatch_size, x, y)


def plis_attribution(
    apply_fn: ApplyFn,
    params: PyTree,
    x: jax.Array,
    y: jax.Array,
    *,
    clip_norm: float | None = 1.0,
    microbatch_size: int | None = None,
) -> jax.Array:
    """Per-attribute privacy map |Jᵀḡ|/‖ḡ‖ = |∂‖ḡ‖₂/∂x|, same shape as x `[N, ...]`.

    Zero for samples whose gradient is clipped (see module docstring) and for ḡ = 0.
    """
    _check_plis(x, y, clip_norm, microbatch_size, max_iters=2)
    clip = None if clip_norm is None else float(clip_norm)
    return _plis_attribution(apply_fn, params, x, y, clip, microbatch_size)


@partial(jax.jit, static_argnames=("apply_fn", "clip_norm", "mode", "microbatch_size"))
def _plis_dense(apply_fn, params, x, y, clip_norm, mode, microbatch_size):
    jac = {"jacfwd": jax.jacfwd, "jacrev": jax.jacrev}[mode]

    def one(xi, yi):
        h = clipped_gradient_fn(apply_fn, params, yi, clip_norm)
        j = jac(lambda flat_x: ravel_pytree(h(flat_x.reshape(xi.shape)))[0])(xi.reshape(-1))
        # ‖J‖₂² = λ_max(JᵀJ); the D×D Gram is far cheaper to decompose than the P×D SVD.
        return jnp.sqrt(jnp.maximum(jnp.linalg.eigvalsh(j.T @ j)[-1], 0.0))

    return map_microbatches(jax.vmap(one), microbatch_size, x, y)


def plis_scores_dense(
    apply_fn: ApplyFn,
    params: PyTree,
    x: jax.Array,
    y: jax.Array,
    *,
    clip_norm: float | None = 1.0,
    mode: str = "jacfwd",
    microbatch_size: int | None = 1,
) -> jax.Array:
    """Reference PLIS from the materialised P×D Jacobian (`mode` 'jacfwd' or 'jacrev'), `[N]`.

    Memory per sample in flight is P·D floats (≈ 330 MB for the small CNN on 28×28 inputs),
    hence the default of one sample per chunk.
    """
    if mode not in ("jacfwd", "jacrev"):
        raise ValueError(f"mode must be 'jacfwd' or 'jacrev', got {mode!r}.")
    _check_plis(x, y, clip_norm, microbatch_size, max_iters=2)
    clip = None if clip_norm is None else float(clip_norm)
    return _plis_dense(apply_fn, params, x, y, clip, mode, microbatch_size)


def plis_subset(y: np.ndarray, n: int | None) -> np.ndarray:
    """Sorted indices of about n samples, the first n // C of each class (at least 2, so that
    per-class normalisation is defined); every sample when n is None or >= N."""
    y = np.asarray(y)
    if n is None or n >= len(y):
        return np.arange(len(y))
    classes = np.unique(y)
    per_class = max(2, n // len(classes))
    return np.sort(np.concatenate([np.flatnonzero(y == k)[:per_class] for k in classes]))
