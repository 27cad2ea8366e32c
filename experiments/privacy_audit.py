r"""Privacy audit: claimed ε vs an empirical lower bound for every mechanism, with controls.

  python experiments/privacy_audit.py --workdir=runs/privacy_audit
  python experiments/privacy_audit.py --config=configs/privacy_audit.py:quick --workdir=runs/privacy_audit_quick

See configs/privacy_audit.py for every field, ecos_jax/experiments/privacy_audit.py for the run
and ecos_jax/privacy/audit/ for the audits.
"""

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from ecos_jax.experiments import privacy_audit  # noqa: E402
from ecos_jax.utils import cli  # noqa: E402

_CONFIG = cli.define_config("privacy_audit.py")
_WORKDIR = flags.DEFINE_string("workdir", "runs/privacy_audit", "Where results are written.")


def main(argv):
    del argv
    logging.getLogger("ecos_jax").setLevel(logging.INFO)
    privacy_audit.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    cli.run(main)
