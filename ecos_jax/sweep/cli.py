r"""`python -m ecos_jax.sweep`: any driver, any config fields, every point a run of the driver.

  python -m ecos_jax.sweep experiments/selective_labeling.py --config=configs/selective_labeling.py:quick \
      --axis ecos.epsilon=0.1,0.58,2 --axis ecos.num_centroids=10,30 --workdir=runs/sweep1 \
      --plot accuracy:ecos.epsilon:ecos.num_centroids
  python -m ecos_jax.sweep experiments/train_dp.py --axis seed=0,1,2 --axis train.model=cnn,mlp \
      --average-over seed --workers 2
  python -m ecos_jax.sweep --sweep=my_sweep.py:small --workdir=runs/s   # axes from a file
  python -m ecos_jax.sweep ... --where method=ecos      # only ECOS's rows in the table and plot
  python -m ecos_jax.sweep ... --backend=ray --address=auto --cpus-per-point=4 --gpus-per-point=1

Axes multiply (product) unless --zip, which pairs them value by value. `--set f=v` fixes a field
at every point. Values are written as on the driver's command line (`--config.f=v`); a tuple
value is bracketed: `--axis "budgets=(100,200),(300,600)"`. A sweep file is Python with
`get_sweep(arg) -> dict(driver=..., config=..., set={f: v}, axes=[{f: [values]}, ...],
average_over=..., plot="metric:x:line")`: each dict in `axes` is a group whose fields are zipped;
groups multiply. Command-line axes and --set add to the file's.

A misspelled field or a bad value ends before any point runs, in one line `error: ConfigError:
...` (exit 2), the message the driver itself would print. Exit 1 if a point failed (the others
ran; see the table and the point's sweep.log), 0 otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
import time

from ecos_jax.sweep import adapters, runner
from ecos_jax.sweep.spec import grid, parse_assignment
from ecos_jax.sweep.targets import DriverTarget
from ecos_jax.utils.errors import ConfigError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ecos_jax.sweep", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("driver", nargs="?", help="the driver script, e.g. experiments/selective_labeling.py")
    p.add_argument("--config", help="<file>[:<variant>] (default: the driver's configs/<name>.py)")
    p.add_argument("--axis", action="append", default=[], metavar="FIELD=V1,V2,...", help="an axis (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="a fixed override (repeatable)")
    p.add_argument("--zip", action="store_true", help="zip the command-line axes instead of their product")
    p.add_argument("--sweep", help="a sweep file <file.py>[:<arg>] with get_sweep(arg)")
    p.add_argument("--workdir", required=True, help="where every point's sub-workdir and the table go")
    p.add_argument("--backend", default="local", choices=("local", "ray"))
    p.add_argument("--workers", type=int, default=1, help="local: points run at once (default 1)")
    p.add_argument("--address", default=None, help="ray: the cluster address (e.g. auto, ray://host:10001)")
    p.add_argument("--cpus-per-point", type=float, default=1.0, help="ray: CPUs each point's task needs")
    p.add_argument("--gpus-per-point", type=float, default=0.0, help="ray: GPUs each point's task needs")
    p.add_argument("--average-over", default=None, metavar="FIELD", help="fold this axis into mean ± std")
    p.add_argument("--plot", default=None, metavar="METRIC:X_AXIS[:LINE_AXIS]", help="plot a metric")
    p.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                   help="only rows with this headline group or axis value in the table and plot, e.g. method=ecos")
    p.add_argument("--dry-run", action="store_true", help="check and list the points, run nothing")
    return p


def load_sweep_file(spec: str) -> dict:
    """The dict `get_sweep(arg)` of a sweep file '<file.py>[:<arg>]' returns."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"No sweep file at {path!r}.")
    module_spec = importlib.util.spec_from_file_location("ecos_jax_sweep_file", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_sweep"):
        raise ConfigError(f"Sweep file {path!r} defines no get_sweep(arg).")
    out = module.get_sweep(arg or None)
    unknown = set(out) - {"driver", "config", "set", "axes", "average_over", "plot"}
    if unknown:
        raise ConfigError(f"Sweep file {path!r}: unknown keys {sorted(unknown)}.")
    return out


def parse_plot(text: str | None) -> tuple[str, str, str | None] | None:
    if not text:
        return None
    parts = text.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise ConfigError(f"--plot takes METRIC:X_AXIS[:LINE_AXIS], got {text!r}.")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def build(args: argparse.Namespace):
    """(target, points, average_over, plot) from the flags and the sweep file; ConfigError if bad."""
    file = load_sweep_file(args.sweep) if args.sweep else {}
    driver = args.driver or file.get("driver")
    if not driver:
        raise ConfigError("Name the driver (experiments/<name>.py) or give a --sweep file with one.")
    fixed = dict(file.get("set", {}))
    for s in args.set:
        f, (v,) = parse_assignment(s, many=False)
        fixed[f] = v
    groups = [dict(g) for g in file.get("axes", [])]
    cli_axes = [parse_assignment(a, many=True) for a in args.axis]
    if args.zip and cli_axes:
        groups.append(dict(cli_axes))
        if len(cli_axes) != len(groups[-1]):
            raise ConfigError("An axis field is given twice.")
    else:
        for f, vals in cli_axes:
            groups.append({f: vals})
    if not groups:
        raise ConfigError("No axis: give at least one --axis FIELD=V1,V2 (or a --sweep file with axes).")
    points = grid(groups, fixed)
    target = DriverTarget(driver, args.config or file.get("config"), check=adapters.check(os.path.splitext(
        os.path.basename(driver))[0]))
    average_over = args.average_over or file.get("average_over")
    if average_over and all(average_over not in p.axes for p in points):
        raise ConfigError(f"--average-over {average_over!r} is not an axis of this sweep.")
    plot = parse_plot(args.plot or file.get("plot"))
    if plot:
        axes = {f for p in points for f in p.axes}
        bad = [a for a in plot[1:] if a and (a not in axes or a == average_over)]
        if bad:
            raise ConfigError(f"--plot axis {bad[0]!r} is not an axis of this sweep"
                              + (" (it is averaged over)" if bad[0] == average_over else "") + ".")
    return target, points, average_over, plot


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        target, points, average_over, plot = build(args)
        where = {k: v[0] for k, v in (parse_assignment(w, many=False) for w in args.where)}
        if args.dry_run:
            runner.check_points(target, points)
            for p in points:
                print(p.name)
            return 0
        t0 = time.perf_counter()

        def progress(o):
            print(f"[sweep] {o['name']}: {o['status']} in {o['seconds']:.1f} s"
                  + (f" ({o['error']})" if o["error"] else ""), flush=True)

        state = runner.run(target, points, args.workdir, backend=args.backend, workers=args.workers,
                           address=args.address, cpus_per_point=args.cpus_per_point,
                           gpus_per_point=args.gpus_per_point, on_outcome=progress)
        t1 = time.perf_counter()
        from ecos_jax.sweep import merge  # noqa: PLC0415  (matplotlib: only once there is a table to draw)

        out = merge.write(args.workdir, points, state, target.experiment, average_over=average_over, plot=plot,
                          where=where)
        print(out["markdown"])
        print(f"[sweep] points {t1 - t0:.1f} s, merge {time.perf_counter() - t1:.2f} s; "
              f"{os.path.join(args.workdir, 'sweep.md')}", flush=True)
    except ConfigError as e:
        if os.environ.get("ECOS_JAX_TRACEBACK"):
            raise
        print(f"error: ConfigError: {e}", file=sys.stderr)
        return 2
    bad = runner.failed(state, [p.name for p in points])
    for name, err in bad.items():
        print(f"[sweep] FAILED {name}: {err}", file=sys.stderr)
    return 1 if bad else 0
