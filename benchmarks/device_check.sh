#!/usr/bin/env bash
# One prepared check on an accelerator (GPU or TPU), at most 8 minutes; JSON under
# benchmarks/results/gpu/ (or $DEVICE_CHECK_OUT):
#
#   env.json        devices (parallel.mesh.device_report) and which per-example paths apply
#                   here (parallel.backend.per_example_paths) beside whether the CPU-only max-pool
#                   rewrite is actually active (it must not be off CPU): the step fails if they differ
#   dpsgd.json      benchmarks/dpsgd.py: our DP-SGD step against the non-private step of the
#                   same model, and jax_privacy / Opacus rows where those are installed
#   scores.json     benchmarks/scores.py --quick: matrix-free PLIS against materialised Jacobians
#                   (jacfwd, jacrev): time per sample, agreement, peak memory
#   sampling.json   benchmarks/sampling.py: streamed k-means (and the ECOS path) at 200k x 64
#   scaling.json    benchmarks/scaling.py --platform=<backend>: DP-SGD steps/s on 1..n devices
#   train_dp.json   a short DP-SGD run (privacy.dpsgd.train, mesh of all devices): steps/s,
#                   test accuracy and the ledger's epsilon
#   summary.json    every step's exit status and seconds (124 = hit its timeout), and what is
#                   missing: a step that failed or wrote no JSON, no jax_privacy ratio (required),
#                   no Opacus rows (a warning: Opacus is optional)
#
# Every step runs under `timeout`; a failed or timed-out step is recorded and the next one runs.
# The script exits 1, printing one MISSING: line per gap, when anything required is missing.
#
#   bash benchmarks/device_check.sh                    # on the accelerator machine
#   DEVICE_CHECK_TINY=1 DEVICE_CHECK_OUT=/tmp/dc bash benchmarks/device_check.sh   # CPU smoke test
#
# DEVICE_CHECK_TINY=1 shrinks every size so the whole script runs in a few minutes on a CPU (it
# checks the plumbing, not the speed). PYTHON overrides the interpreter (default .venv/bin/python
# when present, else python3).
set -u
cd "$(dirname "$0")/.."
OUT="${DEVICE_CHECK_OUT:-benchmarks/results/gpu}"
TINY="${DEVICE_CHECK_TINY:-0}"
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
mkdir -p "$OUT"
SUMMARY="$OUT/summary.tsv"
: > "$SUMMARY"

step() {  # step NAME TIMEOUT_S CMD...: runs CMD under timeout, logs to $OUT/NAME.log
  local name="$1" limit="$2"; shift 2
  local start end rc
  start=$(date +%s)
  echo "== $name (timeout ${limit}s): $*"
  timeout --kill-after=5 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  end=$(date +%s)
  tail -n 15 "$OUT/$name.log"
  echo "== $name: exit $rc after $((end - start)) s"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((end - start))" >> "$SUMMARY"
}

if [ "$TINY" = "1" ]; then
  DPSGD_ARGS=(--models=cnn --batch=8 --repeats=1 --inner=1 --no-opacus)
  SCORES_ARGS=(--quick --methods=plis_matrix_free,plis_jacrev --n-train=64 --n-plis=2 --n-dense=1 --checkpoints=2 --microbatch=8 --repeats=1 --max-iters=5)
  SAMPLING_ARGS=(--n=4000 --d=8 --clusters=5 --true_clusters=5 --budget=40 --kcenter_budget=20 --iters=3 --check_n=2000 --client_size=200 --chunk_size=2048 --faiss_threads=1)
  SCALING_ARGS=(--devices=1 --batch=8 --size=12 --repeats=1 --inner=1)
  TRAIN_STEPS=3; TRAIN_BATCH=32
  T_ENV=120; T_DPSGD=400; T_SCORES=400; T_SAMPLING=300; T_SCALING=200; T_TRAIN=300
else
  DPSGD_ARGS=(--models=cnn --repeats=5)
  # PLIS matrix-free against both materialised Jacobians (each method is its own subprocess).
  SCORES_ARGS=(--quick --methods=plis_matrix_free,plis_jacfwd,plis_jacrev)
  SAMPLING_ARGS=(--n=200000 --d=64 --budget=2000 --kcenter_budget=1000 --check_n=20000)
  SCALING_ARGS=(--devices=all --batch=256 --repeats=5)
  TRAIN_STEPS=300; TRAIN_BATCH=256
  # 440 s of steps, 470 s if every step also needs its 5 s kill grace: under 8 minutes.
  T_ENV=40; T_DPSGD=120; T_SCORES=110; T_SAMPLING=60; T_SCALING=50; T_TRAIN=60
fi

step env "$T_ENV" "$PYTHON" - "$OUT/env.json" <<'EOF'
import json, sys
import jax, jax.numpy as jnp
import flax.linen as nn
import dataclasses
from ecos_jax.parallel.backend import per_example_paths
from ecos_jax.parallel.mesh import device_report
from ecos_jax.privacy.pooling import fast_max_pool_grads

