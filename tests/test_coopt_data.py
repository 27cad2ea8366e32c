"""An optimised dataset reloads bit-identically and refuses inconsistent targets."""
import numpy as np
import pytest

from ecos_jax.coopt.optimised_data import OptimisedDataset


def _parts(dims=(4, 4), seed=0):
    rng = np.random.default_rng(seed)
    images = [rng.uniform(size=(n, 6, 6, 1)).astype(np.float32) for n in (5, 3)]
    ids = [np.arange(5), np.arange(100, 103)]
    targets = [rng.normal(size=(len(x), d)).astype(np.float32) for x, d in zip(images, dims)]
    return images, ids, targets


def test_save_and_load_round_trip(tmp_path):
    data = OptimisedDataset.from_participants(*_parts(), meta={"alignment": "procrustes", "priors": ["a", "b"]})
    assert data.participant.tolist() == [0] * 5 + [1] * 3
    path = tmp_path / "sub" / "optimised.npz"
    data.save(path)
    again = OptimisedDataset.load(path)
    for name in ("images", "targets", "participant", "ids"):
        a, b = getattr(data, name), getattr(again, name)
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    assert again.meta == data.meta
    assert [p.name for p in tmp_path.joinpath("sub").iterdir()] == ["optimised.npz"]  # no temp files left


def test_targets_of_different_dimensions_raise():
    with pytest.raises(ValueError, match="output dimensions"):
        OptimisedDataset.from_participants(*_parts(dims=(4, 6)))


def test_participant_without_data_raises():
    images, ids, targets = _parts()
    images[1], ids[1], targets[1] = images[1][:0], ids[1][:0], targets[1][:0]
    with pytest.raises(ValueError, match="participant 1 has no data"):
        OptimisedDataset.from_participants(images, ids, targets)


def test_load_rejects_foreign_files(tmp_path):
    np.savez(tmp_path / "x.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not an optimised dataset"):
        OptimisedDataset.load(tmp_path / "x.npz")
