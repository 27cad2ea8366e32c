r"""Pruning by data-valuation score, then retraining (the seed paper's Table 1 analogue).

  python experiments/pruning.py --workdir=runs/pruning
  python experiments/pruning.py --config=configs/pruning.py:quick --workdir=runs/pruning_quick

See configs/pruning.py for every field and ecos_jax/valuation/pruning.py for what
the run computes.
"""

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from ecos_jax.valuation import pruning  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "..", "configs", "pruning.py"),
    "Experiment configuration (an ml_collections config file).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/pruning", "Where results are written.")


def main(argv):
    del argv
    logging.getLogger("ecos_jax").setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.ERROR)  # dp_accounting's RDP-order convergence chatter
    pruning.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
