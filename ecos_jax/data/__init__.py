"""Offline multi-domain image data: TFDS builders, corruption domains, loaders and splits.

>>> from ecos_jax.data import load, ecos_split
>>> ds = load()  # "digits_mnist_c": 7 domains, prepared once into the cache dir  # doctest: +SKIP
>>> split = ecos_split(ds, "digits", n_client_train=300, n_client_test=500)  # doctest: +SKIP
>>> test = load("fashion_mnist", split="test")  # local IDX files (make data)  # doctest: +SKIP
"""

from ecos_jax.data.fashion import FashionMnistMissing, ensure_fashion_mnist
from ecos_jax.data.sources import (
    DATA_DIR_ENV,
    DEFAULT_DATASET,
    EMBEDDED_DATASETS,
    LOCAL_DATASETS,
    ArrayDataset,
    load,
    resolve_data_dir,
)
from ecos_jax.data.split import POOL_KINDS, EcosSplit, ecos_split, train_test_split

__all__ = [
    "DATA_DIR_ENV",
    "DEFAULT_DATASET",
    "EMBEDDED_DATASETS",
    "LOCAL_DATASETS",
    "POOL_KINDS",
    "ArrayDataset",
    "EcosSplit",
    "FashionMnistMissing",
    "ecos_split",
    "ensure_fashion_mnist",
    "load",
    "resolve_data_dir",
    "train_test_split",
]
