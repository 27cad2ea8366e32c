"""Privacy accounting with `dp_accounting`: ε at δ, DP-SGD events, and noise calibration.

The events are described in docs/algorithms.md#accounting. Every function here is a thin,
validated layer over `dp_accounting`, so that a number this project reports can be re-derived
by calling `dp_accounting` directly:

    >>> ev = dpsgd_event(q=256 / 60000, sigma=1.1, steps=14062)
    >>> round(epsilon(ev, 1e-5, "rdp"), 2), round(epsilon(ev, 1e-5, "pld"), 2)
    (2.6, 2.38)
    >>> sigma = calibrate_dpsgd_sigma(3.0, 1e-5, q=0.01, steps=1000)   # noise multiplier
    >>> epsilon(dpsgd_event(0.01, sigma, 1000), 1e-5) <= 3.0
    True

Neighbouring relations (`RELATIONS`). Every event is composed with `dp_accounting`'s
add-or-remove-one accountants. An event's parameters are normalised by the sensitivity under
the relation its release is analysed in, so for mechanisms without sampling (Gaussian, Laplace,
their compositions) the number is the same under either relation. Subsampled events
(Poisson, truncated Poisson) carry an amplification analysis that holds under add-or-remove
only. Shuffled fixed-size batches have no add/remove analysis and are accounted under
replace-one (sensitivity 2C, see `dpsgd_event`); `relation_of(sampling)` names the relation of
each DP-SGD sampler, and the ledger refuses to compose entries of different relations.

Noise multipliers (σ) are per unit L2 sensitivity: the noise std is σ·C for sensitivity C.

Speed at large ε. PLD's cost grows with the range of the privacy loss over the grid step:
ε = 100 on dp_accounting's default grid (1e-4) takes tens of seconds and ε = 1000 gigabytes.
`epsilon` therefore widens the grid with the event's ε (`pld_interval`: 1e-4 up to ε ≈ 5, then
about ε / 5·10⁴, a power of two times 1e-4). dp_accounting's PLD is pessimistic, so a coarser
grid only rounds ε up: the bound stays valid and moves by < 1e-4 relative. Calibration
brackets σ from the fast RDP answer and searches on a grid 8× coarser, then checks the result
on the reporting grid, so every calibration returns in seconds for any ε ≤ 1e4.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import dp_accounting
from dp_accounting import pld, rdp
from scipy import optimize


class _OncePerMessage(logging.Filter):
    """Lets dp_accounting's "failed to converge ... excluding this order" through once.

    The RDP accountant logs it for every evaluation at small orders and small σ, so a σ search
    prints it hundreds of times; ε stays a valid bound over the remaining orders.
    """

    def __init__(self):
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "failed to converge" not in record.getMessage():
            return True
        if self.seen:
            return False
        self.seen = True
        return True


logging.getLogger("absl").addFilter(_OncePerMessage())

ACCOUNTANTS = ("rdp", "pld")
SAMPLINGS = ("poisson", "shuffle")
RELATIONS = ("add_or_remove_one", "replace_one")
# Events whose accounting includes privacy amplification by sampling (add-or-remove only).
SAMPLED_EVENTS = (
    dp_accounting.PoissonSampledDpEvent,
    dp_accounting.TruncatedSubsampledGaussianDpEvent,
    dp_accounting.SampledWithReplacementDpEvent,
    dp_accounting.SampledWithoutReplacementDpEvent,
)
# Largest ε a calibration accepts: beyond it a Gaussian's σ is below 1e-3 of the sensitivity,
# which protects nothing; say ε = inf for a non-private run instead.
MAX_TARGET_EPSILON = 1e4

# Above this noise multiplier a target ε that is still not met is declared unreachable: with
# RDP the conversion to (ε, δ) has a floor (~log(1/δ)/max_order) that no σ can go below.
_SIGMA_MAX = 1e4
# PLD discretisation of the privacy-loss grid; dp_accounting's default, kept explicit so that
# the "direct" call in tests and the project agree.
_PLD_DISCRETIZATION = 1e-4


def make_accountant(
    accountant: str = "rdp", *, pld_interval: float = _PLD_DISCRETIZATION
) -> dp_accounting.PrivacyAccountant:
    """A fresh add-or-remove-one accountant: `"rdp"` (Rényi DP) or `"pld"` (privacy-loss dist.).

    `pld_interval` is the PLD grid step (ignored by RDP); see `pld_interval` for the one
    `epsilon` uses.
    """
    if accountant == "rdp":
        return rdp.RdpAccountant()
    if accountant == "pld":
        return pld.PLDAccountant(value_discretization_interval=float(pld_interval))
    raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}.")


def check_relation(relation: str) -> str:
    if relation not in RELATIONS:
        raise ValueError(f"neighbouring relation must be one of {RELATIONS}, got {relation!r}.")
    return relation


def relation_of(sampling: str) -> str:
    """The neighbouring relation DP-SGD with this batch sampler is accounted under."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}.")
    return "add_or_remove_one" if sampling == "poisson" else "replace_one"


