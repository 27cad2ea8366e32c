r"""Pruning by data-valuation score, then retraining (the seed paper's Table 1 analogue).

  python experiments/pruning.py --workdir=runs/pruning
  python experiments/pruning.py --config=configs/pruning.py:quick --workdir=runs/pruning_quick

See configs/pruning.py for every field and ecos_jax/experiments/pruning.py for what
the run computes.
"""

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from ecos_jax.experiments import pruning  # noqa: E402
from ecos_jax.utils import cli  # noqa: E402

_CONFIG = cli.define_config("pruning.py")
_WORKDIR = flags.DEFINE_string("workdir", "runs/pruning", "Where results are written.")


def main(argv):
    del argv
    logging.getLogger("ecos_jax").setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.ERROR)  # dp_accounting's RDP-order convergence chatter
    pruning.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    cli.run(main)
