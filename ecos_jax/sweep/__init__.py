"""Ablation sweeps over any config field of any experiment, resumable, local or on Ray.

  spec.py      axes (product of groups, zip within a group) -> named points
  targets.py   what a point runs (a driver subprocess, or a function on a config) and its checks
  runner.py    checks every point, skips finished ones, runs the rest, records each atomically
  backends.py  here (one at a time or a local pool) or Ray tasks with declared CPU/GPU needs
  adapters.py  each experiment's headline numbers from its results.json, and its value checks
  merge.py     one table (markdown + JSON) and a plot from the points' results
  cli.py       `python -m ecos_jax.sweep <driver> --axis f=v1,v2 ... --workdir=...`

    >>> from ecos_jax.sweep import DriverTarget, grid, run
    >>> pts = grid([{"ecos.epsilon": ["0.1", "2"]}], {"num_seeds": "1"})
    >>> state = run(DriverTarget("experiments/selective_labeling.py"), pts, "runs/eps")
"""

from ecos_jax.sweep.runner import read_state, run
from ecos_jax.sweep.spec import Point, grid, point_name
from ecos_jax.sweep.targets import DriverTarget, FunctionTarget

__all__ = ["DriverTarget", "FunctionTarget", "Point", "grid", "point_name", "read_state", "run"]
