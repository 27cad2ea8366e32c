"""Private training and release, one module per piece.

  accounting.py   ε at δ (RDP, PLD), DP-SGD events, σ calibration     epsilon, dpsgd_event,
                                                                     calibrate_gaussian_sigma,
                                                                     calibrate_dpsgd_sigma
  ledger.py       every private release of a run, composed            PrivacyLedger
  mechanisms.py   Gaussian / Laplace noise on arrays                  gaussian_mechanism,
                                                                     laplace_mechanism
  keys.py         DP noise keys from OS entropy unless seeded         noise_key
  clipping.py     per-example clipping (flat, per-layer) of [B, ...]  clipped_sum, clip_and_sum
  clipped_grads.py  the clipped-gradient sum as a function transform  clipped_grad, ClippedGrad
                  (param-shaped, carrying its L2 sensitivity C)
  noise.py        Gaussian noise (σ·sensitivity) / expected batch,    add_gaussian_noise
                  an optax transform (MultiSteps, apply_if_finite)
  sampling.py     Poisson (padded, truncated) and shuffled batches    PoissonSampler, ShuffleSampler
  layer_grads.py  per-example grads/norms/clipped sums from layer     clipped_grad_sum,
                  inputs and output gradients (ghost norms)          per_example_layer_grads
  pooling.py      max-pool with a fast gradient, jaxpr rewrite (CPU)  fast_max_pool_grads
  conv_grads.py   2-D conv whose input gradient is sub-pixel stride-1  conv2d, conv_input_grad
                  convs (CPU; layer_grads' tape uses it)
  dpsgd.py        the DP-SGD step; train runs it in the one training  DPSGDConfig, make_dp_step,
                  loop (ecos_jax.training.train_loop)                train
  dpsgd_checkpoint.py  the fingerprint a DP-SGD checkpoint must match (used by train)
  audit/          empirical ε lower bounds by attack, one audit per   epsilon_lower_bound,
                  release with a broken control it must catch        audit_coverage, audit_knn,
                                                                     audit_scores, audit_dpsgd

Neighbouring relations, sensitivities and events of every release: docs/privacy.md.
"""

from ecos_jax.privacy.accounting import (
    calibrate_dpsgd_sigma,
    calibrate_gaussian_sigma,
    dpsgd_event,
    epsilon,
)
from ecos_jax.privacy.clipped_grads import ClippedGrad, clipped_grad
from ecos_jax.privacy.clipping import clip_and_sum, clipped_sum
from ecos_jax.privacy.dpsgd import DPSGDConfig, make_dp_step, train
from ecos_jax.privacy.keys import noise_key
from ecos_jax.privacy.ledger import PrivacyLedger
from ecos_jax.privacy.mechanisms import gaussian_mechanism, laplace_mechanism
from ecos_jax.privacy.noise import add_gaussian_noise
from ecos_jax.privacy.sampling import PoissonSampler, ShuffleSampler

__all__ = [
    "ClippedGrad", "DPSGDConfig", "PoissonSampler", "PrivacyLedger", "ShuffleSampler", "add_gaussian_noise",
    "calibrate_dpsgd_sigma", "calibrate_gaussian_sigma", "clip_and_sum", "clipped_grad",
    "clipped_sum",
    "dpsgd_event", "epsilon", "gaussian_mechanism", "laplace_mechanism", "make_dp_step",
    "noise_key", "train",
]
