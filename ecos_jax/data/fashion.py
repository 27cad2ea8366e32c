"""Fashion-MNIST from local IDX files as two TFDS datasets: `fashion_mnist` and `fashion_mnist_c`.

Source: the original Fashion-MNIST files (Xiao et al. 2017; 60,000 train + 10,000 test
greyscale 28x28 images of 10 clothing classes), `{train,t10k}-{images-idx3,labels-idx1}-ubyte`
gzipped or plain. Nothing is downloaded: the folder holding them is
`$ECOS_JAX_FASHION_MNIST_DIR` if set, else `/usr/share/datasets/fashion-mnist`, where the
Debian package `dataset-fashion-mnist` installs them. `ensure_fashion_mnist()` returns that
folder; when the files are missing it installs the package with apt-get if running as root
and otherwise raises `FashionMnistMissing` giving the command.

Two builders write `array_record` files with `tfds.features.Tensor` images (built and read
without TensorFlow), once, into the TFDS cache directory; the IDX files are only read then.
  * `FashionMnistIdx` (`load("fashion_mnist")`): every image, splits "train" (60,000) and
    "test" (10,000, the official test set). Ids: train image i is i, test image j is
    `TEST_ID_OFFSET + j` (60,000 + j).
  * `FashionMnistC` (`load("fashion_mnist_c")`): a class-balanced subset of the TRAIN images
    (`C_PER_CLASS` = 1,200 per class, 12,000 in all), dealt class by class with a fixed
    permutation to six disjoint domains: fashion (clean), fashion_rotate, fashion_invert,
    fashion_noise, fashion_blur, fashion_texture, i.e. 2,000 images per domain, 200 per class
    per domain. The corruptions are `corruptions.CORRUPTIONS`, seeded by the image's id, as in
    digits_mnist_c. Ids are the train ids, so no fashion_mnist_c image is in the official test
    split: a model trained on it can be scored on `load("fashion_mnist", split="test")`.

>>> builder = FashionMnistIdx(data_dir="/tmp/tfds", file_format="array_record")  # doctest: +SKIP
>>> builder.download_and_prepare()  # doctest: +SKIP
"""

from __future__ import annotations

import os
import subprocess

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from ecos_jax.data import corruptions, idx
from ecos_jax.data.builders import mnist_partition

