r"""Pruning by data-valuation score (the seed paper's Table 1 analogue): remove a fraction of the
training set by loss / grad-norm / VoG / PLIS (highest or lowest first) or at random, retrain,
and compare test accuracy, train accuracy and training time, per ε.

Run (from the repository root):

  python experiments/pruning.py --workdir=runs/pruning
  python experiments/pruning.py --config=configs/pruning.py:quick --workdir=runs/pruning_quick
  python experiments/pruning.py --config.fractions='(0.1,0.3,0.5)' --config.epsilons='(8.0,inf)'

Expected runtime on a shared 2-core CPU: default ~10-15 min (2 ε × (1 + 2 fractions × 9)
retrains of a small CNN on 1000 samples); `quick` ~2 min. Output: results.json and pruning.md
in the workdir; the measured table is in the README ("Other results so far": pruning). A
killed run resumes from partial.json (every finished retrain, with the config's fingerprint).

Fashion-MNIST (`fashion`), after `configs/data_valuation.py:fashion` has run into
runs/dv_fashion:

  python experiments/pruning.py --config=configs/pruning.py:fashion --workdir=runs/pruning_fashion

It REUSES that run's saved linear-model scores at every ε (loss, grad-norm, VoG over its
10,000 scored training images; PLIS was scored on 300 only and is left out) instead of
training scoring models again, removes 10 / 30 / 50% of the 10,000 by each score (highest and
lowest first) and at random, and retrains the linear head on the kept samples' ScatterNet
features without DP (Adam, lr 1e-3, batch 256, 15 epochs): the retrain measures what each
ε-model's scores say about the data; a DP retrain of 5,000-10,000 samples would mostly measure
the noise. The full-set retrain does not depend on ε and runs once.

`fashion_plis` adds the PLIS rows, after `configs/data_valuation.py:fashion_plis` has scored
PLIS on all 10,000 into runs/dv_fashion_plis (its own linear models; 290 s at load 17-19):

  python experiments/pruning.py --config=configs/pruning.py:fashion_plis --workdir=runs/pruning_fashion_plis
"""

import ml_collections
from ml_collections import config_dict

from configs import base, data_valuation


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

    c.scores_from = config_dict.placeholder(str)   # a data_valuation workdir: reuse its scores
    c.retrain_private = True                # False: every retrain non-private (Adam)
    c.data.official_split = False
    c.data.n_scored = config_dict.placeholder(int)
    c.features = data_valuation.get_config().features   # pixels
    c.train.model_kwargs = ml_collections.ConfigDict()
    c.train.dp_momentum = 0.0
    c.train.dp_batch_size = config_dict.placeholder(int)

    if arg in ("fashion", "fashion_plis"):
        _fashion(c)
        if arg == "fashion_plis":
            # The PLIS rows: `data_valuation.py:fashion_plis` scored PLIS over all 10,000.
            c.scores_from = "runs/dv_fashion_plis"
            c.metrics = ("plis",)
    elif arg == "quick":
        c.epsilons = (float("inf"),)
        c.data.n_train = 300
        c.data.n_test = 300
        c.score_epochs = 2
        c.retrain_epochs = 2
        c.fractions = (0.2,)
    elif arg not in (None, ""):
        raise ValueError(f"Unknown config variant {arg!r}; use nothing, 'quick', 'fashion' or "
                         "'fashion_plis'.")
    c.lock()
    return c


def _fashion(c: ml_collections.ConfigDict) -> None:
    """Fashion-MNIST: prune the 10,000 samples `data_valuation.py:fashion` scored, by its saved
    linear-model scores at each ε, and retrain the linear head on their ScatterNet features."""
    dv = data_valuation.get_config("fashion")
    c.data = dv.data                        # the same training set, scored rows and features
    c.features = dv.features
    c.scores_from = "runs/dv_fashion"
    c.epsilons = dv.epsilons
    c.metrics = ("loss", "grad_norm", "vog")   # PLIS was scored on 300 samples only
    c.fractions = (0.1, 0.3, 0.5)
    c.retrain_private = False
    c.retrain_epochs = 15
    c.train.model = "linear"
    c.train.batch_size = 256
    c.train.learning_rate = 1e-3
