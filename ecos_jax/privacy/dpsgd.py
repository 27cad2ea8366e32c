"""DP-SGD: per-example gradients → clip → Gaussian noise on the sum → any optax optimiser.

One jitted step `update_fn(state, x, y, mask) -> (state, metrics)`:

    G = Σ_i m_i · clip_C(∇ℓ_i) + N(0, σ²C²I),     update = optimiser(G / (q·N))

built from composable pieces: `clipped_grads.clipped_grad` (the param-shaped clipped sum, L2
sensitivity C; per-example work from layer inputs and output gradients, default, or from
`vmap(grad)`, any model), then `noise.add_gaussian_noise` (an optax transform taking C from
that function), then the optimiser. `train` runs many such steps over
Poisson-sampled, fixed-shape padded batches in one compiled `lax.scan` (or, with
`padding="buckets"`, the same batches each on the shortest static prefix that holds its
sampled rows, dispatched from the host), counts truncated batches, and records the DpEvent of the sampler that runs in a `PrivacyLedger`: truncated
Poisson (PLD only) whenever the batch has fewer slots than N, in every run, whether or not a
batch was cut.

Rows that do not count add exact zeros, whatever data they hold: padding slots (which point
at dataset row 0) and sampled examples whose gradient has a NaN or inf. Both are selected away
with `jnp.where`, never multiplied by a 0 mask (0 · NaN = NaN). The rule for a non-finite
gradient is: zero it before clipping and count it (`metrics["nonfinite"]`,
`DPTrainResult.nonfinite_examples`). A zero contribution has norm ≤ C, so the sum's L2
sensitivity stays C under adding or removing one example and the accounting is unchanged.

Large logical batches: `train` draws one Poisson batch of expected size `batch_size` per step
and `microbatch_size` bounds the memory of its per-example work, so a step is one logical
batch, noised once, and the event has `steps` steps at rate q = batch_size / N. With
`accumulation_steps=k` it instead feeds k micro-batches of one logical batch through
`optax.MultiSteps` (see `noise`); it is accounted the same way: T applied updates,
q = E[logical batch] / N, i.e. `DPSGDConfig(batch_size=<logical batch>).event(T)`.

Several devices: `make_dp_step(..., mesh=)` and `train(..., mesh=)` are the same step and run
data-parallel over a `jax.sharding.Mesh` (each device clips its own rows, one psum adds the
sums, the noise is added once after it: `parallel.dpsgd`); the ledger entry is the one-device
entry. `mesh=None` is one device.

`train(..., checkpoint_dir=...)` checkpoints the whole run state with orbax and resumes a
killed run to the same parameters (`dpsgd_checkpoint`; the checkpoint holds the secret noise
key and must be protected like the data).

    >>> config = DPSGDConfig(dataset_size=len(x), batch_size=256, l2_norm_clip=1.0,
    ...                      noise_multiplier=1.1)
    >>> result = train(model, params, x, y, config, optax.sgd(0.5), steps=1000, ledger=ledger)
    >>> ledger.epsilon()          # includes this run
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import math
import os
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import dp_accounting
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from ecos_jax.parallel import dpsgd as parallel_dpsgd
from ecos_jax.parallel import mesh as mesh_lib
from ecos_jax.privacy import accounting, clipped_grads, clipping, dpsgd_checkpoint, layer_grads
from ecos_jax.privacy.keys import noise_key
from ecos_jax.privacy.ledger import PrivacyLedger
from ecos_jax.privacy.noise import add_gaussian_noise
from ecos_jax.privacy.sampling import PoissonSampler, ShuffleSampler, poisson_batch, prefix_buckets
from ecos_jax.training.loop import Hook, train_loop
from ecos_jax.training.state import TrainState, init_state
from ecos_jax.training.steps import clipped_gradient_step

PyTree = Any
BatchLoss = Callable[[jax.Array, jax.Array], jax.Array]

log = logging.getLogger(__name__)

GRAD_METHODS = clipped_grads.METHODS
# How `train` runs a Poisson batch's M slots: "full", every step at M in one compiled scan per
# chunk; "buckets", each step on the shortest of a few static prefixes holding its sampled rows
# (or a sequence of prefix lengths, chosen by the caller).
PADDINGS = ("full", "buckets")


def prefix_lengths(padding, *, max_batch_size: int, expected_batch_size: float,
                   dataset_size: int, multiple: int = 1) -> tuple[int, ...]:
    """The static batch lengths `train(..., padding=padding)` runs a Poisson step at.

    "full": `(M',)`, M' = M rounded up to a multiple of `multiple` (k·devices). "buckets":
    `sampling.prefix_buckets` (q·N + k std for k in -0.5, 0.5, 1.5, 2.5, rounded up to a
    multiple of lcm(8, `multiple`); none when M has fewer than 64 padding slots) then M'. A
    sequence of ints in [1, M): those lengths rounded up to a multiple of `multiple`, then M'.

    Raises:
      ValueError: another string, or lengths that are not increasing ints in [1, M).
    """
    m = int(max_batch_size)
    padded = multiple * -(-m // multiple)
    if isinstance(padding, str):
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS} or a sequence of prefix "
                             f"lengths, got {padding!r}.")
        if padding == "full":
            return (padded,)
        raw = prefix_buckets(m, expected_batch_size, dataset_size,
                             multiple=math.lcm(8, multiple))[:-1]
    else:
        raw = tuple(padding)
        ok = all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) for n in raw)
        if not raw or not ok or list(raw) != sorted(set(raw)) or not 1 <= raw[0] <= raw[-1] < m:
            raise ValueError(f"padding lengths must be increasing ints in [1, M={m}), got "
                             f"{padding!r}.")
    rounded = {multiple * -(-int(n) // multiple) for n in raw}
    return tuple(sorted(n for n in rounded if n < padded)) + (padded,)


@dataclasses.dataclass(frozen=True)
class DPSGDConfig:
    """Everything that determines DP-SGD's privacy, validated on construction.

    Attributes:
      dataset_size: N, the number of private training examples.
      batch_size: expected batch size q·N (Poisson) or the fixed batch size (shuffle).
      l2_norm_clip: C > 0 (inf only with noise_multiplier = 0: plain SGD on summed grads).
      noise_multiplier: σ ≥ 0; noise std on the sum is σ·C. 0 means non-private.
      sampling: "poisson" (amplified accounting, add/remove-one neighbours) or "shuffle" (no
        amplification claimed, replace-one neighbours, sensitivity 2C).
      max_batch_size: Poisson batch slots M (default q·N + 5 std); over-full batches are cut
        to M random examples, and with M < N the run is accounted as truncated Poisson.
      clipping: "flat" or "per_layer" (each of L layers to C/√L).
      grad_method: "layers" (fast, Dense/Conv models) or "vmap" (any model).
      microbatch_size: examples per chunk of per-example work (bounded memory); None = all.
    """

    dataset_size: int
    batch_size: int
    l2_norm_clip: float = 1.0
    noise_multiplier: float = 1.0
    sampling: str = "poisson"
    max_batch_size: int | None = None
    clipping: str = "flat"
    grad_method: str = "layers"
    microbatch_size: int | None = None

    def __post_init__(self):
        if isinstance(self.dataset_size, bool) or int(self.dataset_size) != self.dataset_size or self.dataset_size < 1:
            raise ValueError(f"dataset_size must be a positive integer, got {self.dataset_size!r}.")
        if not 1 <= int(self.batch_size) <= self.dataset_size:
            raise ValueError(f"batch_size must be in [1, N={self.dataset_size}], got {self.batch_size}.")
        sigma = float(self.noise_multiplier)
        if not sigma >= 0.0 or math.isinf(sigma):
            raise ValueError(f"noise_multiplier sigma must be finite and >= 0, got {self.noise_multiplier}.")
        c = clipping.check_clip(self.l2_norm_clip)
        if math.isinf(c) and sigma > 0.0:
            raise ValueError("l2_norm_clip = inf gives unbounded sensitivity: noise cannot make it private.")
        if self.sampling not in accounting.SAMPLINGS:
            raise ValueError(f"sampling must be one of {accounting.SAMPLINGS}, got {self.sampling!r}.")
        if self.clipping not in clipping.CLIPPINGS:
            raise ValueError(f"clipping must be one of {clipping.CLIPPINGS}, got {self.clipping!r}.")
        if self.grad_method not in GRAD_METHODS:
            raise ValueError(f"grad_method must be one of {GRAD_METHODS}, got {self.grad_method!r}.")
        if self.microbatch_size is not None and self.microbatch_size < 1:
            raise ValueError(f"microbatch_size must be >= 1 or None, got {self.microbatch_size}.")
        self.sampler()  # validates max_batch_size

    @property
    def sampling_rate(self) -> float:
        """q = batch_size / N."""
        return self.batch_size / self.dataset_size

    @property
    def expected_batch_size(self) -> float:
        return float(self.batch_size)

    def sampler(self) -> PoissonSampler | ShuffleSampler:
        if self.sampling == "poisson":
            return PoissonSampler(self.dataset_size, self.sampling_rate, self.max_batch_size)
        if self.max_batch_size not in (None, self.batch_size):
            raise ValueError("max_batch_size applies to Poisson sampling only.")
        return ShuffleSampler(self.dataset_size, self.batch_size)

    @property
    def relation(self) -> str:
        """The neighbouring relation the event holds under: add/remove one example for Poisson
        sampling, replace one for shuffling (`accounting.relation_of`)."""
        return accounting.relation_of(self.sampling)

    @property
    def sensitivity(self) -> str:
        """The L2 sensitivity of one step's clipped-gradient sum, with its relation, in words."""
        c = self.l2_norm_clip
        if self.sampling == "poisson":
            return (f"L2 = C = {c} on the sum of clipped per-example gradients ({self.clipping} "
                    "clipping; non-finite gradients zeroed); adding or removing one example")
        return (f"L2 = 2C = {2 * c} on the sum of clipped per-example gradients ({self.clipping} "
                "clipping; non-finite gradients zeroed); replacing one example")

    def event(self, steps: int) -> dp_accounting.DpEvent:
        """The DpEvent of `steps` steps of the sampler that runs; non-private when σ = 0.

        Poisson batches have M = `sampler().max_batch_size` slots; when M < N an over-full
        batch is cut to M random examples, so the event is truncated Poisson (PLD only), in
        every run, whether or not a batch was actually cut (`accounting.dpsgd_event`).
        """
        if self.sampling == "poisson":
            return accounting.dpsgd_event(
                self.sampling_rate, self.noise_multiplier, steps, "poisson",
                dataset_size=self.dataset_size, max_batch_size=self.sampler().max_batch_size)
        return accounting.dpsgd_event(self.sampling_rate, self.noise_multiplier, steps,
                                      self.sampling)

    def accountants(self, steps: int) -> tuple[str, ...]:
        """The accountants that can compute this run's ε (only "pld" under truncation)."""
        return accounting.supported_accountants(self.event(steps))

    def epsilon(self, steps: int, delta: float, accountant: str | None = None) -> float:
        """ε at δ of `steps` steps; `accountant` None takes the first of `accountants(steps)`
        (RDP where it applies); an accountant that cannot compose the event raises ValueError."""
        if accountant is None:
            accountant = self.accountants(steps)[0]
        return accounting.epsilon(self.event(steps), delta, accountant)

    def calibrated(
        self, target_epsilon: float, delta: float, *, steps: int, accountant: str = "rdp",
        allow_large_delta: bool = False,
    ) -> DPSGDConfig:
        """This config with σ calibrated so `event(steps)` reaches `target_epsilon` at δ.

        Calibrates for exactly the event `train` records (truncated Poisson when M < N, where
        PLD is used whatever `accountant` says). inf gives σ = 0 and C = inf (non-private).
        """
        if math.isinf(float(target_epsilon)):
            return dataclasses.replace(self, noise_multiplier=0.0, l2_norm_clip=math.inf)
        poisson = self.sampling == "poisson"
        sigma = accounting.calibrate_dpsgd_sigma(
            target_epsilon, delta, q=self.sampling_rate, steps=steps, accountant=accountant,
            sampling=self.sampling, dataset_size=self.dataset_size,
            max_batch_size=self.sampler().max_batch_size if poisson else None,
            allow_large_delta=allow_large_delta,
        )
        return dataclasses.replace(self, noise_multiplier=sigma)


