r"""The ECOS paper's sweeps on the embedded digits + MNIST-C domains (ecos_jax/ecos/sweeps.py).

  pool           accuracy against budget with the pool OoD-only, ID+OoD and ID-only
                 (ECOS, Random, K-Center; the in-domain oracle once, on the ID+OoD pool);
  epsilon        ECOS accuracy and in-domain share of its picks against ε, Random flat;
  communication  bytes of one ECOS round against uploading the client data / downloading
                 the pool, per client domain and against the client's size.

Every other field is configs/selective_labeling.py's; each sweep point is one
selective-labelling run in `<workdir>/<sweep>/<point>/` (resumable).

Run (from the repository root):

  python experiments/ecos_sweeps.py --workdir=runs/ecos_sweeps
  python experiments/ecos_sweeps.py --config=configs/ecos_sweeps.py:quick --workdir=runs/ecos_sweeps_quick
  # any field overrides:
  python experiments/ecos_sweeps.py --config.sweep.names='("epsilon",)' --config.sweep.epsilon_budget=400

Budgets: the runner refuses a budget larger than a point's pool. With pool "id" the pool is
only the client domain's remainder after its 100 train + 300 test images: 433 images for an
MNIST-C domain, 1397 for digits, so budgets here stay <= 400 (checked for every point before
any training).

Default cost (cut from every domain / 3 seeds to fit ~20 minutes on a loaded 2-core CPU):
3 client domains x 2 seeds; 180 pool records, 54 ε records. Measured runtime and result: see
the end of this docstring (filled in from the real run).
"""

import ml_collections

from configs import selective_labeling


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = selective_labeling.get_config(arg)
    with c.unlocked():
        c.num_seeds = 2
        c.budgets = (100, 200, 400)
        c.data.client_domains = ("digits", "mnist_invert", "mnist_blur")
        c.methods = ("ecos", "random", "kcenter")   # each point overrides this; kept for reference

        c.sweep = ml_collections.ConfigDict()
        c.sweep.names = ("pool", "epsilon", "communication")
        # pool composition sweep: every point runs c.budgets
        c.sweep.pool_kinds = ("ood", "id+ood", "id")
        c.sweep.pool_methods = ("ecos", "random", "kcenter")
        c.sweep.oracle = True                       # in-domain oracle once, on the "id+ood" pool
        # ε sweep: ECOS alone per ε at one budget, Random once as the reference
        c.sweep.epsilons = (0.05, 0.1, 0.2, 0.58, 1.0, 2.0, 4.0)
        c.sweep.exact_counts = True                 # the ε = ∞ ablation (exact coverage counts) ...
        c.sweep.exact_counts_epsilon = 100.0        # ... run at this ε (σ ≈ 0.09): runner JSON refuses inf
        c.sweep.epsilon_budget = 200
        c.sweep.epsilon_pool = "id+ood"
        # communication (no training): every domain of data.name plus these datasets
        c.sweep.comm_datasets = ()
        c.sweep.client_sizes = ()                   # empty: 100, 200, 400, ... up to the whole domain

        if arg == "quick":
            c.num_seeds = 1
            c.budgets = (100, 200)
            c.data.client_domains = ("mnist_invert",)
            c.sweep.epsilons = (0.1, 0.58, 4.0)
            c.sweep.exact_counts = False
    c.lock()
    return c
