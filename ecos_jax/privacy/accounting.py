"""Privacy accounting with `dp_accounting`: ε at δ, DP-SGD events, and noise calibration.

SPEC §1.5. Every function here is a thin, validated layer over `dp_accounting`, so that a number
this project reports can be re-derived by calling `dp_accounting` directly:

    >>> ev = dpsgd_event(q=256 / 60000, sigma=1.1, steps=14062)
    >>> round(epsilon(ev, 1e-5, "rdp"), 2), round(epsilon(ev, 1e-5, "pld"), 2)
    (2.6, 2.38)
    >>> sigma = calibrate_dpsgd_sigma(3.0, 1e-5, q=0.01, steps=1000)   # noise multiplier
    >>> epsilon(dpsgd_event(0.01, sigma, 1000), 1e-5) <= 3.0
    True

Neighbouring relation: add-or-remove-one everywhere (the `dp_accounting` default), except for
shuffled fixed-size batches, which have no add/remove analysis and are accounted under
replace-one (see `dpsgd_event`).

Noise multipliers (σ) are per unit L2 sensitivity: the noise std is σ·C for sensitivity C.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import dp_accounting
from dp_accounting import pld, rdp


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

# Above this noise multiplier a target ε that is still not met is declared unreachable: with
# RDP the conversion to (ε, δ) has a floor (~log(1/δ)/max_order) that no σ can go below.
_SIGMA_MAX = 1e4
# PLD discretisation of the privacy-loss grid; dp_accounting's default, kept explicit so that
# the "direct" call in tests and the project agree.
_PLD_DISCRETIZATION = 1e-4


def make_accountant(accountant: str = "rdp") -> dp_accounting.PrivacyAccountant:
    """A fresh add-or-remove-one accountant: `"rdp"` (Rényi DP) or `"pld"` (privacy-loss dist.)."""
    if accountant == "rdp":
        return rdp.RdpAccountant()
    if accountant == "pld":
        return pld.PLDAccountant(value_discretization_interval=_PLD_DISCRETIZATION)
    raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}.")


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
    """ε at `delta` of `event` under add-or-remove-one adjacency.

    Args:
      event: any `dp_accounting.DpEvent` the chosen accountant supports.
      delta: target δ in (0, 1).
      accountant: `"rdp"` or `"pld"`.

    Returns:
      ε ≥ 0 as a Python float; `inf` for a `NonPrivateDpEvent` (or σ = 0).
    """
    delta = check_delta(delta)
    _check_event(event, accountant)
    key = (repr(event), float(delta), accountant)
    if key not in _EPSILON_CACHE:
        if len(_EPSILON_CACHE) >= 4096:
            _EPSILON_CACHE.clear()
        _EPSILON_CACHE[key] = float(make_accountant(accountant).compose(event).get_epsilon(delta))
    return _EPSILON_CACHE[key]


# ε memoised on the event's repr, which spells out every field (floats round-trip exactly): a
# PLD build of one Gaussian costs about a second on a CPU, and a run asks for the same events
# again and again (calibration, each record's ledger, its saved summary).
_EPSILON_CACHE: dict[tuple[str, float, str], float] = {}


def dpsgd_event(
    q: float, sigma: float, steps: int, sampling: str = "poisson"
) -> dp_accounting.DpEvent:
    """The DpEvent of `steps` DP-SGD steps with noise multiplier `sigma` and sampling rate `q`.

    - `"poisson"`: each example joins each batch independently with probability q (SPEC §1.4):
      `SelfComposed(PoissonSampled(q, Gaussian(σ)), steps)`.
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
    if sigma == 0.0:
        return dp_accounting.NonPrivateDpEvent()
    if sampling == "poisson":
        step = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
        return dp_accounting.SelfComposedDpEvent(step, steps)
    steps_per_epoch = max(1, math.floor(1.0 / q))
    epochs = math.ceil(steps / steps_per_epoch)
    return dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(sigma / 2.0), epochs)


def _calibrate(
    make_event: Callable[[float], dp_accounting.DpEvent],
    target_epsilon: float,
    delta: float,
    accountant: str,
) -> float:
    """Smallest σ (within 1e-6) whose event has ε ≤ target at δ; raises if none can."""
    target_epsilon = float(target_epsilon)
    if math.isnan(target_epsilon) or target_epsilon <= 0.0:
        raise ValueError(f"target_epsilon must be > 0, got {target_epsilon}.")
    delta = check_delta(delta)
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}.")
    if math.isinf(target_epsilon):
        return 0.0
    floor = epsilon(make_event(_SIGMA_MAX), delta, accountant)
    if floor > target_epsilon:
        raise ValueError(
            f"target_epsilon={target_epsilon} is unreachable at delta={delta} with the "
            f"{accountant!r} accountant: even sigma={_SIGMA_MAX:g} gives epsilon={floor:.4g}."
        )
    sigma = dp_accounting.calibrate_dp_mechanism(
        lambda: make_accountant(accountant),
        make_event,
        target_epsilon,
        delta,
        bracket_interval=dp_accounting.LowerEndpointAndGuess(0.0, 1.0),
    )
    return float(sigma)


def calibrate_gaussian_sigma(
    target_epsilon: float, delta: float, *, accountant: str = "rdp"
) -> float:
    """Noise multiplier σ of ONE Gaussian mechanism (per unit L2 sensitivity) reaching ε at δ.

    The mechanism adds N(0, (σ·Δ₂)²) for L2 sensitivity Δ₂. `target_epsilon = inf` gives 0.
    Raises ValueError for ε ≤ 0 or an ε no σ ≤ 1e4 can reach.
    """
    return _calibrate(dp_accounting.GaussianDpEvent, target_epsilon, delta, accountant)


def calibrate_dpsgd_sigma(
    target_epsilon: float,
    delta: float,
    *,
    q: float,
    steps: int,
    accountant: str = "rdp",
    sampling: str = "poisson",
    dataset_size: int | None = None,
    allow_large_delta: bool = False,
) -> float:
    """Noise multiplier σ for DP-SGD with rate `q` over `steps` steps to reach ε at δ.

    `dataset_size`, when given, enforces δ < 1/N (see `check_delta`). The returned σ satisfies
    `epsilon(dpsgd_event(q, σ, steps, sampling), delta, accountant) <= target_epsilon`.
    `target_epsilon = inf` gives σ = 0 (non-private training).
    """
    check_delta(delta, dataset_size, allow_large_delta=allow_large_delta)
    dpsgd_event(q, 1.0, steps, sampling)  # validates q, steps, sampling up front
    return _calibrate(
        lambda s: dpsgd_event(q, s, steps, sampling), target_epsilon, delta, accountant
    )