# DP-SGD trains with the loop's state; the noise key lives in `opt_state` (`NoiseState`) and
# the secret sampling key in `rng`.
DPTrainState = TrainState


def noisy_optimizer(config: DPSGDConfig, grad_fn: clipped_grads.ClippedGrad,
                    optimizer: optax.GradientTransformation, *, key: jax.Array,
                    accumulation_steps: int = 1) -> optax.GradientTransformation:
    """noise (σ, Δ from `grad_fn`, q·N = config.batch_size, the logical batch) then `optimizer`;
    inside `optax.MultiSteps(every_k_schedule=k)` when `accumulation_steps` k > 1 (each call
    is then one of k micro-batches of a logical batch, noised once per logical batch)."""
    k = _accumulation(accumulation_steps)
    tx = optax.chain(
        add_gaussian_noise(config.noise_multiplier, grad_fn,
                           expected_batch_size=config.expected_batch_size, key=key,
                           accumulation_steps=k),
        optimizer)
    return optax.MultiSteps(tx, every_k_schedule=k) if k > 1 else tx


def _accumulation(accumulation_steps) -> int:
    k = int(accumulation_steps)
    if isinstance(accumulation_steps, bool) or k < 1 or k != accumulation_steps:
        raise ValueError(f"accumulation_steps must be an integer >= 1, got {accumulation_steps!r}.")
    return k


