"""Audit of DP-SGD (`ecos_jax.privacy.dpsgd`) with a gradient canary, at q < 1 (Poisson).

Model and canary. A linear model f(x) = ⟨w, x⟩ (`flax.linen.Dense(1, use_bias=False)`) with
the loss ℓ(x) = −f(x), so every example's gradient is −x whatever w is: the canary's
contribution never fades as training moves w. The other examples have x₀ = 0; the canary is
x = 100·e₀, whose gradient clips to exactly −C·e₀. Coordinate 0 of each step's noisy sum is
then −C·bₜ + σC·zₜ, where bₜ says whether the canary was sampled.

Neighbouring pair (add-or-remove-one, what Poisson DP-SGD is accounted under): in D₊ the
canary is example N−1; in D₋ that row is zero, an example whose gradient is exactly 0, which
is the same as leaving it out (the divisor is the public expected batch size q·N and every
other example's coin is its own). The attacker sees every iterate, as the accounting allows,
and scores a run by the log-likelihood ratio of its per-step moves of w₀,

    sₜ = (w₀ₜ − w₀ₜ₋₁)·q·N / (lr·C) ~ bₜ + N(0, σ²),   score = Σₜ log(1 − q + q·e^{(sₜ − ½)/σ²}),

which is the Neyman–Pearson test of the subsampled Gaussian the accountant composes.

Trials. `train` compiles its loop on every call, so thousands of calls would take hours;
`dpsgd_trials` runs the library's own step (`make_dp_step`) and Poisson sampler
(`poisson_batch`) with the keys derived as `train` derives them, vmapped over trials. Seeded,
it ends at `train`'s parameters (tested). The claim is the ledger entry of one `train` call
with the same config and T.

The control runs the same audit with the noise multiplier divided by `control_factor` and
keeps the claim of the real σ.

Data-parallel path: `audit_dpsgd(..., num_devices=n)` with n > 1 audits the step the
experiments run on a mesh (`make_dp_step(..., mesh=local_mesh(n))`: each device clips its rows
of the Poisson batch, padded with masked slots to a multiple of n, one psum, noise once). The
attack and the claim are the same; a step that added noise on each device before the psum, or
lost the canary's contribution, would show here as a bound far from the one-device audit's.
"""

from __future__ import annotations

import functools
import math
import time
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ecos_jax.parallel import mesh as mesh_lib
from ecos_jax.privacy import accounting
from ecos_jax.privacy.audit.result import (
    AuditResult,
    check_control_factor,
    check_trials,
    finish,
)
from ecos_jax.privacy.dpsgd import DPSGDConfig, make_dp_step, train
from ecos_jax.privacy.keys import noise_key
from ecos_jax.privacy.ledger import PrivacyLedger
from ecos_jax.privacy.sampling import poisson_batch

MECHANISM = "dpsgd"
CANARY_NORM = 100.0  # ≫ C: the canary's gradient is always clipped to norm C


def linear_loss(outputs: jax.Array, labels: jax.Array) -> jax.Array:
    """ℓ = −f(x) per example, `[B, 1], [B] -> [B]`: gradient −x, independent of w and y."""
    del labels
    return -outputs[:, 0]