def _subevents(event: dp_accounting.DpEvent):
    yield event
    if isinstance(event, dp_accounting.ComposedDpEvent):
        for e in event.events:
            yield from _subevents(e)
    elif hasattr(event, "event"):  # self-composed and sampled events wrap one event
        yield from _subevents(event.event)


def is_sampled(event: dp_accounting.DpEvent) -> bool:
    """True when `event` contains a subsampled event (its analysis is add-or-remove only)."""
    return any(isinstance(e, SAMPLED_EVENTS) for e in _subevents(event))


def supported_accountants(event: dp_accounting.DpEvent) -> tuple[str, ...]:
    """The accountants in `ACCOUNTANTS` that can compose `event` (e.g. only PLD for truncated
    Poisson sampling)."""
    return tuple(a for a in ACCOUNTANTS if make_accountant(a).supports(event))


def _poisson_proxy(event: dp_accounting.DpEvent) -> dp_accounting.DpEvent:
    """`event` with truncated Poisson replaced by plain Poisson: an RDP-computable event of
    about the same ε, used only to size the PLD grid."""
    if isinstance(event, dp_accounting.TruncatedSubsampledGaussianDpEvent):
        return dp_accounting.PoissonSampledDpEvent(
            event.sampling_probability, dp_accounting.GaussianDpEvent(event.noise_multiplier))
    if isinstance(event, dp_accounting.ComposedDpEvent):
        return dp_accounting.ComposedDpEvent([_poisson_proxy(e) for e in event.events])
    if isinstance(event, dp_accounting.SelfComposedDpEvent):
        return dp_accounting.SelfComposedDpEvent(_poisson_proxy(event.event), event.count)
    return event


# PLD grid: the default step up to this many grid steps per unit of ε (ε ≈ 5), coarser above.
_PLD_STEPS_PER_EPSILON = 5e4


def pld_interval(event: dp_accounting.DpEvent, delta: float) -> float:
    """The PLD grid step `epsilon` uses for `event`: 1e-4 · 2^k, the smallest such step with at
    most ~5·10⁴ steps per unit of the event's (RDP-estimated) ε."""
    proxy = _poisson_proxy(event)
    acc = rdp.RdpAccountant()
    if not acc.supports(proxy):
        return _PLD_DISCRETIZATION
    estimate = acc.compose(proxy).get_epsilon(delta)
    if not math.isfinite(estimate):
        return _PLD_DISCRETIZATION
    ratio = estimate / (_PLD_DISCRETIZATION * _PLD_STEPS_PER_EPSILON)
    return _PLD_DISCRETIZATION * 2.0 ** max(0, math.ceil(math.log2(max(ratio, 1.0))))