def _devices(mesh: Mesh | None, axis: str) -> int:
    """How many devices the batch is split over: 1 without a mesh (or a mesh of one)."""
    return 1 if mesh is None else mesh_lib.check_axis(mesh, axis)


def make_dp_step(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    config: DPSGDConfig,
    *,
    key: jax.Array,
    loss: BatchLoss = layer_grads.softmax_xent,
    mesh: Mesh | None = None,
    axis: str = mesh_lib.DATA_AXIS,
    accumulation_steps: int = 1,
) -> tuple[Callable[[PyTree], TrainState], Callable]:
    """Builds `(init_fn, update_fn)` for DP-SGD with `optimizer` after clip and noise.

    `update_fn(state, x [M, ...], y [M], mask [M]) -> (state, metrics)` is pure and jitted;
    rows with mask 0 (Poisson padding) contribute exact zeros whatever their values, and so do
    sampled examples whose gradient is not finite (counted in `metrics["nonfinite"]`). The
    noise key lives in the optimiser state (`NoiseState`), advanced per step by `fold_in`.

    `metrics`: `loss`, `grad_norm`, `clipped_fraction` (means over the rows that contributed),
    `batch_size` (examples sampled) and `nonfinite` (sampled examples zeroed), all float32 [].

    One path for both grad methods and any device count: `grad_fn = clipped_grad(model,
    method=config.grad_method, ...)` gives the param-shaped clipped sum (sensitivity C), on a
    mesh of n > 1 devices computed on each device's rows and summed with one psum
    (`parallel.dpsgd.sharded_clipped_grad`), then the training loop's
    `clipped_gradient_step(grad_fn, optax.chain(add_gaussian_noise(σ, grad_fn,
    expected_batch_size=q·N), optimizer))`: the noise is added once, after the sum.

    Args:
      mesh: None: one device. A mesh: `init_fn` replicates the state over it and, with n > 1
        devices on `axis`, M must be a multiple of n (`parallel.mesh.shard_batch` pads and
        masks) and each device clips its own rows.
      accumulation_steps: k > 1 wraps noise and optimiser in `optax.MultiSteps`: each call is
        one of k micro-batches of a logical batch; the parameters move on every k-th call.
    """
    grad_fn = clipped_grads.clipped_grad(
        model, l2_norm_clip=config.l2_norm_clip, loss=loss, method=config.grad_method,
        clipping=config.clipping, microbatch_size=config.microbatch_size)
    sharded = _devices(mesh, axis) > 1
    if sharded:
        grad_fn = parallel_dpsgd.sharded_clipped_grad(grad_fn, mesh, axis=axis)
    tx = noisy_optimizer(config, grad_fn, optimizer, key=key,
                         accumulation_steps=accumulation_steps)
    step = clipped_gradient_step(grad_fn, tx)

    def init_fn(params: PyTree) -> TrainState:
        state = init_state(params, tx)
        return state if mesh is None else mesh_lib.replicate(mesh, state)

    def update_fn(state: TrainState, x: jax.Array, y: jax.Array, mask: jax.Array):
        if sharded:
            x, y, mask = parallel_dpsgd.constrain_batch(mesh, axis, x, y, mask)
        return step(state, (x, y, mask))

    return init_fn, jax.jit(update_fn)


