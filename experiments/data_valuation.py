r"""Data valuation under DP: consistency of loss / grad-norm / VoG / PLIS selections across ε.

  python experiments/data_valuation.py --workdir=runs/data_valuation
  python experiments/data_valuation.py --config=configs/data_valuation.py:quick --workdir=runs/dv_quick

See configs/data_valuation.py for every field and ecos_jax/experiments/data_valuation.py for what
the run computes.
"""

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from ecos_jax.experiments import data_valuation  # noqa: E402
from ecos_jax.utils import cli  # noqa: E402

_CONFIG = cli.define_config("data_valuation.py")
_WORKDIR = flags.DEFINE_string("workdir", "runs/data_valuation", "Where results are written.")


def main(argv):
    del argv
    logging.getLogger("ecos_jax").setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.ERROR)  # dp_accounting's RDP-order convergence chatter
    data_valuation.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    cli.run(main)
