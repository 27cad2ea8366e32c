r"""DP-SGD accuracy against ε: trains one model per target ε and writes table, ledgers, plot.

  python experiments/train_dp.py --workdir=runs/train_dp
  python experiments/train_dp.py --config=configs/train_dp.py:quick --workdir=runs/train_dp_quick
  python experiments/train_dp.py --config.epsilons='(1,inf)' --config.privacy.noise_seed=0

See configs/train_dp.py for every field and ecos_jax/experiments/train_dp.py for what the
run computes.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ecos_jax.experiments import train_dp  # noqa: E402
from ecos_jax.utils import cli  # noqa: E402

if __name__ == "__main__":
    cli.main("train_dp.py", train_dp.run, workdir="runs/train_dp")