@dataclasses.dataclass
class DPTrainResult:
    """What `train` returns. `epsilon` is this run's own ε at the ledger's δ per accountant,
    None for an accountant that cannot analyse the sampler (RDP under truncated Poisson).

    `nonfinite_examples`: sampled examples whose gradient had a NaN/inf and was zeroed (see
    `train`). `resumed_from`: the step the run was restored at from a checkpoint (0: fresh).
    `devices`: what the run ran on (`parallel.mesh.device_report` of its mesh). `padding`:
    how the Poisson slots ran (`train`); `lengths`: the static batch lengths a step could run
    at (one, the padded M, unless `padding="buckets"`). `compilations`: compiled chunks
    ("full": 1) or compiled step lengths ("buckets": the lengths this call used, ≤ len(lengths)).
    """

    params: PyTree
    history: list[dict[str, float]]
    steps: int
    event: dp_accounting.DpEvent
    epsilon: dict[str, float | None]
    truncated_examples: int
    truncated_batches: int
    reproducible: bool
    compilations: int
    nonfinite_examples: int = 0
    resumed_from: int = 0
    devices: dict = dataclasses.field(default_factory=dict)
    padding: str | tuple[int, ...] = "full"
    lengths: tuple[int, ...] = ()


def _logical_step(update_fn, state, x_all, y_all, idx, mask, accumulation_steps):
    """One logical batch `idx, mask [L]` (L a multiple of k) run as k = `accumulation_steps`
    contiguous micro-batches of L/k rows; returns (state, the batch's metrics). Metrics are
    the micro-batches' combined: loss, grad_norm, clipped_fraction weighted by the rows that
    contributed, batch_size and nonfinite summed."""
    k = accumulation_steps
    if k == 1:
        return update_fn(state, x_all[idx], y_all[idx], mask)
    per = idx.shape[0] // k
    parts = []
    for j in range(k):  # k is small and static: unrolled, one micro-batch per call
        rows = slice(j * per, (j + 1) * per)
        state, mj = update_fn(state, x_all[idx[rows]], y_all[idx[rows]], mask[rows])
        parts.append(mj)
    kept = [mj["batch_size"] - mj["nonfinite"] for mj in parts]
    total = jnp.maximum(sum(kept), 1.0)
    metrics = {name: sum(mj[name] * w for mj, w in zip(parts, kept)) / total
               for name in ("loss", "grad_norm", "clipped_fraction")}
    metrics["batch_size"] = sum(mj["batch_size"] for mj in parts)
    metrics["nonfinite"] = sum(mj["nonfinite"] for mj in parts)
    return state, metrics


def _padded_poisson(sample_key, step, *, n, q, m, padded):
    """The Poisson batch of logical step `step`: `poisson_batch(fold_in(key, step))` with its
    m slots padded with masked slots (pointing at row 0) to `padded`. Returns (indices
    [padded], mask [padded], examples dropped by truncation)."""
    b = poisson_batch(jax.random.fold_in(sample_key, step), dataset_size=n, sampling_rate=q,
                      max_batch_size=m)
    idx, mask = b.indices, b.mask
    if padded != m:  # padding slots point at row 0 and are masked out
        idx, mask = jnp.pad(idx, (0, padded - m)), jnp.pad(mask, (0, padded - m))
    return idx, mask, b.truncated


