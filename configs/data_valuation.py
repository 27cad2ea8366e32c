r"""Data valuation under DP: loss, grad-norm, VoG and PLIS scores from models trained at several ε.

Run (from the repository root):

  python experiments/data_valuation.py --workdir=runs/data_valuation
  python experiments/data_valuation.py --config=configs/data_valuation.py:quick --workdir=runs/dv_quick
  python experiments/data_valuation.py --config.epsilons='(1.0,8.0,inf)' --config.data.n_train=2000
  python experiments/data_valuation.py --config.train.models='("mlp",)'

Expected runtime on a shared 2-core CPU: default ~15 min (2 architectures × 4 ε, 1000 training
samples, K = 6 checkpoints, PLIS on 300 samples); `quick` ~2-3 min. Output in the workdir:
results.json, consistency.md (runs + consistency table), figures/grid_*.png (top/bottom-k
images per metric and ε), figures/hist_*.png, ledgers/*.json. The measured tables are in the
README ("Results": data valuation).
"""

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = base.common(ml_collections.ConfigDict())   # seed: parameter init / non-private shuffling
    c.epsilons = (1.0, 3.0, 8.0, float("inf"))   # inf = non-private (Adam, no clipping)

    c.data = base.data(
        n_train=1000,                       # scored training subset
        n_test=1000,
        test_fraction=0.2,
    )

    c.train = base.train(
        model=None,
        models=("cnn", "mlp"),              # every score is computed for each model
        batch_size=128,                     # expected Poisson batch for DP-SGD
        learning_rate=1e-3,                 # Adam, non-private
        epochs=6,
        checkpoints_every=1,                # VoG's K = epochs / checkpoints_every
        dp_learning_rate=1.0,               # SGD on the noisy mean clipped gradient
        l2_norm_clip=1.0,
    )

    # The VoG releases: raw VoG clipped to [0, B] with B public (never computed from the private
    # scores), Laplace noise, per-class min-max only after the noise. B = 0.03 VoG units covers
    # every raw VoG we saw on this embedded public data in the quick variant (0.002-0.031 over
    # CNN / MLP at eps 1, 8, inf); a deployment would fix B from public data.
    c.privacy = base.privacy(
        delta=1e-5, accountant="rdp",
        release_bound=0.03,
        release_epsilon=1.0,                # per release (per-sample; site summary), replace-one
    )

    c.scores = ml_collections.ConfigDict()
    c.scores.microbatch_size = 128
    c.scores.plis_samples = 300             # PLIS on the first n samples (None: all)
    c.scores.plis_clip_norm = 1.0           # C of ḡ (the DP-SGD clip)
    c.scores.plis_tol = 1e-3
    c.scores.plis_max_iters = 50
    c.scores.plis_microbatch_size = 1       # CPU: a vmapped power iteration waits for its slowest sample

    c.consistency = ml_collections.ConfigDict()
    c.consistency.top_fraction = 0.1        # k = 10% of the scored samples
    c.consistency.ssim_mode = "mean_image"
    c.consistency.hist_bins = 32
    c.consistency.grid_k = 8                # images per side in the PNG grids

    if arg == "quick":
        c.epsilons = (3.0, float("inf"))
        c.data.n_train = 300
        c.data.n_test = 300
        c.train.epochs = 2
        c.scores.plis_samples = 60
        c.scores.plis_max_iters = 20
        c.progress = False
    elif arg not in (None, ""):
        raise ValueError(f"Unknown config variant {arg!r}; use nothing or 'quick'.")
    c.lock()
    return c
