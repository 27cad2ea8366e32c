"""The empirical DP-SGD audit attacks the data-parallel step too (2 of the 4 forced host devices).

The audit's trials are vmapped copies of the library's step (`privacy.audit.dpsgd.dpsgd_trials`);
given a mesh they run the sharded step `train(..., mesh=)` runs. The default suite checks the
sharded trials move the parameters exactly as the one-device trials do (whose equality with
`train` tests/test_privacy_audit.py checks); the slow suite runs the attack itself on 2 devices.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ecos_jax.parallel.mesh import local_mesh
from ecos_jax.privacy import audit
from ecos_jax.privacy.audit import dpsgd as audit_dpsgd_mod
from ecos_jax.privacy.dpsgd import DPSGDConfig


def test_sharded_trials_equal_the_one_device_trials():
    pos_x, _, y = audit_dpsgd_mod.canary_data(40)
    model = audit_dpsgd_mod.nn.Dense(1, use_bias=False)
    params = model.init(jax.random.key(0), pos_x[:1])
    # M = 22 Poisson slots, padded with 2 masked ones to a multiple of 3 on the 3-device mesh.
    config = DPSGDConfig(dataset_size=40, batch_size=8, l2_norm_clip=1.0, noise_multiplier=0.7)
    keys = jnp.stack([jax.random.key(s) for s in (3, 11, 12)])
    runs = {n: audit_dpsgd_mod.dpsgd_trials(
        model, params, pos_x, y, config, optax.sgd(0.5), steps=6, keys=keys,
        observe=lambda p: p["params"]["kernel"][:, 0], mesh=None if n == 1 else local_mesh(n))
        for n in (1, 3)}
    assert runs[1].shape == (3, 6, pos_x.shape[1])
    np.testing.assert_allclose(runs[3], runs[1], rtol=1e-5, atol=1e-6)
    assert np.abs(np.diff(runs[1], axis=1)).max() > 0.1  # the steps did move the parameters


@pytest.mark.slow  # 2 x 400 trials of 10 sharded steps, plus calibration: ~1 min loaded
def test_dpsgd_audit_of_the_data_parallel_step():
    kw = dict(trials=400, confidence=0.99, control_factor=8, num_devices=2)
    real, control = (audit.audit_dpsgd(1.0, control=c, **kw) for c in (False, True))
    assert real.details["devices"] == control.details["devices"] == 2
    assert real.claimed_epsilon <= 1.0 + 1e-6
    assert real.claims == control.claims
    assert real.epsilon_lower_bound <= real.claimed_epsilon, real.to_dict()
    assert real.passed
    # σ / 8 on the sharded step is caught: the attack sees through the data-parallel path.
    assert control.epsilon_lower_bound > max(control.claims.values()), control.to_dict()
    assert control.passed
