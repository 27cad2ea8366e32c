r"""Privacy audit: claimed ε vs an empirical lower bound for every mechanism, with controls.

  python experiments/privacy_audit.py --workdir=runs/privacy_audit
  python experiments/privacy_audit.py --config=configs/privacy_audit.py:quick --workdir=runs/privacy_audit_quick

See configs/privacy_audit.py for every field, ecos_jax/experiments/privacy_audit.py for the run
and ecos_jax/privacy/audit/ for the audits.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ecos_jax.experiments import privacy_audit  # noqa: E402
from ecos_jax.utils import cli  # noqa: E402

if __name__ == "__main__":
    cli.main("privacy_audit.py", privacy_audit.run, workdir="runs/privacy_audit")
