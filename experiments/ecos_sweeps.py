r"""The ECOS paper's sweeps: pool composition, ε, and bytes communicated.

  python experiments/ecos_sweeps.py --workdir=runs/ecos_sweeps
  python experiments/ecos_sweeps.py --config=configs/ecos_sweeps.py:quick --workdir=runs/ecos_sweeps_quick
  python experiments/ecos_sweeps.py --config.sweep.names='("communication",)'
  python experiments/ecos_sweeps.py --workers=2                         # two points at a time
  python experiments/ecos_sweeps.py --backend=ray --address=auto --cpus_per_point=4

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
_BACKEND = flags.DEFINE_enum("backend", "local", ["local", "ray"], "Where the points run.")
_WORKERS = flags.DEFINE_integer("workers", 1, "local: points run at once.")
_ADDRESS = flags.DEFINE_string("address", None, "ray: the cluster's address (e.g. auto).")
_CPUS = flags.DEFINE_float("cpus_per_point", 1.0, "ray: CPUs each point's task needs.")
_GPUS = flags.DEFINE_float("gpus_per_point", 0.0, "ray: GPUs each point's task needs.")


def main(argv):
    del argv
    logging.getLogger("ecos_jax").setLevel(logging.INFO)
    ecos_sweeps.run(_CONFIG.value, _WORKDIR.value, backend=_BACKEND.value, workers=_WORKERS.value,
                    address=_ADDRESS.value, cpus_per_point=_CPUS.value, gpus_per_point=_GPUS.value)


if __name__ == "__main__":
    cli.run(main)
