r"""The ECOS paper's sweeps: pool composition, ε, and bytes communicated.

  python experiments/ecos_sweeps.py --workdir=runs/ecos_sweeps
  python experiments/ecos_sweeps.py --config=configs/ecos_sweeps.py:quick --workdir=runs/ecos_sweeps_quick
  python experiments/ecos_sweeps.py --config.sweep.names='("communication",)'

See configs/ecos_sweeps.py for every field and ecos_jax/experiments/ecos_sweeps.py for what the run computes.
"""

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from ecos_jax.experiments import ecos_sweeps  # noqa: E402
from ecos_jax.utils import cli  # noqa: E402

_CONFIG = cli.define_config("ecos_sweeps.py")
_WORKDIR = flags.DEFINE_string("workdir", "runs/ecos_sweeps", "Where results and state are written.")


def main(argv):
    del argv
    logging.getLogger("ecos_jax").setLevel(logging.INFO)
    ecos_sweeps.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    cli.run(main)