def check_delta(
    delta: float, dataset_size: int | None = None, *, allow_large_delta: bool = False
) -> float:
    """Validates δ ∈ (0, 1), and δ < 1/N when the dataset size N is known.

    δ ≥ 1/N admits mechanisms that publish one whole record with probability δ·N ≥ 1, so it is
    refused unless `allow_large_delta=True` says the caller knows.
    """
    delta = float(delta)
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}.")
    if dataset_size is not None:
        if int(dataset_size) < 1:
            raise ValueError(f"dataset_size must be >= 1, got {dataset_size}.")
        if delta >= 1.0 / dataset_size and not allow_large_delta:
            raise ValueError(
                f"delta={delta} >= 1/N = {1.0 / dataset_size:.3g} for N={dataset_size}: such a "
                "delta allows releasing a record outright; pick delta < 1/N or pass "
                "allow_large_delta=True."
            )
    return delta


def _check_event(event: dp_accounting.DpEvent, accountant: str) -> None:
    if not isinstance(event, dp_accounting.DpEvent):
        raise ValueError(f"event must be a dp_accounting.DpEvent, got {type(event).__name__}.")
    if not make_accountant(accountant).supports(event):
        raise ValueError(f"The {accountant!r} accountant does not support the event {event}.")


def epsilon(event: dp_accounting.DpEvent, delta: float, accountant: str = "rdp") -> float:
    """ε at `delta` of `event` (see the module docstring for the neighbouring relation).

    PLD runs on the grid `pld_interval(event, delta)`: dp_accounting's default 1e-4 for ε up to
    about 5, so the numbers equal a direct `PLDAccountant()` call there.

    Args:
      event: any `dp_accounting.DpEvent` the chosen accountant supports.
      delta: target δ in (0, 1).
      accountant: `"rdp"` or `"pld"`.

    Returns:
      ε ≥ 0 as a Python float; `inf` for a `NonPrivateDpEvent` (or σ = 0).
    """
    delta = check_delta(delta)
    _check_event(event, accountant)
    return _epsilon(_unwrap(event), delta, accountant, None)


def _unwrap(event: dp_accounting.DpEvent) -> dp_accounting.DpEvent:
    """A `ComposedDpEvent` of one event is that event (the same ε): a ledger with one entry
    then hits the memo its release already filled (a truncated-Poisson PLD costs seconds)."""
    while isinstance(event, dp_accounting.ComposedDpEvent) and len(event.events) == 1:
        event = event.events[0]
    return event


def _epsilon(event, delta: float, accountant: str, interval: float | None) -> float:
    """ε on a given PLD grid step (None: `pld_interval`), memoised."""
    key = (repr(event), float(delta), accountant, interval)
    if key not in _EPSILON_CACHE:
        if len(_EPSILON_CACHE) >= 4096:
            _EPSILON_CACHE.clear()
        step = _PLD_DISCRETIZATION
        if accountant == "pld":
            step = pld_interval(event, delta) if interval is None else interval
        acc = make_accountant(accountant, pld_interval=step)
        _EPSILON_CACHE[key] = float(acc.compose(event).get_epsilon(delta))
    return _EPSILON_CACHE[key]


# ε memoised on the event's repr, which spells out every field (floats round-trip exactly): a
# PLD build of one Gaussian costs about a second on a CPU, and a run asks for the same events
# again and again (calibration, each record's ledger, its saved summary).
_EPSILON_CACHE: dict[tuple[str, float, str], float] = {}


