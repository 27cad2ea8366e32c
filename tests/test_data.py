"""Data layer: the embedded TFDS dataset, corruption domains, catalogue loading and splits."""

import json
import shutil
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath

from ecos_jax.data import (
    DEFAULT_DATASET,
    ArrayDataset,
    EcosSplit,
    builders,
    corruptions,
    ecos_split,
    load,
    train_test_split,
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def ds(data_dir):
    return load(DEFAULT_DATASET, data_dir=data_dir)


# --- the embedded dataset -------------------------------------------------------------------


def test_shapes_dtypes_ranges(ds):
    assert isinstance(ds, ArrayDataset)
    n = len(ds)
    assert n == 1797 + 5000
    assert ds.images.shape == (n, 28, 28, 1) and ds.images.dtype == np.float32
    assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0
    assert ds.labels.dtype == np.int32 and ds.domains.dtype == np.int32
    assert ds.ids.dtype == np.int64 and len(np.unique(ds.ids)) == n
    assert ds.num_classes == 10 and set(np.unique(ds.labels)) == set(range(10))
    assert len(ds.domain_names) >= 6
    counts = ds.domain_counts()
    assert counts["digits"] == 1797
    assert all(c > 800 for c in counts.values())
    # Every domain holds all ten classes in nearly equal numbers.
    for d in range(len(ds.domain_names)):
        per_class = np.bincount(ds.labels[ds.domains == d], minlength=10)
        assert per_class.min() > 0.9 * per_class.max()
    assert "tensorflow" not in sys.modules  # built and read without TensorFlow


def test_mnist_images_are_in_exactly_one_domain(ds):
    mnist = ds.ids >= builders.MNIST_ID_OFFSET
    assert np.array_equal(np.sort(ds.ids[mnist]), builders.MNIST_ID_OFFSET + np.arange(5000))
    assert set(np.unique(ds.domains[~mnist])) == {ds.domain_index("digits")}


def test_digits_sit_in_a_20px_box_like_mnist(ds):
    digits = ds.select_domains("digits").images[..., 0]
    # Nothing outside the centred 20x20 box (a bilinear edge may bleed one pixel).
    ring = np.ones((28, 28), bool)
    ring[3:25, 3:25] = False
    assert digits[:, ring].max() == 0.0
    assert digits[:, 4:24, 4:24].mean() > 0.1


@pytest.fixture
def no_rebuild(monkeypatch):
    def fail(self):
        raise AssertionError("the prepared dataset was generated again")

    monkeypatch.setattr(builders.DigitsMnistC, "_generate_examples", fail)


def test_cache_is_reused_not_rebuilt(data_dir, ds, no_rebuild):
    again = load(DEFAULT_DATASET, data_dir=data_dir)
    np.testing.assert_array_equal(again.images, ds.images)
    np.testing.assert_array_equal(again.ids, ds.ids)


def test_repeated_loads_are_independent_copies(data_dir, ds, no_rebuild):
    """`load` keeps the embedded dataset in memory per process; what it hands out is a copy,
    so writing into one load never reaches the next."""
    first = load(DEFAULT_DATASET, data_dir=data_dir)
    assert first.images is not ds.images and first.labels is not ds.labels
    first.images[:] = 0.0
    first.labels[:] = 0
    first.ids[:] = -1
    again = load(DEFAULT_DATASET, data_dir=data_dir)
    np.testing.assert_array_equal(again.images, ds.images)
    np.testing.assert_array_equal(again.labels, ds.labels)
    np.testing.assert_array_equal(again.ids, ds.ids)


def test_data_dir_from_environment(data_dir, ds, monkeypatch, no_rebuild):
    monkeypatch.setenv("ECOS_JAX_DATA_DIR", data_dir)
    assert len(load()) == len(ds)


def test_rebuild_elsewhere_is_identical(ds, tmp_path):
    other = load(DEFAULT_DATASET, data_dir=str(tmp_path))
    assert other.domain_names == ds.domain_names
    for field in ("images", "labels", "domains", "ids"):
        np.testing.assert_array_equal(getattr(other, field), getattr(ds, field))


def test_domains_are_really_shifted(ds):
    """Between any two domains, both the mean image and the pixel-intensity histogram differ
    by much more than between two random halves of one domain."""
    rng = np.random.default_rng(0)

    def signature(x):
        hist = np.stack([np.histogram(im, bins=10, range=(0, 1))[0] for im in x])
        return x.mean(0).ravel(), hist.mean(0) / x[0].size

    halves, within = {}, []
    for name in ds.domain_names:
        x = ds.select_domains(name).images
        perm = rng.permutation(len(x))
        a, b = signature(x[perm[::2]]), signature(x[perm[1::2]])
        halves[name] = (a, b)
        within.append([np.linalg.norm(a[0] - b[0]), np.abs(a[1] - b[1]).sum()])
    within = np.max(within, axis=0)
    for i, p in enumerate(ds.domain_names):
        for q in ds.domain_names[i + 1 :]:
            a, b = halves[p][0], halves[q][1]
            between = np.array([np.linalg.norm(a[0] - b[0]), np.abs(a[1] - b[1]).sum()])
            assert np.all(between > 2.0 * within), (p, q, between, within)


def test_other_image_size(tmp_path):
    small = load(DEFAULT_DATASET, data_dir=str(tmp_path), image_size=16)
    assert small.images.shape == (6797, 16, 16, 1)
    assert 0.0 <= small.images.min() and small.images.max() <= 1.0


# --- corruptions ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(corruptions.CORRUPTIONS))
def test_corruptions_are_deterministic_and_change_the_image(ds, name):
    img = ds.select_domains("mnist").images[100, ..., 0]
    f = corruptions.CORRUPTIONS[name]
    out = f(img, seed=7)
    assert out.shape == img.shape and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    np.testing.assert_array_equal(out, f(img, seed=7))
    assert np.abs(out - img).mean() > 0.02
    if name != "invert":  # the only seed-free corruption
        assert not np.array_equal(out, f(img, seed=8))


def test_corruption_rejects_batches():
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        corruptions.rotate(np.zeros((2, 28, 28), np.float32), seed=0)


# --- ArrayDataset ---------------------------------------------------------------------------


def test_subset_and_domain_selection(ds):
    sub = ds.select_domains(["mnist_blur", 0])
    assert sub.domain_names == ds.domain_names
    assert set(np.unique(sub.domains)) == {0, ds.domain_index("mnist_blur")}
    assert len(sub) == ds.domain_counts()["digits"] + ds.domain_counts()["mnist_blur"]
    first = ds.subset(np.arange(5))
    np.testing.assert_array_equal(first.ids, ds.ids[:5])
    assert len(ds.subset(ds.labels == 3)) == int(np.sum(ds.labels == 3))


def test_unknown_domain_lists_valid_names(ds):
    with pytest.raises(ValueError, match="unknown domain 'svhn'.*mnist_blur"):
        ds.domain_index("svhn")
    with pytest.raises(ValueError, match="unknown domain 99"):
        ds.select_domains(99)


def test_arraydataset_validates_shapes():
    with pytest.raises(ValueError, match="labels must have shape"):
        ArrayDataset(
            images=np.zeros((3, 4, 4, 1), np.float32),
            labels=np.zeros(2, np.int32),
            domains=np.zeros(3, np.int32),
            domain_names=("a",),
            num_classes=2,
            ids=np.arange(3),
        )


# --- ECOS split -----------------------------------------------------------------------------


def _ids(d):
    return set(d.ids.tolist())


@pytest.mark.parametrize("pool", ["id+ood", "ood", "id"])
def test_ecos_split_is_disjoint_and_composed_as_asked(ds, pool):
    s = ecos_split(ds, "mnist_blur", n_client_train=100, n_client_test=200, pool=pool, seed=3)
    assert isinstance(s, EcosSplit) and s.client_domain == "mnist_blur"
    blur = ds.domain_index("mnist_blur")
    n_blur = ds.domain_counts()["mnist_blur"]
    assert len(s.client_train) == 100 and len(s.client_test) == 200
    for part in (s.client_train, s.client_test, s.oracle_pool):
        assert np.all(part.domains == blur)
    train, test, pool_ids = _ids(s.client_train), _ids(s.client_test), _ids(s.pool)
    assert not (train & test) and not (train & pool_ids) and not (test & pool_ids)
    assert len(s.oracle_pool) == n_blur - 300
    assert not (_ids(s.oracle_pool) & (train | test))

    in_pool = s.pool.domain_counts()
    if pool == "id+ood":
        assert len(s.pool) == len(ds) - 300
        assert in_pool["mnist_blur"] == n_blur - 300
        assert _ids(s.oracle_pool) <= pool_ids
    elif pool == "ood":
        assert in_pool["mnist_blur"] == 0 and len(s.pool) == len(ds) - n_blur
    else:
        assert set(np.unique(s.pool.domains)) == {blur}
        assert pool_ids == _ids(s.oracle_pool)
    # Every example of the dataset is accounted for exactly once (id+ood) or by the parts.
    everything = train | test | pool_ids | _ids(s.oracle_pool)
    assert len(everything) == (len(ds) if pool != "id" else n_blur)


def test_ecos_split_seeds(ds):
    a = ecos_split(ds, "digits", n_client_train=50, n_client_test=50, seed=0)
    b = ecos_split(ds, "digits", n_client_train=50, n_client_test=50, seed=0)
    c = ecos_split(ds, "digits", n_client_train=50, n_client_test=50, seed=1)
    np.testing.assert_array_equal(a.client_train.ids, b.client_train.ids)
    assert not np.array_equal(a.client_train.ids, c.client_train.ids)


def test_ecos_split_errors(ds):
    with pytest.raises(ValueError, match="empty client"):
        ecos_split(ds, "digits", n_client_train=0, n_client_test=10)
    with pytest.raises(ValueError, match="n_client_test"):
        ecos_split(ds, "digits", n_client_train=10, n_client_test=0)
    with pytest.raises(ValueError, match="has 1797 examples"):
        ecos_split(ds, "digits", n_client_train=1000, n_client_test=800)
    with pytest.raises(ValueError, match="unknown domain 'usps'"):
        ecos_split(ds, "usps", n_client_train=10, n_client_test=10)
    with pytest.raises(ValueError, match="pool must be one of"):
        ecos_split(ds, "digits", n_client_train=10, n_client_test=10, pool="all")
    with pytest.raises(ValueError, match="pool='id' is empty"):
        ecos_split(ds, "digits", n_client_train=1000, n_client_test=797, pool="id")
    with pytest.raises(ValueError, match="no other domain"):
        ecos_split(
            ds.select_domains("digits").subset(np.arange(20)),
            "digits",
            n_client_train=5,
            n_client_test=5,
            pool="ood",
        )


def test_train_test_split_is_stratified_and_disjoint(ds):
    train, test = train_test_split(ds, test_fraction=0.25, seed=0)
    assert not (_ids(train) & _ids(test))
    assert len(train) + len(test) == len(ds)
    assert abs(len(test) - 0.25 * len(ds)) < 0.01 * len(ds)
    for d in range(len(ds.domain_names)):
        for c in range(10):
            n = np.sum((ds.domains == d) & (ds.labels == c))
            n_test = np.sum((test.domains == d) & (test.labels == c))
            assert n_test == round(0.25 * n)
    with pytest.raises(ValueError, match="test_fraction"):
        train_test_split(ds, test_fraction=1.0)


# --- catalogue names ------------------------------------------------------------------------


class EcosTestCatalogue(tfds.core.GeneratorBasedBuilder):
    """A tiny registered builder standing in for a locally prepared catalogue dataset."""

    VERSION = tfds.core.Version("1.0.0")

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        return epath.Path(__file__)

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description="test catalogue dataset",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(16, 16, 3), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=4),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(30, 0), "test": self._generate_examples(10, 1)}

    def _generate_examples(self, n, seed):
        rng = np.random.default_rng(seed)
        for i in range(n):
            yield i, {"image": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), "label": i % 4}


