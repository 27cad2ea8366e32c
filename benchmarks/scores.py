"""Per-sample cost of the valuation scores, and matrix-free PLIS against materialised Jacobians.

    python benchmarks/scores.py                      # ~5-8 min on a 2-core CPU
    python benchmarks/scores.py --quick              # ~2 min: fewer samples, no wide model
    python benchmarks/scores.py --out /tmp/s.json

One run measures, on the same trained model and the same batch (digits_mnist_c, 28×28×1):

* throughput (samples/s) of loss, grad-norm, VoG (K checkpoints), PLIS (matrix-free power
  iteration) and the PLIS per-attribute map;
* VoG against K single input-gradient passes, timed interleaved in one process (it should
  cost about K of them, no more);
* PLIS matrix-free against PLIS from a materialised P×D Jacobian (`jax.jacfwd`, `jax.jacrev`):
  time per sample, the relative difference of the values, and memory — the peak resident set
  of a fresh subprocess per method while it computes (Linux VmHWM, reset after compilation,
  minus the RSS at that point) and XLA's compiled temporary buffer size;
* compiled temporary memory of both PLIS variants at two model widths, against P×D.

Every method runs in its own subprocess so peak memory is not shared. Output: a table on
stdout and JSON at `--out` (default benchmarks/results/scores.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "results", "scores.json")
METHODS = ["loss", "grad_norm", "vog", "plis_attribution", "plis_matrix_free",
           "plis_jacfwd", "plis_jacrev", "memory_scaling"]


def _reset_rss_peak() -> int:
    """Resets this process's peak resident set (Linux VmHWM) and returns the current RSS, bytes."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pass  # then the peak below is the lifetime peak: an over-estimate of the increase
    return _proc_status_bytes("VmRSS")


def _proc_status_bytes(field: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---------------------------------------------------------------------------------------------
# Parent: prepare a trained model + data once, then one subprocess per method.
# ---------------------------------------------------------------------------------------------
def prepare(workdir: str, args) -> dict:
    import flax.serialization
    import jax

    from ecos_jax import models
    from ecos_jax.data import load
    from ecos_jax.training import Snapshots, fit, make_optimizer

    ds = load("digits_mnist_c")
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(ds))
    tr = idx[: args.n_train]
    x, y = ds.images[tr], ds.labels[tr]
    info = {}
    for name in ("cnn",):  # the timed model; memory_scaling compiles the wider one untrained
        model = models.get_model(name, ds.num_classes)
        t0 = time.time()
        snaps = Snapshots(1)  # one checkpoint per epoch, Adam carried through them
        res = fit(model, x, y, optimizer=make_optimizer("adam", 1e-3), epochs=args.checkpoints,
                  batch_size=128, seed=0, hooks=[snaps])
        params, ckpts, history = res.params, [p for _, p in snaps.snapshots], res.history
        with open(os.path.join(workdir, f"{name}.msgpack"), "wb") as f:
            f.write(flax.serialization.msgpack_serialize(
                {str(i): jax.device_get(p) for i, p in enumerate(ckpts)}))
        info[name] = {"num_params": int(sum(leaf.size for leaf in jax.tree.leaves(params))),
                      "train_seconds": round(time.time() - t0, 2),
                      "train_loss_last_epoch": history[-1]["loss"]}
    score_idx = idx[args.n_train: args.n_train + args.n_fast]
    np.savez(os.path.join(workdir, "data.npz"), x=ds.images[score_idx], y=ds.labels[score_idx],
             num_classes=ds.num_classes)
    return info


def run_worker(method: str, workdir: str, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", method, "--workdir", workdir,
           *args.passthrough]
    env = dict(os.environ)
    env.setdefault("JAX_PLATFORMS", "cpu")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        # the exception line, not JAX's traceback-filtering banner
        errs = [ln for ln in proc.stderr.splitlines() if ln and not ln.startswith((" ", "-", "For "))]
        return {"error": (errs[-1] if errs else proc.stderr[-300:])[:600], "returncode": proc.returncode}
    return json.loads(lines[-1][len("RESULT "):])


