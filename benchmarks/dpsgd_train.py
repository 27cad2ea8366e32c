"""`dpsgd.train` itself, as a user runs it: Poisson padding "full" against "buckets", beside
a plain non-private step, interleaved round by round in one process.

For each model and expected batch B (random data of Fashion-MNIST's N = 60,000 rows: timing
only), every round runs, in this order:

  full       dpsgd.train(..., padding="full"): every step at M = q·N + 5 std slots, one
             compiled `lax.scan` per chunk of `log_every` steps (sampling inside)
  buckets    dpsgd.train(..., padding="buckets"): the same batches (same seed: same draws),
             each step dispatched from the host on the shortest static prefix holding its rows
  host_M     the control: dpsgd.train(..., padding=(M - 1,)), the bucketed machinery (host
             dispatch, no `lax.cond` around the step) at M - 1 or M slots, i.e. the padded
             work: buckets / host_M is what the shorter prefixes save, host_M / full what
             leaving the scan and its conditional does
  nonprivate one jitted non-private step on B fixed rows per step (gathered inside the step
             from a permutation), dispatched from the host, chunked the same way, the mean
             gradient by plain `jax.grad` ("grad") and by `layer_grads.grad_sum` ("layers",
             the DP step's own formulation without clipping); ratios use the faster of the two

Time per step = (end of the last chunk - end of the first chunk) / (steps - log_every): the
first chunk (compilation; a cache load after round 1) is left out. Round 1 fills the
persistent compilation cache (so lengths that "buckets" compiles lazily in a later chunk load
from it in later rounds) and is printed but not in the medians. Ratios are within the run.

    python benchmarks/dpsgd_train.py --models=tramer_cnn:2048,linear:8192 --steps=40 \
        --log_every=10 --rounds=3 --out=benchmarks/results/dpsgd_train.json
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "ecos_jax_dpsgd_train_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from ecos_jax.models import get_model  # noqa: E402
from ecos_jax.privacy import dpsgd, layer_grads  # noqa: E402
from ecos_jax.utils import allocator
from ecos_jax.utils.io import write_json  # noqa: E402

DATASET_SIZE = 60_000
INPUTS = {"linear": (3969,), "tramer_cnn": (28, 28, 1)}
CLIP, SIGMA, LR, MOMENTUM = 0.1, 2.0, 0.5, 0.9
ALL_VARIANTS = ("full", "buckets", "host_M", "grad", "layers")


def _data(model_name: str):
    """Random inputs in [0, 1) and labels, as device arrays: one copy of the data (0.95 GB for
    linear's 60,000 x 3,969) that every run shares."""
    x = jax.random.uniform(jax.random.key(0), (DATASET_SIZE, *INPUTS[model_name]))
    y = jnp.arange(DATASET_SIZE, dtype=jnp.int32) % 10
    return x, y


class _ChunkClock:
    """A training-loop hook: the time at the end of each chunk."""

    def __init__(self):
        self.times = []

    def __call__(self, state, record):
        self.times.append(time.perf_counter())


def _per_step(times: list[float], steps: int, log_every: int) -> float:
    return (times[-1] - times[0]) / (steps - log_every)


def _dp_run(model, params, x, y, batch, padding, *, steps, log_every):
    config = dpsgd.DPSGDConfig(dataset_size=DATASET_SIZE, batch_size=batch, l2_norm_clip=CLIP,
                               noise_multiplier=SIGMA)
    if padding == "host_M":
        padding = (config.sampler().max_batch_size - 1,)
    clock = _ChunkClock()
    t0 = time.perf_counter()
    result = dpsgd.train(model, params, x, y, config, optax.sgd(LR, momentum=MOMENTUM),
                         steps=steps, seed=0, log_every=log_every, hooks=[clock],
                         padding=padding)
    slots = float(np.mean([h["slots"] for h in result.history]))
    sampled = float(np.mean([h["batch_size"] for h in result.history]))
    return {"ms_per_step": 1e3 * _per_step(clock.times, steps, log_every),
            "wall_s": time.perf_counter() - t0, "first_chunk_s": clock.times[0] - t0,
            "compilations": result.compilations,
            "lengths": list(result.lengths), "mean_slots": slots, "mean_sampled": sampled,
            "max_batch_size": config.sampler().max_batch_size}


def _nonprivate_run(model, params, x, y, batch, how, *, steps, log_every):
    """Plain minibatch SGD on the mean cross-entropy, B rows per step; its gradient by
    `jax.grad` (how="grad") or `layer_grads.grad_sum` (how="layers")."""
    tx = optax.sgd(LR, momentum=MOMENTUM)

    def step(carry, xd, yd, idx):  # the data as arguments: closed over, XLA embeds it
        p, opt = carry

        def loss(p):
            logits = model.apply(p, xd[idx])
            return optax.softmax_cross_entropy_with_integer_labels(logits, yd[idx]).mean()

        if how == "grad":
            value, g = jax.value_and_grad(loss)(p)
        else:
            value = loss(p)
            g = jax.tree.map(lambda v: v / batch,
                             layer_grads.grad_sum(model, p, xd[idx], yd[idx]))
        updates, opt = tx.update(g, opt, p)
        return (optax.apply_updates(p, updates), opt), value

    step = jax.jit(step, donate_argnums=(0,))
    rows = np.random.default_rng(1).permutation(DATASET_SIZE)
    carry = (jax.tree.map(jnp.array, params), tx.init(params))
    times, t0 = [], time.perf_counter()
    for t in range(steps):
        start = (t * batch) % (DATASET_SIZE - batch)
        carry, value = step(carry, x, y, jnp.asarray(rows[start:start + batch]))
        if (t + 1) % log_every == 0:
            jax.block_until_ready(value)
            times.append(time.perf_counter())
    return {"ms_per_step": 1e3 * _per_step(times, steps, log_every),
            "wall_s": time.perf_counter() - t0, "first_chunk_s": times[0] - t0}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="tramer_cnn:2048,linear:8192",
                        help="model:expected_batch pairs")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--log_every", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="round 1 is the warm-up")
    parser.add_argument("--out", default="benchmarks/results/dpsgd_train.json")
    parser.add_argument("--variants", default="full,buckets,host_M,grad,layers",
                        help="which of full, buckets, host_M, grad, layers to run")
    args = parser.parse_args(argv)
    allocator.configure()  # as the experiment drivers run (ECOS_JAX_MALLOC=system: glibc's default)
    variants = [v for v in ALL_VARIANTS if v in args.variants.split(",")]
    if args.steps <= args.log_every or args.steps % args.log_every:
        parser.error("--steps must be a multiple of --log_every, at least two chunks")
    results = {"args": vars(args), "jax": jax.__version__, "configs": []}
    for spec in args.models.split(","):
        name, batch = spec.split(":")
        batch = int(batch)
        model = get_model(name, 10)
        x, y = _data(name)
        params = jax.jit(model.init)(jax.random.key(0), x[:1])
        rounds = []
        for r in range(args.rounds):
            kw = dict(steps=args.steps, log_every=args.log_every)
            row = {}
            for v in variants:
                row[v] = (_dp_run(model, params, x, y, batch, v, **kw)
                          if v in ("full", "buckets", "host_M") else
                          _nonprivate_run(model, params, x, y, batch, v, **kw))
            row["load"] = os.getloadavg()[0]
            rounds.append(row)
            print(f"{name} B={batch} round {r + 1}: "
                  + ", ".join(f"{k} {row[k]['ms_per_step']:.1f} ms" for k in variants)
                  + f", load {row['load']:.1f}", flush=True)
        timed = rounds[1:] or rounds
        med = {k: float(np.median([r[k]["ms_per_step"] for r in timed])) for k in variants}
        med["nonprivate"] = min((med[k] for k in ("grad", "layers") if k in med), default=None)
        med = {k: med.get(k) for k in ALL_VARIANTS} | {"nonprivate": med["nonprivate"]}

        def ratio(a, b, med=med):
            return None if med[a] is None or med[b] is None else med[a] / med[b]
        results["configs"].append({
            "model": name, "batch": batch, "rounds": rounds, "median_ms": med,
            "buckets_over_full": ratio("buckets", "full"),
            "buckets_over_nonprivate": ratio("buckets", "nonprivate"),
            "full_over_nonprivate": ratio("full", "nonprivate"),
            "buckets_over_host_M": ratio("buckets", "host_M"),
            "host_M_over_full": ratio("host_M", "full"),
            "per_round_buckets_over_full": [r["buckets"]["ms_per_step"] / r["full"]["ms_per_step"]
                                            for r in timed if "buckets" in r and "full" in r],
            "load": [r["load"] for r in timed]})
    write_json(args.out, results)

    def f(v, spec=".1f", unit=""):
        return "-" if v is None else f"{v:{spec}}{unit}"

    print("\n| model | B | M | mean sampled | mean slots (buckets) | lengths | compilations "
          "| full ms | buckets ms | non-private ms (grad / layers) | buckets / full | buckets / non-private "
          "| full / non-private | load |")
    print("|" + "---|" * 14)
    for c in results["configs"]:
        b = c["rounds"][-1]["buckets"]
        print(f"| {c['model']} | {c['batch']} | {b['max_batch_size']} | {b['mean_sampled']:.0f} "
              f"| {b['mean_slots']:.0f} | {','.join(map(str, b['lengths']))} "
              f"| {b['compilations']} | {f(c['median_ms']['full'])} "
              f"| {f(c['median_ms']['buckets'])} | {f(c['median_ms']['grad'])} / "
              f"{f(c['median_ms']['layers'])} "
              f"| {f(c['buckets_over_full'], '.2f', 'x')} "
              f"| {f(c['buckets_over_nonprivate'], '.2f', 'x')} "
              f"| {f(c['full_over_nonprivate'], '.2f', 'x')} "
              f"| {'/'.join(f'{v:.0f}' for v in c['load'])} |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
