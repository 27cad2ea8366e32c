"""DP-SGD step vs the non-private step of the same model, and vs Opacus and jax_privacy, in one run.

Models: the small CNN of the DP-SGD literature (conv-relu-maxpool x2 + dense 64 + dense 10), a
wider one (32/64 channels, dense 128), the project's default CNN (stride-2 convs instead of
pooling), Tramèr & Boneh's end-to-end DP CNN (`tramer_cnn`: 8x8/2 and 4x4/2 convs, tanh,
stride-1 max-pools, what `configs/train_dp.py:fashion_cnn` trains), all on 28x28x1 inputs, and logistic regression on ScatterNet-sized features (3,969
inputs, the ScatterNet + linear setting). Batch sizes `--batches` (DP's published Fashion-MNIST
settings use expected batches of 2048 for the CNN and 8192 for ScatterNet + linear). For each
(model, batch) this times, interleaved round by round so that load on a shared machine hits all
of them alike:

  jax_nonprivate           jax.grad of the mean loss + SGD (the plain formulation)
  jax_nonprivate_fastpool  the same with `fast_max_pool_grads` (same values)
  jax_nonprivate_layers    the same sum of gradients by `layer_grads.grad_sum`
  jax_dpsgd                DP-SGD step (`make_dp_step`, grad_method="layers"): per-example
                           clip, Gaussian noise on the sum, / expected batch, SGD
  jax_dpsgd_poisson_pad    the same step at the padded Poisson shape (M = q·N + 5 std slots)
                           holding a real Poisson draw: each call takes the next of 8 seeded
                           n ~ Binomial(N, q) (sampled rows first, as `poisson_batch` gives
                           them), so its median is what a Poisson-sampled run pays per step
  jax_dpsgd_poisson_bucket the same draws, each step dispatched from the host on the shortest
                           of a few static prefix lengths holding its n rows (one compiled
                           step per length, no conditional inside the step)
  jax_dpsgd_vmap           DP-SGD step with vmap(grad) per-example gradients
  jax_dpsgd_ab             with `--ab=COMMIT`: the jax_dpsgd step with `privacy/layer_grads.py`
                           as it was at COMMIT (read with `git show`, loaded as its own module),
                           timed interleaved with today's: old code against new in one process
  jax_privacy              jax_privacy 2.0 (if installed): `clipping.clipped_grad` of the
                           per-example loss (vmap of grad inside), `noise_addition.
                           gaussian_privatizer` with stddev σ·(its sensitivity C), / batch, SGD;
                           its own `microbatch_size=JP_MICROBATCH` above that batch (without it
                           one linear step at B = 2048 took 56 s where 256-row chunks take 1.6 s:
                           its vmap over the whole batch grows superlinearly on XLA:CPU)
  jax_privacy_fastpool     the same with our `fast_max_pool_grads` around its loss (same
                           values): how much of the gap is XLA:CPU's max-pool gradient
  torch_nonprivate         the same architecture in PyTorch (if installed)
  opacus_<mode>            Opacus DP-SGD step (make_private; clip + noise + SGD) for each mode
                           that runs: hooks, functorch, ew (expanded weights), ghost

Ratios: DP-SGD over the *fastest* JAX non-private step, DP-SGD throughput over jax_privacy's
(plain and fastpool), and over the best Opacus mode, both among the classic per-sample modes
(hooks/functorch/ew) and including ghost clipping. Every number is the median over `--repeats`
rounds of `--inner` steps each; the load average is recorded per configuration.

Peak memory, for every JAX step (ours and jax_privacy's) at every batch size: XLA's own
accounting of the compiled step, `jax.jit(step).lower(*args).compile().memory_analysis()`
(argument, output, temp and generated-code bytes; `peak_mb` = arguments + outputs + temp):
deterministic and true to the backend's buffer assignment, where an RSS reading is not (a
process reuses heap it freed). Torch / Opacus steps have no such analysis and get no memory
number. `--microbatch=K` makes the DP steps chunk any batch larger than K (bounded memory;
the non-private steps take the whole batch).

    python benchmarks/dpsgd.py --models=cnn,wide_cnn,cnn_stride,linear --batches=256,2048,8192
    python benchmarks/dpsgd.py --models=cnn --repeats=3 --out=/tmp/dpsgd.json   # quick
    python benchmarks/dpsgd.py --models=linear --batches=2048,8192 \
        --skip=jax_privacy_fastpool,jax_dpsgd_vmap             # skip rows by label

The JSON (default benchmarks/results/dpsgd.json, rewritten after every configuration) holds
`models[name][batch]`. Opacus and jax_privacy are optional (`pip install 'ecos_jax[bench]'`,
with torch pinned as in pyproject.toml); without them their rows are left out and the JSON says
why. Torch gets as many intra-op threads as JAX's XLA CPU pool uses (the cores this process may
run on), reported in the JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import types
import warnings
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ecos_jax.models import get_model  # noqa: E402
from ecos_jax.privacy import clipped_grads, dpsgd, layer_grads  # noqa: E402
from ecos_jax.privacy.pooling import fast_max_pool_grads  # noqa: E402
from ecos_jax.privacy.sampling import default_max_batch_size, prefix_buckets  # noqa: E402
from ecos_jax.utils import allocator

# name -> (ecos_jax model name, kwargs, torch channels (None: linear), torch embed dim)
MODELS = {
    "cnn": ("cnn", {"pooling": "max"}, (16, 32), 64),
    "wide_cnn": ("wide_cnn", {"pooling": "max"}, (32, 64), 128),
    "cnn_stride": ("cnn", {"pooling": "stride"}, (16, 32), 64),
    "tramer_cnn": ("tramer_cnn", {}, (16, 32), 32),
    # Logistic regression on ScatterNet-sized features (81 x 7 x 7 = 3,969 per image).
    "linear": ("linear", {}, None, None),
}
IMAGE_SHAPE, FEATURE_SHAPE = (28, 28, 1), (3969,)
DATASET_SIZE = 60_000
LR, CLIP, SIGMA = 0.1, 1.0, 1.0
OPACUS_MODES = ("hooks", "functorch", "ew", "ghost")
CLASSIC_MODES = ("hooks", "functorch", "ew")
NONPRIVATE = ("jax_nonprivate", "jax_nonprivate_fastpool", "jax_nonprivate_layers")
POISSON_DRAWS = 8  # Poisson batch sizes the padded step cycles through


def _input_shape(name: str) -> tuple[int, ...]:
    return FEATURE_SHAPE if MODELS[name][2] is None else IMAGE_SHAPE


def load_layer_grads(commit: str):
    """`ecos_jax/privacy/layer_grads.py` as it was at `commit`, as a module of its own."""
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(["git", "show", f"{commit}:ecos_jax/privacy/layer_grads.py"],
                            cwd=root, check=True, capture_output=True, text=True).stdout
    name = f"layer_grads_{commit}"
    module = types.ModuleType(name)
    module.__file__ = f"{commit}:ecos_jax/privacy/layer_grads.py"
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


@contextlib.contextmanager
def _layer_grads_as(module):
    """`clipped_grads` calls `module.clipped_grad_sum` inside: a step traced (or re-traced)
    here runs that module's code."""
    saved = clipped_grads.layer_grads
    clipped_grads.layer_grads = module
    try:
        yield
    finally:
        clipped_grads.layer_grads = saved


