"""The sweep runner on a tiny fake driver (absl + ml_collections only, ~0.2 s a point).

The fake driver is a real driver script as far as the runner can tell: a config file with a
variant, `--config.<field>=` overrides, `--workdir`, results.json, an `error:` line and exit 2
for a bad value, a traceback for a crash. It appends every run to ran.txt, so a test can tell
which points ran.
"""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from ecos_jax.sweep import adapters, cli, merge, runner
from ecos_jax.sweep.spec import grid, point_name, split_values
from ecos_jax.sweep.targets import DriverTarget
from ecos_jax.utils.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = '''
import ml_collections
def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.a = 1
    c.b = 0.5
    c.seed = 0
    c.fail_at = -1
    c.opt = ml_collections.ConfigDict()
    c.opt.lr = 0.1
    if arg == "small":
        c.opt.lr = 0.01
    elif arg not in (None, ""):
        raise ValueError(f"Unknown config variant {arg!r}; use nothing or 'small'.")
    c.lock()
    return c
'''

DRIVER = '''
import json, os, signal, sys
from absl import app, flags
from ml_collections import config_flags
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_C = config_flags.DEFINE_config_file("config", os.path.join(ROOT, "configs", "fake.py"), lock_config=True)
_W = flags.DEFINE_string("workdir", "runs/fake", "")
def main(argv):
    c = _C.value
    if c.a < 0:
        print(f"error: ConfigError: a must be >= 0, got {c.a}.", file=sys.stderr)
        sys.exit(2)
    with open(os.path.join(ROOT, "ran.txt"), "a") as f:
        f.write(f"a={c.a},b={c.b},seed={c.seed}\\n")
    if str(c.a) == os.environ.get("FAKE_KILL_PARENT_AT"):
        os.kill(os.getppid(), signal.SIGKILL)   # the sweep dies mid-point
        sys.exit(1)
    if c.a == c.fail_at:
        raise RuntimeError(f"boom at a={c.a}")
    os.makedirs(_W.value, exist_ok=True)
    value = c.a * 10 + c.b + 0.001 * c.seed
    with open(os.path.join(_W.value, "results.json"), "w") as f:
        json.dump({"config": c.to_dict(), "value": value, "lr": c.opt.lr, "note": "text"}, f)
if __name__ == "__main__":
    app.run(main)
'''


@pytest.fixture
def fake(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "experiments").mkdir()
    (tmp_path / "configs" / "fake.py").write_text(CONFIG)
    (tmp_path / "experiments" / "fake.py").write_text(DRIVER)
    return tmp_path


def ran(root):
    path = root / "ran.txt"
    return path.read_text().split() if path.exists() else []


def sweep_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "ecos_jax.sweep", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env=env)


def test_axes_points_and_names():
    assert split_values("0.1,(100,200),'a,b',[1, 2]") == ["0.1", "(100,200)", "'a,b'", "[1, 2]"]
    pts = grid([{"a": ["1", "2"]}, {"b": ["x", "y"], "c": ["3", "4"]}], {"d": "9"})
    assert [p.name for p in pts] == ["a=1,b=x,c=3", "a=1,b=y,c=4", "a=2,b=x,c=3", "a=2,b=y,c=4"]
    assert all(p.overrides["d"] == "9" and "d" not in p.axes for p in pts)
    assert point_name({"budgets": (100, 200), "data.pool": "id+ood", "x": -1}) == "budgets=100-200,data.pool=id+ood,x=-1"
    long = point_name({"f": "v" * 300})
    assert len(long) <= 120 and long != point_name({"f": "v" * 299})  # cut, and still unique
    with pytest.raises(ConfigError, match="equal lengths"):
        grid([{"a": [1, 2], "b": [1]}])
    with pytest.raises(ConfigError, match="given twice"):
        grid([{"a": [1]}], {"a": 2})
    with pytest.raises(ConfigError, match="share the directory"):
        grid([{"a": ["(1)", "1"]}])


