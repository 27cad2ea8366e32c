"""The ECOS protocol (docs/algorithms.md#ecos) as two parties that exchange only messages.

    cloud.compress(key)            -> Centroids     (R × d floats, cloud → client)
    client.respond(msg, ledger)    -> NoisyCoverage (R noisy scalars, client → cloud)
    cloud.sample(key, resp, B)     -> indices into the pool

The client never sends data or features: only the centroid-coverage counts
s_r = #{x ∈ D_c : r = argmin_r' ‖f(x) − c_r'‖₂}, released with the Gaussian mechanism.
Adding or removing one client sample moves one count by one, so the L2 sensitivity is 1 and
s̃ = s + N(0, σ²I) is (ε, δ)-DP for σ calibrated by `dp_accounting` on `GaussianDpEvent(σ)`.
Each response is one event in the run's privacy ledger. The neighbouring relation is
add-or-remove-one client sample (under replace-one one sample would move two counts).

Noise keys (see `release_key`): OS entropy by default, fresh for every response. A seeded
client (`noise_seed`) is for reproducible research only; it refuses a ledger that was not
created with `reproducible_seed` equal to its seed (the ledger would otherwise claim a
guarantee the seed voids), and it still never reuses a draw: each response's key folds in the
client's response count and the entry's position in the ledger.

    >>> cloud = Cloud(pool_features, num_centroids=30)
    >>> client = Client(client_features, epsilon=0.58, delta=1e-5)
    >>> result = run(cloud, client, budget=300, key=jax.random.key(0), ledger=PrivacyLedger(1e-5))
"""

from __future__ import annotations

import dataclasses
import functools
import math
import zlib

import dp_accounting
import jax
import numpy as np

from ecos_jax.privacy import accounting
from ecos_jax.privacy.keys import noise_key
from ecos_jax.privacy.ledger import PrivacyLedger
from ecos_jax.privacy.mechanisms import gaussian_mechanism
from ecos_jax.samplers import ecos as ecos_sampler
from ecos_jax.samplers import kmeans as km

SENSITIVITY = ("L2 = 1 (add-or-remove-one client sample): adding or removing one client sample "
               "changes one coverage count by one")
LEDGER_NAME = "ecos_client_response"
RELATION = "add_or_remove_one"  # the neighbouring relation SENSITIVITY holds under

# Wire encodings of the two messages. float32 is the default; the lean ones halve the bytes.
# Rounding the released noisy counts to int16 is post-processing of a DP output, so the
# response keeps its (ε, δ); float16 centroids only perturb what the client assigns to.
CENTROID_DTYPES = ("float32", "float16")
COUNT_DTYPES = ("float32", "float16", "int16")


def _check_dtype(name: str, dtype: str, allowed: tuple[str, ...]) -> str:
    if str(dtype) not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {dtype!r}.")
    return str(dtype)


def encode_counts(noisy: np.ndarray, dtype: str = "float32") -> np.ndarray:
    """The released counts `[R]` as sent: cast, or rounded and clipped to the int16 range."""
    dtype = _check_dtype("count_dtype", dtype, COUNT_DTYPES)
    noisy = np.asarray(noisy, np.float32)
    if dtype == "int16":
        info = np.iinfo(np.int16)
        return np.clip(np.rint(noisy), info.min, info.max).astype(np.int16)
    return noisy.astype(dtype)


def message_bytes(num_centroids: int, dim: int, *, centroid_dtype: str = "float32",
                  count_dtype: str = "float32") -> tuple[int, int]:
    """(bytes down, bytes up) of one round with R centroids of `dim` features, from the messages."""
    down = Centroids(np.zeros((num_centroids, dim), _check_dtype("centroid_dtype", centroid_dtype,
                                                                 CENTROID_DTYPES)))
    up = NoisyCoverage(encode_counts(np.zeros(num_centroids, np.float32), count_dtype), 0.0)
    return down.nbytes, up.nbytes


