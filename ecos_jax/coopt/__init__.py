"""CoOpt: collaborative unlabeled data optimisation (docs/algorithms.md#coopt).

participants  split_pool: IID / by domain / by class (Dirichlet) shards of an unlabeled pool
priors        PriorSpec, REGISTRY, load_prior: task-agnostic priors, trained once, cached
targets       embed, participant_targets: batched, device-sharded, cached prior targets
alignment     fit_alignment (standardise, PCA, Procrustes / linear map on anchors), disagreement
optimised_data OptimisedDataset: the reusable {(x, aligned target)} set, save / load
pipeline      build_optimised_dataset: the three steps above in one call
ssl           SimCLR and BYOL: Augment, nt_xent, simclr_objective, byol_objective, byol_optimizer
training      train_epochs: the one epoch loop every method (and baseline) trains with
probe         linear_probe on frozen features
(the CoOpt-vs-baselines experiment is ecos_jax.experiments.coopt; it only calls these)
"""

from ecos_jax.coopt.alignment import AlignmentTransform, disagreement, fit_alignment, linear_cka
from ecos_jax.coopt.optimised_data import OptimisedDataset
from ecos_jax.coopt.participants import split_pool
from ecos_jax.coopt.pipeline import CoOptResult, build_optimised_dataset
from ecos_jax.coopt.priors import REGISTRY, Prior, PriorSpec, load_prior
from ecos_jax.coopt.probe import linear_probe
from ecos_jax.coopt.targets import TargetStats, embed, participant_targets

__all__ = [
    "REGISTRY",
    "AlignmentTransform",
    "CoOptResult",
    "OptimisedDataset",
    "Prior",
    "PriorSpec",
    "TargetStats",
    "build_optimised_dataset",
    "disagreement",
    "embed",
    "fit_alignment",
    "linear_cka",
    "linear_probe",
    "load_prior",
    "participant_targets",
    "split_pool",
]
