"""Max pooling with a fast gradient on XLA:CPU, and a rewrite that puts it into any function.

The gradient of `lax.reduce_window` max (what `nn.max_pool` lowers to) is XLA's
`select_and_scatter`, which XLA:CPU runs an order of magnitude slower than the pooling itself:
measured here it was ~80% of the small CNN's whole backward pass at batch 256. For the common
non-overlapping case (window == stride, no padding) the same gradient is a handful of
element-wise selects over the window offsets, which XLA fuses well.

`max_pool` has that custom VJP, with exactly `select_and_scatter`'s semantics: the whole
cotangent goes to the *first* maximum of each window in row-major order (ties included).
`fast_max_pool_grads(fn)` re-traces `fn` and swaps every eligible `reduce_window_max` for it,
so models need no change. The rewrite is for XLA:CPU only: on GPU and TPU the backend's own
pooling gradient is fast, so there `fast_max_pool_grads(fn)` calls `fn` untouched (decided
each time it is traced, from `jax.default_backend()`):

    >>> loss = fast_max_pool_grads(lambda p, x, y: xent(model.apply(p, x), y))
    >>> jax.grad(loss)(params, x, y)      # same values as jax.grad of the original
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from functools import partial

import jax
import jax.numpy as jnp
from jax.extend import core as jex_core


def _window_split(x: jax.Array, window: Sequence[int]) -> jax.Array:
    """`[..., n_d * w_d, ...] -> [..., n_d, w_d, ...]` for every axis (VALID: remainder cut)."""
    trimmed = x[tuple(slice(0, (s // w) * w) for s, w in zip(x.shape, window))]
    shape = []
    for s, w in zip(trimmed.shape, window):
        shape += [s // w, w]
    return trimmed.reshape(shape)


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def max_pool(x: jax.Array, window: tuple[int, ...]) -> jax.Array:
    """Non-overlapping max pooling: window == stride on every axis, VALID padding.

    Args:
      x: any-rank array, e.g. `[B, H, W, C]`.
      window: window size per axis of `x`, e.g. `(1, 2, 2, 1)`.

    Returns:
      `[..., floor(s_d / w_d), ...]`, the same values as `lax.reduce_window(x, -inf, lax.max,
      window, window, "VALID")`.
    """
    return jnp.max(_window_split(x, window), axis=tuple(range(1, 2 * x.ndim, 2)))


def _max_pool_fwd(x, window):
    y = max_pool(x, window)
    return y, (x, y)


def _max_pool_bwd(window, res, g):
    x, y = res
    xs = _window_split(x, window)
    taken = jnp.zeros(y.shape, bool)
    parts = []
    for offset in itertools.product(*(range(w) for w in window)):
        index = tuple(i for o in offset for i in (slice(None), o))
        hit = (xs[index] == y) & ~taken  # first maximum wins, as in select_and_scatter
        taken = taken | hit
        parts.append(jnp.where(hit, g, jnp.zeros_like(g)))
    # [prod(w), *y.shape] -> interleave (n_d, w_d) -> trimmed x shape -> zero-pad the remainder.
    stacked = jnp.stack(parts).reshape(*window, *y.shape)
    nd = x.ndim
    perm = [a for d in range(nd) for a in (nd + d, d)]
    dx = jnp.transpose(stacked, perm).reshape([n * w for n, w in zip(y.shape, window)])
    dx = jnp.pad(dx, [(0, s - t) for s, t in zip(x.shape, dx.shape)])
    return (dx.astype(x.dtype),)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def _eligible(params: dict, shape: Sequence[int]) -> bool:
    window = tuple(params["window_dimensions"])
    return (
        tuple(params["window_strides"]) == window
        and all(tuple(p) == (0, 0) for p in params["padding"])
        and all(d == 1 for d in params["base_dilation"])
        and all(d == 1 for d in params["window_dilation"])
        and all(s >= w for s, w in zip(shape, window))
    )


def _eval_jaxpr(jaxpr, consts, *args):
    """`jax.core.eval_jaxpr` with eligible `reduce_window_max` swapped for `max_pool`."""
    env = {}

    def read(v):
        return v.val if isinstance(v, jex_core.Literal) else env[v]

    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        prim = eqn.primitive
        if prim is jex_core.primitives.reduce_window_max_p and _eligible(
            eqn.params, invals[0].shape
        ):
            outs = [max_pool(invals[0], tuple(eqn.params["window_dimensions"]))]
        elif prim is jex_core.primitives.jit_p:
            # Inline nested jits so pooling inside them is rewritten too.
            inner = eqn.params["jaxpr"]
            outs = _eval_jaxpr(inner.jaxpr, inner.consts, *invals)
        else:
            outs = prim.bind(*invals, **prim.get_bind_params(eqn.params))
            if not prim.multiple_results:
                outs = [outs]
        for v, o in zip(eqn.outvars, outs):
            env[v] = o
    return [read(v) for v in jaxpr.outvars]


def fast_max_pool_grads(fn: Callable) -> Callable:
    """`fn` with every non-overlapping max pooling replaced by `max_pool` (same values), on CPU.

    `fn` takes and returns pytrees of arrays; the rewrite happens each time the result is
    traced (so once under `jit`). Pooling with overlap, padding or dilation is left as is. On
    any backend other than CPU `fn` runs unchanged, with XLA's own pooling gradient.
    """

    def wrapped(*args):
        if jax.default_backend() != "cpu":
            return fn(*args)
        flat, tree = jax.tree.flatten(args)
        closed, out_shape = jax.make_jaxpr(
            lambda *f: fn(*jax.tree.unflatten(tree, f)), return_shape=True
        )(*flat)
        out = _eval_jaxpr(closed.jaxpr, closed.consts, *flat)
        return jax.tree.unflatten(jax.tree.structure(out_shape), out)

    return wrapped