def release_key(noise_seed: int | None, ledger: PrivacyLedger | None, *, mechanism: str,
                draw: int = 0) -> tuple[jax.Array, bool]:
    """The PRNG key of one release's noise and whether it is reproducible.

    noise_seed None: 64 bits of OS entropy, a fresh key on every call (`keys.noise_key`).
    noise_seed an int: the key is `key(seed)` with folded in, in order, the mechanism's name
    (so two mechanisms never share a stream), the position the release will take in `ledger`
    (0 without one) and `draw` (a per-party call count). Two releases recorded in one ledger, or
    two calls of one party, therefore never share noise; rerunning the same sequence of
    releases with the same seed reproduces every draw.

    A seeded key is refused with a ledger whose `reproducible_seed` is not `noise_seed`: that
    ledger would report an ε without saying that the seed lets anyone recompute the noise.
    """
    if noise_seed is not None and ledger is not None and ledger.reproducible_seed != noise_seed:
        raise ValueError(
            f"noise_seed={noise_seed} but the ledger was created with reproducible_seed="
            f"{ledger.reproducible_seed}: create it with PrivacyLedger(..., reproducible_seed="
            f"{noise_seed}) so that it marks this seeded release as reproducible research only "
            "(anyone who knows the seed can recompute the noise).")
    key, reproducible = noise_key(noise_seed)
    if reproducible:
        key = jax.random.fold_in(key, zlib.crc32(mechanism.encode()) % (2**31))
        key = jax.random.fold_in(key, 0 if ledger is None else len(ledger))
        key = jax.random.fold_in(key, int(draw))
    return key, reproducible


@functools.lru_cache(maxsize=64)
def gaussian_sigma(epsilon: float, delta: float, accountant: str) -> float:
    """σ of a sensitivity-1 Gaussian release at (ε, δ) (memoised: PLD calibration is a search)."""
    return accounting.calibrate_gaussian_sigma(epsilon, delta, accountant=accountant)


def _check_features(name: str, features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, np.float32)
    if features.ndim != 2:
        raise ValueError(f"{name} features must be [N, d], got shape {features.shape}.")
    if features.shape[0] == 0:
        raise ValueError(f"{name} has no samples (empty {name.lower()}).")
    if not np.isfinite(features).all():
        raise ValueError(f"{name} features contain NaN or inf.")
    return features


@dataclasses.dataclass(frozen=True)
class Centroids:
    """Cloud → client: the k-means centroids of the pool's public features, `[R, d]` float32
    (float16 with `Cloud(centroid_dtype="float16")`); `nbytes` follows the dtype."""

    centroids: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.centroids.nbytes)


@dataclasses.dataclass(frozen=True)
class NoisyCoverage:
    """Client → cloud: noisy centroid-coverage counts `[R]` (float32, or the client's
    `count_dtype`) and the σ that made them; `nbytes` follows the dtype."""

    counts: np.ndarray
    sigma: float

    @property
    def nbytes(self) -> int:
        return int(self.counts.nbytes)


def coverage_counts(client_features: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """s_r = number of client samples whose nearest centroid is r: `[R]` int64."""
    client_features = _check_features("Client", client_features)
    if centroids.ndim != 2 or centroids.shape[1] != client_features.shape[1]:
        raise ValueError(f"centroids must be [R, {client_features.shape[1]}], got {centroids.shape}.")
    nearest = np.asarray(km.assign(client_features, np.asarray(centroids, np.float32)))
    return np.bincount(nearest, minlength=centroids.shape[0]).astype(np.int64)


@dataclasses.dataclass
class Client:
    """The data owner. Holds its private features; releases only noisy coverage counts.

    epsilon: target ε of one response (> 0; `inf` releases exact counts, for ablations only).
    delta: δ of the response, in (0, 1).
    noise_seed: None (default) draws every response's noise key from OS entropy; an int makes
      the responses reproducible (research only): `respond` then needs a ledger created with
      `reproducible_seed=noise_seed` (or none), and each response still draws fresh noise
      (see `release_key`).
    count_dtype: wire encoding of the response, one of COUNT_DTYPES (see `encode_counts`).
    """

    features: np.ndarray
    epsilon: float = 0.58
    delta: float = 1e-5
    accountant: str = "pld"
    noise_seed: int | None = None
    count_dtype: str = "float32"
    sigma: float = dataclasses.field(init=False)
    # Responses given so far: folded into a seeded key so that no two responses share noise.
    responses: int = dataclasses.field(default=0, init=False)

    def __post_init__(self):
        self.features = _check_features("Client", self.features)
        self.count_dtype = _check_dtype("count_dtype", self.count_dtype, COUNT_DTYPES)
        if not self.epsilon > 0:
            raise ValueError(f"epsilon must be > 0, got {self.epsilon}.")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}.")
        self.sigma = 0.0 if math.isinf(self.epsilon) else gaussian_sigma(
            float(self.epsilon), float(self.delta), self.accountant)

    def respond(self, message: Centroids, ledger: PrivacyLedger | None = None) -> NoisyCoverage:
        """Counts coverage of `message.centroids` and releases it with Gaussian noise σ.

        Records the release in `ledger` (when given) as `GaussianDpEvent(σ)` with L2
        sensitivity 1 under add-or-remove-one; raises ValueError for a seeded client and a
        ledger not created with `reproducible_seed=noise_seed`.
        """
        counts = coverage_counts(self.features, message.centroids).astype(np.float32)
        key, reproducible = release_key(self.noise_seed, ledger, mechanism=LEDGER_NAME,
                                        draw=self.responses)
        self.responses += 1
        noisy = counts if self.sigma == 0 else np.asarray(
            gaussian_mechanism(key, counts, sigma=self.sigma, l2_sensitivity=1.0), np.float32)
        if ledger is not None and self.sigma > 0:
            ledger.record(LEDGER_NAME, dp_accounting.GaussianDpEvent(self.sigma),
                          sensitivity=SENSITIVITY, relation=RELATION, num_centroids=int(counts.shape[0]),
                          target_epsilon=self.epsilon, reproducible_noise=reproducible)
        elif ledger is not None:
            ledger.record(LEDGER_NAME, dp_accounting.NonPrivateDpEvent(),
                          sensitivity=SENSITIVITY, relation=RELATION, num_centroids=int(counts.shape[0]))
        return NoisyCoverage(counts=encode_counts(noisy, self.count_dtype), sigma=self.sigma)


