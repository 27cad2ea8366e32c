"""glibc's default heap against `ecos_jax.utils.allocator`'s settings, on the DP-SGD steps.

The setting is process-wide and must precede JAX's first computation, so each side runs in
its own process (`ECOS_JAX_MALLOC=system` or `tuned`), the two alternating round by round
(`--rounds`) so that load drift hits both alike. Each process times benchmarks/dpsgd.py's own
JAX steps (the DP-SGD step, the padded and bucketed Poisson steps, the non-private `jax.grad`
and `grad_sum` steps), interleaved, and counts the minor page faults and system CPU seconds
per step (`getrusage`).

    python benchmarks/allocator.py                                   # 3 CNNs + linear, B = 2048
    python benchmarks/allocator.py --models=tramer_cnn --batches=256,2048 --rounds=3

Prints one table per model and batch (median ms per step over every round's samples, tuned
speed-up = system / tuned, page faults per step) and writes benchmarks/results/allocator.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SKIP = "jax_dpsgd_vmap,jax_privacy,jax_privacy_fastpool,jax_nonprivate_fastpool"


def worker(model: str, batch: int, repeats: int) -> dict:
    """One side: configure (per the environment), then time the steps; JSON-able results."""
    from ecos_jax.utils import allocator

    applied = allocator.configure()
    sys.path.insert(0, str(HERE))
    import dpsgd as bench  # noqa: PLC0415  (benchmarks/dpsgd.py)

    steps, _, _ = bench._jax_steps(model, batch, skip=frozenset(SKIP.split(",")))
    for fn in steps.values():   # compile and warm up
        fn()
        fn()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    times = bench._measure(steps, repeats, inner=1)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    calls = repeats * len(steps) + 2 * len(steps)   # _measure warms each step twice too
    return {"applied": applied, "times_ms": {k: [t * 1e3 for t in v] for k, v in times.items()},
            "minflt_per_step": (r1.ru_minflt - r0.ru_minflt) / calls,
            "sys_s_per_step": (r1.ru_stime - r0.ru_stime) / calls,
            "user_s_per_step": (r1.ru_utime - r0.ru_utime) / calls}


def _side(mode: str, model: str, batch: int, repeats: int) -> dict:
    env = {**os.environ, "ECOS_JAX_MALLOC": mode}
    out = subprocess.run(
        [sys.executable, __file__, "--worker", f"--models={model}", f"--batches={batch}",
         f"--repeats={repeats}"], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(model: str, batch: int, rounds: int, repeats: int) -> dict:
    runs = {"system": [], "tuned": []}
    for _ in range(rounds):
        for mode in runs:
            runs[mode].append(_side(mode, model, batch, repeats))
    if not all(r["applied"] for r in runs["tuned"]) or any(r["applied"] for r in runs["system"]):
        raise RuntimeError("the tuned side did not apply the settings (not Linux/glibc?)")
    result = {"model": model, "batch": batch, "rounds": rounds, "repeats": repeats, "steps": {}}
    for step in runs["system"][0]["times_ms"]:
        med = {m: statistics.median(t for r in runs[m] for t in r["times_ms"][step]) for m in runs}
        result["steps"][step] = {**{f"{m}_ms": v for m, v in med.items()},
                                 "speedup": med["system"] / med["tuned"]}
    for key in ("minflt_per_step", "sys_s_per_step", "user_s_per_step"):
        result[key] = {m: statistics.median(r[key] for r in runs[m]) for m in runs}
    return result


def _print(r: dict) -> None:
    f = r["minflt_per_step"]
    print(f"\n## {r['model']}, batch {r['batch']} ({r['rounds']} rounds x {r['repeats']} "
          f"samples; page faults per step: system {f['system']:.0f}, tuned {f['tuned']:.0f})")
    print("| step | system ms | tuned ms | tuned speed-up |\n|---|---|---|---|")
    for step, s in r["steps"].items():
        print(f"| {step} | {s['system_ms']:.1f} | {s['tuned_ms']:.1f} | {s['speedup']:.2f}x |")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="tramer_cnn,cnn,cnn_stride,linear")
    p.add_argument("--batches", default="2048")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(HERE / "results" / "allocator.json"))
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.models, int(a.batches), a.repeats)))
        return
    report = {"time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "loadavg_start": os.getloadavg(), "results": []}
    for model in a.models.split(","):
        for batch in map(int, a.batches.split(",")):
            r = compare(model, batch, a.rounds, a.repeats)
            _print(r)
            report["results"].append(r)
    report["loadavg_end"] = os.getloadavg()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=1))
    print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
