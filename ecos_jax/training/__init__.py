"""Training: one loop for every run, pure steps, losses, optimisers, hooks, checkpoints.

  state.py        TrainState (params, opt_state, step, rng), init_state
  steps.py        pure steps: gradient_step (value_and_grad), clipped_gradient_step (DP)
  loop.py         train_loop: compiled chunks of steps at the edge, hooks, checkpoints, mesh
  hooks.py        Snapshots (VoG checkpoints), Evaluate, WriteMetrics, Callback
  checkpoint.py   orbax checkpoints of a run in progress, resumable, fingerprinted
  losses.py       softmax_xent, kl_distillation, cosine_regression, mse_regression
  optimizers.py   make_optimizer: a config's optimiser name -> optax transformation
  supervised.py   fit / evaluate / predict on device-resident arrays

DP-SGD (`privacy.dpsgd.train`) and CoOpt (`coopt.training.train_epochs`) run the same loop with
their own compiled chunk. Nothing here draws a progress bar: pass one in as a hook.
"""

from ecos_jax.training.hooks import Callback, Evaluate, Snapshots, WriteMetrics
from ecos_jax.training.loop import LoopResult, train_loop
from ecos_jax.training.losses import (
    LossFn,
    cosine_regression,
    kl_distillation,
    mse_regression,
    softmax_xent,
)
from ecos_jax.training.optimizers import make_optimizer
from ecos_jax.training.state import TrainState, init_state
from ecos_jax.training.steps import clipped_gradient_step, gradient_step
from ecos_jax.training.supervised import FitResult, evaluate, fit, predict

__all__ = [
    "Callback", "Evaluate", "FitResult", "LoopResult", "LossFn", "Snapshots", "TrainState", "WriteMetrics",
    "clipped_gradient_step", "cosine_regression", "evaluate", "fit", "gradient_step", "init_state",
    "kl_distillation", "make_optimizer", "mse_regression", "predict", "softmax_xent", "train_loop",
]
