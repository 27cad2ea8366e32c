"""A privacy ledger: every private release of a run, composed into one ε at δ.

See docs/algorithms.md#ledger and docs/privacy.md.

Each party that lets a private quantity go (a DP-SGD model, the ECOS client's noisy counts,
released scores, private labels) records it here as a `dp_accounting.DpEvent` together with a
plain statement of the sensitivity the event assumes. The ledger composes the events and
reports the total ε with either accountant; `save` writes it beside the run's results, and
`load` rebuilds it so that a saved claim can be re-checked.

    >>> ledger = PrivacyLedger(delta=1e-5)
    >>> ledger.record("client_counts", dp_accounting.GaussianDpEvent(6.68),
    ...               sensitivity="L2 = 1: each client sample changes one count by one")
    >>> round(ledger.epsilon(), 2)
    0.58
    >>> ledger.save("runs/x/ledger.json")

One ledger composes releases analysed under ONE neighbouring relation (`relation`:
"add_or_remove_one" — the default, and the only one under which sampled events such as
Poisson DP-SGD are analysed — or "replace_one", e.g. shuffled DP-SGD or a per-sample score
release over a public set of ids). Each entry states its relation; an entry under another
relation is refused, because composing the two would state neither guarantee. Keep one ledger
per relation and report both.

Some events can be composed by one accountant only (truncated Poisson sampling: PLD). Such a
ledger reports ε for the accountants that can compose all of its entries (`accountants()`), and
`epsilon(accountant=...)` with another one raises, naming the entry.

A ledger whose noise key came from a fixed seed (`reproducible_seed`) is marked
reproducible-research-only: its noise is predictable to anyone who knows the seed, so its ε is
not a guarantee against such an adversary.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from typing import Any

import dp_accounting

from ecos_jax.privacy import accounting

SEEDED_WARNING = (
    "Noise was drawn from a fixed seed: reproducible research only. Anyone who knows the seed "
    "can recompute and subtract the noise, so the epsilon below is not a privacy guarantee."
)


def _jsonable(value: Any) -> Any:
    """Converts numpy/jax scalars and arrays and non-finite floats to strict-JSON values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "inf" / "nan": strict JSON has no infinities
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"ledger metadata must be JSON-serialisable; got {type(value).__name__}.")


def event_to_json(event: dp_accounting.DpEvent) -> dict:
    """A nested dict (`{"class_name": ..., field: ...}`) that `event_from_json` inverts."""

    def convert(v):
        if hasattr(v, "_fields") and "class_name" in v._fields:
            return {k: convert(x) for k, x in v._asdict().items() if k != "module_name"}
        if isinstance(v, (list, tuple)):
            return [convert(x) for x in v]
        return v

    return convert(event.to_named_tuple())


def event_from_json(data: dict) -> dp_accounting.DpEvent:
    """Rebuilds a DpEvent written by `event_to_json`."""

    def convert(v):
        if isinstance(v, dict):
            cls = getattr(dp_accounting.dp_event, v["class_name"], None)
            if cls is None or not issubclass(cls, dp_accounting.DpEvent):
                raise ValueError(f"Unknown DpEvent class {v['class_name']!r} in saved ledger.")
            return cls(**{k: convert(x) for k, x in v.items() if k != "class_name"})
        if isinstance(v, list):
            return [convert(x) for x in v]
        return v

    return convert(data)


@dataclasses.dataclass(frozen=True)
class LedgerEntry:
    """One private release: what left, its DpEvent, and the sensitivity that event assumes."""

    name: str
    event: dp_accounting.DpEvent
    sensitivity: str
    meta: dict
    relation: str = "add_or_remove_one"

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("a ledger entry needs a non-empty name.")
        if not isinstance(self.event, dp_accounting.DpEvent):
            raise ValueError(
                f"entry {self.name!r}: event must be a dp_accounting.DpEvent, "
                f"got {type(self.event).__name__}."
            )
        if not isinstance(self.sensitivity, str) or not self.sensitivity.strip():
            raise ValueError(
                f"entry {self.name!r}: state the sensitivity the event assumes, e.g. "
                "'L2 = 1: each client sample changes one count by one'."
            )
        accounting.check_relation(self.relation)
        if self.relation != "add_or_remove_one" and accounting.is_sampled(self.event):
            raise ValueError(
                f"entry {self.name!r}: a sampled event (Poisson, truncated Poisson, ...) is "
                "accounted with amplification by sampling, which holds under add_or_remove_one "
                f"only, not under {self.relation}."
            )


