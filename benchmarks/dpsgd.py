"""DP-SGD step vs the non-private step of the same model, and vs Opacus, in one run.

For each model (the small CNN of the DP-SGD literature, conv-relu-maxpool x2 + dense 64 + dense
10; a wider one, 32/64 channels and dense 128; and the project's default CNN, which
downsamples by stride-2 convs instead of pooling; 28x28x1 inputs, batch 256) this times, interleaved round by round so that load on a shared machine hits all of them
alike:

  jax_nonprivate           jax.grad of the mean loss + SGD (the plain formulation)
  jax_nonprivate_fastpool  the same with `fast_max_pool_grads` (same values)
  jax_nonprivate_layers    the same sum of gradients by `layer_grads.grad_sum`
  jax_dpsgd                DP-SGD step (`make_dp_step`, grad_method="layers"): per-example
                           clip, Gaussian noise on the sum, / expected batch, SGD
  jax_dpsgd_poisson_pad    the same step at the padded Poisson batch shape (q·N + 5 std slots,
                           256 of them real): what a Poisson-sampled run pays per step
  jax_dpsgd_vmap           DP-SGD step with vmap(grad) per-example gradients
  jax_privacy              jax_privacy 2.0 (if installed): `clipping.clipped_grad` of the
                           per-example loss (vmap of grad inside), `noise_addition.
                           gaussian_privatizer` with stddev σ·(its sensitivity C), / batch, SGD
  jax_privacy_fastpool     the same with our `fast_max_pool_grads` around its loss (same
                           values): how much of the gap is XLA:CPU's max-pool gradient
  torch_nonprivate         the same architecture in PyTorch (if installed)
  opacus_<mode>            Opacus DP-SGD step (make_private; clip + noise + SGD) for each mode
                           that runs: hooks, functorch, ew (expanded weights), ghost

Ratios: DP-SGD over the *fastest* JAX non-private step, DP-SGD throughput over jax_privacy's
(plain and fastpool), and over the best Opacus mode, both among the classic per-sample modes
(hooks/functorch/ew) and including ghost clipping. Every number is the median over `--repeats` rounds of `--inner` steps each.

    python benchmarks/dpsgd.py --models=cnn,wide_cnn,cnn_stride   # 3 min on 2 idle cores
                                                       # (16 min at load 10); JSON to
                                                       # benchmarks/results/dpsgd.json
    python benchmarks/dpsgd.py --models=cnn --repeats=3 --out=/tmp/dpsgd.json   # quick

Opacus and jax_privacy are optional (`pip install 'ecos_jax[bench]'`, with torch pinned as in
pyproject.toml); without them their rows are left out and the JSON says why.
Torch gets as many intra-op threads as JAX's XLA CPU pool uses (the cores this process may run
on), reported in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ecos_jax.models import get_model  # noqa: E402
from ecos_jax.privacy import dpsgd, layer_grads  # noqa: E402
from ecos_jax.privacy.pooling import fast_max_pool_grads  # noqa: E402
from ecos_jax.privacy.sampling import default_max_batch_size  # noqa: E402

# name -> (ecos_jax model name, kwargs, torch channels, torch embed dim)
MODELS = {
    "cnn": ("cnn", {"pooling": "max"}, (16, 32), 64),
    "wide_cnn": ("wide_cnn", {"pooling": "max"}, (32, 64), 128),
    "cnn_stride": ("cnn", {"pooling": "stride"}, (16, 32), 64),
}
DATASET_SIZE = 60_000
LR, CLIP, SIGMA = 0.1, 1.0, 1.0
OPACUS_MODES = ("hooks", "functorch", "ew", "ghost")
CLASSIC_MODES = ("hooks", "functorch", "ew")


def _jax_steps(name: str, batch: int) -> dict[str, Callable[[], None]]:
    """Zero-argument closures, each running one full training step (blocking)."""
    model_name, kw, _, _ = MODELS[name]
    model = get_model(model_name, 10, **kw)
    rng = np.random.default_rng(0)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    x = jnp.asarray(rng.random((batch, 28, 28, 1), np.float32))
    y = jnp.asarray(rng.integers(0, 10, batch), jnp.int32)
    tx = optax.sgd(LR)

    def plain_loss(p, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y).mean()

    def nonprivate(loss_fn):
        @jax.jit
        def step(p, s, x, y):
            g = jax.grad(loss_fn)(p, x, y)
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        return step

    @jax.jit
    def layers_step(p, s, x, y):
        g = jax.tree.map(lambda v: v / x.shape[0], layer_grads.grad_sum(model, p, x, y))
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    steps = {}
    for label, fn in [("jax_nonprivate", nonprivate(plain_loss)),
                      ("jax_nonprivate_fastpool", nonprivate(fast_max_pool_grads(plain_loss))),
                      ("jax_nonprivate_layers", layers_step)]:
        state = [params, tx.init(params)]

        def run(fn=fn, state=state):
            state[0], state[1] = jax.block_until_ready(fn(state[0], state[1], x, y))

        steps[label] = run

    max_b = default_max_batch_size(DATASET_SIZE, batch / DATASET_SIZE)
    pad = max_b - batch
    x_pad = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)])
    y_pad = jnp.concatenate([y, jnp.zeros((pad,), y.dtype)])
    mask_pad = jnp.concatenate([jnp.ones(batch), jnp.zeros(pad)])
    for label, method, xs, ys, mask in [
        ("jax_dpsgd", "layers", x, y, jnp.ones(batch)),
        ("jax_dpsgd_poisson_pad", "layers", x_pad, y_pad, mask_pad),
        ("jax_dpsgd_vmap", "vmap", x, y, jnp.ones(batch)),
    ]:
        config = dpsgd.DPSGDConfig(dataset_size=DATASET_SIZE, batch_size=batch, l2_norm_clip=CLIP,
                                   noise_multiplier=SIGMA, grad_method=method)
        init, update = dpsgd.make_dp_step(model, tx, config, key=jax.random.key(1))
        state = [init(params)]

        def run(update=update, state=state, xs=xs, ys=ys, mask=mask):
            state[0] = jax.block_until_ready(update(state[0], xs, ys, mask)[0])

        steps[label] = run
    steps.update(_jax_privacy_steps(model, params, x, y, batch))
    return steps


def _jax_privacy_steps(model, params, x, y, batch: int) -> dict[str, Callable[[], None]]:
    """jax_privacy 2.0's clip + Gaussian noise + optax SGD on the same model, params and batch;
    {} if jax_privacy is not installed."""
    try:
        from jax_privacy import clipping as jp_clipping
        from jax_privacy import noise_addition as jp_noise
    except ImportError:
        return {}
    tx = optax.sgd(LR)

    def loss(p, xb, yb):  # xb [1, ...]: clipped_grad keeps the batch axis by default
        return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, xb), yb).sum()

    steps = {}
    for label, fn in [("jax_privacy", loss), ("jax_privacy_fastpool", fast_max_pool_grads(loss))]:
        grad_fn = jp_clipping.clipped_grad(fn, l2_clip_norm=CLIP, batch_argnums=(1, 2))
        privatizer = jp_noise.gaussian_privatizer(stddev=SIGMA * grad_fn.sensitivity(),
                                                  prng_key=jax.random.key(1))

        @jax.jit
        def step(p, opt_state, noise_state, x, y, grad_fn=grad_fn, privatizer=privatizer):
            g = grad_fn(p, x, y)
            g, noise_state = privatizer.update(g, noise_state)
            g = jax.tree.map(lambda v: v / x.shape[0], g)
            u, opt_state = tx.update(g, opt_state, p)
            return optax.apply_updates(p, u), opt_state, noise_state

        state = [params, tx.init(params), privatizer.init(params)]

        def run(step=step, state=state):
            state[:] = jax.block_until_ready(step(*state, x, y))

        steps[label] = run
    return steps


def _torch_steps(name: str, batch: int, threads: int) -> tuple[dict, dict]:
    """Torch non-private and Opacus steps of the same architecture; ({}, info) if unavailable."""
    try:
        import opacus
        import torch
        from torch import nn
    except ImportError as err:
        return {}, {"available": False, "reason": str(err)}
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    # Ghost clipping's second backward pass warns on every step; the warning is expected.
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    _, kw, channels, embed = MODELS[name]
    stride = kw.get("pooling") == "stride"

    def build():
        layers, c_in, size = [], 1, 28
        for c in channels:
            if stride:
                layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.ReLU()]
            else:
                layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c_in, size = c, size // 2
        layers += [nn.Flatten(), nn.Linear(c_in * size * size, embed), nn.ReLU(),
                   nn.Linear(embed, 10)]
        return nn.Sequential(*layers)

    x = torch.rand(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))
    steps = {}
    model = build()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    criterion = nn.CrossEntropyLoss()

    def nonprivate():
        opt.zero_grad(set_to_none=True)
        criterion(model(x), y).backward()
        opt.step()

    steps["torch_nonprivate"] = nonprivate
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.zeros(DATASET_SIZE, 1, 28, 28),
                                       torch.zeros(DATASET_SIZE, dtype=torch.long)),
        batch_size=batch)
    info = {"available": True, "torch": torch.__version__, "opacus": opacus.__version__,
            "threads": torch.get_num_threads(), "failed_modes": {}}
    for mode in OPACUS_MODES:
        try:
            m = build()
            o = torch.optim.SGD(m.parameters(), lr=LR)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = opacus.PrivacyEngine().make_private(
                    module=m, optimizer=o, data_loader=loader, noise_multiplier=SIGMA,
                    max_grad_norm=CLIP, grad_sample_mode=mode, criterion=nn.CrossEntropyLoss(),
                    poisson_sampling=True)
            if mode == "ghost":
                dm, do, dc, _ = out
            else:
                (dm, do, _), dc = out, nn.CrossEntropyLoss()

            def step(dm=dm, do=do, dc=dc):
                do.zero_grad(set_to_none=True)
                dc(dm(x), y).backward()
                do.step()

            step()  # must run once to count as a working mode
            steps[f"opacus_{mode}"] = step
        except Exception as err:  # a mode Opacus cannot run on this model is reported, not hidden
            info["failed_modes"][mode] = f"{type(err).__name__}: {err}"[:300]
    return steps, info


def _measure(steps: dict[str, Callable[[], None]], repeats: int, inner: int) -> dict[str, list]:
    for fn in steps.values():  # compile / warm up
        fn()
        fn()
    times: dict[str, list] = {k: [] for k in steps}
    for _ in range(repeats):
        for k, fn in steps.items():  # interleaved: load drift hits every step alike
            t = time.perf_counter()
            for _ in range(inner):
                fn()
            times[k].append((time.perf_counter() - t) / inner)
    return times


def run_model(name: str, batch: int, repeats: int, inner: int, threads: int, opacus: bool) -> dict:
    steps = _jax_steps(name, batch)
    torch_info = {"available": False, "reason": "--no-opacus"}
    if opacus:
        t_steps, torch_info = _torch_steps(name, batch, threads)
        steps.update(t_steps)
    times = _measure(steps, repeats, inner)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = {k: {"median_s": med[k], "min_s": min(v), "samples_per_s": batch / med[k], "all_s": v}
            for k, v in times.items()}
    np_keys = ["jax_nonprivate", "jax_nonprivate_fastpool", "jax_nonprivate_layers"]
    best_np = min(np_keys, key=med.get)
    ratios = {
        "dp_over_fastest_nonprivate": med["jax_dpsgd"] / med[best_np],
        "fastest_nonprivate": best_np,
        "dp_over_plain_nonprivate": med["jax_dpsgd"] / med["jax_nonprivate"],
        "poisson_pad_over_fastest_nonprivate": med["jax_dpsgd_poisson_pad"] / med[best_np],
        "vmap_dp_over_fastest_nonprivate": med["jax_dpsgd_vmap"] / med[best_np],
    }
    for peer in ("jax_privacy", "jax_privacy_fastpool"):
        if peer in med:
            ratios[f"dp_throughput_over_{peer}"] = med[peer] / med["jax_dpsgd"]
    for label, modes in [("classic", CLASSIC_MODES), ("any", OPACUS_MODES)]:
        present = [f"opacus_{m}" for m in modes if f"opacus_{m}" in med]
        if present:
            best = min(present, key=med.get)
            ratios[f"dp_throughput_over_opacus_best_{label}"] = med[best] / med["jax_dpsgd"]
            ratios[f"opacus_best_{label}"] = best
    if "torch_nonprivate" in med:
        ratios["jax_fastest_nonprivate_over_torch_nonprivate"] = med[best_np] / med["torch_nonprivate"]
    return {"batch_size": batch, "steps": rows, "ratios": ratios, "torch": torch_info,
            "jax_privacy": _jax_privacy_info()}


def _jax_privacy_info() -> dict:
    try:
        import jax_privacy
    except ImportError as err:
        return {"available": False, "reason": str(err)}
    return {"available": True, "version": getattr(jax_privacy, "__version__", "unknown")}


def _print(name: str, result: dict) -> None:
    rows = result["steps"]
    print(f"\n{name} (batch {result['batch_size']}, 28x28x1)")
    print(f"  {'step':26s} {'median ms':>10s} {'min ms':>8s} {'samples/s':>10s}")
    for k, r in rows.items():
        print(f"  {k:26s} {1e3 * r['median_s']:10.1f} {1e3 * r['min_s']:8.1f} "
              f"{r['samples_per_s']:10.0f}")
    for k, v in result["ratios"].items():
        print(f"  {k:44s} {v:.2f}" if isinstance(v, float) else f"  {k:44s} {v}")
    for mode, why in result["torch"].get("failed_modes", {}).items():
        print(f"  opacus {mode} failed: {why[:120]}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="cnn,wide_cnn",
                        help=f"comma-separated, from {sorted(MODELS)}")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--inner", type=int, default=2, help="steps per timed sample")
    parser.add_argument("--no-opacus", action="store_true", help="skip torch / Opacus")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "dpsgd.json"))
    args = parser.parse_args(argv)
    names = [m for m in args.models.split(",") if m]
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; choose from {sorted(MODELS)}")
    if args.batch < 1 or args.repeats < 1 or args.inner < 1:
        raise SystemExit("--batch, --repeats and --inner must be >= 1")
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    report = {
        "machine": {"platform": platform.platform(), "processor": _cpu_name(), "cores": threads,
                    "jax_backend": jax.default_backend(), "jax": jax.__version__,
                    "xla_flags": os.environ.get("XLA_FLAGS", "")},
        "settings": {"repeats": args.repeats, "inner": args.inner, "dataset_size": DATASET_SIZE,
                     "l2_norm_clip": CLIP, "noise_multiplier": SIGMA, "optimizer": f"sgd({LR})",
                     "torch_threads": threads, "jax_threads": f"XLA CPU pool over {threads} cores"},
        "models": {},
    }
    report["machine"]["loadavg_start"] = _loadavg()
    start = time.time()
    for name in names:
        report["models"][name] = run_model(name, args.batch, args.repeats, args.inner, threads,
                                           not args.no_opacus)
        _print(name, report["models"][name])
    report["wall_s"] = time.time() - start
    report["machine"]["loadavg_end"] = _loadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out)
    print(f"\nwrote {out} ({report['wall_s']:.0f} s)")


def _loadavg() -> list[float] | None:
    """1/5/15-minute load: on a shared machine, read every number in its light."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
