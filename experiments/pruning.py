r"""Pruning by data-valuation score, then retraining (the seed paper's Table 1 analogue).

  python experiments/pruning.py --workdir=runs/pruning
  python experiments/pruning.py --config=configs/pruning.py:quick --workdir=runs/pruning_quick

See configs/pruning.py for every field and ecos_jax/experiments/pruning.py for what
the run computes.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ecos_jax.experiments import pruning  # noqa: E402
from ecos_jax.utils import cli  # noqa: E402

if __name__ == "__main__":
    cli.main("pruning.py", pruning.run, workdir="runs/pruning", quiet_absl=True)
