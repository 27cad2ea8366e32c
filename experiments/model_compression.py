r"""ECOS adaptive model compression against Random, K-Center and the in-domain oracle.

  python experiments/model_compression.py --workdir=runs/model_compression
  python experiments/model_compression.py --config=configs/model_compression.py:quick --workdir=runs/mc_quick
  python experiments/model_compression.py --config.compression.temperature=2.0 --config.budgets='(300,600)'

See configs/model_compression.py for every field and ecos_jax/experiments/model_compression.py for
what the run computes.
"""

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from ecos_jax.experiments import model_compression  # noqa: E402
from ecos_jax.utils import cli  # noqa: E402

_CONFIG = cli.define_config("model_compression.py")
_WORKDIR = flags.DEFINE_string("workdir", "runs/model_compression", "Where results and state are written.")


def main(argv):
    del argv
    logging.getLogger("ecos_jax").setLevel(logging.INFO)
    model_compression.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    cli.run(main)
