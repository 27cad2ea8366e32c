"""Drivers end a bad configuration in one `error:` line, before writing; a bug keeps its traceback."""
import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVERS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "experiments", "*.py")))


def test_every_driver_is_covered():
    assert len(DRIVERS) >= 9


# Each case is a fresh process (~5 s alone, 7-9 s in the suite); every driver parses its config
# through `cli`, so the default suite runs the main job, the one driver on `cli.run` and two
# others, and `make test-slow` the rest. test_every_driver_goes_through_cli covers the wiring.
DEFAULT_CLI_DRIVERS = ("selective_labeling.py", "ecos_sweeps.py", "train_dp.py", "coopt.py")


def test_every_driver_goes_through_cli():
    for driver in DRIVERS:
        with open(os.path.join(ROOT, "experiments", driver)) as f:
            text = f.read()
        main = text[text.index('if __name__ == "__main__":'):]
        assert "cli.main(" in main or "cli.run(" in main, driver


@pytest.mark.parametrize("driver", [
    d if d in DEFAULT_CLI_DRIVERS else pytest.param(d, marks=pytest.mark.slow) for d in DRIVERS])
def test_misspelled_field_is_one_clear_line(driver, tmp_path):
    workdir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "experiments", driver), f"--workdir={workdir}",
         "--config.no_such_field_xyz=3"],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert "no_such_field_xyz" in _one_line_error(proc)
    assert not workdir.exists()


def _one_line_error(proc) -> str:
    """The single `error:` line a refused configuration must end in (log lines may precede it)."""
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and proc.stderr.strip().endswith(errors[0]), proc.stderr[-2000:]
    return errors[0]


def test_bad_value_refused_by_validation_is_one_line(tmp_path):
    workdir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "experiments", "train_dp.py"), f"--workdir={workdir}",
         "--config=configs/train_dp.py:quick", "--config.train.epochs=-1"],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert "ConfigError" in _one_line_error(proc) and "train.epochs" in proc.stderr
    assert not workdir.exists()


_MAIN = """
import sys
sys.path.insert(0, {root!r})
from ecos_jax.utils import cli
from ecos_jax.utils.errors import ConfigError

def main(argv):
    if {kind!r} == "config":
        raise ConfigError("budget must be >= 1, got 0.")
    {{}}["a"].b  # a bug deep in a run: KeyError

cli.run(main)
"""


def test_config_error_is_one_line_and_a_bug_keeps_its_traceback():
    def run(kind):
        return subprocess.run([sys.executable, "-c", _MAIN.format(root=ROOT, kind=kind)],
                              capture_output=True, text=True, timeout=60, cwd=ROOT)

    assert _one_line_error(run("config")) == "error: ConfigError: budget must be >= 1, got 0."
    bug = run("bug")
    assert bug.returncode == 1, bug.stderr[-2000:]
    assert "Traceback" in bug.stderr and "KeyError: 'a'" in bug.stderr
    assert "error: " not in bug.stderr
