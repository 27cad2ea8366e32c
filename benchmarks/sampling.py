"""Sampling at scale: the ECOS path and K-Center over a pool streamed from host memory.

Run (about 3-4 minutes on 2 CPU cores at the default size; JSON to --out):
  python benchmarks/sampling.py                       # 1,000,000 x 128, R = 100, budget 10,000
  python benchmarks/sampling.py --n 100000 --budget 2000 --kcenter_budget 1000   # quick
  python benchmarks/sampling.py --init random --skip_kcenter \
      --out benchmarks/results/sampling_random_init.json  # a start that empties clusters
  python benchmarks/sampling.py --only_ecos --out benchmarks/results/sampling_ecos_only.json
      # the ECOS path alone in a fresh process: its wall, CPU seconds and peak RSS

What is timed, in one process, on one synthetic clustered pool (float32, host numpy array or
np.memmap with --memmap, streamed to the device --chunk_size rows at a time):
  * ECOS end to end: k-means seeding (--init: k-means++ on a subsample, or R random rows, a
    start that leaves clusters empty and so exercises their re-seeding), Lloyd k-means (R
    centroids, --iters), the
    client's coverage counts on its own features (+ Gaussian noise; the DP accounting of that
    noise is the protocol's job, see ecos_jax/ecos), allocation, within-cluster selection
    (--within_cluster, by default the rule configs/selective_labeling.py's main job uses).
  * K-Center greedy (block-pruned, exact) for --kcenter_budget points.
  * scikit-learn KMeans (lloyd, n_init=1, tol=0) and faiss (if installed, `pip install
    faiss-cpu` or the `bench` extra) from the *same* initial centroids, the same R and max
    iterations, on the same array: the k-means speed references, each with the inertia it
    reaches, so that a speed-up is only read at equal inertia. Reported as the whole fit
    (ours: Lloyd + final assignment; sklearn: fit; faiss: train + a final nearest-centroid
    search) and as the marginal cost of an extra iteration (each side's time minus its
    one-iteration fit), plus our Lloyd without the Hamerly bounds (prune=False) as an ablation.
  * Exactness: on the first --check_n rows, the streamed ECOS path (k-means, assignments,
    picks) and K-Center are compared with the in-memory (device-resident) run, same key.
Peak memory is the process's peak resident set (ru_maxrss) after each phase; it includes the
pool itself (N x d x 4 bytes) and, on CPU, the "device" buffers.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ecos_jax import samplers
from ecos_jax.samplers import kmeans as km_module  # the module
from ecos_jax.samplers.pool import Pool, aligned_empty
from ecos_jax.utils import allocator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from configs import selective_labeling as sl_config  # noqa: E402  (the default rule, below)


def default_rule() -> str:
    """The within-cluster rule the main job's config picks with (`ecos.within_cluster`), so the
    benchmark times the path `make run` runs."""
    return sl_config.get_config().ecos.within_cluster


def peak_rss_gib() -> float:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib / 2**20


def make_pool(n: int, d: int, num_true: int, seed: int, path: str | None):
    """Gaussian blobs: num_true centres ~ N(0, 1), points = centre + N(0, 0.15²) per dim.
    Written in row chunks so generation never needs a second copy."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_true, d)).astype(np.float32)
    labels = rng.integers(0, num_true, size=n)
    if path is None:
        x = aligned_empty((n, d))  # 64-byte aligned: streamed to a CPU device without copies
    else:
        x = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    step = 1 << 16
    for s in range(0, n, step):
        lab = labels[s:s + step]
        x[s:s + step] = centres[lab] + 0.15 * rng.standard_normal((lab.size, d), np.float32)
    if path is not None:
        x.flush()
    return x, labels, centres


def client_features(centres, domain, size, d, seed):
    """The client's private features: `size` points from a few of the pool's clusters."""
    rng = np.random.default_rng(seed + 1)
    lab = rng.choice(domain, size=size)
    return (centres[lab] + 0.15 * rng.standard_normal((size, d), np.float32)).astype(np.float32)


