"""Data-parallel DP-SGD on a mesh: clip where the examples are, add the sums, noise once.

One step on a batch sharded over the `n` devices of mesh axis `axis`:

    S_d = Σ_{i on device d} m_i · clip_C(∇ℓ_i)        (local, `clipped_grads.clipped_grad`)
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
`ClippedGrad` with the same `sensitivity` as the one it wraps, and `train` records the same
DpEvent in the ledger as one device would (the event depends on q, σ and T only).

Gradient accumulation: `accumulation_steps=k` wraps the noise and optimiser in
`optax.MultiSteps`; one Poisson batch is drawn per logical step and split into k micro-batches
(each again sharded over the devices); the noise counter advances once per logical step, so
one draw per logical batch, exactly as `noise` documents.

Several processes (`distributed.initialize`): the same code runs on a mesh over all processes'
devices. Every process must hold the same full dataset and the same noise and sampling keys
(`train` broadcasts process 0's keys), so the batches and the noise agree everywhere.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import dp_accounting
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ecos_jax.parallel import mesh as mesh_lib
from ecos_jax.privacy import accounting, clipped_grads, layer_grads
from ecos_jax.privacy.dpsgd import DPSGDConfig, DPTrainState
from ecos_jax.privacy.keys import noise_key
from ecos_jax.privacy.ledger import PrivacyLedger
from ecos_jax.privacy.noise import add_gaussian_noise
from ecos_jax.privacy.sampling import PoissonSampler, poisson_batch
from ecos_jax.training.steps import dp_step_metrics

PyTree = Any
BatchLoss = Callable[[jax.Array, jax.Array], jax.Array]


def sharded_clipped_grad(grad_fn: clipped_grads.ClippedGrad, mesh: Mesh, *,
                         axis: str = mesh_lib.DATA_AXIS) -> clipped_grads.ClippedGrad:
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


def noisy_optimizer(config: DPSGDConfig, grad_fn: clipped_grads.ClippedGrad,
                    optimizer: optax.GradientTransformation, *, key: jax.Array,
                    accumulation_steps: int = 1) -> optax.GradientTransformation:
    """noise (σ, Δ from `grad_fn`, q·N = config.batch_size, the logical batch) then `optimizer`;
    inside `optax.MultiSteps(every_k_schedule=k)` when `accumulation_steps` k > 1."""
    k = int(accumulation_steps)
    if k < 1 or k != accumulation_steps:
        raise ValueError(f"accumulation_steps must be an integer >= 1, got {accumulation_steps!r}.")
    tx = optax.chain(
        add_gaussian_noise(config.noise_multiplier, grad_fn,
                           expected_batch_size=config.expected_batch_size, key=key,
                           accumulation_steps=k),
        optimizer)
    return optax.MultiSteps(tx, every_k_schedule=k) if k > 1 else tx


def make_dp_step(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    config: DPSGDConfig,
    *,
    key: jax.Array,
    mesh: Mesh,
    axis: str = mesh_lib.DATA_AXIS,
    loss: BatchLoss = layer_grads.softmax_xent,
    accumulation_steps: int = 1,
) -> tuple[Callable[[PyTree], DPTrainState], Callable]:
    """`(init_fn, update_fn)` of data-parallel DP-SGD, like `privacy.dpsgd.make_dp_step`.

    `init_fn(params)` returns the state replicated over `mesh`. `update_fn(state, x [B, ...],
    y [B], mask [B]) -> (state, metrics)` is jitted; B must be a multiple of the axis size
    (`mesh.shard_batch` pads and masks). With `accumulation_steps` k > 1 each call is one of
    k micro-batches of a logical batch and the parameters move on every k-th call only.

    `metrics` (float32 []): `loss`, `grad_norm`, `clipped_fraction` over the rows that
    contributed, `batch_size` (rows sampled), `nonfinite` (sampled rows zeroed).
    """
    base = clipped_grads.clipped_grad(
        model, l2_norm_clip=config.l2_norm_clip, loss=loss, method=config.grad_method,
        clipping=config.clipping, microbatch_size=config.microbatch_size)
    grad_fn = sharded_clipped_grad(base, mesh, axis=axis)
    tx = noisy_optimizer(config, grad_fn, optimizer, key=key, accumulation_steps=accumulation_steps)
    c = grad_fn.l2_norm_clip
    batch_sharding = NamedSharding(mesh, P(axis))

    def init_fn(params: PyTree) -> DPTrainState:
        state = DPTrainState(params, tx.init(params), jnp.zeros([], jnp.int32))
        return mesh_lib.replicate(mesh, state)

    def update_fn(state: DPTrainState, x, y, mask):
        x, y, mask = (jax.lax.with_sharding_constraint(a, batch_sharding) for a in (x, y, mask))
        grads, aux = grad_fn(state.params, x, y, mask)
        # After the psum: grads is the global clipped sum, noised here once (replicated).
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dp_step_metrics(aux["norms"], aux["losses"], mask.astype(bool), c)
        return DPTrainState(params, opt_state, state.step + 1), metrics

    return init_fn, jax.jit(update_fn)


@dataclasses.dataclass
class ParallelTrainResult:
    """What `train` returns: final params (replicated), per-step metrics, the DpEvent, truncated
    examples, and the devices the run used (`mesh.device_report`). `epsilon(delta)` computes ε
    on demand (a truncated-Poisson PLD takes seconds)."""

    params: PyTree
    history: list[dict[str, float]]
    steps: int
    event: dp_accounting.DpEvent
    truncated_examples: int
    nonfinite_examples: int
    devices: dict

    def epsilon(self, delta: float, accountant: str | None = None) -> float:
        """ε at δ of this run's event; None takes the first accountant that can analyse it."""
        if accountant is None:
            accountant = accounting.supported_accountants(self.event)[0]
        return accounting.epsilon(self.event, delta, accountant)


