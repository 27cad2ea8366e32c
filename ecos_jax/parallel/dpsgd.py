"""The sharded pieces of data-parallel DP-SGD: clip where the examples are, add the sums.

`privacy.dpsgd.make_dp_step(..., mesh=)` and `privacy.dpsgd.train(..., mesh=)` are the one
DP-SGD step and training run; given a mesh of n > 1 devices they build their step from these
pieces. One step on a batch sharded over the n devices of mesh axis `axis`:

    S_d = Σ_{i on device d} m_i · clip_C(∇ℓ_i)        (local, `sharded_clipped_grad`)
    S   = psum_d S_d                                    (one all-reduce of a params-sized sum)
    G   = S + N(0, σ²C²I)                               (`noise.add_gaussian_noise`, ONE key)
    θ  ← optimiser(θ, G / (q·N))                        (replicated: every device, same update)

S is the same sum the one-device step computes, only added in another order, so the result
equals the one-device step to float tolerance whatever n is. The noise is drawn after the
reduction, from the key in the (replicated) optimiser state: every device draws the same
N(0, σ²C²I) and adds it to the same S, so the released G carries exactly one draw. Drawing on
each device before the psum would add n draws (std σC·√n, more noise than accounted for); with
n different keys per device but one draw each, the devices would disagree on θ.

The sensitivity is unchanged by n: adding or removing one example changes exactly one device's
S_d, by at most C in L2 norm, and therefore S by at most C. `sharded_clipped_grad` returns a
`ClippedGrad` with the same `sensitivity` as the one it wraps, and `privacy.dpsgd.train`
records the same DpEvent in the ledger whatever the device count (the event depends on q, σ
and T only).

Several processes (`distributed.initialize`): the same code runs on a mesh over all processes'
devices. Every process must hold the same full dataset and the same noise and sampling keys
(`shared_key` broadcasts process 0's), so the batches and the noise agree everywhere.

Import direction: `privacy.dpsgd` imports this module, never the reverse. This module (like
`mesh`) needs only JAX: it wraps a `ClippedGrad` it is handed, so DP-SGD keeps one step and
one training run in `privacy`, and `parallel` is the sharding layer under it (only
`parallel.scores`, which shards the valuation scores, sits above `valuation`).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ecos_jax.parallel import mesh as mesh_lib

if TYPE_CHECKING:  # annotation only: privacy imports this module (see the docstring)
    from ecos_jax.privacy.clipped_grads import ClippedGrad

PyTree = Any


def sharded_clipped_grad(grad_fn: ClippedGrad, mesh: Mesh, *,
                         axis: str = mesh_lib.DATA_AXIS) -> ClippedGrad:
    """`grad_fn` computed on each device's rows and summed across `axis` with `psum`.

    Args:
      grad_fn: a `clipped_grads.clipped_grad(...)` ("layers" or "vmap"; its microbatch_size
        bounds each device's per-example work).
      mesh, axis: the mesh and the axis the batch is split over.

    Returns:
      A `ClippedGrad` with the same clip norm and sensitivity, called as
      `(params, x [B, ...], y [B], mask [B]) -> (sum, aux)` with B a multiple of the axis size
      (see `mesh.shard_batch`); `sum` is replicated (like params), `aux` (`norms`, `losses`,
      `nonfinite`, each [B]) stays sharded along the batch.
    """
    n = mesh_lib.check_axis(mesh, axis)
    inner = grad_fn.fn

    def local(params, x, y, mask):
        total, aux = inner(params, x, y, mask)
        # The only cross-device traffic: one params-sized sum (the norms never leave the device
        # except as metrics).
        return jax.lax.psum(total, axis), aux

    # check_vma=False: each device differentiates its own program, as on one device. With the
    # varying-axes check on, autodiff psums the gradient of every device-invariant value across
    # devices (the transpose of replication): the replicated params and the zero perturbations
    # `layer_grads` differentiates to get each layer's output gradients, which would mix the
    # per-example gradients of different devices' rows before clipping. The only collective is
    # the explicit psum below, of which the result is the same on every device (out P()).
    mapped = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(axis), P(axis), P(axis)),
                           out_specs=(P(), P(axis)), check_vma=False)

    def fn(params, x, y, mask):
        if x.shape[0] % n:
            raise ValueError(f"the batch ({x.shape[0]} rows) must be a multiple of the {n} "
                             f"devices on axis {axis!r}: pad it with mesh.shard_batch.")
        mask = jnp.ones(x.shape[0], jnp.float32) if mask is None else mask.astype(jnp.float32)
        return mapped(params, x, y, mask)

    return dataclasses.replace(grad_fn, fn=fn)


def constrain_batch(mesh: Mesh, axis: str, *arrays: jax.Array) -> tuple[jax.Array, ...]:
    """Inside jit: the arrays' leading (batch) axis laid out over `axis` (a batch gathered from
    replicated data is replicated until told otherwise; the clipped sum wants it split)."""
    sharding = NamedSharding(mesh, P(axis))
    return tuple(jax.lax.with_sharding_constraint(a, sharding) for a in arrays)


def shared_key(key: jax.Array) -> jax.Array:
    """`key` as process 0 holds it, on every process (identity in a single process): the noise
    and the batches must be the same everywhere, also when the key came from OS entropy."""
    if jax.process_count() == 1:
        return key
    from jax.experimental import multihost_utils  # only needed with several processes

    data = multihost_utils.broadcast_one_to_all(np.asarray(jax.random.key_data(key)))
    return jax.random.wrap_key_data(jnp.asarray(data), impl=jax.random.key_impl(key))
