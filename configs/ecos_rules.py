r"""Which ECOS within-cluster rule (and how many centroids R) to use, judged on validation data.

Every point is the selective-labelling run (`configs/selective_labeling.py`, same features,
model, steps, ε = 0.58) with ECOS alone, one rule and one R, scored on a validation slice carved
from the client's own labelled training images (`data.n_client_validation` of its
`n_client_train`; the client answers ECOS from the rest). The client's test split is never
read, so the default picked here does not peek at the numbers the README reports.

  python experiments/ecos_rules.py --workdir=runs/ecos_rules
  python experiments/ecos_rules.py --config=configs/ecos_rules.py:fashion --workdir=runs/ecos_rules_fashion
  python experiments/ecos_rules.py --config.rules='("proximity_kcenter","random")' --config.centroid_grid=(30,60)

Cost: one ECOS record per rule x R x domain x seed x budget, each about one selective-labelling
training run (300 steps): the default 4 x 1 x 7 x 2 x 2 = 112 runs.
"""

import ml_collections

from configs import selective_labeling


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = selective_labeling.get_config("fashion" if arg == "fashion" else None)
    c.unlock()
    c.methods = ("ecos",)
    c.num_seeds = 2
    c.budgets = (200, 800)
    c.data.n_client_validation = 50        # of the 100 labelled client images; ECOS counts the other 50
    c.rules = ("proximity_kcenter", "random", "density", "coverage")
    c.centroid_grid = (30,)                # R values (ecos.num_centroids); every rule runs at each
    c.threshold_grid = (0.0,)              # ecos.count_threshold values (k, in noise stds); every rule x R at each
    if arg == "quick":
        c.num_seeds = 1
        c.budgets = (100,)
        c.data.client_domains = ("digits",)
        c.features.epochs = 2
        c.train.steps = 40
        c.rules = ("proximity_kcenter", "random")
    elif arg not in (None, "", "fashion"):
        raise ValueError(f"Unknown config variant {arg!r}; use nothing, 'quick' or 'fashion'.")
    c.lock()
    return c