def _jax_steps(name: str, batch: int, microbatch: int | None = None,
               skip: frozenset = frozenset(), ab=None) -> dict[str, Callable[[], None]]:
    """Zero-argument closures, each running one full training step (blocking).

    DP steps split the batch into chunks of `microbatch` rows (bounded memory) when it is
    larger; the non-private steps take the whole batch. `ab`: a `load_layer_grads` module,
    for the jax_dpsgd_ab step."""
    model_name, kw, _, _ = MODELS[name]
    model = get_model(model_name, 10, **kw)
    rng = np.random.default_rng(0)
    shape = _input_shape(name)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, *shape)))
    x = jnp.asarray(rng.random((batch, *shape), np.float32))
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

    steps, compiled = {}, {}
    for label, fn in [("jax_nonprivate", nonprivate(plain_loss)),
                      ("jax_nonprivate_fastpool", nonprivate(fast_max_pool_grads(plain_loss))),
                      ("jax_nonprivate_layers", layers_step)]:
        state = [params, tx.init(params)]

        def run(fn=fn, state=state):
            state[0], state[1] = jax.block_until_ready(fn(state[0], state[1], x, y))

        steps[label] = run
        compiled[label] = (fn, (*state, x, y))

    # The padded Poisson step: M = q·N + 5 std slots, of which a real Poisson draw fills the
    # first n ~ Binomial(N, q) (sampled rows come first, as from `poisson_batch`); each call
    # takes the next of POISSON_DRAWS seeded draws, so the median is over real batch sizes.
    max_b = default_max_batch_size(DATASET_SIZE, batch / DATASET_SIZE)
    x_pad = jnp.asarray(rng.random((max_b, *shape), np.float32))
    y_pad = jnp.asarray(rng.integers(0, 10, max_b), jnp.int32)
    draws = np.minimum(rng.binomial(DATASET_SIZE, batch / DATASET_SIZE, POISSON_DRAWS), max_b)
    masks = [jnp.asarray(np.arange(max_b) < n) for n in draws]
    mb = microbatch if microbatch is not None and microbatch < batch else None
    for label, method, xs, ys, mask in [
        ("jax_dpsgd", "layers", x, y, [jnp.ones(batch)]),
        ("jax_dpsgd_poisson_pad", "layers", x_pad, y_pad, masks),
        ("jax_dpsgd_vmap", "vmap", x, y, [jnp.ones(batch)]),
    ]:
        if label in skip:
            continue
        config = dpsgd.DPSGDConfig(dataset_size=DATASET_SIZE, batch_size=batch, l2_norm_clip=CLIP,
                                   noise_multiplier=SIGMA, grad_method=method, microbatch_size=mb)
        init, update = dpsgd.make_dp_step(model, tx, config, key=jax.random.key(1))
        state = [init(params), 0]

        def run(update=update, state=state, xs=xs, ys=ys, mask=mask):
            m = mask[state[1] % len(mask)]
            state[0] = jax.block_until_ready(update(state[0], xs, ys, m)[0])
            state[1] += 1

        steps[label] = run
        compiled[label] = (update, (state[0], xs, ys, mask[0]))
    if ab is not None:
        config = dpsgd.DPSGDConfig(dataset_size=DATASET_SIZE, batch_size=batch, l2_norm_clip=CLIP,
                                   noise_multiplier=SIGMA, microbatch_size=mb)
        init, update = dpsgd.make_dp_step(model, tx, config, key=jax.random.key(1))
        state = [init(params)]
        ones = jnp.ones(batch)

        def run_ab(update=update, state=state):
            with _layer_grads_as(ab):  # every call, so a re-trace runs the old code too
                state[0] = jax.block_until_ready(update(state[0], x, y, ones)[0])

        steps["jax_dpsgd_ab"] = run_ab
    if "jax_dpsgd_poisson_bucket" not in skip:
        steps["jax_dpsgd_poisson_bucket"] = _bucketed_step(model, params, tx, batch, mb, x_pad,
                                                           y_pad, draws)
    jp_steps, jp_compiled = _jax_privacy_steps(model, params, x, y, batch, skip)
    steps.update(jp_steps)
    compiled.update(jp_compiled)
    keep = [k for k in steps if k not in skip]
    return {k: steps[k] for k in keep}, {k: compiled[k] for k in keep if k in compiled}, {
        "poisson_slots": max_b, "poisson_draws": draws.tolist(),
        "poisson_mean_draw": float(draws.mean()), "dp_microbatch": mb}


