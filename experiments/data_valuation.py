r"""Data valuation under DP: consistency of loss / grad-norm / VoG / PLIS selections across ε.

  python experiments/data_valuation.py --workdir=runs/data_valuation
  python experiments/data_valuation.py --config=configs/data_valuation.py:quick --workdir=runs/dv_quick

See configs/data_valuation.py for every field and ecos_jax/experiments/data_valuation.py for what
the run computes.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ecos_jax.experiments import data_valuation  # noqa: E402
from ecos_jax.utils import cli  # noqa: E402

if __name__ == "__main__":
    cli.main("data_valuation.py", data_valuation.run, workdir="runs/data_valuation", quiet_absl=True)