def dpsgd_event(
    q: float,
    sigma: float,
    steps: int,
    sampling: str = "poisson",
    *,
    dataset_size: int | None = None,
    max_batch_size: int | None = None,
) -> dp_accounting.DpEvent:
    """The DpEvent of `steps` DP-SGD steps with noise multiplier `sigma` and sampling rate `q`.

    - `"poisson"`: each example joins each batch independently with probability q:
      `SelfComposed(PoissonSampled(q, Gaussian(σ)), steps)`. When the batch has a fixed number
      of slots M < N (`max_batch_size`, with `dataset_size` N), over-full batches are cut to a
      random M of their examples; that is a different sampler, with its own (PLD-only)
      analysis: `SelfComposed(TruncatedSubsampledGaussian(N, q, M, σ), steps)`. It is the
      event of the sampler that runs, whether or not a batch was actually cut in a run.
    - `"shuffle"`: each epoch is a random permutation cut into batches of size q·N, so an
      example is in exactly one batch per epoch. Shuffling has no privacy-amplification
      guarantee that `dp_accounting` can check, so none is claimed: under replace-one
      adjacency the epoch's one affected batch sum moves by at most 2C in L2, i.e. one
      Gaussian mechanism with noise multiplier σ/2 per epoch, composed over
      ⌈steps / ⌊1/q⌋⌉ epochs. This is conservative, and usually far above the Poisson ε.

    `sigma = 0` gives a non-private event (ε = ∞).
    """
    q, sigma = float(q), float(sigma)
    if not 0.0 < q <= 1.0:
        raise ValueError(f"sampling rate q must be in (0, 1], got {q}.")
    if not sigma >= 0.0:  # also rejects NaN
        raise ValueError(f"noise multiplier sigma must be >= 0, got {sigma}.")
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}.")
    steps = int(steps)
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}.")
    truncated = False
    if max_batch_size is not None:
        if sampling != "poisson":
            raise ValueError("max_batch_size applies to Poisson sampling only.")
        if dataset_size is None or int(dataset_size) < 1:
            raise ValueError("max_batch_size needs the dataset_size N (>= 1) for accounting.")
        if not 1 <= int(max_batch_size) <= int(dataset_size):
            raise ValueError(
                f"max_batch_size must be in [1, N={dataset_size}], got {max_batch_size}.")
        truncated = int(max_batch_size) < int(dataset_size)
    if sigma == 0.0:
        return dp_accounting.NonPrivateDpEvent()
    if sampling == "poisson":
        if truncated:
            step = dp_accounting.TruncatedSubsampledGaussianDpEvent(
                int(dataset_size), q, int(max_batch_size), sigma)
        else:
            step = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
        return dp_accounting.SelfComposedDpEvent(step, steps)
    steps_per_epoch = max(1, math.floor(1.0 / q))
    epochs = math.ceil(steps / steps_per_epoch)
    return dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(sigma / 2.0), epochs)


def calibrate(
    make_event: Callable[[float], dp_accounting.DpEvent],
    target_epsilon: float,
    delta: float,
    accountant: str = "rdp",
) -> float:
    """Smallest noise multiplier σ (to ~1e-6 relative) with `epsilon(make_event(σ)) <= target`.

    `make_event(σ)` must give an event whose ε falls as σ grows. RDP uses
    `dp_accounting.calibrate_dp_mechanism` directly. PLD starts from σ found with RDP on the
    event's Poisson proxy, brackets by halving/doubling, solves on a grid 8× coarser than the
    reporting grid (a pessimistic PLD, so ε is only rounded up) and finally checks σ with
    `epsilon`, stepping σ up if needed. Raises ValueError for ε ≤ 0, ε > 1e4 or an ε that no
    σ ≤ 1e4 reaches; `target_epsilon = inf` gives 0.
    """
    target_epsilon = float(target_epsilon)
    if math.isnan(target_epsilon) or target_epsilon <= 0.0:
        raise ValueError(f"target_epsilon must be > 0, got {target_epsilon}.")
    delta = check_delta(delta)
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}.")
    if math.isinf(target_epsilon):
        return 0.0
    if target_epsilon > MAX_TARGET_EPSILON:
        raise ValueError(
            f"target_epsilon={target_epsilon:g} > {MAX_TARGET_EPSILON:g}: noise calibrated to "
            "such an epsilon protects nothing; use epsilon = inf for a non-private run."
        )
    _check_event(make_event(1.0), accountant)
    floor = epsilon(make_event(_SIGMA_MAX), delta, accountant)
    if floor > target_epsilon:
        raise ValueError(
            f"target_epsilon={target_epsilon} is unreachable at delta={delta} with the "
            f"{accountant!r} accountant: even sigma={_SIGMA_MAX:g} gives epsilon={floor:.4g}."
        )
    if accountant == "rdp":
        return float(dp_accounting.calibrate_dp_mechanism(
            lambda: make_accountant("rdp"), make_event, target_epsilon, delta,
            bracket_interval=dp_accounting.LowerEndpointAndGuess(0.0, 1.0),
        ))
    return _calibrate_pld(make_event, target_epsilon, delta)


