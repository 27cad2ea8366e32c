"""Every experiment driver rejects a misspelled config field in one line, before writing."""
import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVERS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "experiments", "*.py")))


def test_every_driver_is_covered():
    assert len(DRIVERS) >= 9


@pytest.mark.parametrize("driver", DRIVERS)
def test_misspelled_field_is_one_clear_line(driver, tmp_path):
    workdir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "experiments", driver), f"--workdir={workdir}",
         "--config.no_such_field_xyz=3"],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: ") and "no_such_field_xyz" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not workdir.exists()