@pytest.fixture(scope="module")
def catalogue_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("catalogue")
    builder = EcosTestCatalogue(data_dir=str(root), file_format="array_record")
    builder.download_and_prepare()
    return str(root)


def test_catalogue_name_loads_through_tfds(catalogue_dir):
    cat = load("ecos_test_catalogue", data_dir=catalogue_dir, image_size=12)
    assert cat.domain_names == ("ecos_test_catalogue",)
    assert cat.images.shape == (40, 12, 12, 3) and cat.images.dtype == np.float32
    assert 0.0 <= cat.images.min() and cat.images.max() <= 1.0
    assert cat.num_classes == 4 and np.all(cat.domains == 0)
    assert len(np.unique(cat.ids)) == 40
    np.testing.assert_array_equal(np.bincount(cat.labels), [11, 11, 9, 9])  # i % 4 over 30 + 10
    native = load("ecos_test_catalogue", data_dir=catalogue_dir, image_size=16)
    raw = EcosTestCatalogue(data_dir=catalogue_dir).as_data_source(split="test")[0]["image"]
    np.testing.assert_allclose(native.images[0], raw / 255.0, atol=1e-6)  # 'test' sorts first


def test_catalogue_list_makes_one_domain_per_name(catalogue_dir):
    # Two names for the same prepared data: each comma-separated entry becomes a domain.
    cat = load("ecos_test_catalogue, ecos_test_catalogue:1.0.0", data_dir=catalogue_dir)
    assert cat.domain_names == ("ecos_test_catalogue", "ecos_test_catalogue:1.0.0")
    assert np.bincount(cat.domains).tolist() == [40, 40]
    assert len(np.unique(cat.ids)) == 80


def test_catalogue_not_in_array_record_is_refused(catalogue_dir, tmp_path):
    shutil.copytree(catalogue_dir, tmp_path / "copy")
    (info_path,) = (tmp_path / "copy").glob("ecos_test_catalogue/1.0.0/dataset_info.json")
    info = json.loads(info_path.read_text())
    info["fileFormat"] = "tfrecord"
    info_path.write_text(json.dumps(info))
    with pytest.raises(ValueError, match="stored as 'tfrecord'.*array_record"):
        load("ecos_test_catalogue", data_dir=str(tmp_path / "copy"))


def test_unknown_dataset_name(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'no_such_data'.*digits_mnist_c"):
        load("no_such_data", data_dir=str(tmp_path))


def test_catalogue_dataset_not_prepared_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="'mnist' is not prepared.*nothing is downloaded"):
        load("mnist", data_dir=str(tmp_path))
    assert not any(tmp_path.rglob("*.array_record*"))


def test_bad_load_arguments(tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        load(DEFAULT_DATASET, data_dir=str(tmp_path), image_size=4)
    with pytest.raises(ValueError, match="empty dataset name"):
        load("mnist,", data_dir=str(tmp_path))