# ---------------------------------------------------------------------------------------------
# Worker: one method, timed after an explicit ahead-of-time compile.
# ---------------------------------------------------------------------------------------------
def _load(workdir: str, model_name: str):
    import flax.serialization
    import jax

    from ecos_jax import models

    d = np.load(os.path.join(workdir, "data.npz"))
    model = models.get_model(model_name, int(d["num_classes"]))
    template = models.init_params(model, jax.random.key(0), d["x"].shape[1:])
    with open(os.path.join(workdir, f"{model_name}.msgpack"), "rb") as f:
        raw = flax.serialization.msgpack_restore(f.read())
    ckpts = [flax.serialization.from_state_dict(template, raw[str(i)]) for i in range(len(raw))]
    return model, ckpts, d["x"], d["y"]


def _method_spec(method: str, model, ckpts, x, y, args):
    """(jitted fn, dynamic args, static kwargs, #samples) for one method, on the last checkpoint."""
    import jax
    import jax.numpy as jnp

    from ecos_jax.valuation import grad_norm, loss, plis, vog

    params = ckpts[-1]
    key = jax.random.key(0)
    mb = args.microbatch
    n_fast, n_plis, n_dense = args.n_fast, args.n_plis, args.n_dense
    xs = lambda n: {"x": jnp.asarray(x[:n]), "y": jnp.asarray(y[:n], jnp.int32)}  # noqa: E731
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *ckpts)
    clip = float(args.clip_norm)
    if method == "loss":
        return loss._loss_scores, dict(params=params, **xs(n_fast)), dict(apply_fn=model.apply, microbatch_size=mb), n_fast
    if method == "grad_norm":
        return grad_norm._grad_norm_scores, dict(params=params, **xs(n_fast)), dict(apply_fn=model.apply, microbatch_size=mb), n_fast
    if method == "vog":
        return vog._vog_maps, dict(stacked=stacked, **xs(n_fast)), dict(apply_fn=model.apply, microbatch_size=mb), n_fast
    if method == "plis_attribution":
        return plis._plis_attribution, dict(params=params, **xs(n_fast)), dict(apply_fn=model.apply, clip_norm=clip, microbatch_size=mb), n_fast
    if method == "plis_matrix_free":
        return (plis._plis_scores, dict(params=params, key=key, **xs(n_plis)),
                dict(apply_fn=model.apply, clip_norm=clip, tol=args.tol, max_iters=args.max_iters,
                     microbatch_size=1), n_plis)
    if method in ("plis_jacfwd", "plis_jacrev"):
        return (plis._plis_dense, dict(params=params, **xs(n_dense)),
                dict(apply_fn=model.apply, clip_norm=clip, mode=method.split("_")[1], microbatch_size=1),
                n_dense)
    raise ValueError(f"unknown method {method!r}")


def worker(method: str, workdir: str, args) -> dict:
    import jax

    if method == "memory_scaling":
        return memory_scaling(workdir, args)
    model, ckpts, x, y = _load(workdir, "cnn")
    fn, dyn, static, n = _method_spec(method, model, ckpts, x, y, args)
    jax.block_until_ready(dyn)
    t0 = time.perf_counter()
    compiled = fn.lower(**dyn, **static).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    base = _reset_rss_peak()  # after compiling: the peak below is the computation's own
    times, out = [], None
    for _ in range(1 if method.startswith("plis_jac") else args.repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(**dyn))
        times.append(time.perf_counter() - t0)
    seconds = float(np.median(times))
    res = {"method": method, "samples": n, "compile_s": round(compile_s, 3),
           "seconds": round(seconds, 4), "per_sample_ms": round(1e3 * seconds / n, 3),
           "samples_per_s": round(n / seconds, 2), "repeats": len(times),
           "peak_rss_increase_mb": round((_proc_status_bytes("VmHWM") - base) / 2**20, 1),
           "compiled_temp_mb": round(mem.temp_size_in_bytes / 2**20, 2) if mem else None}
    if method == "vog":
        # ONE input-gradient pass (a stack of one checkpoint), timed interleaved with VoG in
        # this process so both see the same machine load: VoG should cost about K of these.
        one = dict(dyn, stacked=jax.tree.map(lambda a: a[:1], dyn["stacked"]))
        single = fn.lower(**one, **static).compile()
        jax.block_until_ready(single(**one))
        pairs = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(single(**one))
            t1 = time.perf_counter()
            jax.block_until_ready(compiled(**dyn))
            pairs.append((t1 - t0, time.perf_counter() - t1))
        one_s, k_s = (float(np.median(v)) for v in zip(*pairs))
        res.update(single_pass_seconds=round(one_s, 4), checkpoints=len(ckpts),
                   vog_over_K_single_passes=round(k_s / (len(ckpts) * one_s), 3))
    if method == "plis_matrix_free":
        sigma, iters = out
        iters = np.asarray(iters)
        res.update(iterations_mean=float(iters.mean()), iterations_max=int(iters.max()),
                   hit_cap=int((iters >= args.max_iters).sum()),
                   values=np.asarray(sigma)[: args.n_dense].tolist())
    if method.startswith("plis_jac"):
        res["values"] = np.asarray(out).tolist()
    return res


