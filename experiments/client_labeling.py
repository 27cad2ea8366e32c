r"""ECOS automated client labelling: the client labels the cloud's picks by private kNN.

  python experiments/client_labeling.py --workdir=runs/client_labeling
  python experiments/client_labeling.py --config=configs/client_labeling.py:quick --workdir=runs/client_labeling_quick
  python experiments/client_labeling.py --config.labeling.epsilon=4 --config.budgets='(200,)'

See configs/client_labeling.py for every field and ecos_jax/experiments/client_labeling.py for what
the run computes.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ecos_jax.experiments import client_labeling  # noqa: E402
from ecos_jax.utils import cli  # noqa: E402

if __name__ == "__main__":
    cli.main("client_labeling.py", client_labeling.run, workdir="runs/client_labeling")