def test_2x2_sweep_equals_the_four_points_run_by_hand(fake, tmp_path):
    target = DriverTarget(str(fake / "experiments" / "fake.py"), f"{fake}/configs/fake.py:small")
    pts = grid([{"a": ["1", "2"]}, {"b": ["0.5", "1.5"]}], {"seed": "3"})
    state = runner.run(target, pts, tmp_path / "sweep")
    assert [state["points"][p.name]["status"] for p in pts] == ["done"] * 4
    for p in pts:
        by_hand = tmp_path / "by_hand" / p.name
        subprocess.run([sys.executable, str(fake / "experiments" / "fake.py"),
                        f"--config={fake}/configs/fake.py:small", *[f"--config.{k}={v}" for k, v in p.overrides.items()],
                        f"--workdir={by_hand}"], check=True, capture_output=True)
        got = json.loads((tmp_path / "sweep" / p.name / "results.json").read_text())
        assert got == json.loads((by_hand / "results.json").read_text())
        assert got["lr"] == 0.01 and got["config"]["seed"] == 3  # the variant and the fixed override
    out = merge.write(tmp_path / "sweep", pts, state, "fake")
    assert [(r["axes"]["a"], r["axes"]["b"], r["metrics"]["value"]) for r in out["rows"]] == [
        ("1", "0.5", 10.503), ("1", "1.5", 11.503), ("2", "0.5", 20.503), ("2", "1.5", 21.503)]
    assert "note" not in out["rows"][0]["metrics"]  # the generic adapter takes numbers only
    assert "| a | b | value | lr | point s | status |" in (tmp_path / "sweep" / "sweep.md").read_text()
    # Run again: every point is finished, nothing reruns.
    before = len(ran(fake))
    runner.run(target, pts, tmp_path / "sweep")
    assert len(ran(fake)) == before


def test_killed_sweep_resumes_with_the_points_not_finished(fake, tmp_path, capsys):
    args = [str(fake / "experiments" / "fake.py"), "--axis", "a=1,2", "--axis", "b=0.5,1.5",
            f"--workdir={tmp_path / 's'}"]
    # The driver SIGKILLs the sweep (its parent) when it reaches a=2: two points had finished.
    proc = sweep_cli(*args, env={**os.environ, "FAKE_KILL_PARENT_AT": "2"})
    assert proc.returncode == -signal.SIGKILL
    assert sorted(runner.read_state(tmp_path / "s")["points"]) == ["a=1,b=0.5", "a=1,b=1.5"]
    assert ran(fake) == ["a=1,b=0.5,seed=0", "a=1,b=1.5,seed=0", "a=2,b=0.5,seed=0"]
    assert cli.main(args) == 0  # the same command again
    assert ran(fake)[3:] == ["a=2,b=0.5,seed=0", "a=2,b=1.5,seed=0"]  # only the other two
    rows = json.loads((tmp_path / "s" / "sweep.json").read_text())["rows"]
    assert [r["metrics"]["value"] for r in rows] == [10.5, 11.5, 20.5, 21.5]


def test_failing_point_is_recorded_and_the_others_run(fake, tmp_path, capsys):
    args = [str(fake / "experiments" / "fake.py"), "--axis", "a=1,2,3", "--set", "fail_at=2",
            f"--workdir={tmp_path / 's'}"]
    assert cli.main(args) == 1
    state = runner.read_state(tmp_path / "s")
    st = {n: s["status"] for n, s in state["points"].items()}
    assert st == {"a=1": "done", "a=2": "failed", "a=3": "done"}
    assert state["points"]["a=2"]["error"] == "RuntimeError: boom at a=2"
    assert "Traceback" in (tmp_path / "s" / "a=2" / "sweep.log").read_text()
    md = (tmp_path / "s" / "sweep.md").read_text()
    assert "failed: RuntimeError: boom at a=2" in md and "FAILED a=2" in capsys.readouterr().err
    # A rerun retries only the failed point.
    assert cli.main(args) == 1
    assert ran(fake) == ["a=1,b=0.5,seed=0", "a=2,b=0.5,seed=0", "a=3,b=0.5,seed=0", "a=2,b=0.5,seed=0"]


