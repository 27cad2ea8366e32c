"""What a sweep point runs, and how its config is checked before anything runs.

Two kinds of target:

  DriverTarget    a driver script (`experiments/<name>.py`), run as a subprocess exactly as a
                  user would: `python <driver> --config=<file>[:<variant>] --config.<f>=<v> ...
                  --workdir=<point dir>`. Before any point runs, each point's argv is parsed
                  in-process by the same ml_collections flag parser the driver uses, so a
                  misspelled field or a value of the wrong type is refused with the parser's
                  own message; an experiment with a registered check (`adapters.py`) also gets
                  its value checks (ε > 0, budget within the pool, ...) there.
  FunctionTarget  `module:function(config, workdir)` on a base ConfigDict, the overrides applied
                  by `utils.overrides.override` (an experiment that builds its own sweep, e.g.
                  the ECOS sweeps, whose points need more than a driver's outputs).

A point becomes a `Job`, a picklable description `execute` runs anywhere (inline, in a worker
process, in a Ray task) and that returns a plain dict outcome: execute never raises for a
failing point, it records the error and keeps the log.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
import os
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ml_collections

from ecos_jax.sweep.spec import Point, cli_value
from ecos_jax.utils.errors import ConfigError
from ecos_jax.utils.overrides import override

LOG_NAME = "sweep.log"       # each point's stdout + stderr, in its sub-workdir
RESULTS_NAME = "results.json"
_TAIL = 4000                 # characters of a point's log returned with its outcome
_ABSL_LINE = re.compile(r"^[IW]\d{4} \d\d:\d\d:\d\d")


def one_line(e: BaseException) -> str:
    """An exception's message on one line, as the drivers print it (`error: <this>`)."""
    msg = str(e)
    if len(msg) > 1 and msg[0] == msg[-1] and msg[0] in "'\"":  # a KeyError's repr of its message
        msg = msg[1:-1]
    msg = msg.replace("\\n", " ").replace("\n", " ").replace("\\'", "'")
    return f"{type(e).__name__}: {msg}"


@dataclasses.dataclass(frozen=True)
class Job:
    """One point to run: a subprocess `argv` (driver) or a `function` on `config`."""

    name: str
    workdir: str
    argv: tuple[str, ...] | None = None
    cwd: str | None = None
    function: str | None = None
    config: ml_collections.ConfigDict | None = None


