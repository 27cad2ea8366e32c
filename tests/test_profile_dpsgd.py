"""benchmarks/profile_dpsgd.py: HLO metadata parsing, phase labels, and one tiny real profile."""
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import profile_dpsgd  # noqa: E402

HLO = """
%fused_computation.3 (p: f32[8,4]) -> f32[8,4] {
  ROOT %tanh.1 = f32[8,4]{1,0} tanh(%p), metadata={op_name="jit(step)/jvp()/tanh" stack_frame_id=1}
}
ENTRY %main {
  %add_tanh_fusion = f32[8,4]{1,0} fusion(%x), kind=kLoop, calls=%fused_computation.3, metadata={op_name="jit(step)/jvp()/tanh" stack_frame_id=2}
  %convolution.2 = f32[8,3,3,16]{3,2,1,0} convolution(%a, %b), metadata={op_name="jit(step)/transpose(jvp())/conv_general_dilated"}
  ROOT %dot.5 = f32[4,16]{1,0} dot(%c, %d), metadata={op_name="jit(step)/jit(clipped_grad_sum)/btk,btc->bkc/dot_general"}
}
"""


def test_hlo_ops_reads_shapes_and_jax_names():
    ops = profile_dpsgd.hlo_ops(HLO)
    assert ops["add_tanh_fusion"] == {"shape": "f32[8,4]{1,0}", "op_name": "jit(step)/jvp()/tanh"}
    assert ops["dot.5"]["shape"] == "f32[4,16]{1,0}"  # a ROOT line too
    assert profile_dpsgd.phase(ops["add_tanh_fusion"]["op_name"]) == "forward"
    assert profile_dpsgd.phase(ops["convolution.2"]["op_name"]) == "backward"
    assert profile_dpsgd.phase(ops["dot.5"]["op_name"]) == "other"
    assert profile_dpsgd.short_name(ops["dot.5"]["op_name"]) == "btk,btc->bkc/dot_general"


def test_op_table_sums_calls_per_step():
    ops = profile_dpsgd.hlo_ops(HLO)
    events = [{"dur": 3000.0, "args": {"hlo_op": "dot.5"}}, {"dur": 1000.0, "args": {"hlo_op": "dot.5"}},
              {"dur": 500.0, "args": {"hlo_op": "unknown.1"}}]
    rows = profile_dpsgd.op_table(events, ops, steps=2)
    assert rows[0]["op"] == "dot.5" and rows[0]["ms_per_step"] == pytest.approx(2.0)
    assert rows[0]["calls_per_step"] == 1.0 and rows[0]["phase"] == "other"
    assert rows[1] == {"op": "unknown.1", "ms_per_step": 0.25, "calls_per_step": 0.5, "shape": "?",
                       "phase": "other", "jax_op": ""}


def test_profiles_a_real_step_end_to_end(tmp_path, capsys):
    out = tmp_path / "profile.json"
    result = profile_dpsgd.main(["--models=linear", "--batch=16", "--steps=1", "--top=3",
                                 f"--out={out}"])
    saved = json.loads(out.read_text())
    linear = saved["models"]["linear"]
    for kind in ("dp", "nonprivate"):
        assert linear[kind]["wall_ms"] > 0 and linear[kind]["ops"], kind  # ops came from the trace
        assert all(r["ms_per_step"] >= 0 for r in linear[kind]["ops"])
    # The DP step ran its own ops: the clipped sum's, not only the non-private ones.
    assert {r["op"] for r in linear["dp"]["ops"]} != {r["op"] for r in linear["nonprivate"]["ops"]}
    assert result["models"]["linear"]["dp_over_nonprivate"] == linear["dp_over_nonprivate"]
    assert "| op | ms/step |" in capsys.readouterr().out
    assert saved["baseline"] == "jax_nonprivate_fastpool"


def test_layers_baseline_profiles_grad_sum(tmp_path):
    out = tmp_path / "profile.json"
    profile_dpsgd.main(["--models=linear", "--batch=16", "--steps=1", "--baseline=layers",
                        f"--out={out}"])
    saved = json.loads(out.read_text())
    assert saved["baseline"] == "jax_nonprivate_layers"
    assert saved["models"]["linear"]["nonprivate"]["ops"]


def test_refuses_an_unknown_model(capsys):
    with pytest.raises(SystemExit):
        profile_dpsgd.main(["--models=resnet9000"])
    assert "unknown model" in capsys.readouterr().err