def warm_up_lloyd(pool, args, chunk_size) -> float:
    """Compiles the Lloyd chunk step for the chunk shape the full run will use (two chunks,
    one iteration, one centroid far from every row so that the empty-cluster re-seed pass is
    compiled too); returns the seconds spent, reported as compile time."""
    p = Pool(pool, chunk_size=chunk_size, check=False)
    if not p.streamed:
        return 0.0
    t = time.perf_counter()
    head = np.asarray(pool[:2 * p.chunk_rows])
    init = head[:args.clusters].copy()
    init[-1] += 1e3
    km_module.kmeans(jax.random.key(0), head, args.clusters, iters=1, chunk_size=p.chunk_rows,
                     init=init)
    return time.perf_counter() - t


def ecos_path(key, pool, client, args, chunk_size):
    """The ECOS path (compress, client response, allocate and select); returns (timings
    dict, kmeans result, picks, initial centroids)."""
    t = {}
    k_init, k_noise, k_sel = jax.random.split(key, 3)
    t0, c0 = time.perf_counter(), time.process_time()
    p = Pool(pool, chunk_size=chunk_size)
    init = km_module.init_centroids(k_init, p, args.clusters, args.init)
    init.block_until_ready()
    t["kmeans_init_s"] = time.perf_counter() - t0
    t1, c1 = time.perf_counter(), time.process_time()
    res = km_module.kmeans(k_init, pool, args.clusters, iters=args.iters, chunk_size=chunk_size,
                           init=init)
    t["kmeans_lloyd_s"] = time.perf_counter() - t1
    t["kmeans_lloyd_cpu_s"] = time.process_time() - c1
    t["loadavg_1min_after_lloyd"] = os.getloadavg()[0]
    t2 = time.perf_counter()
    counts = np.bincount(np.asarray(samplers.assign(client, res.centroids)),
                         minlength=args.clusters)
    noisy = counts + args.sigma * np.asarray(jax.random.normal(k_noise, (args.clusters,)))
    t["client_response_s"] = time.perf_counter() - t2
    t3, c3 = time.perf_counter(), time.process_time()
    alloc = samplers.allocate(noisy, np.bincount(np.asarray(res.assignments),
                                                 minlength=args.clusters), args.budget)
    picks = samplers.select_within(k_sel, pool, res.assignments, res.centroids, alloc,
                                   proximity=args.proximity, rule=args.within_cluster)
    picks.block_until_ready()
    t["allocate_select_s"] = time.perf_counter() - t3
    t["allocate_select_cpu_s"] = time.process_time() - c3
    t["clusters_picked_from"] = int((alloc > 0).sum())
    t["total_s"] = time.perf_counter() - t0
    t["total_cpu_s"] = time.process_time() - c0  # process CPU s (all threads): steadier under load
    return t, res, np.asarray(picks), init


