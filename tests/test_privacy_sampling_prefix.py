"""Padded Poisson batches computed on their shortest prefix: same clipped sums, same step."""
import jax
import jax.numpy as jnp
import numpy as np

from ecos_jax.models import get_model
from ecos_jax.privacy import layer_grads
from ecos_jax.privacy.sampling import (
    default_max_batch_size,
    on_shortest_prefix,
    poisson_batch,
    prefix_buckets,
)


def test_prefix_buckets_cover_the_batch_and_end_at_the_slots():
    n, b = 60_000, 256
    m = default_max_batch_size(n, b / n)  # 337: 81 padding slots
    sizes = prefix_buckets(m, b, n)
    assert sizes[-1] == m and list(sizes) == sorted(set(sizes))
    assert all(s % 8 == 0 for s in sizes[:-1]) and len(sizes) == 5
    # Expected rows computed over Binomial(N, q) batch sizes: q·N + under 1 std (5 before).
    counts = np.minimum(np.random.default_rng(0).binomial(n, b / n, 20_000), m)
    cost = np.asarray(sizes)[np.searchsorted(sizes, counts)]
    assert np.all(cost >= counts)
    assert cost.mean() < b + np.sqrt(b)
    # Little padding: one branch, nothing to gain.
    assert prefix_buckets(40, 20, 100) == (40,)


def test_branch_is_the_shortest_prefix_holding_every_counted_row():
    shape = on_shortest_prefix(lambda s, x, y, mask: jnp.asarray(x.shape[0]), (4, 8, 12))
    shape = jax.jit(shape)
    x = y = jnp.zeros((16, 3))
    for last, want in [(0, 4), (3, 4), (4, 4), (5, 8), (12, 12), (13, 16), (16, 16)]:
        mask = jnp.arange(16) < last
        assert int(shape(None, x, y, mask)) == want, last
    # A counted row late in the batch (not a prefix mask) still gets every row.
    assert int(shape(None, x, y, jnp.zeros(16).at[14].set(1))) == 16


def test_prefix_step_equals_the_full_padded_step():
    # The clipped sum on the prefix equals the one over all M slots, with garbage
    # (NaN) in the padding rows that a wrong cut would let in.
    model = get_model("mlp", 10)  # the cut is model-agnostic; an MLP compiles its 5 programs in 8 s, the CNN in 12 s (cold)
    params = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 12, 12, 1), np.float32))
    n, q = 400, 0.05
    m = default_max_batch_size(n, q)
    rng = np.random.default_rng(1)
    x_all = rng.random((n, 12, 12, 1)).astype(np.float32)
    y_all = rng.integers(0, 10, n).astype(np.int32)
    buckets = prefix_buckets(m, q * n, n, stds=(-1.0, 0.0, 1.0), min_padding=0)
    assert len(buckets) == 4

    def full(state, x, y, mask):
        grads, _ = layer_grads.clipped_grad_sum(model, state, x, y, l2_norm_clip=1.0, mask=mask)
        return grads

    prefix = jax.jit(on_shortest_prefix(full, buckets))
    full = jax.jit(full)
    for seed in range(3):
        b = poisson_batch(jax.random.key(seed), dataset_size=n, sampling_rate=q, max_batch_size=m)
        x = np.where(np.asarray(b.mask)[:, None, None, None], x_all[b.indices], np.nan)
        y = y_all[b.indices]
        want, got = full(params, x, y, b.mask), prefix(params, x, y, b.mask)
        for u, v in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
            assert np.all(np.isfinite(v))
            np.testing.assert_allclose(np.asarray(v), np.asarray(u), rtol=2e-5, atol=1e-6)