def _run_chunk(update_fn, state, sample_key, x_all, y_all, active, *, chunk, sampler_kind, n, q, m,
               shuffle_idx, accumulation_steps=1, padded=None):
    """Up to `chunk` logical DP-SGD steps in one scan (the first `active` run; the rest are
    skipped so every chunk has one compiled shape). Poisson batches are drawn inside, shuffled
    ones given. Each logical batch of m slots is padded with masked slots to `padded` (a
    multiple of k·devices) and run as k = `accumulation_steps` micro-batches.

    Returns (state, truncated examples, truncated batches, per-step metric means, per-step
    metric sums, whether every parameter is finite)."""
    k = accumulation_steps
    padded = m if padded is None else padded

    def one_step(state, t):
        if sampler_kind == "poisson":
            # The logical step: the state counts micro-batches, k per logical batch.
            idx, mask, dropped = _padded_poisson(sample_key, state.step // k, n=n, q=q, m=m,
                                                 padded=padded)
        else:
            idx, mask, dropped = shuffle_idx[t], jnp.ones(m, bool), jnp.zeros([], jnp.int32)
            if padded != m:  # padding slots point at row 0 and are masked out
                idx, mask = jnp.pad(idx, (0, padded - m)), jnp.pad(mask, (0, padded - m))
        state, metrics = _logical_step(update_fn, state, x_all, y_all, idx, mask, k)
        return state, metrics, dropped

    def body(carry, t):
        state, trunc, trunc_batches = carry
        skip_metrics = jax.eval_shape(lambda s: one_step(s, t)[1], state)
        state, metrics, dropped = jax.lax.cond(
            t < active,
            one_step,
            lambda s, t: (s, jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), skip_metrics),
                          jnp.zeros([], jnp.int32)),
            state, t,
        )
        return (state, trunc + dropped, trunc_batches + (dropped > 0)), metrics

    zero = jnp.zeros([], jnp.int32)
    (state, trunc, trunc_batches), metrics = jax.lax.scan(
        body, (state, zero, zero), jnp.arange(chunk)
    )
    live = jnp.arange(chunk) < active
    # Skipped steps are selected away: their zero metrics must not enter the means.
    total = jax.tree.map(lambda v: jnp.sum(jnp.where(live, v, 0.0)), metrics)
    mean = jax.tree.map(lambda v: v / jnp.maximum(jnp.sum(live), 1), total)
    return state, trunc, trunc_batches, mean, total, _all_finite(state.params)


def _all_finite(params) -> jax.Array:
    """bool []: every parameter is finite."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)]))


class _BucketedChunks:
    """The bucketed Poisson path of `train` (`padding="buckets"`): chunk i's logical steps
    draw the same padded batches as `_run_chunk` (`_padded_poisson`, all `chunk` of them in
    one compiled call from the sampling key and the step numbers, which is all a batch depends
    on), the host reads each batch's last sampled row, and each step is dispatched on the
    shortest of `lengths` that holds it: one compiled step per length, made on first use, no
    conditional inside it. Only padding slots (mask 0) beyond that prefix are skipped, so the
    batch, the clipped sum (up to float summation order) and the sampler are unchanged.

    Calling it returns what `_run_chunk` returns, as host values, plus the mean slots computed
    per step."""

    def __init__(self, update_fn, *, chunk, n, q, m, padded, lengths, accumulation_steps,
                 mesh, traces):
        self.update_fn, self.chunk, self.k = update_fn, chunk, accumulation_steps
        self.lengths, self.traces, self.steps = tuple(lengths), traces, {}
        draw = partial(_padded_poisson, n=n, q=q, m=m, padded=padded)

        def draws(sample_key, first):
            idx, mask, dropped = jax.lax.map(lambda t: draw(sample_key, first + t),
                                             jnp.arange(chunk))
            # 1 + the last slot that counts (0 if none): the sampled rows come first.
            last = jnp.max(jnp.where(mask, jnp.arange(1, padded + 1), 0), axis=1)
            return idx, mask, last, dropped

        # Replicated outputs on a mesh: every process can read `last` on its host.
        replicated = None if mesh is None else jax.sharding.NamedSharding(
            mesh, jax.sharding.PartitionSpec())
        self.draws = jax.jit(draws, out_shardings=replicated)
        self.finite = jax.jit(_all_finite)

    def step(self, length: int) -> Callable:
        """The compiled logical step on the first `length` slots of row `j` of a chunk's draws."""
        if length not in self.steps:
            @partial(jax.jit, donate_argnums=(0,))
            def run(state, x_all, y_all, idx, mask, j):
                self.traces.append(length)  # runs once per compilation
                idx = jax.lax.dynamic_index_in_dim(idx, j, keepdims=False)[:length]
                mask = jax.lax.dynamic_index_in_dim(mask, j, keepdims=False)[:length]
                return _logical_step(self.update_fn, state, x_all, y_all, idx, mask, self.k)

            self.steps[length] = run
        return self.steps[length]

    def __call__(self, state, x_all, y_all, *, begin: int, active: int):
        idx, mask, last, dropped = self.draws(state.rng, np.int32(begin))
        last, dropped = np.asarray(last)[:active], np.asarray(dropped)[:active]
        metrics, slots = [], []
        for j, rows in enumerate(last):
            length = self.lengths[bisect.bisect_left(self.lengths, int(rows))]
            state, mj = self.step(length)(state, x_all, y_all, idx, mask, np.int32(j))
            metrics.append(mj)
            slots.append(length)
        per_step = jax.device_get(metrics)
        total = {name: float(np.sum([mj[name] for mj in per_step], dtype=np.float64))
                 for name in per_step[0]}
        mean = {name: v / active for name, v in total.items()}
        return (state, int(dropped.sum()), int((dropped > 0).sum()), mean, total,
                bool(self.finite(state.params)), float(np.mean(slots)))


