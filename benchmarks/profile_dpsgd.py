"""Where a DP-SGD step spends its time: a per-op profile beside the non-private step's.

For each model, the DP-SGD step (`jax_dpsgd` of benchmarks/dpsgd.py: `make_dp_step`, the
"layers" per-example path) and the non-private `jax.grad` step with the fast max-pool
gradient (`jax_nonprivate_fastpool`; not always the fastest: on `cnn` `grad_sum` is) run
`--steps` times each under `jax.profiler.trace`; the XLA ops each executed are read back from
the trace (the perfetto JSON the profiler writes, no TensorBoard needed) and named by the
compiled HLO's own metadata (the JAX operation and where in the step it sits: `jvp()` is the
forward pass, `transpose(jvp())` the backward pass, anything else in the DP step the
per-example norms, clipped sums, noise and optimiser).

    python benchmarks/profile_dpsgd.py --models=tramer_cnn --batch=2048
    python benchmarks/profile_dpsgd.py --models=cnn,tramer_cnn --batch=256 --top=12
    python benchmarks/profile_dpsgd.py --models=cnn_stride --baseline=layers   # vs grad_sum

Prints, per model and step, the step's wall time (median of `--steps` untraced calls) and its
`--top` ops by time per step, and writes every op to the JSON (default
benchmarks/results/profile_dpsgd.json). On XLA:CPU independent ops can run at the same time on
the intra-op threads, so the op times of a step may add up to more than its wall time: read
them as where the work is, and the wall times (and benchmarks/dpsgd.py's interleaved medians)
as what the step costs.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax

from ecos_jax.utils import allocator

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dpsgd as dpsgd_bench  # noqa: E402  (benchmarks/dpsgd.py: the same steps it times)

# --baseline: the non-private step profiled beside the DP one.
BASELINES = {"fastpool": "jax_nonprivate_fastpool", "layers": "jax_nonprivate_layers"}
STEPS = {"dp": "jax_dpsgd", "nonprivate": BASELINES["fastpool"]}
_OP_LINE = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\S+) .*?op_name=\"([^\"]*)\"")


def hlo_ops(hlo_text: str) -> dict[str, dict]:
    """`{hlo op name: {"shape", "op_name"}}` from a compiled module's text (entry and fused
    computations alike; an op without metadata is left out)."""
    ops = {}
    for line in hlo_text.splitlines():
        m = _OP_LINE.match(line)
        if m:
            ops[m.group(1)] = {"shape": m.group(2), "op_name": m.group(3)}
    return ops


def phase(op_name: str) -> str:
    """Where in a training step an op sits, from its JAX `op_name` metadata."""
    if "transpose(jvp(" in op_name:
        return "backward"
    if "jvp(" in op_name:
        return "forward"
    return "other"


def short_name(op_name: str) -> str:
    """The op_name without its jit(...) / jvp() wrappers: the JAX operation and its path."""
    parts = [p for p in op_name.split("/") if not re.fullmatch(r"(jit|jvp|transpose)\(.*\)", p)]
    return "/".join(parts) or op_name


def trace_events(trace_dir: str) -> list[dict]:
    """The XLA op events (`args.hlo_op`) of the perfetto trace the profiler wrote."""
    paths = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)
    if not paths:
        raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir}")
    with gzip.open(paths[0]) as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    return [e for e in events if e.get("ph") == "X" and "hlo_op" in e.get("args", {})]


def op_table(events: list[dict], ops: dict[str, dict], steps: int) -> list[dict]:
    """Per-op milliseconds per step, largest first, each with its shape, phase and JAX name."""
    total, calls = collections.Counter(), collections.Counter()
    for e in events:
        total[e["args"]["hlo_op"]] += e.get("dur", 0.0)
        calls[e["args"]["hlo_op"]] += 1
    rows = []
    for name, us in total.most_common():
        meta = ops.get(name, {"shape": "?", "op_name": ""})
        rows.append({"op": name, "ms_per_step": us / 1e3 / steps, "calls_per_step": calls[name] / steps,
                     "shape": meta["shape"], "phase": phase(meta["op_name"]),
                     "jax_op": short_name(meta["op_name"])})
    return rows


def profile(run, compiled, *, steps: int) -> dict:
    """Wall time (median of `steps` untraced calls) and the traced per-op table of one step."""
    fn, args = compiled
    ops = hlo_ops(fn.lower(*args).compile().as_text())
    run()  # compiled and warm
    wall = []
    for _ in range(steps):
        t = time.perf_counter()
        run()
        wall.append(time.perf_counter() - t)
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(steps):
                run()
        rows = op_table(trace_events(tmp), ops, steps)
    by_phase = collections.Counter()
    for r in rows:
        by_phase[r["phase"]] += r["ms_per_step"]
    return {"wall_ms": 1e3 * statistics.median(wall), "ops": rows,
            "phase_ms": dict(by_phase), "op_ms_total": sum(r["ms_per_step"] for r in rows)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="tramer_cnn",
                        help=f"comma-separated, of {sorted(dpsgd_bench.MODELS)}")
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=5, help="timed and traced steps each")
    parser.add_argument("--top", type=int, default=15, help="ops printed per step")
    parser.add_argument("--baseline", choices=sorted(BASELINES), default="fastpool",
                        help="non-private step: jax.grad + fast pool, or layer_grads.grad_sum "
                             "(the same tape as the DP step; the fastest on the CNNs)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "profile_dpsgd.json"))
    args = parser.parse_args(argv)
    allocator.configure()  # as the experiment drivers run (ECOS_JAX_MALLOC=system: glibc's default)
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in dpsgd_bench.MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {sorted(dpsgd_bench.MODELS)}")
    if args.steps < 1 or args.batch < 1:
        parser.error("--steps and --batch must be >= 1")
    steps = {"dp": STEPS["dp"], "nonprivate": BASELINES[args.baseline]}
    skip = frozenset({"jax_nonprivate", "jax_dpsgd_poisson_pad", "jax_dpsgd_vmap",
                      "jax_dpsgd_poisson_bucket", "jax_privacy", "jax_privacy_fastpool",
                      *BASELINES.values()} - set(steps.values()))
    out = {"batch": args.batch, "steps": args.steps, "backend": jax.default_backend(),
           "baseline": steps["nonprivate"],
           "load_average": os.getloadavg()[0], "models": {}}
    for name in models:
        runs, compiled, _ = dpsgd_bench._jax_steps(name, args.batch, skip=skip)
        result = {kind: profile(runs[label], compiled[label], steps=args.steps)
                  for kind, label in steps.items()}
        result["dp_over_nonprivate"] = result["dp"]["wall_ms"] / result["nonprivate"]["wall_ms"]
        out["models"][name] = result
        print(f"\n## {name}, batch {args.batch} (load {os.getloadavg()[0]:.1f}): DP step "
              f"{result['dp']['wall_ms']:.1f} ms, non-private {result['nonprivate']['wall_ms']:.1f} ms "
              f"({result['dp_over_nonprivate']:.2f}x)")
        for kind in steps:
            r = result[kind]
            phases = ", ".join(f"{k} {v:.1f}" for k, v in sorted(r["phase_ms"].items()))
            print(f"\n{kind}: wall {r['wall_ms']:.1f} ms/step; ops {r['op_ms_total']:.1f} ms/step "
                  f"({phases})")
            print("| op | ms/step | phase | JAX op | shape |\n|---|---|---|---|---|")
            for row in r["ops"][:args.top]:
                print(f"| {row['op']} | {row['ms_per_step']:.1f} | {row['phase']} | "
                      f"{row['jax_op'][:60]} | {row['shape']} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"\nwrote {args.out}")
    return out


if __name__ == "__main__":
    main()