def memory_scaling(workdir: str, args) -> dict:
    """Compile-only: XLA temp buffers of matrix-free vs jacfwd PLIS (one sample), per model."""
    import jax
    import jax.numpy as jnp

    from ecos_jax import models
    from ecos_jax.valuation import plis

    rows = []
    names = ("cnn",) if args.quick else ("cnn", "wide_cnn")
    x = jnp.zeros((1, 28, 28, 1))
    y = jnp.zeros((1,), jnp.int32)
    for name in names:
        model = models.get_model(name, 10)
        params = models.init_params(model, jax.random.key(0), (28, 28, 1))
        p = int(sum(leaf.size for leaf in jax.tree.leaves(params)))
        d = 28 * 28
        mf = plis._plis_scores.lower(params=params, x=x, y=y, key=jax.random.key(0), apply_fn=model.apply,
                                     clip_norm=1.0, tol=1e-5, max_iters=100,
                                     microbatch_size=1).compile().memory_analysis()
        dense = plis._plis_dense.lower(params=params, x=x, y=y, apply_fn=model.apply, clip_norm=1.0,
                                       mode="jacfwd", microbatch_size=1).compile().memory_analysis()
        rows.append({"model": name, "P": p, "D": d, "PxD_float32_mb": round(4 * p * d / 2**20, 1),
                     "matrix_free_temp_mb": round(mf.temp_size_in_bytes / 2**20, 2),
                     "jacfwd_temp_mb": round(dense.temp_size_in_bytes / 2**20, 2)})
    return {"method": "memory_scaling", "rows": rows}


