"""Which per-example gradient path each backend gets: one function, and why.

    >>> per_example_paths()            # the backend JAX runs on now
    PerExamplePaths(backend='cpu', grad_method='layers', maxpool_rewrite=True, norms='flops', ...)
    >>> per_example_paths("gpu").maxpool_rewrite
    False

The library has three choices on the per-example path of DP-SGD (and of the gradient-norm
scores); this function states, per backend, which one runs:

  grad_method      "layers" (per-example norms and the clipped sum from each layer's inputs and
                   output gradients, one batched backward pass: `privacy.layer_grads`) or
                   "vmap" (`vmap(grad)`, any model). "layers" on every backend, "vmap" for
                   models the layer path cannot read (anything but Dense / 2-D Conv).
                   Measured on XLA:CPU (benchmarks/results/dpsgd_b256.json, B = 256, 2 cores
                   at load 8-27): vmap's DP step took 3.3x (cnn), 9.0x (cnn_stride), 2.8x
                   (wide_cnn) and 13x (linear) the layers step. On GPU/TPU: a reasoned default,
                   unmeasured: the layer path is a few large matrix products on the whole batch,
                   which accelerators run well, where vmap(grad) materialises B gradients.
  maxpool_rewrite  `privacy.pooling.fast_max_pool_grads` swaps the gradient of non-overlapping
                   max pooling (XLA's `select_and_scatter`) for element-wise selects: on CPU
                   only. Measured on XLA:CPU: `select_and_scatter` was ~80% of the small CNN's
                   backward pass at B = 256. On GPU/TPU: off (reasoned, unmeasured): their
                   pooling gradient is a native kernel, and the rewrite's selects would add
                   memory traffic for nothing.
  norms            per layer, the materialised per-example kernel [B, K, C] or the T x T Gram
                   matrices, whichever needs fewer multiply-adds for the norm and the clipped
                   sum together (materialise unless K·C > T²·(K + C)), the same rule on every
                   backend (`privacy.layer_grads`). On XLA:CPU it agrees with one measurement
                   (tramer_cnn's second conv at B = 2048: materialised 1.3x faster than Gram,
                   which the earlier norms-only count chose); not measured on GPU/TPU.

`pooling.fast_max_pool_grads` decides from `jax.default_backend()` when it is traced; the test
`tests/test_parallel_device_check.py` checks that what it does on each backend is what
`per_example_paths(backend).maxpool_rewrite` says, and `benchmarks/device_check.sh` records
this function's answer and the rewrite's actual state on the accelerator it runs on.
"""

from __future__ import annotations

import dataclasses

import jax

BACKENDS = ("cpu", "gpu", "tpu")


@dataclasses.dataclass(frozen=True)
class PerExamplePaths:
    """The per-example gradient path of one backend (see the module docstring).

    backend: "cpu", "gpu" or "tpu" (JAX's `default_backend()` name; ROCm reports "gpu").
    grad_method: the `DPSGDConfig.grad_method` to use for Dense/Conv models.
    maxpool_rewrite: whether `pooling.fast_max_pool_grads` rewrites max-pool gradients.
    norms: "flops": materialised kernels or Gram matrices by multiply-add count.
    measured: per choice, True where it rests on a measurement on this backend.
    """

    backend: str
    grad_method: str
    maxpool_rewrite: bool
    norms: str
    measured: dict


def per_example_paths(backend: str | None = None) -> PerExamplePaths:
    """The per-example path for `backend` (None: `jax.default_backend()`).

    Raises:
      ValueError: a backend other than cpu, gpu or tpu (nothing is known about it).
    """
    backend = jax.default_backend() if backend is None else backend
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")
    cpu = backend == "cpu"
    return PerExamplePaths(
        backend=backend, grad_method="layers", maxpool_rewrite=cpu, norms="flops",
        measured={"grad_method": cpu, "maxpool_rewrite": cpu, "norms": False})
