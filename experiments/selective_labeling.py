r"""ECOS selective labelling against Random, K-Center, Local and the in-domain oracle.

  python experiments/selective_labeling.py --workdir=runs/selective_labeling
  python experiments/selective_labeling.py --config=configs/selective_labeling.py:quick --workdir=runs/quick
  python experiments/selective_labeling.py --config.budgets='(300,600)' --config.ecos.epsilon=1.0

See configs/selective_labeling.py for every field and ecos_jax/experiments/selective_labeling.py for
what the run computes.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ecos_jax.experiments import selective_labeling  # noqa: E402
from ecos_jax.utils import cli  # noqa: E402

if __name__ == "__main__":
    cli.main("selective_labeling.py", selective_labeling.run, workdir="runs/selective_labeling")
