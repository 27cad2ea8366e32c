"""Task-agnostic prior models ψ_p: a registry of specs, trained once and cached.

What a prior is for: docs/algorithms.md#priors.

A prior never sees the labels of the CoOpt pool. Each `PriorSpec` says how it is made:
  * "supervised": cross-entropy on labelled images of `domains`, which must be disjoint
    from the pool's domains (checked by `load_prior(..., pool_domains=...)`); `classes`
    can restrict it to some classes, so it is not even trained on the full label set;
  * "simclr": self-supervised (SimCLR) on the images of `domains`, no labels at all;
  * "random": the architecture at its random initialisation (a deliberately weak prior).
`epochs` sets strength: the "_1ep" priors are deliberately under-trained.

Every default prior embeds into 64 dimensions, so "CoOpt without alignment" (which needs
one target dimension) can run on them; alignment itself handles any dimensions.

Trained parameters are cached as .npz under `cache_dir`, keyed by a hash of the spec and
of the training data (example ids and image shape), so a changed spec or dataset retrains.

    >>> prior = load_prior("mlp_digits", ds, cache_dir="/tmp/priors", pool_domains={"mnist"})
    >>> prior.embed_dim
    64
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

import flax.linen as nn
import flax.serialization
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from ecos_jax.coopt.networks import HeadNet, backbone_params
from ecos_jax.coopt.ssl import Augment, simclr_objective
from ecos_jax.coopt.training import train_epochs
from ecos_jax.data import ArrayDataset
from ecos_jax.models import get_model
from ecos_jax.training import fit, make_optimizer
from ecos_jax.training.loop import Hook
from ecos_jax.utils.io import save_npz

log = logging.getLogger(__name__)

TRAININGS = ("supervised", "simclr", "random")
_CACHE_VERSION = 1  # bump when the way priors are trained changes


@dataclasses.dataclass(frozen=True)
class PriorSpec:
    """How one prior is built (hashable; its JSON form is the cache key).

    name: registry name. model / model_kwargs: `ecos_jax.models.get_model(model, 10, **kw)`.
    training: "supervised" | "simclr" | "random". domains: the domains it trains on.
    classes: supervised only: train on these classes only (None = all).
    epochs, batch_size, learning_rate, seed: its training run.
    """

    name: str
    model: str
    model_kwargs: tuple[tuple[str, Any], ...] = ()
    training: str = "supervised"
    domains: tuple[str, ...] = ("digits",)
    classes: tuple[int, ...] | None = None
    epochs: int = 8
    batch_size: int = 128
    learning_rate: float = 1e-3
    seed: int = 0

    def __post_init__(self):
        if self.training not in TRAININGS:
            raise ValueError(f"prior {self.name!r}: training must be one of {TRAININGS}, got {self.training!r}.")
        if self.training != "random" and (self.epochs < 1 or not self.domains):
            raise ValueError(f"prior {self.name!r}: a trained prior needs epochs >= 1 and some domains.")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def build(self, num_classes: int) -> nn.Module:
        return get_model(self.model, num_classes, **dict(self.model_kwargs))


def _spec(name, model, kw=(), **rest) -> PriorSpec:
    return PriorSpec(name=name, model=model, model_kwargs=tuple(kw), **rest)


_CNN64 = (("embed_dim", 64),)
_CNN_SMALL = (("channels", (8, 16)), ("embed_dim", 64))
_WIDE64 = (("embed_dim", 64),)  # wide_cnn keeps its (32, 64) channels; the embedding is 64-d
_MLP = (("hidden", (256, 64)),)
_MLP_WIDE = (("hidden", (512, 64)),)
_MLP_DEEP = (("hidden", (256, 128, 64)),)
_RESNET64 = (("stage_channels", (16, 32, 64)),)
_HELD_OUT = ("digits", "mnist_texture")  # the default pool never contains these domains
_BROAD = ("digits", "mnist_texture", "mnist_noise", "mnist_blur")  # held out by configs/coopt.py:broad
# Every digits_mnist_c domain: for a pool of other data (configs/coopt.py:fashion, Fashion-MNIST).
ALL_DIGITS = ("digits", "mnist", "mnist_rotate", "mnist_invert", "mnist_noise", "mnist_blur", "mnist_texture")

# Convolutions are ~100x slower than dense layers on a small CPU, so the default experiment
# uses the MLP priors and the small CNN; the larger convolutional ones are for accelerators.
REGISTRY: dict[str, PriorSpec] = {s.name: s for s in [
    # Strong, supervised on domains held out of the pool; different widths and depths.
    _spec("mlp_digits", "mlp", _MLP, domains=("digits",), epochs=30),
    _spec("mlp_wide_texture", "mlp", _MLP_WIDE, domains=("mnist_texture",), epochs=30),
    _spec("mlp_deep_heldout", "mlp", _MLP_DEEP, domains=_HELD_OUT, epochs=20),
    _spec("cnn_small_digits", "cnn", _CNN_SMALL, domains=("digits",), epochs=3),
    _spec("cnn_digits", "cnn", _CNN64, domains=("digits",), epochs=10),
    _spec("wide_cnn_texture", "wide_cnn", _WIDE64, domains=("mnist_texture",), epochs=12),
    _spec("resnet_heldout", "resnet", _RESNET64, domains=_HELD_OUT, epochs=4),
    # More (and more related) prior data, for pools without noise / blur.
    _spec("mlp_broad", "mlp", _MLP, domains=_BROAD, epochs=30),
    _spec("mlp_wide_noise_blur", "mlp", _MLP_WIDE, domains=("mnist_noise", "mnist_blur"), epochs=30),
    _spec("mlp_deep_broad", "mlp", _MLP_DEEP, domains=_BROAD, epochs=20),
    _spec("cnn_small_broad", "cnn", _CNN_SMALL, domains=_BROAD, epochs=2),
    # Digits priors for a pool of OTHER data (Fashion-MNIST): every digits domain, with labels.
    _spec("mlp_alldigits", "mlp", _MLP, domains=ALL_DIGITS, epochs=15),
    _spec("mlp_wide_alldigits", "mlp", _MLP_WIDE, domains=ALL_DIGITS, epochs=15),
    _spec("cnn_small_alldigits", "cnn", _CNN_SMALL, domains=ALL_DIGITS, epochs=3),
    _spec("mlp_deep_alldigits_1ep", "mlp", _MLP_DEEP, domains=ALL_DIGITS, epochs=1, learning_rate=3e-4),
    # Task-agnostic: trained on half of the classes only.
    _spec("mlp_half_classes", "mlp", _MLP, domains=_HELD_OUT, classes=(0, 1, 2, 3, 4), epochs=30),
    # Self-supervised, no labels anywhere.
    _spec("mlp_simclr", "mlp", _MLP, training="simclr", domains=_HELD_OUT, epochs=30, batch_size=256),
    # Deliberately weak: one epoch at a small learning rate.
    _spec("mlp_digits_1ep", "mlp", _MLP, domains=("digits",), epochs=1, learning_rate=3e-4),
    _spec("mlp_wide_texture_1ep", "mlp", _MLP_WIDE, domains=("mnist_texture",), epochs=1, learning_rate=3e-4),
    _spec("mlp_deep_heldout_1ep", "mlp", _MLP_DEEP, domains=_HELD_OUT, epochs=1, learning_rate=3e-4),
    _spec("cnn_small_digits_1ep", "cnn", _CNN_SMALL, domains=("digits",), epochs=1, learning_rate=3e-4),
    # Random initialisation, different seeds.
    _spec("mlp_random", "mlp", _MLP, training="random", domains=(), seed=1),
    _spec("mlp_wide_random", "mlp", _MLP_WIDE, training="random", domains=(), seed=2),
    _spec("mlp_deep_random", "mlp", _MLP_DEEP, training="random", domains=(), seed=3),
    _spec("cnn_small_random", "cnn", _CNN_SMALL, training="random", domains=(), seed=4),
]}


def get_spec(name: str | PriorSpec) -> PriorSpec:
    """A registered spec by name (a `PriorSpec` passes through)."""
    if isinstance(name, PriorSpec):
        return name
    if name not in REGISTRY:
        raise ValueError(f"unknown prior {name!r}; registered priors: {sorted(REGISTRY)}.")
    return REGISTRY[name]


@dataclasses.dataclass(frozen=True, eq=False)
class Prior:
    """A ready prior: `model.apply(params, x, features=True)` embeds `[B, H, W, C] -> [B, embed_dim]`.

    fingerprint: hash of spec + training data (the cache key; also keys the targets cache).
    """

    spec: PriorSpec
    model: nn.Module
    params: Any
    embed_dim: int
    fingerprint: str
    from_cache: bool


def _training_data(spec: PriorSpec, data: ArrayDataset) -> ArrayDataset:
    if spec.training == "random":
        return data.subset(np.zeros(0, np.int64))
    sub = data.select_domains(list(spec.domains))
    if spec.classes is not None:
        sub = sub.subset(np.isin(sub.labels, spec.classes))
    if len(sub) == 0:
        raise ValueError(f"prior {spec.name!r} has no training data in domains {spec.domains}.")
    return sub


def _fingerprint(spec: PriorSpec, train: ArrayDataset, image_shape: tuple[int, ...]) -> str:
    h = hashlib.sha256()
    h.update(f"v{_CACHE_VERSION}|{spec.to_json()}|{image_shape}".encode())
    h.update(np.ascontiguousarray(np.sort(train.ids)).tobytes())
    return h.hexdigest()[:16]


def _train(spec: PriorSpec, model: nn.Module, train: ArrayDataset, template, hooks: Sequence[Hook]):
    if spec.training == "supervised":
        return fit(model, train.images, train.labels, optimizer=make_optimizer("adam", float(spec.learning_rate)),
                   epochs=spec.epochs, batch_size=spec.batch_size, seed=spec.seed, hooks=hooks,
                   desc=f"prior {spec.name}").params
    # simclr: a projector on top of the prior's backbone; the prior keeps the backbone only.
    net = HeadNet(backbone=model, out_dim=64, hidden=128)
    params = net.init(jax.random.key(spec.seed), jnp.zeros((1, *train.image_shape), jnp.float32))
    run = train_epochs(simclr_objective(net, temperature=0.2, augment=Augment()), params, train.images,
                       None, optimizer=make_optimizer("adam", float(spec.learning_rate)), epochs=spec.epochs,
                       batch_size=spec.batch_size, seed=spec.seed, hooks=hooks, desc=f"prior {spec.name}")
    # The backbone inside HeadNet never built its classifier layer; keep the template's
    # (unused by `features=True`) one so the params fit `model` as a whole.
    return {"params": {**template["params"], **backbone_params(run.params)["params"]}}


def _write_params(path: str, params) -> None:
    flat = flax.traverse_util.flatten_dict(flax.serialization.to_state_dict(params), sep="/")
    save_npz(path, **{k: np.asarray(v) for k, v in flat.items()})


def _read_params(path: str, template):
    with np.load(path) as f:
        flat = {k: f[k] for k in f.files}
    expected = flax.traverse_util.flatten_dict(flax.serialization.to_state_dict(template), sep="/")
    if set(flat) != set(expected) or any(flat[k].shape != expected[k].shape for k in expected):
        raise ValueError(f"cached prior {path} does not match its architecture; delete the file.")
    return flax.serialization.from_state_dict(template, flax.traverse_util.unflatten_dict(flat, sep="/"))


def load_prior(
    name: str | PriorSpec,
    data: ArrayDataset,
    *,
    cache_dir: str | os.PathLike,
    pool_domains: Iterable[str] = (),
    hooks: Sequence[Hook] = (),
) -> Prior:
    """Loads a prior from the cache, or trains it on `data` (its `domains`) and caches it.

    Args:
      name: a `REGISTRY` name or a `PriorSpec`.
      data: the dataset the prior's training domains are taken from (labels used only by
        "supervised" priors, and only on their own domains).
      cache_dir: directory of the parameter cache.
      pool_domains: the CoOpt pool's domains; a supervised prior trained on one of them
        would have seen the pool's labels, which raises.
      hooks: the training loop's hooks when the prior is trained (e.g. a progress bar).
    """
    spec = get_spec(name)
    leak = set(spec.domains) & set(pool_domains)
    if spec.training == "supervised" and leak:
        raise ValueError(f"prior {spec.name!r} is trained with labels on {sorted(leak)}, which are "
                         "pool domains: a prior must never see the pool's labels.")
    for d in spec.domains:
        data.domain_index(d)  # unknown domain names raise here, listing the valid ones
    model = spec.build(data.num_classes)
    # One compiled init instead of op-by-op dispatch (slow on a busy CPU).
    template = jax.jit(model.init)(jax.random.key(spec.seed), jnp.zeros((1, *data.image_shape), jnp.float32))
    train = _training_data(spec, data)
    fp = _fingerprint(spec, train, data.image_shape)
    path = os.path.join(os.fspath(cache_dir), f"{spec.name}-{fp}.npz")
    from_cache = os.path.exists(path)
    if from_cache:
        params = _read_params(path, template)
    elif spec.training == "random":
        params = template
    else:
        start = time.perf_counter()
        params = _train(spec, model, train, template, hooks)
        log.info("trained prior %s on %d images in %.1fs", spec.name, len(train), time.perf_counter() - start)
    if not from_cache:
        _write_params(path, params)
    embed_dim = int(jax.eval_shape(
        lambda p: model.apply(p, jnp.zeros((1, *data.image_shape)), features=True), params).shape[-1])
    return Prior(spec=spec, model=model, params=params, embed_dim=embed_dim, fingerprint=fp, from_cache=from_cache)
