"""Data-parallel DP-SGD steps/s on 1, 2 and 4 devices, with the non-private step beside it.

Each device count runs in its own subprocess (on CPU, `--xla_force_host_platform_device_count`
must be set before JAX starts), timing on a mesh of all its devices:

  dp_step          `privacy.dpsgd.make_dp_step(mesh=)`: per-example clipping on each device's rows
                   (grad_method "layers"), psum of the clipped sums, noise once, SGD
  nonprivate_step  the same model and batch, mean loss gradient on each device's rows, psum,
                   SGD (the plain data-parallel step)

Both take the same global batch (`--batch` rows, padded to a multiple of the device count),
so on one machine's CPU cores more devices cannot be faster: forced host devices share the
same cores. What the CPU table shows is the overhead of splitting a step over devices (the
psum and the per-device dispatch); on real accelerators each device adds its own compute.
Every number is the median over `--repeats` rounds of `--inner` steps.

    python benchmarks/scaling.py                  # JSON to benchmarks/results/scaling.json
    python benchmarks/scaling.py --devices=1,2 --batch=64 --repeats=3 --out=/tmp/s.json

`--platform=gpu` (or tpu) uses the machine's real devices instead of forced host devices: the
first n of them for each n in `--devices`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "scaling.json"


def child(args) -> dict:
    """Times both steps on `args.num` devices; runs inside the subprocess."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax.sharding import PartitionSpec as P

    sys.path.insert(0, str(ROOT))
    from ecos_jax.utils import allocator

    allocator.configure()  # before the first computation, as the experiment drivers run
    from ecos_jax.models import get_model
    from ecos_jax.parallel import mesh as mesh_lib
    from ecos_jax.privacy.dpsgd import DPSGDConfig, make_dp_step
    from ecos_jax.privacy.layer_grads import softmax_xent

    mesh = mesh_lib.local_mesh(args.num)
    rng = np.random.default_rng(0)
    x = rng.random((args.batch, args.size, args.size, 1), np.float32)
    y = rng.integers(0, 10, args.batch).astype(np.int32)
    model = get_model(args.model, 10)
    params = model.init(jax.random.key(0), x[:1])
    config = DPSGDConfig(dataset_size=10 * args.batch, batch_size=args.batch, l2_norm_clip=1.0,
                         noise_multiplier=1.0, grad_method="layers")
    init, dp_step = make_dp_step(model, optax.sgd(0.1), config, key=jax.random.key(1),
                                 mesh=mesh)
    (xs, ys), mask = mesh_lib.shard_batch(mesh, x, y)
    dp_state = init(params)

    def local_grad(p, xb, yb, mb):
        def total(p):
            return jnp.sum(jnp.where(mb, softmax_xent(model.apply(p, xb), yb), 0.0))
        return jax.lax.psum(jax.grad(total)(p), "data")

    grad = jax.shard_map(local_grad, mesh=mesh, in_specs=(P(), P("data"), P("data"), P("data")),
                         out_specs=P(), check_vma=False)
    tx = optax.sgd(0.1)

    @jax.jit
    def plain_step(state, xb, yb, mb):
        p, opt = state
        g = jax.tree.map(lambda a: a / args.batch, grad(p, xb, yb, mb))
        updates, opt = tx.update(g, opt, p)
        return optax.apply_updates(p, updates), opt

    plain_state = mesh_lib.replicate(mesh, (params, tx.init(params)))

    def run_dp(state):
        for _ in range(args.inner):
            state, _ = dp_step(state, xs, ys, mask)
        jax.block_until_ready(state)
        return state

    def run_plain(state):
        for _ in range(args.inner):
            state = plain_step(state, xs, ys, mask)
        jax.block_until_ready(state)
        return state

    t0 = time.perf_counter()
    dp_state = run_dp(dp_state)  # compiles
    plain_state = run_plain(plain_state)
    compile_s = time.perf_counter() - t0
    dp_times, plain_times = [], []
    for _ in range(args.repeats):  # interleaved, so load on a shared machine hits both alike
        t = time.perf_counter()
        dp_state = run_dp(dp_state)
        dp_times.append((time.perf_counter() - t) / args.inner)
        t = time.perf_counter()
        plain_state = run_plain(plain_state)
        plain_times.append((time.perf_counter() - t) / args.inner)
    dp_s, plain_s = statistics.median(dp_times), statistics.median(plain_times)
    return {"devices": args.num, "dp_steps_per_s": 1.0 / dp_s,
            "nonprivate_steps_per_s": 1.0 / plain_s, "dp_over_nonprivate_time": dp_s / plain_s,
            "dp_step_ms": 1e3 * dp_s, "nonprivate_step_ms": 1e3 * plain_s,
            "first_round_with_compile_s": compile_s, "device_report": mesh_lib.device_report(mesh)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", default="1,2,4", help="device counts, one subprocess each")
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--size", type=int, default=28, help="image side (28x28x1 inputs)")
    ap.add_argument("--batch", type=int, default=128, help="global batch")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--inner", type=int, default=3, help="steps per timed sample")
    ap.add_argument("--platform", default="cpu", help="cpu: forced host devices; gpu/tpu: real")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        args.num = args.child
        print(json.dumps(child(args)))
        return {}

    rows = []
    load_before = os.getloadavg()
    for n in [int(v) for v in args.devices.split(",")]:
        env = dict(os.environ)
        if args.platform == "cpu":
            env["JAX_PLATFORMS"] = "cpu"
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                                f" --xla_force_host_platform_device_count={n}").strip()
        cmd = [sys.executable, __file__, f"--child={n}", f"--model={args.model}",
               f"--size={args.size}", f"--batch={args.batch}", f"--repeats={args.repeats}",
               f"--inner={args.inner}"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            raise SystemExit(f"{n} device(s) failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    base = rows[0]["dp_steps_per_s"]
    for r in rows:
        r["dp_throughput_vs_first"] = r["dp_steps_per_s"] / base
    result = {
        "benchmark": "scaling", "model": args.model, "input": [args.size, args.size, 1],
        "global_batch": args.batch, "repeats": args.repeats, "inner": args.inner,
        "platform": args.platform, "rows": rows, "load_before": load_before,
        "load_after": os.getloadavg(), "cpu_count": os.cpu_count(), "host": platform.node(),
        "command": "python benchmarks/scaling.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    print(f"{'devices':>7} {'DP steps/s':>11} {'non-private steps/s':>20} {'DP/non-private time':>20}"
          f" {'DP vs 1 device':>15}")
    for r in rows:
        print(f"{r['devices']:>7} {r['dp_steps_per_s']:>11.2f} {r['nonprivate_steps_per_s']:>20.2f} "
              f"{r['dp_over_nonprivate_time']:>20.2f} {r['dp_throughput_vs_first']:>15.2f}")
    print(f"load average before {load_before[0]:.1f}, after {result['load_after'][0]:.1f} "
          f"({os.cpu_count()} cores)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{args.out}.tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=2)
    os.replace(tmp, args.out)
    return result


if __name__ == "__main__":
    main()
