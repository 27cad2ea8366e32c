r"""ECOS's within-cluster rules compared on validation data carved from the client's own images.

  python experiments/ecos_rules.py --workdir=runs/ecos_rules
  python experiments/ecos_rules.py --config=configs/ecos_rules.py:fashion --workdir=runs/ecos_rules_fashion

See configs/ecos_rules.py for every field and ecos_jax/experiments/ecos_rules.py for what it computes.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ecos_jax.experiments import ecos_rules  # noqa: E402
from ecos_jax.utils import cli  # noqa: E402

if __name__ == "__main__":
    cli.main("ecos_rules.py", ecos_rules.run, workdir="runs/ecos_rules")