def _bucketed_step(model, params, tx, batch: int, mb: int | None, x_pad, y_pad,
                   draws) -> Callable[[], None]:
    """The padded Poisson step dispatched from the host on the shortest of a few static prefix
    lengths (`sampling.prefix_buckets`) that holds the draw's n sampled rows: one compiled
    step per length, chosen where n is known, with no `lax.switch` inside the step. The
    batch, and so the recorded sampler, is the padded one's; only padding rows are skipped."""
    buckets = prefix_buckets(x_pad.shape[0], batch, DATASET_SIZE)
    config = dpsgd.DPSGDConfig(dataset_size=DATASET_SIZE, batch_size=batch, l2_norm_clip=CLIP,
                               noise_multiplier=SIGMA, microbatch_size=mb)
    init, update = dpsgd.make_dp_step(model, tx, config, key=jax.random.key(1))
    shortest = [min(b for b in buckets if b >= n) for n in draws]
    args = [(x_pad[:length], y_pad[:length], jnp.arange(length) < n)
            for n, length in zip(draws, shortest)]
    state = [init(params), 0]
    for length in sorted(set(shortest)):  # compile every length the draws use, up front
        i = shortest.index(length)
        jax.block_until_ready(update(state[0], *args[i]))

    def run():
        i = state[1] % len(args)
        state[0] = jax.block_until_ready(update(state[0], *args[i])[0])
        state[1] += 1

    return run


