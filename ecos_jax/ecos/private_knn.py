"""Private kNN labelling: the client labels the cloud's picks with its own data.

The algorithm in short: docs/algorithms.md#private-knn; the full argument is below.

ECOS "automated client labelling": the cloud sends Q pool samples it picked (public data) to
the client; the client labels each one by a noisy vote of its k nearest labelled private
samples in the public feature space (Private-kNN, Zhu et al. 2020, with the GNMax noisy
argmax of PATE, Papernot et al. 2018) and returns only the Q noisy-argmax labels. The vote
histograms never leave the client.

For a query x ∈ R^d (one row of `queries [Q, d]`) and the client's data (f(x_i), y_i),
i < N (`client_features [N, d]`, `client_labels [N]` in [0, C)):

    S_x      ⊆ {0..N-1}: Poisson subsample, i ∈ S_x independently with probability q
    kNN(x)   = the k points of S_x nearest to x in Euclidean distance (all of S_x if |S_x| < k;
               exact distance ties go to the lower client index)
    v_c(x)   = #{i ∈ kNN(x) : y_i = c},  c < C                      (votes, [Q, C] int32)
    label(x) = argmax_c (v_c(x) + z_c),  z_c ~ N(0, σ²) i.i.d.      (GNMax, [Q] int32)

Sensitivity (add/remove-one adjacency of the client's data, one query, fixed coins of the
other points): adding a point z either misses kNN(x) (nothing changes), or enters it; then
if |S_x| ≥ k it pushes out the former k-th neighbour (+1 on y_z, −1 on that neighbour's
label, or no change when they agree), and if |S_x| < k it only adds +1 on y_z. Removing a
point is the same move backwards. The ranking of the other points is untouched because a
point's distance depends only on the query and the point, and the index tie-break keeps their
relative order when a point is inserted or deleted. So ‖Δv‖₂ ≤ √2 (‖Δv‖₁ ≤ 2) per query, and
one query with noise std σ is the Gaussian mechanism with noise multiplier σ/√2:

    one query, q = 1:   GaussianDpEvent(σ/√2)
    one query, q < 1:   PoissonSampledDpEvent(q, GaussianDpEvent(σ/√2))
    Q queries:          SelfComposedDpEvent(<one query>, Q)        (see `labeling_event`)

The queries are public (pool samples), so composing the Q releases is all that is needed; σ is
calibrated for the Q queries together (`calibrate_sigma`). `private_knn_labels` records the
composed event as ONE ledger entry named "ecos_private_knn_labels", under add-or-remove-one
(the Poisson amplification above has no replace-one analysis in `dp_accounting`).

Noise keys: the subsampling coins and the vote noise come from OS entropy by default, fresh on
every call. A `noise_seed` (reproducible research only) needs the ledger the labels are
recorded in, created with `reproducible_seed=noise_seed`; the entry's position in that ledger
is folded into the key (`protocol.release_key`), so two labellings in one ledger never share
coins or noise.

Design choices: Poisson coins for query number j come from `fold_in(key, j)`, so the votes do
not depend on `chunk_size`; distances use ‖x_i‖² − 2⟨x, x_i⟩ (the query's own norm does not
change the ranking) with one [chunk, d] × [d, N] matmul per chunk, so memory is
O(chunk_size · N), never O(Q · N). Caveat, as for noise in `keys.py`: float32 rounding of
near-tied distances is outside the sensitivity argument above.

Communication (`KnnLabels`): `bytes_up` = the labels in the smallest unsigned integer type
that holds C − 1 (1 byte per query for C ≤ 256); `bytes_down` = what the cloud sent, by
default the query features as float32 (Q·d·4 bytes); pass the size of what a deployment
really sends (the images, or 4·Q bytes of pool indices when the client holds the public pool).

    >>> ledger = PrivacyLedger(1e-5, accountant="pld")
    >>> out = private_knn_labels(pool_features[picks], client_features, client_labels,
    ...                          num_classes=10, k=50, epsilon=2.0, delta=1e-5, ledger=ledger)
    >>> out.labels.shape, out.sigma, out.bytes_up      # (Q,), σ in votes, Q bytes
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from functools import partial

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np

from ecos_jax.ecos import protocol
from ecos_jax.privacy import accounting
from ecos_jax.privacy.ledger import PrivacyLedger
from ecos_jax.privacy.mechanisms import gaussian_mechanism
from ecos_jax.samplers import validation

SENSITIVITY = (
    "L2 = sqrt(2) (L1 = 2) per query (add-or-remove-one client sample): adding or removing one "
    "client sample changes a query's k-nearest-neighbour vote histogram by +1 on one class and "
    "-1 on another"
)
LEDGER_NAME = "ecos_private_knn_labels"

_SQRT2 = math.sqrt(2.0)
_HIGHEST = jax.lax.Precision.HIGHEST  # no TF32 on GPUs: distances decide the neighbours
# Default chunk: at most this many query × client distances live at once (16 MiB of float32).
_CHUNK_ELEMENTS = 1 << 22


# --------------------------------------------------------------------------- input checks


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")
    return int(value)


def _check_sigma(sigma) -> float:
    try:
        sigma = float(sigma)
    except (TypeError, jax.errors.ConcretizationTypeError) as err:
        raise ValueError(f"sigma must be a concrete float >= 0, got {sigma!r}.") from err
    if not sigma >= 0.0 or math.isinf(sigma):  # `not >=` also rejects NaN
        raise ValueError(f"sigma must be a finite float >= 0, got {sigma}.")
    return sigma


def _check_rate(sampling_rate) -> float:
    rate = float(sampling_rate)
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"sampling_rate must be in (0, 1], got {sampling_rate}.")
    return rate


def _check_epsilon(epsilon) -> float:
    epsilon = float(epsilon)
    if not epsilon > 0.0:  # also rejects NaN
        raise ValueError(f"epsilon must be > 0 (inf for exact, non-private labels), got {epsilon}.")
    return epsilon


def _as_features(name: str, x) -> np.ndarray | jax.Array:
    if not validation.is_array(x):
        x = np.asarray(x, np.float32)
    validation.check_features(x, name)  # rank, empty, float dtype, NaN / inf
    return x


def _check_inputs(queries, client_features, client_labels, num_classes, k, sampling_rate):
    """Validates everything `knn_votes` needs before any tracing; returns jax arrays."""
    num_classes = _check_int("num_classes", num_classes, 1)
    k = _check_int("k", k, 1)
    sampling_rate = _check_rate(sampling_rate)
    queries = _as_features("queries", queries)
    client_features = _as_features("client_features", client_features)
    n, d = client_features.shape
    if queries.shape[1] != d:
        raise ValueError(
            f"feature dimension mismatch: queries are {queries.shape[1]}-d but client_features "
            f"are {d}-d; both must be in the same public feature space.")
    labels = np.asarray(client_labels)
    if labels.shape != (n,):
        raise ValueError(f"client_labels must have shape [N] = ({n},), got {labels.shape}.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"client_labels must be integers, got dtype {labels.dtype}.")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"client_labels must lie in [0, num_classes={num_classes}), got range "
                         f"[{labels.min()}, {labels.max()}].")
    return (jnp.asarray(queries, jnp.float32), jnp.asarray(client_features, jnp.float32),
            jnp.asarray(labels, jnp.int32), num_classes, k, sampling_rate)


# --------------------------------------------------------------------------- votes


@partial(jax.jit, static_argnames=("k", "num_classes", "subsample"))
def _votes_chunk(key, row0, queries, x, x_sqnorm, labels, rate, *, k, num_classes, subsample):
    """queries [B, d] (rows row0.. of the padded query array) -> votes [B, num_classes]."""
    # The query's own norm is the same for every client point: it cannot change the ranking.
    scores = x_sqnorm[None, :] - 2.0 * jnp.dot(queries, x.T, precision=_HIGHEST)  # [B, N]
    if subsample:
        rows = row0 + jnp.arange(queries.shape[0], dtype=jnp.int32)
        # One independent Poisson draw per query, keyed by its global row: chunking-invariant.
        u = jax.vmap(lambda r: jax.random.uniform(jax.random.fold_in(key, r), x_sqnorm.shape))(rows)
        member = u < rate
        scores = jnp.where(member, scores, jnp.inf)
    else:
        member = jnp.ones(scores.shape, bool)
    # top_k puts the lower index first among equal values: the tie-break the sensitivity needs.
    _, idx = jax.lax.top_k(-scores, k)  # [B, k]
    # With fewer than k points sampled, the unsampled fillers do not vote (by mask, not by an
    # inf distance, which a huge but finite feature could also produce).
    valid = jnp.take_along_axis(member, idx, axis=1)
    onehot = jax.nn.one_hot(labels[idx], num_classes, dtype=jnp.int32)  # [B, k, C]
    return jnp.sum(onehot * valid[..., None].astype(jnp.int32), axis=1)


def knn_votes(
    key: jax.Array,
    queries,
    client_features,
    client_labels,
    *,
    num_classes: int,
    k: int,
    sampling_rate: float = 1.0,
    chunk_size: int | None = None,
) -> jax.Array:
    """Label histogram of each query's k nearest (Poisson-subsampled) client points.

    Args:
      key: PRNG key for the Poisson subsampling (unused when `sampling_rate` is 1); it must be
        secret for the subsampling to amplify privacy (see `keys.noise_key`).
      queries: `[Q, d]` float, public features of the points to label.
      client_features: `[N, d]` float, the client's private features (same extractor).
      client_labels: `[N]` int in [0, num_classes).
      num_classes: C ≥ 1.
      k: neighbours per query, ≥ 1 (k > |sample| gives the votes of the whole sample).
      sampling_rate: q in (0, 1]; each client point joins each query's sample independently.
      chunk_size: queries per jitted step (memory O(chunk_size · N)); None picks it so that a
        chunk holds at most 2**22 distances. The result does not depend on it.

    Returns:
      `[Q, C]` int32 votes; each row sums to min(k, |S_x|).
    """
    queries, x, labels, num_classes, k, rate = _check_inputs(
        queries, client_features, client_labels, num_classes, k, sampling_rate)
    chunk_size = validation.check_chunk_size(chunk_size)
    validation.check_key(key)
    num_queries, n = queries.shape[0], x.shape[0]
    if chunk_size is None:
        chunk_size = max(1, _CHUNK_ELEMENTS // n)
    chunk_size = min(chunk_size, num_queries)
    # Pad to whole chunks so that every step has the same shape (one compilation).
    padded = -(-num_queries // chunk_size) * chunk_size
    queries = jnp.pad(queries, ((0, padded - num_queries), (0, 0)))
    x_sqnorm = jnp.sum(x * x, axis=1)
    parts = [
        _votes_chunk(key, jnp.int32(start), queries[start:start + chunk_size], x, x_sqnorm, labels,
                     jnp.float32(rate), k=min(k, n), num_classes=num_classes,
                     subsample=rate < 1.0)
        for start in range(0, padded, chunk_size)
    ]
    return jnp.concatenate(parts)[:num_queries]


# --------------------------------------------------------------------------- GNMax


def gnmax_scores(key: jax.Array, votes, sigma: float) -> jax.Array:
    """votes + N(0, σ²) on every entry: `[Q, C]` float32 (the scores `noisy_argmax` ranks).

    σ is the noise std in votes. The votes have L2 sensitivity √2 per query, so this is
    `gaussian_mechanism` with noise multiplier σ/√2 (what `labeling_event` accounts).
    """
    sigma = _check_sigma(sigma)
    votes = jnp.asarray(votes)
    if votes.ndim != 2 or votes.shape[1] == 0:
        raise ValueError(f"votes must be [Q, C] with C >= 1, got shape {votes.shape}.")
    values = votes.astype(jnp.float32)
    if sigma == 0.0:
        return values
    return gaussian_mechanism(key, values, sigma=sigma / _SQRT2, l2_sensitivity=_SQRT2)


def noisy_argmax(key: jax.Array, votes, sigma: float) -> jax.Array:
    """GNMax: argmax_c (votes_c + N(0, σ²)) per row, `[Q]` int32.

    σ = 0 gives the plain argmax (ties to the lower class): non-private, for ablations only.
    """
    return jnp.argmax(gnmax_scores(key, votes, sigma), axis=1).astype(jnp.int32)


# --------------------------------------------------------------------------- accounting


def labeling_event(
    sigma: float, num_queries: int, sampling_rate: float = 1.0
) -> dp_accounting.DpEvent:
    """The DpEvent of `num_queries` GNMax labels with noise std `sigma` (in votes).

    `SelfComposed(Gaussian(σ/√2), Q)`, with the Gaussian wrapped in `PoissonSampled(q, ·)` when
    q < 1; σ = 0 is a `NonPrivateDpEvent` (ε = ∞).
    """
    sigma = _check_sigma(sigma)
    num_queries = _check_int("num_queries", num_queries, 1)
    rate = _check_rate(sampling_rate)
    if sigma == 0.0:
        return dp_accounting.NonPrivateDpEvent()
    one = dp_accounting.GaussianDpEvent(sigma / _SQRT2)
    if rate < 1.0:
        one = dp_accounting.PoissonSampledDpEvent(rate, one)
    return dp_accounting.SelfComposedDpEvent(one, num_queries)


@functools.lru_cache(maxsize=64)
def _calibrate_cached(epsilon: float, delta: float, num_queries: int, rate: float,
                      accountant: str) -> float:
    # The search starts at a guess of 1 and bisects down from the first σ that meets ε; PLD
    # evaluations at far-too-small σ are slow (a wide loss grid: minutes for Q = 3000 at q = 1).
    # Searching over σ / scale, scale ≈ the answer's order of magnitude (Q Gaussians of
    # multiplier σ/√2 equal one of σ/√(2Q); sampling at q needs roughly q√Q of it), keeps every
    # evaluation near the target.
    scale = _SQRT2 * max(1.0, rate * math.sqrt(num_queries))
    unit = accounting.calibrate(
        lambda s: labeling_event(s * scale, num_queries, rate), epsilon, delta, accountant)
    return float(unit * scale)


def calibrate_sigma(
    target_epsilon: float,
    delta: float,
    num_queries: int,
    sampling_rate: float = 1.0,
    accountant: str = "pld",
) -> float:
    """Noise std σ (in votes) so that `num_queries` labels together are (ε, δ)-DP.

    `epsilon(labeling_event(σ, num_queries, sampling_rate), delta, accountant) <= target`;
    `target_epsilon = inf` gives 0. Memoised (the PLD search takes seconds).
    """
    epsilon = _check_epsilon(target_epsilon)
    delta = accounting.check_delta(delta)
    num_queries = _check_int("num_queries", num_queries, 1)
    rate = _check_rate(sampling_rate)
    if accountant not in accounting.ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {accounting.ACCOUNTANTS}, got {accountant!r}.")
    if math.isinf(epsilon):
        return 0.0
    return _calibrate_cached(epsilon, delta, num_queries, rate, accountant)


# --------------------------------------------------------------------------- the release


@dataclasses.dataclass(frozen=True)
class KnnLabels:
    """Client → cloud: Q noisy-argmax labels, and what they cost in privacy and bytes.

    labels: `[Q]` int32 in [0, C).  sigma: noise std in votes (0 = exact kNN labels).
    epsilon, delta: the target the Q labels together were calibrated to.
    event: the DpEvent recorded for them.  bytes_up / bytes_down: see the module docstring.
    """

    labels: np.ndarray
    sigma: float
    epsilon: float
    delta: float
    num_queries: int
    event: dp_accounting.DpEvent
    bytes_up: int
    bytes_down: int


def _wire_itemsize(num_classes: int) -> int:
    """Bytes per label in the smallest unsigned type that holds num_classes − 1."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if num_classes - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype).itemsize
    return 8


