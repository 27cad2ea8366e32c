"""The data mesh: local_mesh, shard_batch (pad and mask, never drop), replicate, device_report.

Runs on the four host devices tests/conftest.py forces.
"""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from ecos_jax.parallel import mesh as mesh_lib


def test_local_mesh_counts_and_errors():
    assert jax.local_device_count() == 4
    assert mesh_lib.local_mesh().devices.size == 4
    assert mesh_lib.local_mesh(0).devices.size == 4
    assert mesh_lib.local_mesh(2).devices.size == 2
    assert mesh_lib.local_mesh(1, axis="batch").axis_names == ("batch",)
    with pytest.raises(ValueError, match="only 4 local"):
        mesh_lib.local_mesh(5)
    with pytest.raises(ValueError, match="non-negative"):
        mesh_lib.local_mesh(-1)


@pytest.mark.parametrize("n", [1, 2, 4])
def test_shard_batch_pads_and_masks_an_indivisible_batch(n):
    mesh = mesh_lib.local_mesh(n)
    x = np.arange(7 * 3, dtype=np.float32).reshape(7, 3) + 1.0
    y = np.arange(7, dtype=np.int32)
    (xs, ys), mask = mesh_lib.shard_batch(mesh, x, y)
    b_pad = -(-7 // n) * n
    assert xs.shape == (b_pad, 3) and ys.shape == (b_pad,) and mask.shape == (b_pad,)
    assert xs.sharding.spec == P("data") and mask.sharding.spec == P("data")
    assert len(xs.addressable_shards) == n
    # Nothing dropped: the real rows are all there, in order, and only they are unmasked.
    np.testing.assert_array_equal(np.asarray(xs)[:7], x)
    np.testing.assert_array_equal(np.asarray(ys)[:7], y)
    np.testing.assert_array_equal(np.asarray(mask), np.arange(b_pad) < 7)
    assert not np.asarray(xs)[7:].any()


def test_shard_batch_keeps_a_given_mask_and_rejects_bad_input():
    mesh = mesh_lib.local_mesh(4)
    given = np.array([1, 0, 1, 1, 0, 1], bool)
    (_,), mask = mesh_lib.shard_batch(mesh, np.zeros((6, 2)), mask=given)
    np.testing.assert_array_equal(np.asarray(mask), np.r_[given, False, False])
    with pytest.raises(ValueError, match=r"no axis 'rows'; its axes are \('data',\)"):
        mesh_lib.shard_batch(mesh, np.zeros((8, 2)), axis="rows")
    with pytest.raises(ValueError, match="leading"):
        mesh_lib.shard_batch(mesh, np.zeros((8, 2)), np.zeros(7))
    with pytest.raises(ValueError, match="mask must have shape"):
        mesh_lib.shard_batch(mesh, np.zeros((8, 2)), mask=np.ones(7, bool))


def test_replicate_and_device_report():
    mesh = mesh_lib.local_mesh(4)
    tree = mesh_lib.replicate(mesh, {"w": np.ones((2, 3)), "b": np.zeros(3)})
    assert tree["w"].sharding.spec == P() and len(tree["w"].addressable_shards) == 4
    report = mesh_lib.device_report(mesh)
    assert report["platform"] == "cpu" and report["local_device_count"] == 4
    assert report["process_count"] == 1 and report["process_index"] == 0
    assert report["mesh_devices"] == 4 and report["mesh_axes"] == {"data": 4}
    assert "mesh_devices" not in mesh_lib.device_report()
