r"""CoOpt against SimCLR, single-prior distillation, no alignment and supervised training.

  python experiments/coopt.py --workdir=runs/coopt
  python experiments/coopt.py --config=configs/coopt.py:quick --workdir=runs/coopt_quick
  python experiments/coopt.py --config.participants.scheme=iid --config.alignment.method=linear

See configs/coopt.py for every field and ecos_jax/experiments/coopt.py for what the run computes.
Writes results.json, results.md, curves.png and optimised_data.npz into --workdir.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ecos_jax.experiments import coopt  # noqa: E402
from ecos_jax.utils import cli  # noqa: E402

if __name__ == "__main__":
    cli.main("coopt.py", coopt.train_and_evaluate, workdir="runs/coopt")
