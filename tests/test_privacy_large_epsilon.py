"""Every calibration the library runs returns a valid σ at very large ε (issue: PLD hung there).

dp_accounting's PLD on its default 1e-4 grid needed ~30 s at ε = 100 and over 60 s and 9 GB at
ε = 1000; `accounting.pld_interval` widens the grid with ε. These run the real entry points a
user hits: the ECOS client's constructor, private kNN's calibration and DP-SGD's.
"""
import dp_accounting
import numpy as np
import pytest

from ecos_jax.ecos import private_knn
from ecos_jax.ecos.protocol import Client
from ecos_jax.privacy import accounting


@pytest.mark.parametrize("eps", [1000.0, 1e4])
def test_ecos_client_calibrates_at_large_epsilon(eps):
    client = Client(np.zeros((5, 3), np.float32), epsilon=eps, accountant="pld")
    got = accounting.epsilon(dp_accounting.GaussianDpEvent(client.sigma), client.delta, "pld")
    assert 0 < client.sigma and got <= eps


@pytest.mark.parametrize("eps", [1000.0, 1e4])
def test_private_knn_calibrates_at_large_epsilon(eps):
    sigma = private_knn.calibrate_sigma(eps, 1e-5, 400, 1.0, accountant="pld")
    ev = private_knn.labeling_event(sigma, 400, 1.0)
    assert accounting.epsilon(ev, 1e-5, "pld") <= eps


def test_dpsgd_truncated_calibrates_at_large_epsilon():
    n, q = 6000, 256 / 6000
    sigma = accounting.calibrate_dpsgd_sigma(1000.0, 1e-5, q=q, steps=500, dataset_size=n,
                                             max_batch_size=300)
    ev = accounting.dpsgd_event(q, sigma, 500, dataset_size=n, max_batch_size=300)
    assert accounting.epsilon(ev, 1e-5, "pld") <= 1000.0