@pytest.mark.parametrize("args, message", [
    (["--axis", "a=1,2", "--axis", "opt.lrr=0.1,0.2"], "'lrr' Did you mean \"lr\" instead of \"lrr\"?"),
    (["--axis", "a=1,x"], "flag --config.a=x: invalid literal for int() with base 10: 'x'"),
    (["--axis", "a=1", "--set", "nope=3"], "nope"),
    (["--axis", "a=1", "--config=CONFIG:bogus"], "Unknown config variant 'bogus'; use nothing or 'small'."),
    (["--axis", "a=1,2", "--plot", "value:c"], "--plot axis 'c' is not an axis"),
])
def test_unknown_field_or_bad_value_refused_before_any_point(fake, tmp_path, capsys, args, message):
    args = [a.replace("CONFIG", str(fake / "configs" / "fake.py")) for a in args]
    assert cli.main([str(fake / "experiments" / "fake.py"), *args, f"--workdir={tmp_path / 's'}"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and err[0].startswith("error: ConfigError: ") and message in err[0], err
    assert not (tmp_path / "s").exists() and ran(fake) == []


def test_command_line_exit_code_for_a_bad_field(fake, tmp_path):
    proc = sweep_cli(str(fake / "experiments" / "fake.py"), "--axis", "a=1", "--axis", "zz=1",
                     f"--workdir={tmp_path / 's'}")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: ConfigError: ")
    assert not (tmp_path / "s").exists()


def test_experiment_value_check_runs_before_any_point(fake, tmp_path):
    def check(c):
        if c.a < 0:
            raise ValueError(f"a must be >= 0, got {c.a}.")

    target = DriverTarget(str(fake / "experiments" / "fake.py"), check=check)
    with pytest.raises(ConfigError, match=r"a must be >= 0, got -1. \(sweep point a=-1\)"):
        runner.run(target, grid([{"a": ["1", "-1"]}]), tmp_path / "s")
    assert not (tmp_path / "s").exists() and ran(fake) == []
    # Without the check the driver itself refuses the value: that point fails with its line.
    state = runner.run(DriverTarget(str(fake / "experiments" / "fake.py")), grid([{"a": ["1", "-1"]}]), tmp_path / "s")
    assert state["points"]["a=-1"]["error"] == "ConfigError: a must be >= 0, got -1."
    assert state["points"]["a=1"]["status"] == "done"


def test_seeds_averaged_and_plotted(fake, tmp_path):
    target = DriverTarget(str(fake / "experiments" / "fake.py"))
    pts = grid([{"a": ["1", "2"]}, {"b": ["0.5", "1.5"]}, {"seed": ["0", "4"]}])
    state = runner.run(target, pts, tmp_path / "s", workers=2)
    assert all(s["status"] == "done" for s in state["points"].values())
    out = merge.write(tmp_path / "s", pts, state, "fake", average_over="seed", plot=("value", "a", "b"))
    avg = {(r["axes"]["a"], r["axes"]["b"]): r["metrics"]["value"] for r in out["averaged"]["rows"]}
    assert avg[("2", "1.5")] == {"mean": pytest.approx(21.502), "std": pytest.approx(np.std([21.5, 21.504])), "n": 2}
    assert len(avg) == 4 and "Mean ± std over seed" in out["markdown"]
    assert (tmp_path / "s" / "sweep_value.png").stat().st_size > 1000
    only = merge.write(tmp_path / "s", pts, state, "fake", where={"b": "1.5"})
    assert [(r["axes"]["a"], r["axes"]["seed"]) for r in only["rows"]] == [("1", "0"), ("1", "4"), ("2", "0"), ("2", "4")]


def test_ecos_adapter_reads_the_runner_results():
    results = {"records": [{"method": "ecos", "budget": 10, "seed": s, "domain": d, "accuracy": 0.5, "epsilon": 0.58,
                            "seconds": 1.0} for s in (0, 1) for d in ("a", "b")],
               "average": [{"method": "ecos", "budget": 10, "mean": 0.5, "std": 0.1}],
               "client_lifetime": {"a": {"epsilon": 1.2}, "b": {"epsilon": 0.9}}}
    (row,) = adapters.headlines("selective_labeling", results)
    assert row["group"] == {"method": "ecos", "budget": 10}
    assert row["metrics"] == {"accuracy": {"mean": 0.5, "std": 0.1, "n": 2}, "epsilon": 0.58, "train_seconds": 4.0,
                              "client_lifetime_epsilon": 1.2}
    dp = {"records": [{"target_epsilon": t, "seed": s, "test_accuracy": a, "epsilon_pld": e, "epsilon_rdp": "n/a",
                       "noise_multiplier": 1.1, "seconds": 2.0}
                      for t, s, a, e in [("1", 0, 0.8, 0.99), ("1", 1, 0.9, 1.0), ("inf", 0, 0.95, "inf")]]}
    rows = adapters.headlines("train_dp", dp)
    assert [r["group"] for r in rows] == [{"target_epsilon": "1"}, {"target_epsilon": "inf"}]
    assert rows[0]["metrics"] == {"accuracy": {"mean": pytest.approx(0.85), "std": pytest.approx(0.05), "n": 2},
                                  "epsilon": 1.0, "sigma": 1.1, "train_seconds": 4.0}  # RDP n/a: left out
    assert rows[1]["metrics"]["epsilon"] == float("inf")


@pytest.mark.slow
def test_ray_backend_gives_the_local_table(fake, tmp_path):
    ray = pytest.importorskip("ray")
    target = DriverTarget(str(fake / "experiments" / "fake.py"))
    pts = grid([{"a": ["1", "2"]}, {"b": ["0.5", "1.5"]}])
    local = runner.run(target, pts, tmp_path / "local")
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        remote = runner.run(target, pts, tmp_path / "ray", backend="ray", cpus_per_point=1)
    finally:
        ray.shutdown()

    def table(root, state):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in merge.rows(root, pts, state, "fake")]

    assert table(tmp_path / "local", local) == table(tmp_path / "ray", remote)
    assert all(s["status"] == "done" for s in remote["points"].values())


FUNCTION = '''
import json, os
def point(config, workdir):
    if config.a == 3:
        raise ValueError("a = 3 is refused")
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump({"value": config.a * 10 + config.b, "pid": os.getpid()}, f)
'''


def test_function_target_inline_and_over_a_process_pool(tmp_path, monkeypatch):
    import ml_collections

    from ecos_jax.sweep.targets import FunctionTarget

    (tmp_path / "fake_point.py").write_text(FUNCTION)
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers start with the parent's sys.path
    base = ml_collections.ConfigDict({"a": 1, "b": 0.5})
    target = FunctionTarget("fake_point:point", base)
    pts = grid([{"a": [1, 2, 3]}])
    inline = runner.run(target, pts, tmp_path / "inline")
    pooled = runner.run(target, pts, tmp_path / "pool", workers=2)
    for state in (inline, pooled):
        assert {n: s["status"] for n, s in state["points"].items()} == {"a=1": "done", "a=2": "done", "a=3": "failed"}
        assert state["points"]["a=3"]["error"] == "ValueError: a = 3 is refused"
    for name in ("a=1", "a=2"):
        a, b = (json.loads((tmp_path / d / name / "results.json").read_text()) for d in ("inline", "pool"))
        assert a["value"] == b["value"] and a["pid"] == os.getpid() != b["pid"]  # the pool ran elsewhere
    with pytest.raises(ConfigError, match=r"^Unknown config field 'c'\."):  # override's own line, once
        runner.run(target, grid([{"c": [1]}]), tmp_path / "bad")
    with pytest.raises(ConfigError, match="sweep point a=x"):
        runner.run(target, grid([{"a": ["x"]}]), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_client_releases_compose_over_the_whole_sweep(fake, tmp_path):
    import dp_accounting

    from ecos_jax.privacy import accounting
    from ecos_jax.privacy.ledger import PrivacyLedger

    pts = grid([{"a": ["1", "2", "3"]}])
    state = runner.run(DriverTarget(str(fake / "experiments" / "fake.py")), pts, tmp_path / "s")
    sigmas = {"a=1": 2.0, "a=2": 3.0, "a=3": 4.0}
    for name, sigma in sigmas.items():  # what an ECOS point keeps: one ledger per client
        ledger = PrivacyLedger(1e-5, accountant="rdp")
        ledger.record("coverage", dp_accounting.GaussianDpEvent(sigma), sensitivity="L2 1")
        (tmp_path / "s" / name / "client_ledgers.json").write_text(json.dumps({"digits": ledger.to_dict()}))
    state["points"]["a=3"]["status"] = "failed"  # a failed point's releases are not counted
    out = merge.write(tmp_path / "s", pts, state, "fake")
    want = accounting.epsilon(dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(2.0),
                                                             dp_accounting.GaussianDpEvent(3.0)]), 1e-5, "rdp")
    assert out["client_lifetime"]["digits"] == {"epsilon": pytest.approx(want, rel=1e-9), "releases": 2}
    assert "Client privacy over the whole sweep (RDP, δ = 1e-05)" in out["markdown"]
    saved = PrivacyLedger.from_dict(json.loads((tmp_path / "s" / "sweep_client_ledgers.json").read_text())["digits"])
    assert [e.meta["point"] for e in saved.entries] == ["a=1", "a=2"]


