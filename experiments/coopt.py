r"""CoOpt against SimCLR, single-prior distillation, no alignment and supervised training.

  python experiments/coopt.py --workdir=runs/coopt
  python experiments/coopt.py --config=configs/coopt.py:quick --workdir=runs/coopt_quick
  python experiments/coopt.py --config.participants.scheme=iid --config.alignment.method=linear

See configs/coopt.py for every field and ecos_jax/experiments/coopt.py for what the run computes.
Writes results.json, results.md, curves.png and optimised_data.npz into --workdir.
"""

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from ecos_jax.experiments import coopt  # noqa: E402
from ecos_jax.utils import cli  # noqa: E402

_CONFIG = cli.define_config("coopt.py")
_WORKDIR = flags.DEFINE_string("workdir", "runs/coopt", "Where results are written.")


def main(argv):
    del argv
    logging.getLogger("ecos_jax").setLevel(logging.INFO)
    coopt.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    cli.run(main)
