"""DP as composable pieces: `clipped_grad` (param-shaped sum, sensitivity C) and the noise
transform under optax's wrappers (MultiSteps, apply_if_finite, inject_hyperparams)."""
import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ecos_jax import per_sample
from ecos_jax.models import get_model
from ecos_jax.privacy import clipping, dpsgd, layer_grads
from ecos_jax.privacy.clipped_grads import ClippedGrad, clipped_grad
from ecos_jax.privacy.noise import NoiseState, add_gaussian_noise
from ecos_jax.privacy.pooling import fast_max_pool_grads

B, C = 8, 0.5
RNG = np.random.default_rng(0)
X = RNG.random((B, 8, 8, 1), np.float32)
Y = RNG.integers(0, 10, B).astype(np.int32)


def _model():
    model = get_model("cnn", 10, channels=(4, 4), embed_dim=8, pooling="max")
    return model, model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))


def _leaves_close(a, b, **tol):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), **tol)


def _norm(tree):
    return float(optax.global_norm(tree))


@pytest.mark.parametrize("clip_mode", ["flat", "per_layer"])
def test_both_methods_give_one_sum_within_c_of_its_neighbour(clip_mode):
    model, params = _model()
    fns = {m: clipped_grad(model, l2_norm_clip=C, method=m, clipping=clip_mode) for m in ("layers", "vmap")}
    assert all(isinstance(f, ClippedGrad) and f.sensitivity == C for f in fns.values())
    assert fns["layers"].sensitivity_under("replace_one") == 2 * C
    mask = jnp.ones(B)
    removed = mask.at[3].set(0.0)  # the add/remove neighbour: example 3 left out
    out = {m: jax.jit(f)(params, X, Y, mask) for m, f in fns.items()}
    out_rm = {m: jax.jit(f)(params, X, Y, removed) for m, f in fns.items()}
    _leaves_close(out["layers"][0], out["vmap"][0], rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(out["layers"][1]["norms"], out["vmap"][1]["norms"], rtol=1e-4)
    for m in fns:
        total, aux = out[m]
        assert jax.tree.structure(total) == jax.tree.structure(params)  # param-shaped, no [B]
        assert aux["norms"].shape == aux["losses"].shape == aux["nonfinite"].shape == (B,)
        diff = jax.tree.map(jnp.subtract, total, out_rm[m][0])
        assert 0.0 < _norm(diff) <= C * (1 + 1e-5)


def test_vmap_method_takes_a_per_example_loss_and_layers_needs_the_model():
    model, params = _model()

    def example_loss(p, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x[None])[0], y)

    got, aux = jax.jit(clipped_grad(example_loss, l2_norm_clip=C, method="vmap"))(params, X, Y)
    want, _ = clipping.clipped_sum(per_sample.per_example_grads(example_loss, params, X, Y), C)
    _leaves_close(got, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(aux["losses"], layer_grads.softmax_xent(model.apply(params, X), Y),
                               rtol=1e-5)
    with pytest.raises(ValueError, match="needs the flax model"):
        clipped_grad(example_loss, l2_norm_clip=C)
    for bad, match in [({"l2_norm_clip": 0.0}, "l2_norm_clip"), ({"method": "x"}, "method"),
                       ({"clipping": "x"}, "clipping"), ({"microbatch_size": 0}, "microbatch")]:
        with pytest.raises(ValueError, match=match):
            clipped_grad(model, **({"l2_norm_clip": C} | bad))


def test_noise_std_comes_from_the_clipped_functions_sensitivity():
    model, _ = _model()
    grad_fn = clipped_grad(model, l2_norm_clip=2.0)
    zeros = {"w": jnp.zeros((200, 200))}
    tx = add_gaussian_noise(1.5, grad_fn, expected_batch_size=4.0, key=jax.random.key(1))
    out, _ = tx.update(zeros, tx.init(zeros))
    assert float(jnp.std(out["w"])) * 4.0 == pytest.approx(1.5 * 2.0, rel=0.02)


@pytest.mark.parametrize("use_grad_mean", [True, False])
def test_multisteps_noises_once_per_logical_batch(use_grad_mean):
    """k micro-batch sums through MultiSteps: the applied update is (Σ sums + N(0, σ²C²)) / (q·N),
    one noise draw per logical batch (std σC/(q·N), not √k times it), zeros in between."""
    k, sigma, c, qn = 4, 2.0, 3.0, 40.0
    shape = {"w": (200, 200), "b": (100,)}
    g = {n: jnp.full(s, 0.25) for n, s in shape.items()}  # every micro-batch sums to g
    noise = add_gaussian_noise(sigma, c, expected_batch_size=qn, key=jax.random.key(7),
                               accumulation_steps=k if use_grad_mean else 1)
    tx = optax.MultiSteps(optax.chain(noise, optax.sgd(-1.0)), every_k_schedule=k,
                          use_grad_mean=use_grad_mean)
    state = tx.init(g)
    step = jax.jit(tx.update)
    for i in range(k):
        upd, state = step(g, state)
        if i < k - 1:
            assert all(not np.any(v) for v in jax.tree.leaves(upd))  # nothing released yet
    z = np.concatenate([np.ravel(v) for v in jax.tree.leaves(upd)])
    assert z.mean() == pytest.approx(k * 0.25 / qn, abs=5 * sigma * c / qn / np.sqrt(z.size))
    assert z.std() == pytest.approx(sigma * c / qn, rel=0.02)  # √k times larger if noised per micro-batch
    assert int(state.inner_opt_state[0].count) == 1  # one noise draw, advanced once


def test_multisteps_on_chunks_equals_one_step_on_the_logical_batch():
    """A logical Poisson batch split into k chunks and accumulated equals one DP-SGD step on it."""
    model, params = _model()
    grad_fn = clipped_grad(model, l2_norm_clip=C)
    k, mask = 2, jnp.asarray(RNG.random(B) < 0.7, jnp.float32)

    def noise(steps):
        return add_gaussian_noise(1.1, grad_fn, expected_batch_size=6.0, key=jax.random.key(5),
                                  accumulation_steps=steps)

    one = optax.chain(noise(1), optax.adam(0.05))
    total, _ = grad_fn(params, X, Y, mask)
    upd, _ = one.update(total, one.init(params), params)
    want = optax.apply_updates(params, upd)

    acc = optax.MultiSteps(optax.chain(noise(k), optax.adam(0.05)), every_k_schedule=k)
    state, p = acc.init(params), params
    for xs, ys, ms in zip(*(np.split(a, k) for a in (X, Y, mask))):
        part, _ = grad_fn(params, xs, ys, ms)  # same params: the chunks are one logical batch
        upd, state = acc.update(part, state, p)
        p = optax.apply_updates(p, upd)
    _leaves_close(p, want, rtol=1e-5, atol=1e-6)


def test_the_old_per_example_transform_cannot_sit_inside_multisteps():
    """Why the sum comes from a function transform: `clip_and_sum` takes [B, ...] leaves."""
    per_ex = {"w": jnp.ones((B, 3))}
    tx = optax.MultiSteps(optax.chain(clipping.clip_and_sum(1.0), optax.sgd(1.0)), every_k_schedule=2)
    with pytest.raises((TypeError, ValueError)):
        tx.update(per_ex, tx.init({"w": jnp.zeros(3)}), mask=jnp.ones(B))


def test_apply_if_finite_skips_a_bad_step_and_the_noise_still_advances():
    params = {"w": jnp.zeros(50)}
    noise = add_gaussian_noise(1.0, 1.0, expected_batch_size=10.0, key=jax.random.key(2))
    tx = optax.chain(noise, optax.apply_if_finite(optax.adam(0.1), max_consecutive_errors=3))
    step = jax.jit(tx.update)
    state = tx.init(params)
    upd, state = step({"w": jnp.full(50, jnp.nan)}, state, params)
    assert not np.any(upd["w"]) and int(state[1].notfinite_count) == 1
    upd, state = step({"w": jnp.ones(50)}, state, params)
    assert np.all(np.isfinite(upd["w"])) and np.any(upd["w"])
    assert int(state[0].count) == 2  # no step reuses another's noise
    # Wrapped around the noise as well, it compiles too (its state types line up).
    outer = optax.apply_if_finite(optax.chain(noise, optax.adam(0.1)), max_consecutive_errors=3)
    upd, st = jax.jit(outer.update)({"w": jnp.ones(50)}, outer.init(params), params)
    assert np.all(np.isfinite(upd["w"])) and isinstance(st.inner_state[0], NoiseState)


def test_inject_hyperparams_schedule_after_the_noise():
    params = {"w": jnp.ones(5)}
    sched = optax.linear_schedule(0.1, 0.01, 4)
    tx = optax.chain(add_gaussian_noise(0.0, 1.0, expected_batch_size=2.0, key=jax.random.key(0)),
                     optax.inject_hyperparams(optax.adam)(learning_rate=sched))
    ref = optax.adam(sched)
    state, ref_state = tx.init(params), ref.init(params)
    for t in range(4):
        g = {"w": jnp.arange(5.0) * (t + 1)}
        upd, state = jax.jit(tx.update)(g, state, params)
        want, ref_state = ref.update(jax.tree.map(lambda v: v / 2.0, g), ref_state, params)
        _leaves_close(upd, want, rtol=1e-5)  # jitted vs eager Adam: last-digit differences
        assert float(state[1].hyperparams["learning_rate"]) == pytest.approx(float(sched(t)))


def test_logical_batch_accounting_matches_dp_accounting():
    """k micro-batches of B each per applied update: T steps at q = k·B / N."""
    n, k, b_micro, steps, sigma, delta = 1000, 4, 10, 50, 1.2, 1e-5
    config = dpsgd.DPSGDConfig(dataset_size=n, batch_size=k * b_micro, noise_multiplier=sigma,
                               max_batch_size=n)  # M = N: plain Poisson, RDP applies
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(dp_accounting.PoissonSampledDpEvent(k * b_micro / n,
                                                    dp_accounting.GaussianDpEvent(sigma)), steps)
    assert config.epsilon(steps, delta, "rdp") == pytest.approx(acc.get_epsilon(delta), rel=1e-9)


@pytest.mark.parametrize("grad_method", ["layers", "vmap"])
def test_dp_step_is_clipped_grad_then_noise_then_optimiser(grad_method):
    """make_dp_step's update equals the pieces composed by hand, for both methods:
    the per-example sum of the old paths (`layer_grads.clipped_grad_sum`; vmap grads and
    `clipping.clipped_sum`), the noise on it and the optimiser."""
    model, params = _model()
    config = dpsgd.DPSGDConfig(dataset_size=40, batch_size=B, l2_norm_clip=C, noise_multiplier=1.1,
                               grad_method=grad_method)
    key = jax.random.key(9)
    init_fn, update_fn = dpsgd.make_dp_step(model, optax.adam(0.01), config, key=key)
    mask = jnp.asarray(np.arange(B) % 4 != 1, jnp.float32)
    state, _ = update_fn(init_fn(params), X, Y, mask)

    @jax.jit
    def by_hand(params):
        if grad_method == "layers":
            total, _ = layer_grads.clipped_grad_sum(model, params, X, Y, l2_norm_clip=C, mask=mask)
        else:
            def example(p, x, y):
                return layer_grads.softmax_xent(model.apply(p, x[None]), y[None])[0]

            grads = per_sample.per_example_grads(fast_max_pool_grads(example), params, X, Y)
            total, _ = clipping.clipped_sum(grads, C, mask=mask)
        tx = optax.chain(add_gaussian_noise(1.1, C, expected_batch_size=B, key=key), optax.adam(0.01))
        upd, _ = tx.update(total, tx.init(params), params)
        return optax.apply_updates(params, upd)

    _leaves_close(state.params, by_hand(params), rtol=1e-6, atol=1e-7)