def test_sweep_file_and_zip(fake, tmp_path, capsys):
    sweep_file = tmp_path / "my_sweep.py"
    sweep_file.write_text(f'''
def get_sweep(arg):
    return {{"driver": {str(fake / "experiments" / "fake.py")!r}, "set": {{"opt.lr": 0.5}},
             "axes": [{{"a": [1, 2], "b": [0.25, 0.75]}}, {{"seed": [0, 2] if arg == "two" else [0]}}],
             "average_over": "seed"}}
''')
    assert cli.main([f"--sweep={sweep_file}:two", f"--workdir={tmp_path / 'f'}", "--dry-run"]) == 0
    assert capsys.readouterr().out.split() == ["a=1,b=0.25,seed=0", "a=1,b=0.25,seed=2", "a=2,b=0.75,seed=0",
                                               "a=2,b=0.75,seed=2"]  # a and b zipped, times seed
    assert cli.main([f"--sweep={sweep_file}:two", f"--workdir={tmp_path / 'f'}"]) == 0
    capsys.readouterr()
    out = json.loads((tmp_path / "f" / "sweep.json").read_text())
    assert [r["metrics"]["lr"] for r in out["rows"]] == [0.5] * 4  # the file's fixed override
    assert [r["metrics"]["value"]["mean"] for r in out["averaged"]["rows"]] == pytest.approx([10.251, 20.751])
    # --zip on the command line pairs the axes the same way.
    assert cli.main([str(fake / "experiments" / "fake.py"), "--zip", "--axis", "a=1,2", "--axis", "b=0.25,0.75",
                     f"--workdir={tmp_path / 'z'}", "--dry-run"]) == 0
    assert capsys.readouterr().out.split() == ["a=1,b=0.25", "a=2,b=0.75"]
    assert cli.main([str(fake / "experiments" / "fake.py"), "--zip", "--axis", "a=1,2", "--axis", "b=0.25",
                     f"--workdir={tmp_path / 'z'}"]) == 2
    assert "Zipped axes need equal lengths" in capsys.readouterr().err