# jax_privacy's clipped_grad vmaps the whole batch unless told to chunk it; on XLA:CPU that scales
# superlinearly (linear model: 1.4 s at 256, 56 s at 2048), so the peer runs with its own knob,
# as a user would after one slow step (256 against none was tried, nothing else).
JP_MICROBATCH = 256


def _jax_privacy_steps(model, params, x, y, batch: int,
                       skip: frozenset = frozenset()) -> tuple[dict, dict]:
    """jax_privacy 2.0's clip + Gaussian noise + optax SGD on the same model, params and batch,
    as (steps, {label: (jitted step, its arguments)}); ({}, {}) without jax_privacy."""
    try:
        from jax_privacy import clipping as jp_clipping
        from jax_privacy import noise_addition as jp_noise
    except ImportError:
        return {}, {}
    tx = optax.sgd(LR)

    def loss(p, xb, yb):  # xb [1, ...]: clipped_grad keeps the batch axis by default
        return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, xb), yb).sum()

    steps, compiled = {}, {}
    for label, fn in [("jax_privacy", loss), ("jax_privacy_fastpool", fast_max_pool_grads(loss))]:
        if label in skip:
            continue
        grad_fn = jp_clipping.clipped_grad(fn, l2_clip_norm=CLIP, batch_argnums=(1, 2),
                                           microbatch_size=JP_MICROBATCH if batch > JP_MICROBATCH else None)
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
        compiled[label] = (step, (*state, x, y))
    return steps, compiled


def _torch_steps(name: str, batch: int, threads: int,
                 skip: frozenset = frozenset()) -> tuple[dict, dict]:
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
        if channels is None:
            return nn.Linear(FEATURE_SHAPE[0], 10)
        if name == "tramer_cnn":  # as models.TramerCNN: 28 -> 13 -> 12 -> 5 -> 4
            return nn.Sequential(
                nn.Conv2d(1, 16, 8, stride=2, padding=2), nn.Tanh(), nn.MaxPool2d(2, 1),
                nn.Conv2d(16, 32, 4, stride=2), nn.Tanh(), nn.MaxPool2d(2, 1), nn.Flatten(),
                nn.Linear(32 * 4 * 4, embed), nn.Tanh(), nn.Linear(embed, 10))
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

    in_shape = FEATURE_SHAPE if channels is None else (1, 28, 28)
    x = torch.rand(batch, *in_shape)
    y = torch.randint(0, 10, (batch,))
    steps = {}
    model = build()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    criterion = nn.CrossEntropyLoss()

    def nonprivate():
        opt.zero_grad(set_to_none=True)
        criterion(model(x), y).backward()
        opt.step()

    if "torch_nonprivate" not in skip:
        steps["torch_nonprivate"] = nonprivate
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.zeros(DATASET_SIZE, *in_shape),
                                       torch.zeros(DATASET_SIZE, dtype=torch.long)),
        batch_size=batch)
    info = {"available": True, "torch": torch.__version__, "opacus": opacus.__version__,
            "threads": torch.get_num_threads(), "failed_modes": {}}
    for mode in OPACUS_MODES:
        if f"opacus_{mode}" in skip:
            continue
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


def xla_memory(fn, args) -> dict:
    """XLA's own accounting of one compiled step, MB: `jax.jit(step).lower(*args).compile()
    .memory_analysis()`. Deterministic and true to the backend's buffer assignment, unlike an
    RSS reading (a process reuses the heap it freed). `peak_mb` = arguments + outputs + temp
    (minus buffers aliased between arguments and outputs): what the step needs resident at once;
    `code_mb` is the generated code, beside it."""
    m = fn.lower(*args).compile().memory_analysis()
    if m is None:  # a backend without the analysis
        return {"error": "memory_analysis() unavailable on this backend"}
    mb = {k: getattr(m, f"{k}_size_in_bytes") / 2**20
          for k in ("argument", "output", "temp", "alias", "generated_code")}
    return {**{f"{k}_mb": v for k, v in mb.items()},
            "peak_mb": mb["argument"] + mb["output"] + mb["temp"] - mb["alias"]}