def shared_key(key: jax.Array) -> jax.Array:
    """`key` as process 0 holds it, on every process (identity in a single process): the noise
    and the batches must be the same everywhere, also when the key came from OS entropy."""
    if jax.process_count() == 1:
        return key
    from jax.experimental import multihost_utils  # only needed with several processes

    data = multihost_utils.broadcast_one_to_all(np.asarray(jax.random.key_data(key)))
    return jax.random.wrap_key_data(jnp.asarray(data), impl=jax.random.key_impl(key))


def train(
    model: nn.Module,
    params: PyTree,
    x: np.ndarray,
    y: np.ndarray,
    config: DPSGDConfig,
    optimizer: optax.GradientTransformation,
    *,
    steps: int,
    mesh: Mesh | None = None,
    axis: str = mesh_lib.DATA_AXIS,
    seed: int | None = None,
    ledger: PrivacyLedger | None = None,
    name: str = "dpsgd_model",
    loss: BatchLoss = layer_grads.softmax_xent,
    accumulation_steps: int = 1,
) -> ParallelTrainResult:
    """`steps` logical DP-SGD steps with Poisson batches sharded over `mesh`; the release is
    recorded in `ledger` exactly as the one-device `privacy.dpsgd.train` records it.

    Each logical step draws one Poisson batch of M = `config.sampler().max_batch_size` slots
    (the same draw whatever the device count), pads it with masked slots to a multiple of
    k·n (k = accumulation_steps, n = devices on `axis`) and runs k micro-batches of it. The
    accounting is that of one device: T = steps updates at rate q = batch_size / N (Poisson
    sampling only: the add-or-remove-one relation).

    Args:
      mesh: None = all local devices (`mesh.local_mesh()`).
      seed: None draws the keys from OS entropy (secure); an int makes the run reproducible.
      Others as in `privacy.dpsgd.train`.
    """
    if config.sampling != "poisson":
        raise ValueError("data-parallel train supports Poisson sampling only.")
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}.")
    if x.shape[0] != config.dataset_size or y.shape[0] != config.dataset_size:
        raise ValueError(f"config.dataset_size={config.dataset_size} but x has {x.shape[0]} and "
                         f"y {y.shape[0]} examples; the sampling rate q would be wrong.")
    if ledger is not None and ledger.reproducible != (seed is not None):
        raise ValueError(f"ledger.reproducible_seed={ledger.reproducible_seed} but seed={seed}: "
                         "create the ledger with reproducible_seed=seed.")
    if ledger is not None and ledger.relation != config.relation:
        raise ValueError(f"Poisson DP-SGD is accounted under {config.relation} but the ledger "
                         f"composes {ledger.relation} releases.")
    mesh = mesh_lib.local_mesh(axis=axis) if mesh is None else mesh
    n = mesh_lib.check_axis(mesh, axis)
    k = int(accumulation_steps)
    key, reproducible = noise_key(seed)
    key = shared_key(key)
    noise_k, sample_k = jax.random.split(key)
    init_fn, update_fn = make_dp_step(model, optimizer, config, key=noise_k, mesh=mesh, axis=axis,
                                      loss=loss, accumulation_steps=k)
    state = init_fn(jax.tree.map(np.asarray, params))
    sampler: PoissonSampler = config.sampler()
    m = sampler.max_batch_size
    m_pad = mesh_lib.padded_size(m, n * k)
    x_all, y_all = mesh_lib.replicate(mesh, (np.asarray(x), np.asarray(y)))

    @jax.jit
    def logical_step(state, t):
        b = poisson_batch(jax.random.fold_in(sample_k, t), dataset_size=config.dataset_size,
                          sampling_rate=config.sampling_rate, max_batch_size=m)
        idx = jnp.pad(b.indices, (0, m_pad - m))
        mask = jnp.pad(b.mask, (0, m_pad - m))
        xb, yb = x_all[idx], y_all[idx]
        micro = [a.reshape(k, m_pad // k, *a.shape[1:]) for a in (xb, yb, mask)]
        metrics = []
        for j in range(k):  # k is small and static; unrolled so each call sees one micro-batch
            state, mj = update_fn(state, micro[0][j], micro[1][j], micro[2][j])
            metrics.append(mj)
        sampled = sum(mj["batch_size"] for mj in metrics)
        kept = [mj["batch_size"] - mj["nonfinite"] for mj in metrics]
        total = jnp.maximum(sum(kept), 1.0)
        out = {name: sum(mj[name] * w for mj, w in zip(metrics, kept)) / total
               for name in ("loss", "grad_norm", "clipped_fraction")}
        out["batch_size"] = sampled
        out["nonfinite"] = sum(mj["nonfinite"] for mj in metrics)
        return state, out, b.truncated

    history, truncated, truncated_batches, nonfinite = [], 0, 0, 0
    for t in range(int(steps)):
        state, metrics, cut = logical_step(state, np.int32(t))  # numpy: valid on any mesh
        record = {"step": t + 1, **{kk: float(v) for kk, v in metrics.items()}}
        truncated += int(cut)
        truncated_batches += int(cut) > 0
        nonfinite += int(record["nonfinite"])
        history.append(record)
    event = config.event(int(steps))
    if ledger is not None:
        # The same entry as one device: nothing in the release depends on the device count.
        ledger.record(
            name, event, sensitivity=config.sensitivity, relation=config.relation,
            mechanism="DP-SGD", sampling=config.sampling, sampling_rate=config.sampling_rate,
            noise_multiplier=config.noise_multiplier, l2_norm_clip=config.l2_norm_clip,
            steps=int(steps), dataset_size=config.dataset_size, batch_size=config.batch_size,
            max_batch_size=m, truncated_examples=truncated, truncated_batches=truncated_batches,
            nonfinite_examples=nonfinite,
            reproducible=reproducible)
    return ParallelTrainResult(params=state.params, history=history, steps=int(steps), event=event,
                               truncated_examples=truncated,
                               nonfinite_examples=nonfinite, devices=mesh_lib.device_report(mesh))
