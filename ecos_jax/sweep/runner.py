"""Runs a sweep's points into `<workdir>/<point name>/`, resumably.

  1. every point's config is built and checked (`target.point_config`) before any point runs:
     one bad field or value and nothing starts (ConfigError naming the point);
  2. points already finished with the same settings (state file, `targets.point_key`) are
     skipped; the rest go to the backend;
  3. each outcome is recorded in `<workdir>/sweep_state.json`, rewritten atomically after every
     point, so a sweep killed at any moment loses no finished point and resumes with the ones
     that had not finished (a point killed mid-run reruns, and resumes inside itself where the
     experiment can, e.g. the ECOS runner's state.json). A failing point is recorded with its
     error line and log (`<point>/sweep.log`) and the others go on; it reruns on the next run.

    >>> state = run(DriverTarget("experiments/selective_labeling.py"), grid([...]), "runs/sweep1")
    >>> state["points"]["ecos.epsilon=0.1"]["status"]   # "done" | "failed"
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ecos_jax.sweep import backends
from ecos_jax.sweep.spec import Point, cli_value
from ecos_jax.sweep.targets import LOG_NAME, RESULTS_NAME, DriverTarget, FunctionTarget, point_key
from ecos_jax.utils import io
from ecos_jax.utils.errors import ConfigError

log = logging.getLogger(__name__)
STATE_NAME = "sweep_state.json"


def read_state(workdir: str | Path) -> dict:
    """The sweep state in `workdir` ({"points": {name: outcome}}; empty if none yet)."""
    path = Path(workdir) / STATE_NAME
    if not path.exists():
        return {"points": {}}
    return json.loads(path.read_text())


def check_points(target: DriverTarget | FunctionTarget, points: Sequence[Point]) -> dict:
    """{point name: its checked config}; raises ConfigError (naming the point) on the first bad one."""
    configs = {}
    for p in points:
        parts = p.name.split("/")
        if not p.name or p.name.startswith("/") or any(s in ("", ".", "..") for s in parts):
            raise ConfigError(f"Point name {p.name!r} is not a relative directory.")
        try:
            configs[p.name] = target.point_config(p)
        except ConfigError as e:
            raise ConfigError(f"{e} (sweep point {p.name})") from e
    return configs


def run(target: DriverTarget | FunctionTarget, points: Sequence[Point], workdir: str | Path, *,
        backend: str = "local", workers: int = 1, address: str | None = None, cpus_per_point: float = 1.0,
        gpus_per_point: float = 0.0, on_outcome: Callable[[dict], None] | None = None) -> dict:
    """Runs every unfinished point; returns the state ({"points": {name: outcome}, ...}).

    backend: "local" (`workers` at a time) or "ray" (`address`, per-point CPU/GPU needs).
    on_outcome: called with each outcome as it is recorded (progress lines).
    """
    if backend not in backends.BACKENDS:
        raise ConfigError(f"Unknown backend {backend!r}; choose from {backends.BACKENDS}.")
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}.")
    if backend == "local" and gpus_per_point:
        log.warning("--gpus-per-point is a Ray resource request; local points see every device.")
    configs = check_points(target, points)
    workdir = Path(workdir).resolve()
    state = read_state(workdir)
    keys = {p.name: point_key(target, p) for p in points}
    todo = []
    for p in points:
        prev = state["points"].get(p.name)
        if prev and prev.get("status") == "done" and prev.get("key") == keys[p.name]:
            continue
        if prev and prev.get("key") not in (None, keys[p.name]):
            log.info("Point %s: settings changed since it last ran, running it again.", p.name)
        todo.append(p)
    log.info("Sweep %s: %d points, %d finished before, %d to run.", workdir, len(points), len(points) - len(todo),
             len(todo))
    state.update({"target": target.identity(), "order": [p.name for p in points],
                  "axes": sorted({f for p in points for f in p.axes})})
    by_name = {p.name: p for p in points}
    jobs = [target.job(p, str(workdir / p.name), configs[p.name]) for p in todo]
    if backend == "ray":
        outcomes = backends.ray(jobs, address=address, cpus_per_point=cpus_per_point, gpus_per_point=gpus_per_point)
    else:
        outcomes = backends.local(jobs, workers)
    for out in outcomes:
        p = by_name[out["name"]]
        pdir = workdir / p.name
        # From another node (Ray, no shared filesystem): keep its results and log here too.
        if out.get("results") is not None and not (pdir / RESULTS_NAME).exists():
            io.write_text(pdir / RESULTS_NAME, out["results"])
        if not (pdir / LOG_NAME).exists():
            io.write_text(pdir / LOG_NAME, out.get("log_tail") or "")
        state["points"][p.name] = {
            "key": keys[p.name], "overrides": {k: cli_value(v) for k, v in p.overrides.items()},
            "axes": {k: cli_value(v) for k, v in p.axes.items()}, "status": out["status"],
            "returncode": out["returncode"], "error": out["error"], "seconds": round(out["seconds"], 3),
            "log": f"{p.name}/{LOG_NAME}", "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        io.write_json(workdir / STATE_NAME, state)
        if out["status"] == "failed":
            log.warning("Point %s failed: %s (log: %s)", p.name, out["error"], pdir / LOG_NAME)
        if on_outcome is not None:
            on_outcome(state["points"][p.name] | {"name": p.name})
    io.write_json(workdir / STATE_NAME, state)
    return state


def failed(state: dict, names: Sequence[str] | None = None) -> dict[str, str]:
    """{point name: its error} for the points of `names` (default: all) that did not finish."""
    names = state.get("order", list(state["points"])) if names is None else names
    return {n: (state["points"].get(n) or {}).get("error") or "not run" for n in names
            if (state["points"].get(n) or {}).get("status") != "done"}