def memory_only(name: str, batch: int, microbatch: int | None, skip: frozenset) -> dict:
    """Every JAX step's XLA memory at this batch, compiled but never run (`--memory-only`):
    the DP and padded steps' peak over the smallest non-private peak."""
    _, compiled, jax_info = _jax_steps(name, batch, microbatch,
                                       skip | {"jax_dpsgd_poisson_bucket"})
    memory = {k: xla_memory(*c) for k, c in compiled.items()}
    np_peaks = {k: memory[k]["peak_mb"] for k in NONPRIVATE if "peak_mb" in memory.get(k, {})}
    ratios = {}
    if np_peaks:
        least = min(np_peaks, key=np_peaks.get)
        ratios["least_nonprivate_peak"] = least
        for k in ("jax_dpsgd", "jax_dpsgd_poisson_pad"):
            if "peak_mb" in memory.get(k, {}):
                ratios[f"{k}_peak_over_least_nonprivate"] = memory[k]["peak_mb"] / np_peaks[least]
    return {"batch_size": batch, "memory": memory, "ratios": ratios, "padding": jax_info}


def run_model(name: str, batch: int, repeats: int, inner: int, threads: int, opacus: bool,
              microbatch: int | None = None, skip: frozenset = frozenset(), ab=None) -> dict:
    steps, compiled, jax_info = _jax_steps(name, batch, microbatch, skip, ab)
    torch_info = {"available": False, "reason": "--no-opacus"}
    if opacus:
        t_steps, torch_info = _torch_steps(name, batch, threads, skip)
        steps.update(t_steps)
    times = _measure(steps, repeats, inner)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = {k: {"median_s": med[k], "min_s": min(v), "samples_per_s": batch / med[k], "all_s": v}
            for k, v in times.items()}
    best_np = min([k for k in NONPRIVATE if k in med], key=med.get)
    ratios = {"fastest_nonprivate": best_np}
    if "jax_dpsgd" in med:
        ratios["dp_over_fastest_nonprivate"] = med["jax_dpsgd"] / med[best_np]
        if "jax_nonprivate" in med:
            ratios["dp_over_plain_nonprivate"] = med["jax_dpsgd"] / med["jax_nonprivate"]
    for k in ("jax_dpsgd_poisson_pad", "jax_dpsgd_poisson_bucket"):
        if k in med:
            ratios[f"{k.removeprefix('jax_dpsgd_')}_over_fastest_nonprivate"] = med[k] / med[best_np]
    if "jax_dpsgd_ab" in med and "jax_dpsgd" in med:
        ratios["ab_dp_over_dp"] = med["jax_dpsgd_ab"] / med["jax_dpsgd"]  # > 1: today faster
        ratios["ab_dp_over_fastest_nonprivate"] = med["jax_dpsgd_ab"] / med[best_np]
    if "jax_dpsgd_vmap" in med:
        ratios["vmap_dp_over_fastest_nonprivate"] = med["jax_dpsgd_vmap"] / med[best_np]
    for peer in ("jax_privacy", "jax_privacy_fastpool"):
        if peer in med and "jax_dpsgd" in med:
            ratios[f"dp_throughput_over_{peer}"] = med[peer] / med["jax_dpsgd"]
    for label, modes in [("classic", CLASSIC_MODES), ("any", OPACUS_MODES)]:
        present = [f"opacus_{m}" for m in modes if f"opacus_{m}" in med]
        if present and "jax_dpsgd" in med:
            best = min(present, key=med.get)
            ratios[f"dp_throughput_over_opacus_best_{label}"] = med[best] / med["jax_dpsgd"]
            ratios[f"opacus_best_{label}"] = best
    if "torch_nonprivate" in med:
        ratios["jax_fastest_nonprivate_over_torch_nonprivate"] = med[best_np] / med["torch_nonprivate"]
    memory = {k: xla_memory(*c) for k, c in compiled.items()}
    if best_np in memory:
        for k in ("jax_dpsgd", "jax_dpsgd_poisson_pad"):
            if "peak_mb" in memory.get(k, {}):
                ratios[f"{k}_peak_over_fastest_nonprivate"] = (
                    memory[k]["peak_mb"] / memory[best_np]["peak_mb"])
    return {"batch_size": batch, "input_shape": list(_input_shape(name)), "steps": rows,
            "ratios": ratios, "memory": memory, "padding": jax_info, "torch": torch_info,
            "jax_privacy": _jax_privacy_info()}


def _jax_privacy_info() -> dict:
    try:
        import jax_privacy
    except ImportError as err:
        return {"available": False, "reason": str(err)}
    return {"available": True, "version": getattr(jax_privacy, "__version__", "unknown")}