def canary_data(dataset_size: int, dim: int = 4, *, seed: int = 0):
    """(x of D₊ [N, dim], x of D₋ [N, dim], y [N] zeros): example N−1 is the canary in D₊ and
    a zero row in D₋; the others are Gaussian with coordinate 0 set to 0."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((dataset_size, dim)).astype(np.float32)
    x[:, 0] = 0.0
    neg = x.copy()
    neg[-1] = 0.0
    pos = neg.copy()
    pos[-1, 0] = CANARY_NORM
    return pos, neg, np.zeros(dataset_size, np.int32)


def dpsgd_trials(model, params, x, y, config: DPSGDConfig, optimizer, *, steps: int, keys,
                 observe, loss=linear_loss, batch: int = 1024, mesh=None):
    """`observe(params)` after each of `steps` DP-SGD steps, for each trial key.

    Each trial runs what `train(..., seed=s)` runs when its key is `jax.random.key(s)`: noise
    and sampling keys split from it, the library's `make_dp_step` and `poisson_batch`
    (Poisson sampling only). `batch` trials are vmapped at a time; one compilation serves
    every call with the same model, optimiser, config, T, `observe` and shapes. With `mesh`
    (n > 1 devices) each step is the data-parallel one, as `train(..., mesh=mesh)` runs it.

    Returns:
      `observe`'s pytree with leading axes `[K, T]`, as numpy arrays.
    """
    if config.sampling != "poisson":
        raise ValueError("dpsgd_trials audits Poisson sampling (the amplified claim).")
    x, y = jnp.asarray(x), jnp.asarray(y)
    if mesh is not None and mesh.devices.size == 1:
        mesh = None  # one device: the one-device step, as train runs it
    out = [_trials(model, optimizer, config, steps, observe, loss, mesh, params, x, y,
                   keys[i:i + batch]) for i in range(0, keys.shape[0], batch)]
    return jax.tree.map(lambda *parts: np.concatenate([np.asarray(p) for p in parts]), *out)


@partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5, 6))
def _trials(model, optimizer, config, steps, observe, loss, mesh, params, x, y, keys):
    n, q, m = config.dataset_size, config.sampling_rate, config.sampler().max_batch_size
    # On a mesh the M slots are padded with masked ones to a multiple of the devices, as train
    # pads them.
    padded = mesh_lib.padded_size(m, 1 if mesh is None else mesh.devices.size)

    def one_trial(key):
        noise_k, sample_k = jax.random.split(key)
        init_fn, update_fn = make_dp_step(model, optimizer, config, key=noise_k, loss=loss,
                                          mesh=mesh)

        def step(state, _):
            b = poisson_batch(jax.random.fold_in(sample_k, state.step), dataset_size=n,
                              sampling_rate=q, max_batch_size=m)
            idx, mask = jnp.pad(b.indices, (0, padded - m)), jnp.pad(b.mask, (0, padded - m))
            state, _ = update_fn(state, x[idx], y[idx], mask)
            return state, observe(state.params)

        return jax.lax.scan(step, init_fn(params), None, length=steps)[1]

    return jax.vmap(one_trial)(keys)


def _kernel0(params) -> jax.Array:
    return params["params"]["kernel"][0, 0]


def subsampled_gaussian_llr(moves: np.ndarray, q: float, sigma: float) -> np.ndarray:
    """Σₜ log(1 − q + q·exp((sₜ − ½)/σ²)) over the last axis of `moves` `[..., T]`."""
    return np.sum(np.logaddexp(math.log1p(-q), math.log(q) + (moves - 0.5) / sigma**2), axis=-1)


def _setup(x, learning_rate):
    model = nn.Dense(1, use_bias=False)
    params = model.init(jax.random.key(0), x[:1])
    params = jax.tree.map(jnp.zeros_like, params)  # w = 0: the moves alone are observed
    return model, params, optax.sgd(learning_rate)


@functools.lru_cache(maxsize=32)
def _claim(epsilon, delta, dataset_size, batch_size, steps, l2_norm_clip, learning_rate, seed,
           mesh=None):
    """(σ, max batch size, the ledger of one real `train` run): what the run claims.

    Memoised: a control and its real audit share the claim (calibration and the `train`
    compilation take seconds). The ledger is only read afterwards.
    """
    pos_x, _, y = canary_data(dataset_size, seed=seed)
    model, params, optimizer = _setup(pos_x, learning_rate)
    probe = DPSGDConfig(dataset_size=dataset_size, batch_size=batch_size,
                        l2_norm_clip=l2_norm_clip)
    max_batch = probe.sampler().max_batch_size
    sigma = accounting.calibrate_dpsgd_sigma(
        epsilon, delta, q=batch_size / dataset_size, steps=steps, accountant="pld",
        sampling="poisson", dataset_size=dataset_size, max_batch_size=max_batch)
    config = DPSGDConfig(dataset_size=dataset_size, batch_size=batch_size,
                         l2_norm_clip=l2_norm_clip, noise_multiplier=sigma)
    ledger = PrivacyLedger(delta, accountant="pld", relation="add_or_remove_one",
                           dataset_size=dataset_size)
    train(model, params, pos_x, y, config, optimizer, steps=steps, ledger=ledger,
          loss=linear_loss, log_every=steps, mesh=mesh)
    return sigma, max_batch, ledger


def audit_dpsgd(
    epsilon: float,
    *,
    trials: int = 2000,
    delta: float = 1e-5,
    dataset_size: int = 100,
    batch_size: int = 10,
    steps: int = 10,
    l2_norm_clip: float = 1.0,
    learning_rate: float = 1.0,
    confidence: float = 0.95,
    control: bool = False,
    control_factor: float = 4.0,
    strategy: str = "split",
    seed: int = 0,
    num_devices: int = 1,
) -> AuditResult:
    """Audits Poisson DP-SGD calibrated to `epsilon` after `steps` steps at q = B/N.

    Args:
      epsilon: target ε of the run (σ from `accounting.calibrate_dpsgd_sigma`, PLD).
      trials: runs on each of D₊ and D₋.
      delta: δ of the calibration and the ledger (< 1/N).
      dataset_size, batch_size, steps, l2_norm_clip, learning_rate: the run (SGD).
      confidence, strategy: passed to `epsilon_lower_bound`.
      control: audit with σ / `control_factor` instead (claim unchanged).
      seed: the other examples' features.
      num_devices: 1 audits the one-device step; n > 1 the data-parallel step on the first n
        local devices (`parallel.mesh.local_mesh(n)`; 0 = all of them), claim included.
    """
    trials = check_trials(trials)
    factor = check_control_factor(control_factor)
    q = batch_size / dataset_size
    if not q < 1.0:
        raise ValueError(f"the audit needs q = batch_size / dataset_size < 1, got {q}.")
    mesh = None if num_devices == 1 else mesh_lib.local_mesh(num_devices)
    devices = 1 if mesh is None else int(mesh.devices.size)
    pos_x, neg_x, y = canary_data(dataset_size, seed=seed)
    model, params, optimizer = _setup(pos_x, learning_rate)
    sigma, max_batch, ledger = _claim(epsilon, delta, dataset_size, batch_size, steps,
                                      l2_norm_clip, learning_rate, seed, mesh)

    run_sigma = sigma / factor if control else sigma
    run_config = DPSGDConfig(dataset_size=dataset_size, batch_size=batch_size,
                             l2_norm_clip=l2_norm_clip, noise_multiplier=run_sigma)
    t0 = time.perf_counter()
    keys = jax.random.split(noise_key(None)[0], 2 * trials)
    scores = {}
    for name, x, k in (("pos", pos_x, keys[:trials]), ("neg", neg_x, keys[trials:])):
        w0 = dpsgd_trials(model, params, x, y, run_config, optimizer, steps=steps, keys=k,
                          observe=_kernel0, mesh=mesh)
        moves = np.diff(w0, axis=1, prepend=0.0) * q * dataset_size / (learning_rate * l2_norm_clip)
        scores[name] = subsampled_gaussian_llr(moves, q, run_sigma)
    return finish(
        mechanism=MECHANISM, target_epsilon=epsilon, ledger=ledger,
        control=f"noise sigma / {factor:g}" if control else None,
        positive=scores["pos"], negative=scores["neg"], confidence=confidence,
        strategy=strategy, t0=t0,
        neighbours=f"N = {dataset_size} with / without a gradient canary (clipped to C e_0)",
        statistic="subsampled-Gaussian log-likelihood ratio of every iterate's move of w_0",
        details={"sigma_claimed": sigma, "sigma_run": run_sigma, "sampling_rate": q,
                 "steps": steps, "max_batch_size": max_batch, "devices": devices,
                 "event": str(ledger.entries[0].event)})


__all__ = ["MECHANISM", "audit_dpsgd", "canary_data", "dpsgd_trials", "linear_loss",
           "subsampled_gaussian_llr"]
