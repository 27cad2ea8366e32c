"""`python -m ecos_jax.sweep`: see ecos_jax/sweep/cli.py."""

import sys

from ecos_jax.sweep.cli import main

if __name__ == "__main__":
    sys.exit(main())