def _print(name: str, result: dict) -> None:
    rows = result["steps"]
    print(f"\n{name} (batch {result['batch_size']}, input {result['input_shape']})", flush=True)
    print(f"  {'step':26s} {'median ms':>10s} {'min ms':>8s} {'samples/s':>10s} {'peak MB':>8s}")
    mem = result.get("memory", {})
    for k, r in rows.items():
        peak = mem.get(k, {}).get("peak_mb")
        print(f"  {k:26s} {1e3 * r['median_s']:10.1f} {1e3 * r['min_s']:8.1f} "
              f"{r['samples_per_s']:10.0f} {'' if peak is None else f'{peak:8.0f}'}")
    for k, v in result["ratios"].items():
        print(f"  {k:44s} {v:.2f}" if isinstance(v, float) else f"  {k:44s} {v}")
    for mode, why in result["torch"].get("failed_modes", {}).items():
        print(f"  opacus {mode} failed: {why[:120]}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="cnn,wide_cnn",
                        help=f"comma-separated, from {sorted(MODELS)}")
    parser.add_argument("--batches", "--batch", default="256", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--inner", type=int, default=2, help="steps per timed sample")
    parser.add_argument("--microbatch", type=int, default=None,
                        help="DP steps chunk batches larger than this (bounded memory)")
    parser.add_argument("--skip", default="", help="comma-separated step labels not to run")
    parser.add_argument("--memory-batches", default=None, help=argparse.SUPPRESS)  # unused:
    # every JAX step's memory now comes from XLA's analysis at every batch size
    parser.add_argument("--no-opacus", action="store_true", help="skip torch / Opacus")
    parser.add_argument("--memory-only", action="store_true",
                        help="compile the JAX steps and report XLA's memory, no timing")
    parser.add_argument("--ab", default=None, metavar="COMMIT",
                        help="also time the DP step with layer_grads.py as at COMMIT (A/B)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "dpsgd.json"))
    args = parser.parse_args(argv)
    # as the experiment drivers run (ECOS_JAX_MALLOC=system: glibc's default); torch in this
    # process allocates from the same heap, so the peers run under it too
    heap = "tuned" if allocator.configure() else "system"
    ab = None if args.ab is None else load_layer_grads(args.ab)
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    names = [m for m in args.models.split(",") if m]
    batches = [int(b) for b in args.batches.split(",") if b]
    skip = frozenset(k for k in args.skip.split(",") if k)
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; choose from {sorted(MODELS)}")
    if min(batches, default=0) < 1 or args.repeats < 1 or args.inner < 1:
        raise SystemExit("--batches, --repeats and --inner must be >= 1")
    report = {
        "machine": {"platform": platform.platform(), "processor": _cpu_name(), "cores": threads,
                    "jax_backend": jax.default_backend(), "jax": jax.__version__,
                    "xla_flags": os.environ.get("XLA_FLAGS", "")},
        "settings": {"repeats": args.repeats, "inner": args.inner, "dataset_size": DATASET_SIZE,
                     "l2_norm_clip": CLIP, "noise_multiplier": SIGMA, "optimizer": f"sgd({LR})",
                     "torch_threads": threads, "jax_threads": f"XLA CPU pool over {threads} cores",
                     "microbatch": args.microbatch, "skip": sorted(skip), "ab": args.ab,
                     "heap": heap,
                     "command": " ".join(["python benchmarks/dpsgd.py", *sys.argv[1:]])},
        "models": {},
    }
    report["machine"]["loadavg_start"] = _loadavg()
    start = time.time()
    out = Path(args.out)
    for name in names:
        for batch in batches:
            if args.memory_only:
                result = memory_only(name, batch, args.microbatch, skip)
                print(name, batch, json.dumps({k: round(v["peak_mb"], 1)
                                               for k, v in result["memory"].items()}),
                      json.dumps(result["ratios"]), flush=True)
                report["models"].setdefault(name, {})[str(batch)] = result
                report["wall_s"] = time.time() - start
                _write(out, report)
                continue
            result = run_model(name, batch, args.repeats, args.inner, threads,
                               not args.no_opacus, args.microbatch, skip, ab)
            result["loadavg"] = _loadavg()
            report["models"].setdefault(name, {})[str(batch)] = result
            _print(name, result)
            report["wall_s"] = time.time() - start
            report["machine"]["loadavg_end"] = _loadavg()
            _write(out, report)  # after every configuration: a long run keeps what it measured
    print(f"\nwrote {out} ({report['wall_s']:.0f} s)")


def _write(out: Path, report: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out)


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