def private_knn_labels(
    queries,
    client_features,
    client_labels,
    *,
    num_classes: int,
    k: int,
    epsilon: float,
    delta: float,
    sampling_rate: float = 1.0,
    accountant: str = "pld",
    noise_seed: int | None = None,
    ledger: PrivacyLedger | None = None,
    chunk_size: int | None = None,
    bytes_down: int | None = None,
) -> KnnLabels:
    """The client's whole release: calibrate σ, vote, add noise, record one ledger entry.

    Args:
      queries: `[Q, d]` public features of the cloud's picks.
      client_features, client_labels: `[N, d]`, `[N]` the client's labelled private data.
      num_classes, k, sampling_rate, chunk_size: as in `knn_votes`.
      epsilon: target ε of all Q labels together (> 0; `inf` = exact kNN labels, non-private).
      delta: δ in (0, 1).
      accountant: `"pld"` or `"rdp"`, for the calibration.
      noise_seed: None (default) draws the subsampling and noise keys from OS entropy, fresh on
        every call; an int makes them reproducible (research only) and then needs `ledger`,
        created with `reproducible_seed=noise_seed`: the entry's position in it keeps every
        labelling's draws distinct (ValueError otherwise).
      ledger: where the release is recorded (name "ecos_private_knn_labels").
      bytes_down: bytes the cloud sent for the queries; default the float32 query features.
    """
    epsilon = _check_epsilon(epsilon)
    delta = accounting.check_delta(delta)
    if noise_seed is not None and ledger is None:
        raise ValueError(
            f"noise_seed={noise_seed} needs the ledger the labels are recorded in (created with "
            "reproducible_seed=noise_seed): without it two seeded labellings would reuse the same "
            "coins and noise.")
    # Before any work: a seeded key with a ledger not marked with that seed is refused.
    key, reproducible = protocol.release_key(noise_seed, ledger, mechanism=LEDGER_NAME)
    queries, x, labels, num_classes, k, rate = _check_inputs(
        queries, client_features, client_labels, num_classes, k, sampling_rate)
    num_queries = int(queries.shape[0])
    if bytes_down is None:
        bytes_down = num_queries * int(queries.shape[1]) * 4
    bytes_down = _check_int("bytes_down", bytes_down, 0)
    sigma = calibrate_sigma(epsilon, delta, num_queries, rate, accountant)
    # Both the subsample and the noise must be secret: amplification needs unknown coins.
    k_sample, k_noise = jax.random.split(key)
    votes = knn_votes(k_sample, queries, x, labels, num_classes=num_classes, k=k,
                      sampling_rate=rate, chunk_size=chunk_size)
    noisy = np.asarray(noisy_argmax(k_noise, votes, sigma), np.int32)
    event = labeling_event(sigma, num_queries, rate)
    if ledger is not None:
        ledger.record(LEDGER_NAME, event, sensitivity=SENSITIVITY, relation=protocol.RELATION,
                      num_queries=num_queries,
                      num_classes=num_classes, k=k, sampling_rate=rate, sigma=sigma,
                      target_epsilon=epsilon, delta=delta, accountant=accountant,
                      reproducible_noise=reproducible)
    return KnnLabels(labels=noisy, sigma=sigma, epsilon=epsilon, delta=delta,
                     num_queries=num_queries, event=event,
                     bytes_up=num_queries * _wire_itemsize(num_classes), bytes_down=bytes_down)


__all__ = [
    "SENSITIVITY", "LEDGER_NAME", "KnnLabels", "knn_votes", "gnmax_scores", "noisy_argmax",
    "labeling_event", "calibrate_sigma", "private_knn_labels",
]