class PrivacyLedger:
    """Records every private release of a run and composes them.

    Args:
      delta: the δ at which totals are reported; in (0, 1).
      accountant: default accountant for `epsilon`, `"rdp"` or `"pld"`.
      relation: the neighbouring relation every entry is analysed under (`RELATIONS`).
      reproducible_seed: the seed the noise key came from, or None for OS entropy (see
        `ecos_jax.privacy.keys.noise_key`); a seeded ledger is marked reproducible-only.
      dataset_size: when given, δ < 1/N is enforced (unless `allow_large_delta`).
    """

    def __init__(
        self,
        delta: float = 1e-5,
        *,
        accountant: str = "rdp",
        relation: str = "add_or_remove_one",
        reproducible_seed: int | None = None,
        dataset_size: int | None = None,
        allow_large_delta: bool = False,
    ):
        self.delta = accounting.check_delta(
            delta, dataset_size, allow_large_delta=allow_large_delta
        )
        if accountant not in accounting.ACCOUNTANTS:
            raise ValueError(
                f"accountant must be one of {accounting.ACCOUNTANTS}, got {accountant!r}."
            )
        if reproducible_seed is not None and (
            isinstance(reproducible_seed, bool) or not isinstance(reproducible_seed, int)
        ):
            raise ValueError(f"reproducible_seed must be an int or None, got {reproducible_seed!r}.")
        self.accountant = accountant
        self.relation = accounting.check_relation(relation)
        self.reproducible_seed = reproducible_seed
        self.dataset_size = dataset_size
        self.entries: list[LedgerEntry] = []

    @property
    def reproducible(self) -> bool:
        """True when noise came from a fixed seed (reproducible research only)."""
        return self.reproducible_seed is not None

    def record(
        self,
        name: str,
        event: dp_accounting.DpEvent,
        *,
        sensitivity: str,
        relation: str | None = None,
        **meta,
    ) -> None:
        """Adds one private release; `meta` is JSON.

        `sensitivity` states the bound the event assumes and `relation` the neighbouring
        relation it holds under (None: the ledger's). An entry under another relation than the
        ledger's, or an event no accountant can compose, is refused and nothing is recorded.
        """
        relation = self.relation if relation is None else relation
        entry = LedgerEntry(name, event, sensitivity, _jsonable(meta), relation)
        if relation != self.relation:
            raise ValueError(
                f"entry {name!r} holds under {relation} but this ledger composes "
                f"{self.relation} releases: one ledger composes one neighbouring relation "
                "(keep a ledger per relation and report each)."
            )
        if not accounting.supported_accountants(event):
            raise ValueError(f"entry {name!r}: the accountants {accounting.ACCOUNTANTS} cannot "
                             f"compose {event}.")
        self.entries.append(entry)

    def accountants(self) -> tuple[str, ...]:
        """The accountants that can compose every entry (both when empty)."""
        return tuple(a for a in accounting.ACCOUNTANTS
                     if all(a in accounting.supported_accountants(e.event) for e in self.entries))

    def composed_event(self) -> dp_accounting.DpEvent:
        """All entries as one `ComposedDpEvent` (a `NoOpDpEvent` when empty)."""
        if not self.entries:
            return dp_accounting.NoOpDpEvent()
        return dp_accounting.ComposedDpEvent([e.event for e in self.entries])

    def epsilon(self, delta: float | None = None, accountant: str | None = None) -> float:
        """Total ε over all entries at `delta` (default: the ledger's); 0.0 when empty.

        Raises ValueError when `accountant` cannot compose an entry (see `accountants()`).
        """
        accountant = self.accountant if accountant is None else accountant
        if accountant not in accounting.ACCOUNTANTS:
            raise ValueError(
                f"accountant must be one of {accounting.ACCOUNTANTS}, got {accountant!r}.")
        if not self.entries:
            return 0.0
        for e in self.entries:
            if accountant not in accounting.supported_accountants(e.event):
                raise ValueError(
                    f"the {accountant!r} accountant cannot compose entry {e.name!r}; this "
                    f"ledger is accounted with {self.accountants() or 'no accountant'}.")
        return accounting.epsilon(
            self.composed_event(), self.delta if delta is None else delta, accountant)

    total_epsilon = epsilon  # the name ARCHITECTURE.md uses

    def to_dict(self) -> dict:
        """JSON-serialisable summary: entries with events and per-entry ε, totals, δ, flags.

        ε of an accountant that cannot compose an entry (or the ledger) is written as null.
        """
        entries = []
        for e in self.entries:
            supported = accounting.supported_accountants(e.event)
            entries.append(
                {
                    "name": e.name,
                    "relation": e.relation,
                    "sensitivity": e.sensitivity,
                    "event": event_to_json(e.event),
                    "epsilon": {
                        acc: accounting.epsilon(e.event, self.delta, acc) if acc in supported
                        else None
                        for acc in accounting.ACCOUNTANTS
                    },
                    "meta": e.meta,
                }
            )
        usable = self.accountants()
        out = {
            "delta": self.delta,
            "accountant": self.accountant,
            "neighboring_relation": self.relation,
            "reproducible": self.reproducible,
            "reproducible_seed": self.reproducible_seed,
            "dataset_size": self.dataset_size,
            "entries": entries,
            "total_epsilon": {
                acc: self.epsilon(accountant=acc) if acc in usable else None
                for acc in accounting.ACCOUNTANTS
            },
        }
        if self.reproducible:
            out["warning"] = SEEDED_WARNING
        return _jsonable(out)

    def save(self, path: str | os.PathLike) -> None:
        """Writes `to_dict()` as JSON, atomically (temp file in the same folder + os.replace)."""
        path = os.fspath(path)
        folder = os.path.dirname(path) or "."
        os.makedirs(folder, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".ledger-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise

    @classmethod
    def from_dict(cls, data: dict) -> PrivacyLedger:
        """Rebuilds a ledger from `to_dict()` output (events included, ε recomputed on demand)."""
        relation = data.get("neighboring_relation", "add_or_remove_one")
        ledger = cls(
            data["delta"],
            accountant=data.get("accountant", "rdp"),
            relation=relation,
            reproducible_seed=data.get("reproducible_seed"),
        )
        ledger.dataset_size = data.get("dataset_size")
        for e in data["entries"]:
            ledger.record(
                e["name"], event_from_json(e["event"]), sensitivity=e["sensitivity"],
                relation=e.get("relation", relation), **e["meta"],
            )
        return ledger

    @classmethod
    def load(cls, path: str | os.PathLike) -> PrivacyLedger:
        """Reads a ledger written by `save`."""
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        names = ", ".join(e.name for e in self.entries)
        return f"PrivacyLedger(delta={self.delta}, relation={self.relation}, entries=[{names}])"


__all__ = ["PrivacyLedger", "LedgerEntry", "event_to_json", "event_from_json"]
