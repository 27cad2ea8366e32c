"""Fashion-MNIST from IDX files: the reader, both TFDS builders through `load`, the install path.

The builders run on a tiny IDX folder written here (60 train + 20 test images), so the default
suite needs no dataset package; one slow test reads the real files when they are installed.
"""

import gzip
import os
import shutil

import numpy as np
import pytest

from ecos_jax.data import corruptions, fashion, idx, load

N_TRAIN, N_TEST = 60, 20  # 6 train and 2 test images per class


def _tiny_split(n, seed):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    return images, labels


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A folder of Fashion-MNIST-shaped IDX files (train gzipped, test plain) and its arrays."""
    folder = tmp_path_factory.mktemp("fashion_idx")
    arrays = {"train": _tiny_split(N_TRAIN, 1), "test": _tiny_split(N_TEST, 2)}
    for split, (images_name, labels_name) in fashion.FILES.items():
        ext = ".gz" if split == "train" else ""
        idx.write_idx(folder / (images_name + ext), arrays[split][0])
        idx.write_idx(folder / (labels_name + ext), arrays[split][1])
    return str(folder), arrays


@pytest.fixture(scope="module")
def loaded(tiny, tmp_path_factory):
    """load() of both datasets over the tiny folder, each built twice into separate caches."""
    folder, _ = tiny
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(fashion.SOURCE_DIR_ENV, folder)
        for name in ("fashion_mnist", "fashion_mnist_c"):
            first = str(tmp_path_factory.mktemp("tfds"))
            out[name] = load(name, data_dir=first)
            out[name, "rebuilt"] = load(name, data_dir=str(tmp_path_factory.mktemp("tfds")))
            out[name, "cached"] = load(name, data_dir=first)
        out["train"] = load("fashion_mnist", data_dir=first, split="train")
        out["test"] = load("fashion_mnist", data_dir=first, split="test")
        out["size32"] = load("fashion_mnist", data_dir=first, split="test", image_size=32)
    return out


# --- the IDX reader ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, dtype, suffix):
    a = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype)
    path = tmp_path / f"a-idx3{suffix}"
    idx.write_idx(path, a)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")
    out = idx.read_idx(path, ndim=3, dtype=dtype)
    assert out.dtype == np.dtype(dtype) and np.array_equal(out, a)
    assert not out.flags.writeable


def test_idx_header_is_the_mnist_layout(tmp_path):
    path = tmp_path / "labels-idx1-ubyte"
    idx.write_idx(path, np.array([3, 1, 4], np.uint8))
    assert path.read_bytes() == bytes([0, 0, 8, 1, 0, 0, 0, 3, 3, 1, 4])


def _raw(rank=3, n=2):
    a = np.arange(n * 4 * 4, dtype=np.uint8).reshape((n, 4, 4)[:rank] if rank <= 3 else (n,))
    return bytes([0, 0, 8, a.ndim]) + np.asarray(a.shape, ">u4").tobytes() + a.tobytes()


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"\x08\x03" + _raw()[2:], "not an IDX file"),
        (_raw()[:2] + b"\x42" + _raw()[3:], "unknown IDX dtype code 0x42"),
        (_raw()[:-1], r"truncated: the header says shape \(2, 4, 4\)"),
        (_raw() + b"\x00", "trailing bytes"),
        (_raw()[:9], "truncated header"),
        (b"\x00\x00", "too short"),
    ],
)
@pytest.mark.parametrize("compress", [False, True])
def test_bad_idx_files_raise_clear_errors(tmp_path, payload, message, compress):
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(gzip.compress(payload) if compress else payload)
    with pytest.raises(idx.IdxError, match=message) as err:
        idx.read_idx(path)
    assert str(path) in str(err.value)


def test_truncated_gzip_and_wrong_rank_or_dtype(tmp_path):
    path = tmp_path / "images-idx3-ubyte.gz"
    idx.write_idx(path, np.zeros((50, 28, 28), np.uint8))
    good = path.read_bytes()
    with pytest.raises(idx.IdxError, match="expected a 1-d array"):
        idx.read_idx(path, ndim=1)
    with pytest.raises(idx.IdxError, match="expected int32 values"):
        idx.read_idx(path, dtype=np.int32)
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(idx.IdxError, match="corrupt or truncated gzip"):
        idx.read_idx(path)


def test_read_split_rejects_files_that_are_not_fashion_mnist(tiny, tmp_path):
    folder, arrays = tiny
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        shutil.copy(os.path.join(folder, name), tmp_path / name)
    idx.write_idx(tmp_path / "t10k-labels-idx1-ubyte", arrays["test"][1][:-1])
    with pytest.raises(idx.IdxError, match="20 images but .* 19 labels"):
        fashion.read_split(tmp_path, "test")
    idx.write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.full(20, 10, np.uint8))
    with pytest.raises(idx.IdxError, match=r"labels must lie in \[0, 10\)"):
        fashion.read_split(tmp_path, "test")
    idx.write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((20, 32, 32), np.uint8))
    with pytest.raises(idx.IdxError, match="must be 28x28"):
        fashion.read_split(tmp_path, "test")


# --- fashion_mnist through load() ------------------------------------------------------------


def test_fashion_mnist_values_labels_ids_and_splits(tiny, loaded):
    _, arrays = tiny
    ds = loaded["fashion_mnist"]
    assert len(ds) == N_TRAIN + N_TEST and ds.num_classes == 10
    assert ds.images.shape == (N_TRAIN + N_TEST, 28, 28, 1) and ds.images.dtype == np.float32
    assert ds.domain_names == ("train", "test")
    assert ds.domain_counts() == {"train": N_TRAIN, "test": N_TEST}
    expected_ids = np.concatenate([np.arange(N_TRAIN), fashion.TEST_ID_OFFSET + np.arange(N_TEST)])
    assert np.array_equal(ds.ids, expected_ids)
    for split, (images, labels) in arrays.items():
        part = ds.select_domains(split)
        assert np.array_equal(part.images[..., 0], images.astype(np.float32) / 255.0)
        assert np.array_equal(part.labels, labels)
        alone = loaded[split]
        assert np.array_equal(alone.ids, part.ids) and np.array_equal(alone.images, part.images)
        assert alone.domain_counts()[split] == len(alone)


def test_fashion_mnist_reload_is_identical_and_resizes(loaded):
    for again in ("cached", "rebuilt"):
        other = loaded["fashion_mnist", again]
        assert np.array_equal(other.images, loaded["fashion_mnist"].images)
        assert np.array_equal(other.ids, loaded["fashion_mnist"].ids)
    big = loaded["size32"]
    assert big.images.shape == (N_TEST, 32, 32, 1) and big.images.dtype == np.float32
    assert 0.0 <= big.images.min() and big.images.max() <= 1.0
    one = corruptions.resize(loaded["test"].images[3, :, :, 0], 32)
    np.testing.assert_allclose(big.images[3, :, :, 0], np.clip(one, 0, 1), atol=1e-6)


def test_split_argument_is_checked(loaded, tmp_path):
    with pytest.raises(ValueError, match="has splits"):
        load("fashion_mnist", data_dir=str(tmp_path), split="validation")
    with pytest.raises(ValueError, match="has splits"):
        load("fashion_mnist_c", data_dir=str(tmp_path), split="test")
    with pytest.raises(ValueError, match="no official splits"):
        load("digits_mnist_c", data_dir=str(tmp_path), split="train")
    with pytest.raises(ValueError, match="cannot be mixed"):
        load("fashion_mnist,mnist", data_dir=str(tmp_path))


# --- fashion_mnist_c -------------------------------------------------------------------------


def test_fashion_mnist_c_domains_are_disjoint_balanced_and_the_corruptions(tiny, loaded):
    _, arrays = tiny
    train_images, train_labels = arrays["train"]
    ds = loaded["fashion_mnist_c"]
    assert ds.domain_names == fashion.C_DOMAINS and len(fashion.C_DOMAINS) == 6
    # Every tiny train image is taken (6 per class < C_PER_CLASS), each in exactly one domain.
    assert np.array_equal(ds.ids, np.arange(N_TRAIN))
    assert ds.domain_counts() == {d: N_TRAIN // 6 for d in fashion.C_DOMAINS}
    per = np.zeros((6, 10), int)
    np.add.at(per, (ds.domains, ds.labels), 1)
    assert np.all(per == 1)  # class-balanced: one image of each class per domain
    assert np.array_equal(ds.labels, train_labels)
    for i, (d, img) in enumerate(zip(ds.domains, ds.images[..., 0])):
        raw = train_images[i].astype(np.float32) / 255.0
        name = fashion.C_DOMAINS[d]
        if name == fashion.CLEAN_DOMAIN:
            expected = raw
        else:
            out = corruptions.CORRUPTIONS[name.removeprefix("fashion_")](raw, seed=i)
            expected = np.round(np.clip(out, 0, 1) * 255.0) / 255.0
        np.testing.assert_allclose(img, expected, atol=1e-7, err_msg=f"image {i}, {name}")
        if name != fashion.CLEAN_DOMAIN:
            assert not np.allclose(img, raw)


def test_fashion_mnist_c_is_deterministic(loaded):
    for again in ("cached", "rebuilt"):
        other = loaded["fashion_mnist_c", again]
        assert np.array_equal(other.images, loaded["fashion_mnist_c"].images)
        assert np.array_equal(other.domains, loaded["fashion_mnist_c"].domains)


def test_c_assignment_takes_per_class_and_deals_disjointly():
    labels = np.repeat(np.arange(10), 100)
    chosen, domains = fashion.c_assignment(labels, per_class=60, seed=3)
    assert len(chosen) == 600 and len(np.unique(chosen)) == 600
    counts = np.zeros((6, 10), int)
    np.add.at(counts, (domains, labels[chosen]), 1)
    assert np.all(counts == 10)
    again, domains2 = fashion.c_assignment(labels, per_class=60, seed=3)
    assert np.array_equal(again, chosen) and np.array_equal(domains, domains2)
    other, _ = fashion.c_assignment(labels, per_class=60, seed=4)
    assert not np.array_equal(other, chosen)


# --- finding and installing the files --------------------------------------------------------


@pytest.fixture
def no_files(tmp_path, monkeypatch):
    """No $ECOS_JAX_FASHION_MNIST_DIR, an empty Debian location, and apt-get recorded, not run."""
    debian = tmp_path / "debian" / "fashion-mnist"
    debian.mkdir(parents=True)
    monkeypatch.delenv(fashion.SOURCE_DIR_ENV, raising=False)
    monkeypatch.setattr(fashion, "DEBIAN_DIR", str(debian))
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(list(cmd))
        return type("Done", (), {"returncode": 100})()

    monkeypatch.setattr(fashion.subprocess, "run", fake_run)
    return debian, calls


def test_missing_files_not_root_gives_the_command(no_files, monkeypatch, tmp_path):
    debian, calls = no_files
    monkeypatch.setattr(fashion.os, "geteuid", lambda: 1000)
    with pytest.raises(fashion.FashionMnistMissing, match="sudo apt-get install -y dataset-fashion-mnist") as err:
        fashion.ensure_fashion_mnist()
    assert str(debian) in str(err.value) and "train-images-idx3-ubyte" in str(err.value)
    # load() takes the same path when nothing is prepared yet.
    with pytest.raises(fashion.FashionMnistMissing, match="make data"):
        load("fashion_mnist_c", data_dir=str(tmp_path / "tfds"))
    assert calls == []


def test_missing_files_as_root_runs_apt_get(no_files, monkeypatch, tiny):
    debian, calls = no_files
    folder, _ = tiny
    monkeypatch.setattr(fashion.os, "geteuid", lambda: 0)

    def installs(cmd, **kwargs):  # what the package does: put the four files in place
        calls.append(list(cmd))
        assert kwargs["env"]["DEBIAN_FRONTEND"] == "noninteractive"
        for name in os.listdir(folder):
            shutil.copy(os.path.join(folder, name), debian / name)
        return type("Done", (), {"returncode": 0})()

    monkeypatch.setattr(fashion.subprocess, "run", installs)
    assert fashion.ensure_fashion_mnist() == str(debian)
    assert calls == [["apt-get", "install", "-y", "dataset-fashion-mnist"]]
    assert fashion.ensure_fashion_mnist() == str(debian) and len(calls) == 1  # found: no apt


def test_failed_apt_get_retries_after_update_then_says_so(no_files, monkeypatch):
    _, calls = no_files
    monkeypatch.setattr(fashion.os, "geteuid", lambda: 0)
    with pytest.raises(fashion.FashionMnistMissing, match="did not install"):
        fashion.ensure_fashion_mnist()
    install = ["apt-get", "install", "-y", "dataset-fashion-mnist"]
    assert calls == [install, ["apt-get", "update"], install]


def test_env_dir_without_files_is_an_error_even_as_root(no_files, monkeypatch, tmp_path):
    _, calls = no_files
    monkeypatch.setattr(fashion.os, "geteuid", lambda: 0)
    monkeypatch.setenv(fashion.SOURCE_DIR_ENV, str(tmp_path))
    with pytest.raises(fashion.FashionMnistMissing, match=f"unset {fashion.SOURCE_DIR_ENV}"):
        fashion.ensure_fashion_mnist()
    assert calls == []


def test_env_dir_wins_over_the_debian_location(no_files, monkeypatch, tiny):
    folder, _ = tiny
    monkeypatch.setenv(fashion.SOURCE_DIR_ENV, folder)
    assert fashion.ensure_fashion_mnist() == folder


# --- the real files --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(
    bool(fashion.missing_files(fashion.source_dir())),
    reason="Fashion-MNIST files not installed (make data)",
)
def test_real_fashion_mnist(tmp_path):
    ds = load("fashion_mnist", data_dir=str(tmp_path))
    assert len(ds) == 70_000 and ds.images.shape == (70_000, 28, 28, 1)
    assert ds.domain_counts() == {"train": 60_000, "test": 10_000}
    assert np.array_equal(np.bincount(ds.labels), np.full(10, 7_000))
    assert ds.images.dtype == np.float32 and ds.images.min() == 0.0 and ds.images.max() == 1.0
    assert len(np.unique(ds.ids)) == 70_000
    c = load("fashion_mnist_c", data_dir=str(tmp_path))
    assert c.domain_counts() == {d: 2_000 for d in fashion.C_DOMAINS}
    assert np.all(c.ids < fashion.TEST_ID_OFFSET)  # train images only: the test split stays out
    clean = c.select_domains(fashion.CLEAN_DOMAIN)
    np.testing.assert_array_equal(clean.images, ds.subset(clean.ids).images)
