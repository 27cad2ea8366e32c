"""Scale-out paths give the in-memory answer exactly: pools streamed from host numpy or an
np.memmap in chunks, chunks computed on several threads at once, and rows sharded over the 4
forced host devices (see conftest.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecos_jax import samplers
from ecos_jax.samplers import kcenter_stream
from ecos_jax.samplers.kmeans import kmeans
from ecos_jax.samplers.pool import SEGMENT_ROWS, Pool, aligned_empty

N = 5 * SEGMENT_ROWS + 117  # 6 segments, the last one partial
CHUNK = SEGMENT_ROWS


@pytest.fixture(scope="module")
def pool():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(12, 8)).astype(np.float32) * 3
    x = centres[rng.integers(0, 12, N)] + rng.normal(size=(N, 8)).astype(np.float32)
    x[40:50] = x[7]  # exact duplicates
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def one_device():
    return jax.devices()[:1]


def test_four_host_devices_are_present():
    assert len(jax.devices()) == 4


def far_start(pool):
    """12 initial centroids, 4 of them far from every row: those clusters are empty after the
    first pass and must be re-seeded."""
    return np.concatenate([pool[:8], pool[8:12] + 100.0]).astype(np.float32)


# "far" runs every path with a re-seed as well; "kmeans++" (~29 s in the suite) adds only the
# k-means++ start and runs in `make test-slow`.
@pytest.mark.parametrize("start", [pytest.param("kmeans++", marks=pytest.mark.slow), "far"])
def test_kmeans_streamed_and_sharded_match_in_memory(pool, one_device, tmp_path, start):
    init = far_start(pool) if start == "far" else start
    ref = kmeans(jax.random.key(0), jnp.asarray(pool), 12, iters=6, devices=one_device,
                 workers=1, init=init)
    if start == "far":  # the re-seed ran: every cluster has rows
        assert np.bincount(np.asarray(ref.assignments), minlength=12).min() > 0
    path = tmp_path / "pool.npy"
    np.save(path, pool)
    memmap = np.load(path, mmap_mode="r")
    runs = {
        "host chunks, 1 device": dict(features=pool, chunk_size=CHUNK, devices=one_device,
                                      workers=1),
        "host chunks, 1 device, 3 threads": dict(features=pool, chunk_size=CHUNK,
                                                 devices=one_device, workers=3),
        "resident, 1 device, 2 threads": dict(features=pool, chunk_size=None,
                                              devices=one_device, workers=2),
        "memmap chunks, 4 devices": dict(features=memmap, chunk_size=CHUNK,
                                         devices=jax.devices(), workers=None),
    }
    for name, kw in runs.items():
        res = kmeans(jax.random.key(0), kw["features"], 12, iters=6, chunk_size=kw["chunk_size"],
                     devices=kw["devices"], workers=kw["workers"], init=init)
        assert np.array_equal(np.asarray(res.centroids), np.asarray(ref.centroids)), name
        assert np.array_equal(np.asarray(res.assignments), np.asarray(ref.assignments)), name
        assert res.inertia == ref.inertia and res.iterations == ref.iterations, name
    assert np.array_equal(np.asarray(samplers.assign(memmap, ref.centroids, chunk_size=3000)),
                          np.asarray(ref.assignments))


def test_pool_chunks_cover_rows_and_alias_aligned_memory(pool, one_device):
    x = aligned_empty(pool.shape)
    x[:] = pool
    p = Pool(x, chunk_size=CHUNK, devices=one_device)
    chunks = list(p.chunks())
    assert [s for s, _ in chunks] == list(range(0, N, CHUNK))
    assert np.array_equal(np.concatenate([np.asarray(c) for _, c in chunks])[:N], pool)
    assert np.asarray(chunks[-1][1])[N % (CHUNK):].sum() == 0.0  # zero padding
    if jax.default_backend() == "cpu":  # aligned host memory is streamed without a copy
        assert chunks[0][1].unsafe_buffer_pointer() == x.ctypes.data


def test_map_chunks_yields_in_row_order_whatever_the_workers(pool, one_device):
    def fn(start, chunk):
        return start, jnp.sum(chunk)
    serial = list(Pool(pool, chunk_size=CHUNK, devices=one_device, workers=1).map_chunks(fn))
    threaded = list(Pool(pool, chunk_size=CHUNK, devices=one_device, workers=4).map_chunks(fn))
    assert [s for s, _ in serial] == list(range(0, N, CHUNK))
    assert [(s, int(r[0]), float(r[1])) for s, r in threaded] == \
        [(s, int(r[0]), float(r[1])) for s, r in serial]
    resident = Pool(pool, devices=one_device, workers=2)
    assert not resident.streamed and resident.num_chunks == 2  # one resident chunk per worker
    with pytest.raises(ValueError, match="workers"):
        Pool(pool, workers=0)
    with pytest.raises(ValueError, match="single device"):
        Pool(pool, devices=jax.devices(), workers=2)

    def boom(start, chunk):
        raise RuntimeError(f"chunk {start} failed")
    with pytest.raises(RuntimeError, match="chunk 0 failed"):
        list(Pool(pool, chunk_size=CHUNK, devices=one_device, workers=2).map_chunks(boom))


def test_kcenter_streamed_matches_in_memory(pool, one_device):
    ref = np.asarray(samplers.kcenter_greedy(jax.random.key(1), pool, 60, devices=one_device))
    got = samplers.kcenter_greedy(jax.random.key(1), pool, 60, chunk_size=CHUNK,
                                  devices=one_device)
    assert np.array_equal(np.asarray(got), ref)


@pytest.mark.slow  # ~20 s: both drivers (device loop, host loop), with and without `initial`
@pytest.mark.parametrize("device_loop", [True, False])
def test_kcenter_stream_drivers_match_in_memory(pool, one_device, device_loop):
    ref = np.asarray(samplers.kcenter_greedy(jax.random.key(1), pool, 60, devices=one_device))
    p = Pool(pool, chunk_size=CHUNK, devices=one_device)
    got = kcenter_stream.kcenter_stream(jax.random.key(1), p, 60, None, device_loop=device_loop)
    assert np.array_equal(np.asarray(got), ref)
    initial = np.array([7, 41, 10000])
    ref = np.asarray(samplers.kcenter_greedy(jax.random.key(1), pool, 20, initial=initial,
                                             devices=one_device))
    got = kcenter_stream.kcenter_stream(jax.random.key(1), p, 20, initial,
                                        device_loop=device_loop)
    assert np.array_equal(np.asarray(got), ref)


@pytest.mark.slow  # ~10 s of multi-device compilation; kmeans covers sharding by default
def test_kcenter_sharded_matches_single_device(pool, one_device):
    ref = samplers.kcenter_greedy(jax.random.key(2), pool, 40, devices=one_device)
    sharded = samplers.kcenter_greedy(jax.random.key(2), pool, 40, devices=jax.devices())
    assert np.array_equal(np.asarray(sharded), np.asarray(ref))
    streamed = samplers.kcenter_greedy(jax.random.key(2), pool, 40, chunk_size=CHUNK,
                                       devices=jax.devices())
    assert np.array_equal(np.asarray(streamed), np.asarray(ref))


@pytest.mark.slow  # ~15 s; the gathers it relies on are covered by the kmeans/assign test
def test_ecos_streamed_matches_in_memory(pool, one_device):
    res = kmeans(jax.random.key(0), pool, 12, iters=4, devices=one_device)
    noisy = np.linspace(-2.0, 30.0, 12)
    kw = dict(centroids=res.centroids, noisy_counts=noisy, proximity=0.3)
    ref = samplers.ecos_sample(jax.random.key(3), jnp.asarray(pool), 150, **kw)
    got = samplers.ecos_sample(jax.random.key(3), pool, 150, chunk_size=CHUNK, **kw)
    assert np.array_equal(np.asarray(got), np.asarray(ref))
    assert len(np.unique(np.asarray(got))) == 150


@pytest.mark.parametrize("start", ["kmeans++", "far"])
def test_kmeans_bounds_skip_work_but_not_results(pool, one_device, start):
    """Hamerly pruning changes which distances are computed, never the clustering, also when
    empty clusters are re-seeded (the re-seeded centroids jump, and the bounds follow)."""
    init = far_start(pool) if start == "far" else start
    kw = dict(iters=8, devices=one_device, chunk_size=CHUNK, init=init)
    pruned = kmeans(jax.random.key(5), pool, 12, prune=True, **kw)
    full = kmeans(jax.random.key(5), pool, 12, prune=False, **kw)
    assert np.array_equal(np.asarray(pruned.centroids), np.asarray(full.centroids))
    assert np.array_equal(np.asarray(pruned.assignments), np.asarray(full.assignments))
    assert pruned.iterations == full.iterations and pruned.inertia == full.inertia
    assert full.scored == 1.0 and pruned.scored < 0.75  # the bounds did skip distances


def test_kmeans_bounds_hold_after_centroids_move(pool, one_device):
    """The per-row bounds are what pruning relies on: after the centroids move, every row's
    upper bound covers its distance to its centroid and its lower bound is below every other
    centroid's distance, and most rows are settled (bounds apart) so their distances are
    skipped."""
    from ecos_jax.samplers import kmeans as km

    p = Pool(pool, devices=one_device, workers=1)
    (start, chunk), = list(p.chunks())
    rows = p.chunk_rows
    state = (jnp.zeros((rows,), jnp.int32), jnp.full((rows,), jnp.inf), jnp.zeros((rows,)))
    c0 = jnp.asarray(pool[:12])
    n = jnp.int32(p.n)
    _, state = km._lloyd_chunk_pruned(None, chunk, jnp.int32(0), n, c0, jnp.zeros(12), state,
                                      None)
    c1 = c0 + 0.05 * jax.random.normal(jax.random.key(0), c0.shape)
    shift = jnp.sqrt(jnp.sum((c1 - c0) ** 2, axis=1))
    # Drift the bounds as the next pass does, and compare with exact float64 distances.
    a, upper, lower = (np.asarray(v)[:p.n] for v in state)
    upper = upper + np.asarray(shift)[a]
    lower = np.maximum(lower - float(shift.max()), 0.0)
    d = np.sqrt(((pool[:, None, :].astype(np.float64) - np.asarray(c1, np.float64)[None]) ** 2)
                .sum(-1))
    own = d[np.arange(p.n), a]
    d[np.arange(p.n), a] = np.inf
    assert (upper >= own).all() and (lower <= d.min(1)).all()
    assert (lower > upper).mean() > 0.5