def _calibrate_pld(make_event, target: float, delta: float) -> float:
    proxy = lambda s: _poisson_proxy(make_event(s))  # noqa: E731
    try:
        guess = dp_accounting.calibrate_dp_mechanism(
            lambda: make_accountant("rdp"), proxy, target, delta,
            bracket_interval=dp_accounting.LowerEndpointAndGuess(0.0, 1.0))
    except (ValueError, RuntimeError):  # no RDP analysis, or RDP's floor is above the target
        guess = 1.0
    reporting = pld_interval(make_event(guess), delta)
    coarse = 8.0 * reporting

    def excess(log_sigma: float) -> float:
        return _epsilon(make_event(math.exp(log_sigma)), delta, "pld", coarse) - target

    hi = lo = math.log(max(guess, 1e-6))
    while excess(hi) > 0:  # RDP proxies are looser than PLD, so this rarely runs
        hi += math.log(2.0)
        if hi > math.log(_SIGMA_MAX):
            hi = math.log(_SIGMA_MAX)
            break
    lo = hi - math.log(2.0)
    while excess(lo) <= 0:
        lo -= math.log(2.0)
        if lo < math.log(1e-9):
            raise RuntimeError("PLD calibration: epsilon does not grow as sigma falls.")
    root = optimize.brentq(excess, lo, hi, xtol=1e-7, rtol=1e-7)

    # Check on the reporting grid. Where it is coarser than the search grid (large ε, where σ
    # moved the grid up a power of two), solve again on it in a tight bracket.
    def reported(log_sigma: float) -> float:
        return epsilon(make_event(math.exp(log_sigma)), delta, "pld") - target

    hi = root + 1e-6
    if reported(hi) <= 0:
        return float(math.exp(hi))
    lo = hi
    while reported(hi) > 0:
        hi += math.log(1.05)
    root = optimize.brentq(reported, lo, hi, xtol=1e-7, rtol=1e-7)
    for _ in range(20):  # the grid step jumps with σ, so the root may sit on a jump
        if reported(root) <= 0:
            return float(math.exp(root))
        root += 1e-6
    return float(math.exp(hi))


def calibrate_gaussian_sigma(
    target_epsilon: float, delta: float, *, accountant: str = "rdp"
) -> float:
    """Noise multiplier σ of ONE Gaussian mechanism (per unit L2 sensitivity) reaching ε at δ.

    The mechanism adds N(0, (σ·Δ₂)²) for L2 sensitivity Δ₂. `target_epsilon = inf` gives 0.
    Raises ValueError for ε ≤ 0, ε > 1e4 or an ε no σ ≤ 1e4 can reach.
    """
    return calibrate(dp_accounting.GaussianDpEvent, target_epsilon, delta, accountant)


def calibrate_dpsgd_sigma(
    target_epsilon: float,
    delta: float,
    *,
    q: float,
    steps: int,
    accountant: str = "rdp",
    sampling: str = "poisson",
    dataset_size: int | None = None,
    max_batch_size: int | None = None,
    allow_large_delta: bool = False,
) -> float:
    """Noise multiplier σ for DP-SGD with rate `q` over `steps` steps to reach ε at δ.

    `dataset_size`, when given, enforces δ < 1/N (see `check_delta`). With `max_batch_size`
    < N the event is truncated Poisson (see `dpsgd_event`), which only PLD can account, so PLD
    is used whatever `accountant` says. The returned σ satisfies
    `epsilon(dpsgd_event(q, σ, steps, sampling, dataset_size=N, max_batch_size=M), delta,
    acc) <= target_epsilon`. `target_epsilon = inf` gives σ = 0 (non-private training).
    """
    check_delta(delta, dataset_size, allow_large_delta=allow_large_delta)

    def make(s):
        return dpsgd_event(q, s, steps, sampling, dataset_size=dataset_size,
                           max_batch_size=max_batch_size)

    make(1.0)  # validates q, steps, sampling, max_batch_size up front
    if accountant not in supported_accountants(make(1.0)):
        accountant = "pld"
    return calibrate(make, target_epsilon, delta, accountant)