@dataclasses.dataclass
class Cloud:
    """The pool owner. Compresses its pool's public features and samples from the response.

    centroid_dtype: wire encoding of the centroids sent, one of CENTROID_DTYPES; the cloud
      keeps its own float32 clusters for sampling.
    """

    features: np.ndarray
    num_centroids: int = 30
    kmeans_iters: int = 20
    proximity: float = 0.5
    centroid_dtype: str = "float32"
    _clusters: km.KMeansResult | None = dataclasses.field(default=None, init=False, repr=False)

    def __post_init__(self):
        self.features = _check_features("Pool", self.features)
        self.centroid_dtype = _check_dtype("centroid_dtype", self.centroid_dtype, CENTROID_DTYPES)
        if not 1 <= self.num_centroids <= self.features.shape[0]:
            raise ValueError(f"num_centroids must be in [1, pool size {self.features.shape[0]}], "
                             f"got {self.num_centroids}.")

    def compress(self, key: jax.Array) -> Centroids:
        """Step 1 (docs/algorithms.md#kmeans): k-means of the pool's features into R centroids."""
        self._clusters = km.kmeans(key, self.features, self.num_centroids, iters=self.kmeans_iters)
        return Centroids(np.asarray(self._clusters.centroids, np.float32).astype(self.centroid_dtype))

    def sample(self, key: jax.Array, response: NoisyCoverage, budget: int) -> np.ndarray:
        """Step 3: allocate `budget` over clusters by the noisy counts, pick within each.

        See docs/algorithms.md#allocation.
        """
        if self._clusters is None:
            raise RuntimeError("Cloud.sample called before Cloud.compress.")
        if response.counts.shape != (self.num_centroids,):
            raise ValueError(f"response has {response.counts.shape} counts, expected ({self.num_centroids},).")
        if not 1 <= budget <= self.features.shape[0]:
            raise ValueError(f"budget must be in [1, pool size {self.features.shape[0]}], got {budget}.")
        return np.asarray(ecos_sampler.ecos_sample(
            key, self.features, budget, centroids=self._clusters.centroids,
            assignments=self._clusters.assignments, noisy_counts=np.asarray(response.counts, np.float32),
            proximity=self.proximity))


@dataclasses.dataclass(frozen=True)
class ProtocolResult:
    """One ECOS round: the picks and what it cost in privacy and bytes."""

    indices: np.ndarray
    sigma: float
    epsilon: float
    bytes_down: int
    bytes_up: int
    noisy_counts: np.ndarray


def run(cloud: Cloud, client: Client, budget: int, key: jax.Array, ledger: PrivacyLedger | None = None) -> ProtocolResult:
    """Runs compress → respond → sample and returns the picks with their privacy and byte cost."""
    if not 1 <= budget <= cloud.features.shape[0]:
        raise ValueError(f"budget must be in [1, pool size {cloud.features.shape[0]}], got {budget}.")
    if cloud.features.shape[1] != client.features.shape[1]:
        raise ValueError(f"Cloud features are {cloud.features.shape[1]}-d but client features are "
                         f"{client.features.shape[1]}-d: both must use the same public extractor.")
    k_compress, k_sample = jax.random.split(key)
    down = cloud.compress(k_compress)
    up = client.respond(down, ledger)
    idx = cloud.sample(k_sample, up, budget)
    return ProtocolResult(indices=idx, sigma=client.sigma, epsilon=client.epsilon,
                          bytes_down=down.nbytes, bytes_up=up.nbytes, noisy_counts=up.counts)