def train(
    model: nn.Module,
    params: PyTree,
    x: np.ndarray,
    y: np.ndarray,
    config: DPSGDConfig,
    optimizer: optax.GradientTransformation,
    *,
    steps: int,
    seed: int | None = None,
    ledger: PrivacyLedger | None = None,
    name: str = "dpsgd_model",
    loss: BatchLoss = layer_grads.softmax_xent,
    log_every: int = 100,
    hooks: Sequence[Hook] = (),
    desc: str = "dp-sgd",
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    mesh: Mesh | None = None,
    axis: str = mesh_lib.DATA_AXIS,
    accumulation_steps: int = 1,
    padding: str | Sequence[int] = "full",
) -> DPTrainResult:
    """Trains with DP-SGD for `steps` steps and records the release in `ledger`.

    The run is the training loop (`training.loop.train_loop`) over chunks of `log_every`
    steps, each chunk one compiled `lax.scan` that draws its Poisson batches inside; the
    optimiser state (with the noise key) and the sampling key are carried from chunk to
    chunk in the loop's `TrainState`.

    Padding (`padding`, Poisson sampling only): every batch has M = `max_batch_size` slots,
    the sampled rows first and masked padding after them. "full" computes all M slots of every
    step (q·N + 5 std rows) inside the chunk's scan. "buckets" draws the very same batches
    (same keys, same M, same truncation), reads on the host where each batch's sampled rows
    end, and runs the step on the shortest of a few static prefix lengths holding them
    (`sampling.prefix_buckets`: q·N + k std for k in -0.5, 0.5, 1.5, 2.5, and M; q·N + 0.6 std
    rows expected), one compiled step per length, compiled when first used. The slots it skips
    all have weight 0 in the clipped sum, so the sum (up to float summation order), the
    sensitivity and the sampler are those of "full", and so is the ledger entry: the same
    truncated-Poisson event of M slots. The two paths' parameters agree to float tolerance,
    not bit for bit; a checkpoint resumes only with the padding that wrote it.

    Non-finite gradients: a sampled example whose gradient has a NaN or inf coordinate (or a
    norm that overflows float32) is zeroed before clipping and counted (`nonfinite` in the
    history, `nonfinite_examples` in the result, a warning in the log). Its contribution, 0,
    has norm ≤ C like every clipped gradient, so the sensitivity and the privacy claim are
    unchanged; padding rows likewise contribute exact zeros whatever data they point at. The
    run stops with FloatingPointError if the parameters or the loss become non-finite, or if
    no example sampled in a chunk had a finite gradient (the model diverged).

    Resuming: with `checkpoint_dir`, the whole train state (params, optimiser state with the
    noise key, step, sampling key) and the history (with each chunk's truncation and
    non-finite counts) are written there with orbax every `checkpoint_every` steps (rounded
    up to whole chunks of `log_every`) and at the end. Calling `train` again with the same
    arguments and directory resumes from the latest checkpoint and ends with the same
    parameters as an uninterrupted run, bit for bit. A checkpoint written by a run with
    another config, T, seed, `log_every`, state shapes, loss or data is refused (ValueError).
    The release is recorded in `ledger` once, when the run completes, with all T steps; an
    interrupted run records nothing (its parameters were not released). Calling it again on
    a finished run's directory trains nothing, returns the same parameters and records the
    release again (a conservative double count). The checkpoint holds the secret noise key
    (also with `seed=None`, where it came from OS entropy): protect the directory like the
    training data (`dpsgd_checkpoint`).

    Data parallelism (`mesh`): the same run over the devices of `mesh`. The data and the state
    are replicated over it; each logical step draws the same Poisson batch as one device, pads
    it with masked slots to a multiple of the devices (never dropping a row), and each device
    clips its own rows; one psum adds the clipped sums and the noise is added once, after it
    (`make_dp_step`). The ledger entry is the one-device entry: the event depends on q, σ and
    T only. With several processes (`parallel.distributed`, a `parallel.mesh.global_mesh()`),
    every process passes the same full data and process 0's keys are used everywhere.

    Args:
      model, params: flax model and its initial `{"params": ...}` variables.
      x: `[N, ...]` private inputs; y: `[N]` labels. N must equal `config.dataset_size`.
      config: `DPSGDConfig`; its sampling decides the batches and the accounting.
      optimizer: any optax transformation, applied to the noisy mean gradient.
      steps: number of DP-SGD steps T.
      seed: None takes the noise and sampling key from OS entropy (secure); an int makes the run
        reproducible and marks the ledger reproducible-research-only.
      ledger: where the model release is recorded (a new one is not created for you: pass
        one to keep the run's privacy claim). Its relation must be `config.relation` (checked
        before training); read truncated-Poisson runs with its PLD accountant.
      log_every: steps per compiled scan chunk and per history entry.
      hooks: the loop's hooks, `hook(state, record)` after each chunk (and before its
        checkpoint): snapshots, metric writers, a progress bar; an exception one raises stops
        the run there.
      checkpoint_dir: where to checkpoint and resume the run; None: no checkpoints.
      checkpoint_every: steps between checkpoints (default `log_every`).
      mesh, axis: None: one device. A `jax.sharding.Mesh` (e.g. `parallel.mesh.local_mesh()`)
        and the axis the batch is split over: data-parallel as above.
      accumulation_steps: k micro-batches per logical batch (`optax.MultiSteps`; each again
        split over the devices): a step's per-example memory is that of M/k rows; the
        accounting is unchanged (T logical steps at rate q). With "buckets" each prefix length
        is a multiple of k·devices and is split into k micro-batches.
      padding: "full", "buckets" (see Padding above) or a sequence of prefix lengths in
        [1, M) to use instead of the default buckets (`prefix_lengths`); anything but "full"
        with shuffled batches, which have no padding slots, is refused (ValueError).

    Returns:
      `DPTrainResult` with the final params, per-chunk history (means per step, except
      `nonfinite`, `truncated_examples`, `truncated_batches`: the chunk's counts), the event
      and its ε.
    """
    if x.shape[0] != config.dataset_size or y.shape[0] != config.dataset_size:
        raise ValueError(
            f"config.dataset_size={config.dataset_size} but x has {x.shape[0]} and y "
            f"{y.shape[0]} examples; the sampling rate q would be wrong."
        )
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}.")
    if log_every < 1:
        raise ValueError(f"log_every must be >= 1, got {log_every}.")
    if checkpoint_every is not None and (int(checkpoint_every) != checkpoint_every or checkpoint_every < 1):
        raise ValueError(f"checkpoint_every must be a positive integer, got {checkpoint_every!r}.")
    if ledger is not None and ledger.reproducible != (seed is not None):
        raise ValueError(
            f"ledger.reproducible_seed={ledger.reproducible_seed} but seed={seed}: create the "
            "ledger with reproducible_seed=seed so a seeded run is marked as such."
        )
    if ledger is not None and ledger.relation != config.relation:
        raise ValueError(
            f"{config.sampling} sampling is accounted under {config.relation} but the ledger "
            f"composes {ledger.relation} releases: pass PrivacyLedger(..., "
            f"relation={config.relation!r}).")
    k = _accumulation(accumulation_steps)
    devices = _devices(mesh, axis)  # an unknown axis name is refused here, before any work
    sampler = config.sampler()
    lengths = prefix_lengths(padding, max_batch_size=sampler.max_batch_size,
                             expected_batch_size=config.expected_batch_size,
                             dataset_size=config.dataset_size, multiple=devices * k)
    bucketed_run = not (isinstance(padding, str) and padding == "full")
    if bucketed_run and config.sampling != "poisson":
        raise ValueError(f"padding={padding!r} applies to Poisson sampling only: "
                         f"{config.sampling} batches have no padding slots to skip; use "
                         "padding='full'.")
    key, reproducible = noise_key(seed)
    if mesh is not None:
        key = parallel_dpsgd.shared_key(key)  # several processes: process 0's key everywhere
    noise_k, sample_k = jax.random.split(key)
    init_fn, update_fn = make_dp_step(model, optimizer, config, key=noise_k, loss=loss,
                                      mesh=mesh, axis=axis, accumulation_steps=k)
    # A copy: the loop donates its state. The sampling key rides in the state, so a resumed
    # run continues with the checkpointed one (with seed=None a fresh OS draw would differ).
    state = init_fn(jax.tree.map(jnp.array, params))._replace(rng=sample_k)
    if mesh is None:
        x, y = jnp.asarray(x), jnp.asarray(y)
    else:  # every device (every process) holds the whole dataset; batches are gathered from it
        state = mesh_lib.replicate(mesh, state)
        x, y = mesh_lib.replicate(mesh, (np.asarray(x), np.asarray(y)))
    kind = "poisson" if isinstance(sampler, PoissonSampler) else "shuffle"
    padded = mesh_lib.padded_size(sampler.max_batch_size, devices * k)
    assert lengths[-1] == padded  # every length splits into k micro-batches of whole shards
    chunk = min(log_every, int(steps))
    num_chunks = -(-int(steps) // chunk)

    ckpt = None
    if checkpoint_dir is not None:
        ckpt = dpsgd_checkpoint.checkpointer(
            checkpoint_dir,
            dpsgd_checkpoint.fingerprint(config, steps=steps, seed=seed, log_every=log_every,
                                         state=state, x=x, y=y, loss=loss,
                                         padding=lengths if bucketed_run else "full"))

    traces = []

    @partial(jax.jit, donate_argnums=(0,))
    def run(state, x_all, y_all, shuffle_idx, active):
        traces.append(1)  # runs once per compilation
        return _run_chunk(
            update_fn, state, state.rng, x_all, y_all, active, chunk=chunk, sampler_kind=kind,
            n=config.dataset_size, q=config.sampling_rate, m=sampler.max_batch_size,
            shuffle_idx=shuffle_idx, accumulation_steps=k, padded=padded,
        )

    bucketed = None
    if bucketed_run:
        bucketed = _BucketedChunks(
            update_fn, chunk=chunk, n=config.dataset_size, q=config.sampling_rate,
            m=sampler.max_batch_size, padded=padded, lengths=lengths, accumulation_steps=k,
            mesh=mesh, traces=traces)
    epochs: dict[int, jax.Array] = {}

    def run_chunk(state: TrainState, i: int):
        nonlocal epochs
        begin = (i - 1) * chunk
        active = min(chunk, steps - begin)
        if bucketed is not None:
            state, trunc, trunc_b, metrics, totals, finite, slots = bucketed(
                state, x, y, begin=begin, active=active)
        elif kind == "shuffle":
            rows = []
            for t in range(begin, begin + chunk):
                epoch, within = divmod(t, sampler.steps_per_epoch)
                if epoch not in epochs:
                    epochs = {epoch: sampler.epoch(jax.random.fold_in(state.rng, epoch))}
                rows.append(np.asarray(epochs[epoch][within]))
            shuffle_idx = np.stack(rows)
        else:
            shuffle_idx = np.zeros((chunk, 1), np.int32)
        if bucketed is None:
            # numpy arguments: valid on any mesh, also one over several processes
            state, trunc, trunc_b, metrics, totals, finite = run(state, x, y, shuffle_idx,
                                                                 np.int32(active))
            slots = padded
        done = begin + active
        nonfinite = int(totals["nonfinite"])
        record = {"step": done, **{k: float(v) for k, v in metrics.items()}, "nonfinite": nonfinite,
                  "truncated_examples": int(trunc), "truncated_batches": int(trunc_b),
                  "slots": float(slots)}
        if not bool(finite) or not np.isfinite(record["loss"]):
            raise FloatingPointError(
                f"{desc}: {'loss' if bool(finite) else 'parameters'} became non-finite by "
                f"step {done} (loss {record['loss']}).")
        if nonfinite:
            if nonfinite == int(totals["batch_size"]):
                raise FloatingPointError(
                    f"{desc}: every example sampled in steps {begin + 1}-{done} had "
                    "a non-finite gradient; the model diverged.")
            log.warning("%s: %d sampled examples with non-finite gradients zeroed in steps "
                        "%d-%d.", desc, nonfinite, begin + 1, done)
        return state, record

    every = -(-int(checkpoint_every or log_every) // chunk)  # whole chunks
    out = train_loop(run_chunk, state, num_chunks=num_chunks, hooks=hooks, checkpointer=ckpt,
                     checkpoint_every=every, mesh=mesh, desc=desc)
    if out.resumed_from:
        log.info("%s: resumed at step %d of %d from %s.", desc, min(out.resumed_from * chunk, steps),
                 steps, ckpt.directory)
    history = out.history
    trunc_total = sum(int(h["truncated_examples"]) for h in history)
    trunc_batches_total = sum(int(h["truncated_batches"]) for h in history)
    nonfinite_total = sum(int(h["nonfinite"]) for h in history)
    event = config.event(steps)
    delta = ledger.delta if ledger is not None else 1e-5
    usable = accounting.supported_accountants(event)
    # None where an accountant cannot analyse the sampler (RDP and truncated Poisson).
    eps = {acc: accounting.epsilon(event, delta, acc) if acc in usable else None
           for acc in accounting.ACCOUNTANTS}
    if trunc_total:
        log.warning("%s: %d examples dropped from %d over-full Poisson batches "
                    "(max_batch_size=%d); the truncated-Poisson event accounts for it.",
                    desc, trunc_total, trunc_batches_total, sampler.max_batch_size)
    if ledger is not None:
        # The same entry whatever the mesh: nothing in the release depends on the device count.
        ledger.record(
            name, event, sensitivity=config.sensitivity, relation=config.relation,
            mechanism="DP-SGD", sampling=config.sampling, sampling_rate=config.sampling_rate,
            noise_multiplier=config.noise_multiplier, l2_norm_clip=config.l2_norm_clip,
            steps=int(steps), dataset_size=config.dataset_size, batch_size=config.batch_size,
            max_batch_size=sampler.max_batch_size, truncated_examples=trunc_total,
            truncated_batches=trunc_batches_total, nonfinite_examples=nonfinite_total,
            reproducible=reproducible,
        )
    return DPTrainResult(
        params=out.state.params, history=history, steps=int(steps), event=event, epsilon=eps,
        truncated_examples=trunc_total, truncated_batches=trunc_batches_total,
        reproducible=reproducible, compilations=len(traces),
        nonfinite_examples=nonfinite_total,
        resumed_from=min(out.resumed_from * chunk, int(steps)),
        devices=mesh_lib.device_report(mesh),
        padding=padding if isinstance(padding, str) else tuple(int(n) for n in padding),
        lengths=lengths,
    )
