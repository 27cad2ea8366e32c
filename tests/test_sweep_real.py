"""The sweep runner on the real selective-labelling driver (slow: eight quick-config runs).

A 2 x 2 sweep (ε x R) of configs/selective_labeling.py:quick, with the DP noise seeded so that a
rerun draws the same noise, gives per point the same records as the driver run by hand with the
same flags; only the training seconds differ.
"""
import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVER = os.path.join(ROOT, "experiments", "selective_labeling.py")
CONFIG = os.path.join(ROOT, "configs", "selective_labeling.py") + ":quick"
FIXED = {"ecos.noise_seed": "0", "progress": "False"}
AXES = [("ecos.epsilon", ["0.58", "2"]), ("ecos.num_centroids", ["10", "30"])]


def _records(path):
    out = json.loads(path.read_text())
    for r in out["records"]:
        r.pop("seconds")
    return out["records"], out["average"]


@pytest.mark.slow
def test_quick_selective_labelling_2x2_equals_the_points_by_hand(tmp_path):
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ecos_jax.sweep", DRIVER, f"--config={CONFIG}",
                           *[a for f, v in AXES for a in ("--axis", f"{f}={','.join(v)}")],
                           *[a for f, v in FIXED.items() for a in ("--set", f"{f}={v}")],
                           f"--workdir={tmp_path / 'sweep'}", "--plot", "accuracy:ecos.epsilon:ecos.num_centroids"],
                          capture_output=True, text=True, cwd=ROOT, timeout=3600)
    sweep_s = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((tmp_path / "sweep" / "sweep_state.json").read_text())
    hand_s = 0.0
    for eps in AXES[0][1]:
        for r in AXES[1][1]:
            name = f"ecos.epsilon={eps},ecos.num_centroids={r}"
            wd = tmp_path / "by_hand" / name
            t = time.perf_counter()
            subprocess.run([sys.executable, DRIVER, f"--config={CONFIG}",
                            *[f"--config.{f}={v}" for f, v in FIXED.items()],
                            f"--config.ecos.epsilon={eps}", f"--config.ecos.num_centroids={r}", f"--workdir={wd}"],
                           check=True, capture_output=True, cwd=ROOT, timeout=1800)
            hand_s += time.perf_counter() - t
            got, want = _records(tmp_path / "sweep" / name / "results.json"), _records(wd / "results.json")
            assert got == want, name
            assert state["points"][name]["status"] == "done"
    table = json.loads((tmp_path / "sweep" / "sweep.json").read_text())["rows"]
    assert {r["point"] for r in table} == {f"ecos.epsilon={e},ecos.num_centroids={r}" for e in AXES[0][1]
                                            for r in AXES[1][1]}
    assert (tmp_path / "sweep" / "sweep_accuracy.png").exists()
    print(f"\nsweep (4 points, incl. checks and merge): {sweep_s:.1f} s; the 4 points by hand: {hand_s:.1f} s; "
          f"per point in the sweep: {[round(s['seconds'], 1) for s in state['points'].values()]}")