def pooled(x):
    return jnp.sum(nn.max_pool(x, (2, 2), (2, 2)))

x = jnp.ones((1, 4, 4, 1))
plain = str(jax.make_jaxpr(jax.grad(pooled))(x))
wrapped = str(jax.make_jaxpr(jax.grad(fast_max_pool_grads(pooled)))(x))
report = {**device_report(), "default_backend": jax.default_backend(),
          # The rewrite swaps reduce_window_max (whose gradient is select_and_scatter) for
          # element-wise selects; off CPU the traced program must be the plain one.
          "maxpool_rewrite_applied": wrapped != plain,
          "maxpool_rewrite_expected": jax.default_backend() == "cpu",
          "per_example_paths": dataclasses.asdict(per_example_paths())}
json.dump(report, open(sys.argv[1], "w"), indent=2)
print(json.dumps(report, indent=2))
assert report["maxpool_rewrite_applied"] == report["maxpool_rewrite_expected"], report
assert report["maxpool_rewrite_applied"] == report["per_example_paths"]["maxpool_rewrite"], report
EOF

step dpsgd "$T_DPSGD" "$PYTHON" benchmarks/dpsgd.py "${DPSGD_ARGS[@]}" --out="$OUT/dpsgd.json"
step scores "$T_SCORES" "$PYTHON" benchmarks/scores.py "${SCORES_ARGS[@]}" --out="$OUT/scores.json"
step sampling "$T_SAMPLING" "$PYTHON" benchmarks/sampling.py "${SAMPLING_ARGS[@]}" --out="$OUT/sampling.json"
# From env.json, without starting JAX again.
BACKEND=$("$PYTHON" -c "import json,sys; print(json.load(open(sys.argv[1]))['default_backend'])" "$OUT/env.json" 2>/dev/null || echo cpu)
if [ "$TINY" != "1" ]; then
  NDEV=$("$PYTHON" -c "import json,sys; print(json.load(open(sys.argv[1]))['local_device_count'])" "$OUT/env.json" 2>/dev/null || echo 1)
  DEVS=1; n=2; while [ "$n" -le "$NDEV" ]; do DEVS="$DEVS,$n"; n=$((n * 2)); done
  SCALING_ARGS=("${SCALING_ARGS[@]/--devices=all/--devices=$DEVS}")
fi
step scaling "$T_SCALING" "$PYTHON" benchmarks/scaling.py --platform="$BACKEND" "${SCALING_ARGS[@]}" --out="$OUT/scaling.json"

step train_dp "$T_TRAIN" "$PYTHON" - "$OUT/train_dp.json" "$TRAIN_STEPS" "$TRAIN_BATCH" <<'EOF'
import json, sys, time
import jax, numpy as np, optax
from ecos_jax.data import load
from ecos_jax.data.split import train_test_split
from ecos_jax.models import get_model
from ecos_jax.parallel.mesh import device_report, local_mesh
from ecos_jax.privacy.dpsgd import DPSGDConfig, train as dp_train
from ecos_jax.privacy.ledger import PrivacyLedger

out, steps, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
train, test = train_test_split(load("digits_mnist_c"), test_fraction=0.2, seed=0)
model = get_model("cnn", train.num_classes)
params = model.init(jax.random.key(0), train.images[:1])
config = DPSGDConfig(dataset_size=len(train), batch_size=batch, l2_norm_clip=1.0,
                     noise_multiplier=1.0)
ledger = PrivacyLedger(delta=1e-5, reproducible_seed=0)
mesh = local_mesh()
start = time.perf_counter()
run = dp_train(model, params, train.images, train.labels, config, optax.adam(1e-3),
               steps=steps, mesh=mesh, seed=0, ledger=ledger)
seconds = time.perf_counter() - start
params = jax.tree.map(lambda a: np.asarray(a), run.params)
apply = jax.jit(model.apply)
correct = sum(int(np.sum(np.argmax(np.asarray(apply(params, test.images[i:i + 512])), -1)
                         == test.labels[i:i + 512])) for i in range(0, len(test), 512))
result = {"steps": steps, "batch_size": batch, "seconds_with_compile": seconds,
          "steps_per_s_with_compile": steps / seconds,
          "test_accuracy": correct / len(test),
          "epsilon_pld": ledger.epsilon(accountant="pld"), "delta": 1e-5,
          "final_loss": run.history[-1]["loss"], "devices": device_report(mesh)}
json.dump(result, open(out, "w"), indent=2)
print(json.dumps(result, indent=2))
EOF

# Every piece the check must show, named when it is missing (never a silent gap): each step's
# JSON, our DP step against the non-private one and against jax_privacy (required: install it
# with `pip install 'ecos_jax[bench]'`), and Opacus (optional: a warning when absent).
"$PYTHON" benchmarks/device_check_summary.py "$SUMMARY" "$OUT" "$TINY"
status=$?
rm -f "$SUMMARY"
exit "$status"  # 1 when any step failed, timed out or a required piece is missing
