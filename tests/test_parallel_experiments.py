"""Experiments that train with DP use all local devices: the same results on 1 and 2 devices, and
every DP experiment's results.json says what it ran on (`device_report`).

The test process has 4 forced host devices (conftest), so `num_devices` picks 1 or 2 of them.
"""
import ast
import json
import math
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "configs"))

import train_dp as train_dp_config  # noqa: E402

from ecos_jax.experiments import train_dp  # noqa: E402


def _tiny(num_devices, epsilon=math.inf):
    c = train_dp_config.get_config("quick")
    c.unlock()
    c.epsilons = (epsilon,)
    # At ε = ∞ the clipping stays (σ = 0): the sharded clipped-sum step still runs, without the
    # seconds of accounting a finite ε costs (calibration, the ledger's ε).
    c.dp.clip_nonprivate = True
    c.num_devices = num_devices
    c.train.model = "mlp"
    c.train.model_kwargs = {"hidden": (16,)}
    c.train.epochs = 1
    c.train.batch_size = 1024   # T = 5 steps over the 5,418 training images
    c.log_every = 5
    c.progress = False
    c.privacy.noise_seed = 0    # the same noise and batches on both meshes
    return c


# The default suite runs ε = ∞ (clipped, no noise); the slow suite adds ε = 8, noised and
# accounted (about 30 s a run on a loaded 2-core machine, most of it accounting).
@pytest.mark.parametrize("epsilon", [math.inf, pytest.param(8.0, marks=pytest.mark.slow)])
def test_train_dp_on_two_devices_equals_one_device(tmp_path, epsilon):
    runs = {}
    tag = "inf" if math.isinf(epsilon) else f"{epsilon:g}"
    for n in (1, 2):
        records = train_dp.run(_tiny(n, epsilon), tmp_path / str(n))
        runs[n] = (records[0], json.loads((tmp_path / str(n) / "results.json").read_text()),
                   json.loads((tmp_path / str(n) / f"ledger_eps{tag}.json").read_text()))
    (one, res_one, ledger_one), (two, res_two, ledger_two) = runs[1], runs[2]
    assert res_one["device_report"]["mesh_devices"] == 1
    assert res_two["device_report"]["mesh_devices"] == 2
    # The same training to float tolerance: the loss and the test accuracy (1,379 test images;
    # a last-digit difference in the parameters may flip at most a prediction or two).
    assert one["train_loss"] == pytest.approx(two["train_loss"], rel=1e-4)
    assert abs(one["test_accuracy"] - two["test_accuracy"]) <= 2 / 1379
    assert one["l2_norm_clip"] == two["l2_norm_clip"] == "1"  # clipped, also at ε = ∞
    # The ledger does not depend on the device count: the same entries, the same epsilon.
    assert ledger_one["entries"] == ledger_two["entries"]
    assert ledger_one["total_epsilon"] == ledger_two["total_epsilon"]
    if not math.isinf(epsilon):
        assert ledger_two["total_epsilon"]["pld"] <= epsilon


def test_too_many_devices_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="num_devices=64 but only"):  # 4 forced devices
        train_dp.run(_tiny(64), tmp_path)
    assert not any(tmp_path.iterdir())


# Every experiment that trains with DP-SGD (or runs the ECOS protocol's DP releases) and the
# privacy audit: each writes a device_report into its results.json.
DP_EXPERIMENTS = ["train_dp", "data_valuation", "pruning", "coopt", "privacy_audit",
                  "ecos_runner"]


@pytest.mark.parametrize("name", DP_EXPERIMENTS)
def test_every_dp_experiment_writes_a_device_report(name):
    """A cheap static check (running each experiment takes minutes): the dict the module writes
    with `io.write_json(... "results.json" ...)` has a "device_report" key whose value calls
    `device_report(...)`."""
    path = os.path.join(ROOT, "ecos_jax", "experiments", f"{name}.py")
    tree = ast.parse(open(path).read())
    found = False
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                if (isinstance(k, ast.Constant) and k.value == "device_report"
                        and any(isinstance(c, ast.Call) and getattr(c.func, "id", "") == "device_report"
                                for c in ast.walk(v))):
                    found = True
    assert found, f"{name}.py writes no device_report(...) into a results dict"