def exactness_check(x, client, args):
    """Streamed (host, small chunks) vs in-memory (device array) on the same rows and key."""
    key = jax.random.key(args.seed)
    small = argparse.Namespace(**{**vars(args), "budget": min(args.budget, x.shape[0] // 10)})
    chunk = max(1, x.shape[0] // 4)  # >= 4 chunks
    _, r_s, p_s, _ = ecos_path(key, x, client, small, chunk)
    _, r_m, p_m, r_m_init = ecos_path(key, jnp.asarray(x), client, small, None)
    # The same k-means on one thread (the streamed and in-memory runs above use one per core).
    r_1 = km_module.kmeans(key, x, args.clusters, iters=args.iters, init=r_m_init, workers=1)
    kc_budget = min(args.kcenter_budget, 300)
    kc_s = samplers.kcenter_greedy(key, x, kc_budget, chunk_size=chunk)
    kc_m = samplers.kcenter_greedy(key, jnp.asarray(x), kc_budget)
    return {
        "rows": int(x.shape[0]), "chunk_size": chunk, "budget": small.budget,
        "kcenter_budget": kc_budget,
        "kmeans_centroids_equal": bool(np.array_equal(r_s.centroids, r_m.centroids)),
        "kmeans_assignments_equal": bool(np.array_equal(r_s.assignments, r_m.assignments)),
        "kmeans_one_thread_equal": bool(np.array_equal(r_1.centroids, r_m.centroids)
                                        and np.array_equal(r_1.assignments, r_m.assignments)),
        "ecos_picks_equal": bool(np.array_equal(p_s, p_m)),
        "kcenter_picks_equal": bool(np.array_equal(kc_s, kc_m)),
    }


def time_sklearn(x, init, args):
    from sklearn import __version__ as skv
    from sklearn.cluster import KMeans
    out = {"version": skv}
    t, c = time.perf_counter(), time.process_time()
    km = KMeans(args.clusters, init=np.asarray(init), n_init=1, max_iter=args.iters, tol=0.0,
                algorithm="lloyd").fit(x)
    out["same_init_s"] = time.perf_counter() - t
    out["same_init_cpu_s"] = time.process_time() - c
    out["loadavg_1min_after"] = os.getloadavg()[0]
    out["same_init_iterations"] = int(km.n_iter_)
    out["same_init_inertia"] = float(km.inertia_)
    # One iteration: what the fit costs besides its iterations (validation, copying and
    # centring X, the final label pass), so that the marginal cost per iteration is known.
    t = time.perf_counter()
    KMeans(args.clusters, init=np.asarray(init), n_init=1, max_iter=1, tol=0.0,
           algorithm="lloyd").fit(x)
    out["one_iteration_s"] = time.perf_counter() - t
    if args.sklearn_kmeanspp:
        t = time.perf_counter()
        km = KMeans(args.clusters, init="k-means++", n_init=1, max_iter=args.iters, tol=0.0,
                    algorithm="lloyd", random_state=args.seed).fit(x)
        out["kmeanspp_total_s"] = time.perf_counter() - t
        out["kmeanspp_iterations"] = int(km.n_iter_)
    return out


def time_faiss(x, init, args):
    """faiss's k-means from the same initial centroids on every row (no subsampling); its
    inertia is taken from a final nearest-centroid search, as scikit-learn's fit does.

    Timed with each OpenMP thread count in --faiss_threads (0 = faiss's default, one per
    core) and reported at the fastest: on a loaded machine faiss's spinning OpenMP threads
    were 5x slower with 2 threads than with 1 (20.4 vs 3.8 s at 200,000 rows, load 4-5)."""
    try:
        import faiss  # noqa: PLC0415
    except ImportError:
        return {"installed": False}
    x = np.ascontiguousarray(x)
    default_threads = faiss.omp_get_max_threads()
    runs = []
    for threads in (int(v) for v in args.faiss_threads.split(",")):
        faiss.omp_set_num_threads(threads or default_threads)
        t = time.perf_counter()
        f = faiss.Kmeans(x.shape[1], args.clusters, niter=args.iters, seed=args.seed,
                         max_points_per_centroid=x.shape[0])
        f.train(x, init_centroids=np.ascontiguousarray(init, np.float32))
        train_s = time.perf_counter() - t
        t = time.perf_counter()
        dist, _ = f.index.search(x, 1)
        assign_s = time.perf_counter() - t
        runs.append({"threads": threads or default_threads, "train_s": train_s,
                     "assign_s": assign_s, "total_s": train_s + assign_s,
                     "inertia": float(dist.astype(np.float64).sum()),
                     "loadavg_1min_after": os.getloadavg()[0]})
    faiss.omp_set_num_threads(default_threads)
    best = min(runs, key=lambda r: r["total_s"])
    return {"installed": True, "version": faiss.__version__, **best, "runs": runs}


def finish(report: dict, out: str, tmp) -> None:
    """Writes the report's JSON to `out` and removes the temporary pool file, if any."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {out}")
    if tmp:
        tmp.cleanup()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--clusters", type=int, default=100, help="R, k-means centroids")
    ap.add_argument("--true_clusters", type=int, default=100)
    ap.add_argument("--budget", type=int, default=10_000)
    ap.add_argument("--kcenter_budget", type=int, default=10_000)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--faiss_threads", default="1,0",
                    help="faiss OpenMP thread counts to time, comma-separated (0 = default)")
    ap.add_argument("--init", choices=["kmeans++", "random"], default="kmeans++",
                    help="k-means start shared by ours, scikit-learn and faiss")
    ap.add_argument("--chunk_size", type=int, default=65_536)
    ap.add_argument("--within_cluster", choices=samplers.ecos.WITHIN_CLUSTER, default=default_rule(),
                    help="ECOS's within-cluster rule (default: configs/selective_labeling.py's)")
    ap.add_argument("--proximity", type=float, default=0.5, help="rule proximity_kcenter only")
    ap.add_argument("--sigma", type=float, default=5.0, help="noise std on the client counts")
    ap.add_argument("--client_size", type=int, default=2_000)
    ap.add_argument("--check_n", type=int, default=40_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--memmap", action="store_true", help="stream the pool from a .npy memmap")
    ap.add_argument("--skip_kcenter", action="store_true")
    ap.add_argument("--only_ecos", action="store_true",
                    help="the ECOS path alone (no exactness check, K-Center or references): its "
                         "peak RSS is then that of a fresh process running only it")
    ap.add_argument("--sklearn_kmeanspp", action="store_true",
                    help="also time scikit-learn with its own k-means++ seeding")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                  "sampling.json"))
    args = ap.parse_args(argv)
    allocator.configure()  # as the experiment drivers run (ECOS_JAX_MALLOC=system: glibc's default)

    report = {"args": vars(args), "python": sys.version.split()[0], "jax": jax.__version__,
              "devices": [str(dv) for dv in jax.devices()], "cpu_count": os.cpu_count(),
              "machine": platform.machine(), "loadavg_start": os.getloadavg()}
    tmp = tempfile.TemporaryDirectory() if args.memmap else None
    t = time.perf_counter()
    x, _, centres = make_pool(args.n, args.d, args.true_clusters, args.seed,
                              os.path.join(tmp.name, "pool.npy") if tmp else None)
    if args.memmap:
        x = np.load(os.path.join(tmp.name, "pool.npy"), mmap_mode="r")
    domain = np.arange(3)  # the client's domain: three of the pool's clusters
    client = client_features(centres, domain, args.client_size, args.d, args.seed)
    streamed = Pool(x, chunk_size=args.chunk_size, check=False)
    report["pool_devices"], report["pool_workers"] = streamed.num_devices, streamed.workers
    report["pool"] = {"shape": list(x.shape), "bytes": int(x.nbytes),
                      "generate_s": time.perf_counter() - t, "memmap": bool(args.memmap)}
    report["peak_rss_gib_after_pool"] = peak_rss_gib()

    check_rows = min(args.check_n, args.n)
    if not args.only_ecos:
        report["exactness"] = exactness_check(np.asarray(x[:check_rows]), client, args)
        report["peak_rss_gib_after_check"] = peak_rss_gib()

    compile_s = warm_up_lloyd(x, args, args.chunk_size)
    timings, res, picks, init = ecos_path(jax.random.key(args.seed), x, client, args,
                                          args.chunk_size)
    if args.only_ecos:
        report["ecos"] = {**timings, "lloyd_compile_warmup_s": compile_s,
                          "kmeans_iterations": res.iterations, "inertia": res.inertia,
                          "picks": int(picks.size), "unique_picks": int(np.unique(picks).size),
                          "peak_rss_gib": peak_rss_gib(), "rule": args.within_cluster}
        report["loadavg_end"] = os.getloadavg()
        print(f"ECOS end to end ({args.within_cluster}): {timings['total_s']:.2f} s wall, "
              f"{timings['total_cpu_s']:.1f} CPU s (Lloyd {timings['kmeans_lloyd_s']:.2f} s, "
              f"allocate+select {timings['allocate_select_s']:.2f} s / "
              f"{timings['allocate_select_cpu_s']:.1f} CPU s over "
              f"{timings['clusters_picked_from']} clusters), +{compile_s:.2f} s compile; "
              f"peak RSS {report['ecos']['peak_rss_gib']:.2f} GiB")
        finish(report, args.out, tmp)
        return
    # sklearn right after our Lloyd, so both see about the same machine load.
    report["sklearn"] = time_sklearn(np.asarray(x), init, args)
    timings["lloyd_compile_warmup_s"] = compile_s
    timings["total_with_compile_s"] = timings["total_s"] + compile_s
    report["ecos"] = {**timings, "kmeans_iterations": res.iterations, "inertia": res.inertia,
                      "kmeans_scored_fraction": res.scored, "kmeans_reseeded": res.reseeded,
                      "picks": int(picks.size), "unique_picks": int(np.unique(picks).size),
                      "peak_rss_gib": peak_rss_gib()}

    if not args.skip_kcenter:
        t = time.perf_counter()
        kc = samplers.kcenter_greedy(jax.random.key(args.seed), x, args.kcenter_budget,
                                     chunk_size=args.chunk_size)
        kc.block_until_ready()
        report["kcenter"] = {"total_s": time.perf_counter() - t, "picks": int(kc.size),
                             "unique_picks": int(np.unique(np.asarray(kc)).size),
                             "peak_rss_gib": peak_rss_gib()}

    # Ablations of our Lloyd on the same init: without the bounds, and one iteration only.
    t = time.perf_counter()
    km_module.kmeans(jax.random.key(0), x, args.clusters, iters=args.iters,
                     chunk_size=args.chunk_size, init=init, prune=False)
    report["ecos"]["kmeans_lloyd_unpruned_s"] = time.perf_counter() - t
    t = time.perf_counter()
    km_module.kmeans(jax.random.key(0), x, args.clusters, iters=1, chunk_size=args.chunk_size,
                     init=init)
    report["ecos"]["kmeans_one_iteration_s"] = time.perf_counter() - t
    # The other empty-cluster rule (split the largest cluster, faiss's), same init.
    t = time.perf_counter()
    split = km_module.kmeans(jax.random.key(0), x, args.clusters, iters=args.iters,
                             chunk_size=args.chunk_size, init=init, reseed="split")
    report["ecos"]["kmeans_split_rule"] = {"lloyd_s": time.perf_counter() - t,
                                           "inertia": split.inertia,
                                           "reseeded": split.reseeded,
                                           "iterations": split.iterations}

    report["faiss"] = time_faiss(np.asarray(x), init, args)
    sk = report["sklearn"]
    ours_per_it = timings["kmeans_lloyd_s"] / max(res.iterations, 1)
    sk_per_it = report["sklearn"]["same_init_s"] / max(report["sklearn"]["same_init_iterations"],
                                                       1)
    report["kmeans_speedup_vs_sklearn"] = {
        "ours_lloyd_s": timings["kmeans_lloyd_s"], "sklearn_lloyd_s":
            report["sklearn"]["same_init_s"],
        "ours_per_iteration_s": ours_per_it, "sklearn_per_iteration_s": sk_per_it,
        "speedup_per_iteration": sk_per_it / ours_per_it,
        "ours_cpu_s": timings["kmeans_lloyd_cpu_s"], "sklearn_cpu_s": sk["same_init_cpu_s"],
        "ours_unpruned_lloyd_s": report["ecos"]["kmeans_lloyd_unpruned_s"],
        "speedup_unpruned": sk["same_init_s"] / report["ecos"]["kmeans_lloyd_unpruned_s"]}
    # Whole fits from the same init, with the inertia each reached ("equal inertia" is read
    # off the relative differences).
    fa = report["faiss"]
    report["kmeans_equal_inertia"] = {
        "ours_s": timings["kmeans_lloyd_s"], "ours_inertia": res.inertia,
        "sklearn_s": sk["same_init_s"], "sklearn_inertia": sk["same_init_inertia"],
        "ours_vs_sklearn_inertia_rel": res.inertia / sk["same_init_inertia"] - 1.0,
        "speedup_vs_sklearn": sk["same_init_s"] / timings["kmeans_lloyd_s"]}
    if fa["installed"]:
        report["kmeans_equal_inertia"].update(
            faiss_s=fa["total_s"], faiss_inertia=fa["inertia"],
            ours_vs_faiss_inertia_rel=res.inertia / fa["inertia"] - 1.0,
            speedup_vs_faiss=fa["total_s"] / timings["kmeans_lloyd_s"],
            speedup_vs_faiss_train_only=fa["train_s"] / timings["kmeans_lloyd_s"])
    # Marginal cost of iterations 2..iters (total minus a one-iteration fit), both sides.
    extra = max(res.iterations - 1, 1)
    ours_marginal = (timings["kmeans_lloyd_s"] - report["ecos"]["kmeans_one_iteration_s"]) / extra
    sk_marginal = (sk["same_init_s"] - sk["one_iteration_s"]) / max(
        sk["same_init_iterations"] - 1, 1)
    report["kmeans_speedup_vs_sklearn"].update(
        ours_marginal_per_iteration_s=ours_marginal, sklearn_marginal_per_iteration_s=sk_marginal,
        speedup_marginal_per_iteration=sk_marginal / ours_marginal)
    report["peak_rss_gib_end"] = peak_rss_gib()
    report["loadavg_end"] = os.getloadavg()

    rows = [("pool", f"{args.n:,} x {args.d} float32", f"{report['pool']['generate_s']:.1f} s gen"),
            (f"ECOS k-means init ({args.init})", f"{timings['kmeans_init_s']:.2f} s", ""),
            ("ECOS k-means Lloyd", f"{timings['kmeans_lloyd_s']:.2f} s",
             f"{res.iterations} it, {ours_per_it:.3f} s/it, {100 * res.scored:.0f}% of "
             f"distances computed, {res.reseeded} re-seeded, inertia {res.inertia:.6g}"),
            ("ECOS client response", f"{timings['client_response_s']:.2f} s", ""),
            ("ECOS allocate+select", f"{timings['allocate_select_s']:.2f} s",
             f"{picks.size} picks, rule {args.within_cluster}"),
            ("ECOS end to end", f"{timings['total_s']:.2f} s",
             f"peak RSS {report['ecos']['peak_rss_gib']:.2f} GiB"),
            ("  + Lloyd jit compile", f"{compile_s:.2f} s",
             f"= {timings['total_with_compile_s']:.2f} s")]
    if "kcenter" in report:
        rows.append(("K-Center greedy", f"{report['kcenter']['total_s']:.2f} s",
                     f"{args.kcenter_budget} picks, peak RSS "
                     f"{report['kcenter']['peak_rss_gib']:.2f} GiB"))
    rows.append(("sklearn KMeans (same init)", f"{sk['same_init_s']:.2f} s",
                 f"{sk['same_init_iterations']} it, {sk_per_it:.3f} s/it, inertia "
                 f"{sk['same_init_inertia']:.6g}"))
    if "kmeanspp_total_s" in sk:
        rows.append(("sklearn KMeans (own k-means++)", f"{sk['kmeanspp_total_s']:.2f} s",
                     f"{sk['kmeanspp_iterations']} it"))
    rows.append(("faiss KMeans (same init)", f"{fa['total_s']:.2f} s"
                 if fa["installed"] else "not installed",
                 f"{fa['threads']} thread(s), train {fa['train_s']:.2f} s + search, "
                 f"inertia {fa['inertia']:.6g}"
                 if fa["installed"] else ""))
    eq = report["kmeans_equal_inertia"]
    rows.append(("k-means speed-up vs sklearn", f"{eq['speedup_vs_sklearn']:.2f}x",
                 f"whole fit, same init and iterations, inertia "
                 f"{100 * eq['ours_vs_sklearn_inertia_rel']:+.3f}%; CPU s "
                 f"{timings['kmeans_lloyd_cpu_s']:.1f} vs {sk['same_init_cpu_s']:.1f}"))
    if fa["installed"]:
        rows.append(("k-means speed-up vs faiss", f"{eq['speedup_vs_faiss']:.2f}x",
                     f"whole fit (train only: {eq['speedup_vs_faiss_train_only']:.2f}x), "
                     f"inertia {100 * eq['ours_vs_faiss_inertia_rel']:+.3f}%"))
    spd = report["kmeans_speedup_vs_sklearn"]
    rows.append(("  without bounds (prune=False)", f"{spd['speedup_unpruned']:.2f}x",
                 f"Lloyd {spd['ours_unpruned_lloyd_s']:.2f} s"))
    sp = report["ecos"]["kmeans_split_rule"]
    rows.append(('  reseed="split" (largest cluster)', f"{sp['lloyd_s']:.2f} s",
                 f"{sp['reseeded']} re-seeded, inertia {sp['inertia']:.6g} "
                 f"({100 * (sp['inertia'] / sk['same_init_inertia'] - 1):+.2f}% vs sklearn)"))
    rows.append(("  marginal, per extra iteration", f"{spd['speedup_marginal_per_iteration']:.2f}x",
                 f"{ours_marginal:.3f} s vs {sk_marginal:.3f} s"))
    rows.append(("streamed == in-memory", str(all(v for k, v in report["exactness"].items()
                                                  if k.endswith("equal"))),
                 f"first {check_rows:,} rows"))
    width = max(len(r[0]) for r in rows)
    for name, val, note in rows:
        print(f"{name:<{width}}  {val:>14}  {note}")
    finish(report, args.out, tmp)


if __name__ == "__main__":
    main()