# ---------------------------------------------------------------------------------------------
def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--quick", action="store_true", help="fewer samples, small model only")
    ap.add_argument("--n-train", type=int, default=2000, help="samples the scored model trains on")
    ap.add_argument("--n-fast", type=int, default=None, help="samples for loss/grad-norm/VoG/map")
    ap.add_argument("--n-plis", type=int, default=None, help="samples for matrix-free PLIS")
    ap.add_argument("--n-dense", type=int, default=None, help="samples for materialised PLIS")
    ap.add_argument("--checkpoints", type=int, default=5, help="K (one per epoch)")
    ap.add_argument("--microbatch", type=int, default=128)
    ap.add_argument("--clip-norm", type=float, default=1.0)
    ap.add_argument("--tol", type=float, default=1e-5)
    ap.add_argument("--max-iters", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--methods", default=None, help="comma-separated subset (debugging)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", default=None,
                    help="keep the trained model and data here (reused when present)")
    args = ap.parse_args(argv)
    args.n_fast = args.n_fast or (256 if args.quick else 512)
    args.n_plis = args.n_plis or (8 if args.quick else 32)
    args.n_dense = args.n_dense or (1 if args.quick else 2)
    if args.n_dense > args.n_plis:
        raise ValueError("--n-dense must be <= --n-plis (the values are compared sample by sample).")
    args.passthrough = [f"--n-fast={args.n_fast}", f"--n-plis={args.n_plis}",
                        f"--n-dense={args.n_dense}", f"--checkpoints={args.checkpoints}",
                        f"--microbatch={args.microbatch}", f"--clip-norm={args.clip_norm}",
                        f"--tol={args.tol}", f"--max-iters={args.max_iters}",
                        f"--repeats={args.repeats}"] + (["--quick"] if args.quick else [])

    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.workdir, args)), flush=True)
        return {}

    import jax

    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or tmp  # --workdir keeps the trained model for a re-run
        os.makedirs(workdir, exist_ok=True)
        info_path = os.path.join(workdir, "models.json")
        if os.path.exists(info_path):
            with open(info_path) as f:
                models_info = json.load(f)
        else:
            t0 = time.time()
            models_info = prepare(workdir, args)
            print(f"[scores] trained the scored models: {time.time() - t0:.0f} s", flush=True)
            with open(info_path, "w") as f:
                json.dump(models_info, f)
        methods = args.methods.split(",") if args.methods else METHODS
        results = {}
        for m in methods:
            t0 = time.time()
            results[m] = run_worker(m, workdir, args)
            print(f"[scores] {m}: {time.time() - t0:.0f} s", flush=True)

    ratios = {}
    ok = lambda m: m in results and "error" not in results[m]  # noqa: E731
    if ok("vog"):
        ratios["vog_over_K_input_gradient_passes"] = results["vog"]["vog_over_K_single_passes"]
    mf = results.get("plis_matrix_free", {})
    for dense in ("plis_jacfwd", "plis_jacrev"):
        if ok(dense) and ok("plis_matrix_free"):
            d = results[dense]
            ratios[f"{dense}_over_matrix_free_time_per_sample"] = round(d["per_sample_ms"] / mf["per_sample_ms"], 1)
            ratios[f"{dense}_over_matrix_free_peak_rss"] = round(
                d["peak_rss_increase_mb"] / max(mf["peak_rss_increase_mb"], 1e-9), 1)
            ratios[f"{dense}_over_matrix_free_compiled_temp"] = round(
                d["compiled_temp_mb"] / max(mf["compiled_temp_mb"], 1e-9), 1)
            rel = np.abs(np.array(mf["values"]) - np.array(d["values"])) / np.array(d["values"])
            ratios[f"matrix_free_vs_{dense}_max_rel_diff"] = float(rel.max())

    report = {"device": str(jax.devices()[0]), "platform": platform.platform(),
              "cpu_count": os.cpu_count(), "jax_version": jax.__version__,
              "data": "digits_mnist_c 28x28x1, scored samples disjoint from the 2000 training samples",
              "config": {k: v for k, v in vars(args).items() if k not in ("worker", "workdir", "passthrough", "out")},
              "models": models_info, "results": results, "ratios": ratios}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)

    print(f"\n{'method':<20}{'samples':>8}{'ms/sample':>12}{'samples/s':>11}{'peak RSS MB':>13}"
          f"{'XLA temp MB':>13}{'compile s':>11}")
    for m in [m for m in methods if m != "memory_scaling"]:
        r = results[m]
        if "error" in r:
            print(f"{m:<20}  FAILED: {r['error'][:90]}")
            continue
        print(f"{m:<20}{r['samples']:>8}{r['per_sample_ms']:>12.3f}{r['samples_per_s']:>11.1f}"
              f"{r['peak_rss_increase_mb']:>13.1f}{r['compiled_temp_mb']:>13.2f}{r['compile_s']:>11.1f}")
    ms = results.get("memory_scaling", {})
    if "rows" in ms:
        print(f"\n{'model':<10}{'P':>9}{'P×D MB':>10}{'matrix-free temp MB':>21}{'jacfwd temp MB':>16}")
        for r in ms["rows"]:
            print(f"{r['model']:<10}{r['P']:>9}{r['PxD_float32_mb']:>10}{r['matrix_free_temp_mb']:>21}"
                  f"{r['jacfwd_temp_mb']:>16}")
    if ok("plis_matrix_free"):
        print(f"\nmatrix-free PLIS iterations: mean {mf['iterations_mean']:.1f}, max {mf['iterations_max']}, "
              f"{mf['hit_cap']} of {mf['samples']} hit the cap of {args.max_iters}")
    print("ratios:", json.dumps(ratios, indent=1))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
