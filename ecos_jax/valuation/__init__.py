"""Gradient-based data valuation under DP, one module per score or tool.

  loss.py         per-sample cross-entropy                      loss_scores
  grad_norm.py    un-clipped per-sample gradient norm           grad_norm_scores
  vog.py          Variance of Gradients over K checkpoints      vog_scores, vog_maps, vog_stages
  plis.py         matrix-free ‖∂ḡ/∂x‖₂ and per-attribute map     plis_scores, plis_attribution
  normalize.py    per-class z-score and min-max to [0, 1]       per_class_zscore, per_class_minmax,
                  (data-dependent: never before a release)      is_data_normalised
  release.py      DP release of RAW scores with a public bound  release_scores, release_site_summary,
                  B, in a replace-one ledger                    release_vog
  pruning.py      which samples a score removes                 removal_indices
  consistency.py  agreement of two selections                   pearson, spearman, top_k_overlap,
                                                                set_ssim, bhattacharyya_distance
"""

from ecos_jax.valuation.consistency import (
    bhattacharyya_distance,
    pearson,
    set_ssim,
    spearman,
    top_k_indices,
    top_k_overlap,
)
from ecos_jax.valuation.grad_norm import grad_norm_scores
from ecos_jax.valuation.loss import loss_scores
from ecos_jax.valuation.normalize import is_data_normalised, per_class_minmax, per_class_zscore
from ecos_jax.valuation.plis import plis_attribution, plis_scores
from ecos_jax.valuation.release import (
    SiteSummary,
    release_scores,
    release_site_summary,
    release_vog,
)
from ecos_jax.valuation.vog import vog_maps, vog_scores, vog_stages

__all__ = [
    "bhattacharyya_distance", "grad_norm_scores", "is_data_normalised", "loss_scores", "pearson", "per_class_minmax",
    "per_class_zscore", "plis_attribution", "plis_scores", "release_scores",
    "release_site_summary", "release_vog", "set_ssim", "SiteSummary", "spearman", "top_k_indices",
    "top_k_overlap", "vog_maps", "vog_scores", "vog_stages",
]
