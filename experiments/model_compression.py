r"""ECOS adaptive model compression against Random, K-Center and the in-domain oracle.

  python experiments/model_compression.py --workdir=runs/model_compression
  python experiments/model_compression.py --config=configs/model_compression.py:quick --workdir=runs/mc_quick
  python experiments/model_compression.py --config.compression.temperature=2.0 --config.budgets='(300,600)'

See configs/model_compression.py for every field and ecos_jax/experiments/model_compression.py for
what the run computes.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ecos_jax.experiments import model_compression  # noqa: E402
from ecos_jax.utils import cli  # noqa: E402

if __name__ == "__main__":
    cli.main("model_compression.py", model_compression.run, workdir="runs/model_compression")
