r"""Pruning by data-valuation score (the seed paper's Table 1 analogue): remove a fraction of the
training set by loss / grad-norm / VoG / PLIS (highest or lowest first) or at random, retrain,
and compare test accuracy, train accuracy and training time, per ε.

Run (from the repository root):

  python experiments/pruning.py --workdir=runs/pruning
  python experiments/pruning.py --config=configs/pruning.py:quick --workdir=runs/pruning_quick
  python experiments/pruning.py --config.fractions='(0.1,0.3,0.5)' --config.epsilons='(8.0,inf)'

Expected runtime on a shared 2-core CPU: default ~10-15 min (2 ε × (1 + 2 fractions × 9)
retrains of a small CNN on 1000 samples); `quick` ~2 min. Output: results.json and pruning.md
in the workdir; the measured table is in the README ("Results": pruning).
"""

import ml_collections
from ml_collections import config_dict

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = base.common(ml_collections.ConfigDict(), progress=False)
    c.epsilons = (3.0, float("inf"))
    c.score_epochs = 4                      # E1: the model whose scores decide the removal
    c.retrain_epochs = 4                    # E2
    c.fractions = (0.1, 0.3)
    c.metrics = ("loss", "grad_norm", "vog", "plis")

    c.data = base.data(n_train=1000, n_test=1000, test_fraction=0.2)

    c.train = base.train(
        model="cnn",
        batch_size=128,
        learning_rate=1e-3,
        checkpoints_every=1,                # VoG's K = score_epochs / checkpoints_every
        dp_learning_rate=1.0,
        l2_norm_clip=1.0,
    )

    c.privacy = base.privacy(delta=1e-5, accountant="rdp")

    c.scores = ml_collections.ConfigDict()
    c.scores.microbatch_size = 128
    c.scores.plis_samples = config_dict.placeholder(int)   # None: every sample (removal needs all)
    c.scores.plis_clip_norm = 1.0
    c.scores.plis_tol = 1e-2                # a ranking needs far less precision than a value
    c.scores.plis_max_iters = 20
    c.scores.plis_microbatch_size = 1

    if arg == "quick":
        c.epsilons = (float("inf"),)
        c.data.n_train = 300
        c.data.n_test = 300
        c.score_epochs = 2
        c.retrain_epochs = 2
        c.fractions = (0.2,)
    elif arg not in (None, ""):
        raise ValueError(f"Unknown config variant {arg!r}; use nothing or 'quick'.")
    c.lock()
    return c