SOURCE_DIR_ENV = "ECOS_JAX_FASHION_MNIST_DIR"
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
APT_PACKAGE = "dataset-fashion-mnist"
INSTALL_COMMAND = f"sudo apt-get install -y {APT_PACKAGE}"
SPLITS: tuple[str, ...] = ("train", "test")
# split -> (images file, labels file), without the optional ".gz".
FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CLASS_NAMES: tuple[str, ...] = (
    "t-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SIZE = 28
TEST_ID_OFFSET = 60_000
CLEAN_DOMAIN = "fashion"
C_DOMAINS: tuple[str, ...] = (CLEAN_DOMAIN,) + tuple(f"fashion_{c}" for c in corruptions.CORRUPTIONS)
C_PER_CLASS = 1_200  # train images per class in fashion_mnist_c (200 per class per domain)
# Fixed seed of fashion_mnist_c's subset and dealing; changing it changes the dataset, so bump
# FashionMnistC.VERSION with it.
_C_SEED = 20240613


class FashionMnistMissing(FileNotFoundError):
    """The Fashion-MNIST IDX files are not where they are looked for."""


def _file_in(folder: str, name: str) -> str | None:
    for candidate in (name + ".gz", name):
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    return None


def missing_files(folder: str | os.PathLike) -> list[str]:
    """Names of the four IDX files not found (gzipped or plain) in `folder`."""
    folder = os.fspath(folder)
    return [n for pair in FILES.values() for n in pair if _file_in(folder, n) is None]


def source_dir() -> str:
    """The folder the IDX files are read from: `$ECOS_JAX_FASHION_MNIST_DIR`, else Debian's."""
    return os.environ.get(SOURCE_DIR_ENV) or DEBIAN_DIR


def _missing_error(folder: str, missing: list[str]) -> FashionMnistMissing:
    where = f"${SOURCE_DIR_ENV}={folder}" if os.environ.get(SOURCE_DIR_ENV) else folder
    if os.environ.get(SOURCE_DIR_ENV):
        fix = (
            f"put the files there, or unset {SOURCE_DIR_ENV} to use the Debian package "
            f"(`{INSTALL_COMMAND}`, files in {DEBIAN_DIR})"
        )
    else:
        fix = (
            f"install them with `{INSTALL_COMMAND}` (or `make data`), or set {SOURCE_DIR_ENV} "
            "to a folder holding them"
        )
    return FashionMnistMissing(
        f"Fashion-MNIST files not found in {where} (missing: {', '.join(missing)}); {fix}"
    )


def ensure_fashion_mnist() -> str:
    """The folder holding the four Fashion-MNIST IDX files, installing them if needed.

    Looks in `$ECOS_JAX_FASHION_MNIST_DIR` if set, else in /usr/share/datasets/fashion-mnist.
    When the files are missing from the Debian location and this process runs as root (euid
    0), runs `apt-get install -y dataset-fashion-mnist` (after `apt-get update` if the first
    try fails); otherwise raises `FashionMnistMissing` with the exact command.
    """
    folder = source_dir()
    missing = missing_files(folder)
    if not missing:
        return folder
    if os.environ.get(SOURCE_DIR_ENV) or os.geteuid() != 0:
        raise _missing_error(folder, missing)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", APT_PACKAGE]
    if subprocess.run(install, env=env, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, check=False)
        subprocess.run(install, env=env, check=False)
    missing = missing_files(folder)
    if missing:
        raise FashionMnistMissing(
            f"`{' '.join(install)}` did not install the Fashion-MNIST files into {folder} "
            f"(missing: {', '.join(missing)}); install the package by hand or set "
            f"{SOURCE_DIR_ENV} to a folder holding them"
        )
    return folder


def read_split(folder: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One split's images [N, 28, 28] uint8 and labels [N] int64 in [0, 10), checked.

    Raises `idx.IdxError` for a malformed file or one that is not Fashion-MNIST shaped.
    """
    if split not in FILES:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    folder = os.fspath(folder)
    missing = [n for n in FILES[split] if _file_in(folder, n) is None]
    if missing:
        raise _missing_error(folder, missing)
    images_file, labels_file = (_file_in(folder, n) for n in FILES[split])
    images = idx.read_idx(images_file, ndim=3, dtype=np.uint8)
    labels = idx.read_idx(labels_file, ndim=1, dtype=np.uint8)
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise idx.IdxError(f"{images_file}: images must be 28x28; got {images.shape[1:]}")
    if len(images) != len(labels):
        raise idx.IdxError(
            f"{images_file} holds {len(images)} images but {labels_file} {len(labels)} labels"
        )
    if len(labels) and labels.max() >= NUM_CLASSES:
        raise idx.IdxError(f"{labels_file}: labels must lie in [0, 10); max is {labels.max()}")
    if split == "train" and len(images) > TEST_ID_OFFSET:
        raise idx.IdxError(f"{images_file}: more than {TEST_ID_OFFSET} train images; ids would clash")
    return images, labels.astype(np.int64)


def c_assignment(labels: np.ndarray, per_class: int = C_PER_CLASS, seed: int = _C_SEED):
    """Which train images fashion_mnist_c takes and the domain each goes to.

    labels: [N] int. Takes `min(per_class, N_c)` images of each class c (a fixed permutation
    of the class), then deals them class by class to the `len(C_DOMAINS)` domains
    (`builders.mnist_partition`), so the domains are disjoint and class-balanced.
    Returns (chosen [M] int64 sorted indices into labels, domain [M] int64 in [0, 6)).
    """
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    chosen = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
    return chosen.astype(np.int64), mnist_partition(labels[chosen], len(C_DOMAINS), seed)


def generate_examples(folder: str, split: str):
    """`(key, example)` for every image of one split; example {"image": [28, 28, 1] uint8,
    "label": int, "id": int}."""
    images, labels = read_split(folder, split)
    offset = 0 if split == "train" else TEST_ID_OFFSET
    for i, (img, lab) in enumerate(zip(images, labels)):
        yield offset + i, {"image": img[..., None], "label": int(lab), "id": offset + i}


def generate_c_examples(folder: str):
    """`(key, example)` for every fashion_mnist_c image; deterministic. example: {"image":
    [28, 28, 1] uint8, "label": int, "domain": int, "id": int (the train id)}."""
    images, labels = read_split(folder, "train")
    chosen, domains = c_assignment(labels)
    for i, d in zip(chosen.tolist(), domains.tolist()):
        img = images[i]
        if d != 0:
            name = C_DOMAINS[d].removeprefix("fashion_")
            out = corruptions.CORRUPTIONS[name](img.astype(np.float32) / 255.0, seed=i)
            img = np.round(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)
        yield i, {"image": img[..., None], "label": int(labels[i]), "domain": d, "id": i}


class _LocalIdxBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A builder over the local IDX files in `source_dir` (default: `ensure_fashion_mnist()`)."""

    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, source_dir: str | os.PathLike | None = None, **kwargs):
        self._source_dir = None if source_dir is None else os.fspath(source_dir)
        super().__init__(**kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # As in builders.DigitsMnistC: TFDS's own lookup needs the importlib_resources backport.
        return epath.Path(__file__)

    def _folder(self) -> str:
        return self._source_dir if self._source_dir is not None else ensure_fashion_mnist()

    def _features(self, with_domain: bool) -> tfds.features.FeaturesDict:
        feats = {
            "image": tfds.features.Tensor(shape=(IMAGE_SIZE, IMAGE_SIZE, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(names=list(CLASS_NAMES)),
            "id": tfds.features.Scalar(dtype=np.int64),
        }
        if with_domain:
            feats["domain"] = tfds.features.ClassLabel(names=list(C_DOMAINS))
        return tfds.features.FeaturesDict(feats)


class FashionMnistIdx(_LocalIdxBuilder):
    """Fashion-MNIST, 60,000 train + 10,000 test images, from the local IDX files."""

    name = "fashion_mnist_idx"  # tfds's own catalogue already has `fashion_mnist`
    RELEASE_NOTES = {"1.0.0": "The original IDX files, official train/test splits."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=FashionMnistIdx.__doc__,
            features=self._features(with_domain=False),
            supervised_keys=("image", "label"),
            homepage="https://github.com/zalandoresearch/fashion-mnist",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # the files are local
        folder = self._folder()
        return {split: self._generate_examples(folder, split) for split in SPLITS}

    def _generate_examples(self, folder, split):
        yield from generate_examples(folder, split)


class FashionMnistC(_LocalIdxBuilder):
    """12,000 Fashion-MNIST train images dealt to six disjoint corruption domains."""

    name = "fashion_mnist_c"
    RELEASE_NOTES = {"1.0.0": "1,200 train images per class, six disjoint domains."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=FashionMnistC.__doc__,
            features=self._features(with_domain=True),
            supervised_keys=("image", "label"),
            homepage="https://github.com/zalandoresearch/fashion-mnist",
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples(self._folder())}

    def _generate_examples(self, folder):
        yield from generate_c_examples(folder)


BUILDERS: dict[str, type[_LocalIdxBuilder]] = {
    "fashion_mnist": FashionMnistIdx,
    "fashion_mnist_c": FashionMnistC,
}


def builder_for(
    name: str, data_dir: str, source_dir: str | os.PathLike | None = None
) -> _LocalIdxBuilder:
    """The array_record builder of `name` ("fashion_mnist" | "fashion_mnist_c") under
    `data_dir`, reading IDX files from `source_dir` (default `ensure_fashion_mnist()`)."""
    if name not in BUILDERS:
        raise ValueError(f"unknown Fashion-MNIST dataset {name!r}; one of {sorted(BUILDERS)}")
    return BUILDERS[name](data_dir=data_dir, source_dir=source_dir, file_format="array_record")
