"""The prepared accelerator check: the CPU-only max-pool rewrite stays off other backends, and
benchmarks/device_check.sh and benchmarks/scaling.py run end to end at tiny sizes on a CPU."""
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from ecos_jax.parallel.backend import per_example_paths
from ecos_jax.privacy import dpsgd, pooling

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pooled(x):
    return jnp.sum(nn.max_pool(x, (2, 2), (2, 2)) ** 2)


@pytest.mark.parametrize("backend", ["cpu", "gpu", "tpu"])
def test_maxpool_rewrite_applies_on_cpu_only(monkeypatch, backend):
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    paths = per_example_paths()  # the documented choice for this backend
    assert paths.backend == backend and paths.maxpool_rewrite == (backend == "cpu")
    x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    jaxpr = str(jax.make_jaxpr(jax.grad(pooling.fast_max_pool_grads(_pooled)))(x))
    # XLA's own pooling gradient is select_and_scatter; the rewrite replaces it by selects.
    # What the library does on this backend is what per_example_paths says it does.
    assert ("select_and_scatter" in jaxpr) == (not paths.maxpool_rewrite), jaxpr
    assert jnp.allclose(jax.grad(pooling.fast_max_pool_grads(_pooled))(x), jax.grad(_pooled)(x))
    # DP-SGD's default per-example path is the documented one on every backend.
    assert dpsgd.DPSGDConfig(dataset_size=4, batch_size=2).grad_method == paths.grad_method
    assert paths.measured["maxpool_rewrite"] == (backend == "cpu")  # GPU/TPU: reasoned only


def test_per_example_paths_refuses_an_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        per_example_paths("metal")


@pytest.mark.slow  # six cold JAX processes (benchmarks at tiny sizes): minutes on a loaded CPU
def test_device_check_script_runs_at_tiny_sizes_on_cpu(tmp_path):
    env = {**os.environ, "DEVICE_CHECK_TINY": "1", "DEVICE_CHECK_OUT": str(tmp_path),
           "PYTHON": sys.executable, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "device_check.sh")],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.load(open(tmp_path / "summary.json"))
    assert set(summary["steps"]) == {"env", "dpsgd", "scores", "sampling", "scaling", "train_dp"}
    assert all(step["exit"] == 0 for step in summary["steps"].values()), summary
    assert summary["missing"] == [], summary  # jax_privacy ran (installed here)
    env_report = json.load(open(tmp_path / "env.json"))
    assert env_report["maxpool_rewrite_applied"] is True and env_report["platform"] == "cpu"
    train = json.load(open(tmp_path / "train_dp.json"))
    assert train["steps"] == 3 and train["epsilon_pld"] > 0
    for name in ("dpsgd", "scores", "sampling", "scaling"):
        assert (tmp_path / f"{name}.json").stat().st_size > 0, name


@pytest.mark.slow  # two cold JAX subprocesses
def test_scaling_benchmark_writes_its_table(tmp_path):
    out = tmp_path / "scaling.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "scaling.py"),
                           "--devices=1,2", "--batch=6", "--size=8", "--repeats=1", "--inner=1",
                           f"--out={out}"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.load(open(out))
    assert [r["devices"] for r in result["rows"]] == [1, 2]
    assert all(r["dp_steps_per_s"] > 0 and r["nonprivate_steps_per_s"] > 0 for r in result["rows"])
    assert result["rows"][1]["device_report"]["mesh_devices"] == 2


STEPS = ("env", "dpsgd", "scores", "sampling", "scaling", "train_dp")


def _summarise(tmp_path, *, exits=None, jax_privacy=True, opacus=True, tiny="0", absent=()):
    """The check's last step on a made-up output folder: (exit status, stdout, summary.json)."""
    exits = exits or {}
    (tmp_path / "summary.tsv").write_text(
        "".join(f"{name}\t{exits.get(name, 0)}\t5\n" for name in STEPS))
    for name in STEPS:
        (tmp_path / f"{name}.json").write_text("{}")
    for name in absent:
        (tmp_path / f"{name}.json").unlink()
    ratios = {"dp_over_fastest_nonprivate": 1.1}
    if jax_privacy:
        ratios["dp_throughput_over_jax_privacy"] = 3.0
    row = {"batch_size": 256, "ratios": ratios,
           "jax_privacy": {"available": jax_privacy, "reason": "No module named 'jax_privacy'"},
           "torch": {"available": opacus, "reason": "No module named 'opacus'"}}
    (tmp_path / "dpsgd.json").write_text(json.dumps({"models": {"cnn": {"256": row}}}))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "device_check_summary.py"),
                           str(tmp_path / "summary.tsv"), str(tmp_path), tiny],
                          capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stdout, json.loads((tmp_path / "summary.json").read_text())


def test_device_check_names_what_is_missing(tmp_path):
    rc, out, summary = _summarise(tmp_path)
    assert rc == 0 and summary["missing"] == [] and "device check: complete" in out
    # No jax_privacy: a required ratio is missing, said in one line, and the check fails.
    rc, out, summary = _summarise(tmp_path, jax_privacy=False)
    assert rc == 1 and "MISSING: dpsgd: jax_privacy is not installed" in out, out
    # A step that timed out is named with its log; Opacus missing is a warning only.
    rc, out, summary = _summarise(tmp_path, exits={"scores": 124}, opacus=False)
    assert rc == 1 and summary["steps"]["scores"]["timed_out"]
    assert any(m.startswith("scores: exit 124 (timed out)") for m in summary["missing"])
    assert "WARNING: dpsgd: no Opacus rows" in out
    # A step that exited 0 but wrote no JSON is a gap too.
    rc, out, summary = _summarise(tmp_path, absent=("sampling",))
    assert rc == 1 and summary["missing"] == ["sampling: no sampling.json written"], summary