def _last_error(log_text: str) -> str:
    """The line that says why a driver failed: its `error:` line, else the traceback's last line."""
    lines = [ln.strip() for ln in log_text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("error: "):
            return ln[len("error: "):]
    for ln in reversed(lines):
        if not _ABSL_LINE.match(ln):  # absl's INFO/WARNING lines say nothing about the failure
            return ln
    return lines[-1] if lines else "no output"


def resolve(path: str) -> Callable:
    """'package.module:attr' -> the object."""
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def execute(job: Job) -> dict:
    """Runs `job`; returns {name, status ("done" | "failed"), returncode, error, seconds,
    log_tail, results (the point's results.json text, or None)}. Never raises for a failing
    point; its log is kept in `<workdir>/sweep.log`."""
    wd = Path(job.workdir)
    wd.mkdir(parents=True, exist_ok=True)
    log_path = wd / LOG_NAME
    t0 = time.perf_counter()
    error, rc = None, 0
    if job.argv is not None:
        with open(log_path, "w") as f:
            proc = subprocess.run([sys.executable, *job.argv, f"--workdir={job.workdir}"], stdout=f,
                                  stderr=subprocess.STDOUT, cwd=job.cwd, check=False)
        rc = proc.returncode
        if rc != 0:
            error = _last_error(log_path.read_text(errors="replace"))
    else:
        handler = logging.FileHandler(log_path, mode="w")
        handler.setFormatter(logging.Formatter("%(levelname).1s %(asctime)s %(name)s] %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        try:
            resolve(job.function)(job.config, job.workdir)
        except Exception as e:  # a failing point is recorded, never stops the sweep
            rc, error = 1, one_line(e)
            with open(log_path, "a") as f:
                traceback.print_exc(file=f)
        finally:
            root.removeHandler(handler)
            handler.close()
    seconds = time.perf_counter() - t0
    results = wd / RESULTS_NAME
    return {"name": job.name, "status": "failed" if error is not None else "done", "returncode": rc,
            "error": error, "seconds": seconds, "log_tail": log_path.read_text(errors="replace")[-_TAIL:],
            "results": results.read_text() if error is None and results.exists() else None}


# ----------------------------------------------------------------------------- targets


def _parse_driver_config(config_arg: str, overrides: Mapping[str, Any], root: str) -> ml_collections.ConfigDict:
    """The config the driver would build from `--config=<config_arg> --config.<f>=<v>...`,
    through ml_collections' own flag parser (no sys.argv involved)."""
    from absl import flags  # noqa: PLC0415
    from ml_collections import config_flags  # noqa: PLC0415

    argv = ["driver", f"--config={config_arg}", *[f"--config.{k}={cli_value(v)}" for k, v in overrides.items()]]
    fv = flags.FlagValues()
    if root not in sys.path:
        sys.path.insert(0, root)  # config files import their siblings (`from configs import ...`)
    try:
        config_flags.DEFINE_config_file("config", None, "config", flag_values=fv, lock_config=True, sys_argv=argv)
        fv(argv)
        return fv.config
    except (flags.Error, ValueError, KeyError, AttributeError, TypeError, FileNotFoundError) as e:
        text = str(e).strip()
        if "Traceback" in text:  # a config file that raised (e.g. a bad variant): its last line says why
            raise ConfigError(text.splitlines()[-1].strip()) from e
        raise ConfigError(one_line(e)) from e


@dataclasses.dataclass(frozen=True)
class DriverTarget:
    """A driver script, each point a subprocess. `config`: '<file>[:<variant>]' (default: the
    driver's own, `<repo>/configs/<driver file name>`); `check`: extra value checks on a
    point's parsed config (raise ConfigError/ValueError), e.g. the experiment's validation."""

    driver: str
    config: str | None = None
    check: Callable[[ml_collections.ConfigDict], None] | None = None

    @property
    def root(self) -> str:
        return os.path.dirname(os.path.dirname(os.path.abspath(self.driver)))

    @property
    def experiment(self) -> str:
        return Path(self.driver).stem

    @property
    def config_arg(self) -> str:
        if self.config:
            file, sep, variant = self.config.partition(":")
            return os.path.abspath(file) + sep + variant
        return os.path.join(self.root, "configs", os.path.basename(self.driver))

    def identity(self) -> str:
        return f"driver {os.path.relpath(os.path.abspath(self.driver), self.root)} --config={self.config or ''}"

    def point_config(self, point: Point) -> ml_collections.ConfigDict:
        """The point's config, parsed and checked; ConfigError if it cannot run."""
        if not os.path.isfile(self.driver):
            raise ConfigError(f"No driver script at {self.driver!r}.")
        c = _parse_driver_config(self.config_arg, point.overrides, self.root)
        _run_check(self.check, c)
        return c

    def job(self, point: Point, workdir: str, config: ml_collections.ConfigDict | None = None) -> Job:
        argv = (os.path.abspath(self.driver), f"--config={self.config_arg}",
                *[f"--config.{k}={cli_value(v)}" for k, v in point.overrides.items()])
        return Job(point.name, workdir, argv=argv, cwd=self.root)


def _run_check(check: Callable[[ml_collections.ConfigDict], None] | None,
               config: ml_collections.ConfigDict) -> None:
    """The experiment's own validation of a point's config; its ValueError as a ConfigError."""
    if check is None:
        return
    try:
        check(config)
    except ValueError as e:
        raise ConfigError(str(e)) from e


@dataclasses.dataclass(frozen=True)
class FunctionTarget:
    """`function` ('module:attr', called as f(config, workdir)) on `config` with each point's
    overrides (Python values) applied by `override`; `check` as for DriverTarget."""

    function: str
    config: ml_collections.ConfigDict
    check: Callable[[ml_collections.ConfigDict], None] | None = None

    @property
    def experiment(self) -> str:
        return self.function.partition(":")[0].rsplit(".", 1)[-1]

    def identity(self) -> str:
        body = json.dumps(self.config.to_dict(), sort_keys=True, default=repr)
        return f"function {self.function} " + hashlib.sha256(body.encode()).hexdigest()[:16]

    def point_config(self, point: Point) -> ml_collections.ConfigDict:
        try:
            c = override(self.config, dict(point.overrides))
        except ConfigError:
            raise  # already the one line naming the field
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ConfigError(one_line(e)) from e
        c.lock()
        _run_check(self.check, c)
        return c

    def job(self, point: Point, workdir: str, config: ml_collections.ConfigDict | None = None) -> Job:
        return Job(point.name, workdir, function=self.function,
                   config=config if config is not None else self.point_config(point))


def point_key(target: DriverTarget | FunctionTarget, point: Point) -> str:
    """Hash of what a point runs (target, base config, every override): a finished point is
    skipped only when its key is unchanged."""
    body = json.dumps([target.identity(), [(k, cli_value(v)) for k, v in point.overrides.items()]])
    return hashlib.sha256(body.encode()).hexdigest()[:16]
