"""The records the spool stores and returns: readings, ledger entries, events, snapshots.

All are frozen slots dataclasses that validate on construction, so a bad record fails where it
is built (with a ``ValueError``/``TypeError`` naming the field), not deep inside a transaction.
Energy and money are :class:`~decimal.Decimal`; a ``float`` is refused in a reading value.
Datetimes must be aware. Mappings are copied into read-only proxies.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import StrEnum
from types import MappingProxyType
from typing import Protocol, TypeAlias

JSONValue: TypeAlias = (
    "Decimal | int | float | str | bool | Sequence[JSONValue] | Mapping[str, JSONValue] | None"
)
Scalar: TypeAlias = Decimal | int | str | bool | None

_HEX = frozenset("0123456789ABCDEF")


class Clock(Protocol):
    """Anything with ``now()`` returning an aware UTC datetime (drivers' clocks, test clocks)."""

    def now(self) -> datetime: ...


class Quality(StrEnum):
    OK = "ok"
    UNVERIFIED = "unverified"  # frozen value whose freeze time could not be verified
    NOT_FROZEN = "not_frozen"  # current value used as a fallback for a frozen one
    ESTIMATED = "estimated"


class ReadingKind(StrEnum):
    DAILY_FROZEN = "daily_frozen"
    BILLING = "billing"  # settlement-day (结算日) values
    HOURLY_FROZEN = "hourly_frozen"
    CURVE = "curve"
    REALTIME = "realtime"
    CLOCK = "clock"
    STATUS = "status"
    EVENT_COUNTER = "event_counter"
    PREPAID = "prepaid"


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    MAJOR = "major"
    CRITICAL = "critical"


class LedgerState(StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


def check_meter(meter: str) -> None:
    if not (isinstance(meter, str) and len(meter) == 12 and meter.isascii() and meter.isdigit()):
        raise ValueError(f"meter address must be 12 decimal digits, got {meter!r}")


def _check_aware(name: str, value: datetime) -> None:
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {value.isoformat()}")


def _set(obj: object, name: str, value: object) -> None:
    # Normalising a field of a frozen dataclass in __post_init__ is the documented escape hatch.
    object.__setattr__(obj, name, value)


@dataclass(frozen=True, slots=True)
class ReadingValue:
    """One named value of a reading, with its unit (``None`` for unitless words and flags)."""

    value: Scalar
    unit: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.value, float):
            raise TypeError(f"reading values are never float (got {self.value!r}); use Decimal")
        if not isinstance(self.value, Decimal | int | str | bool | None):
            raise TypeError(f"unsupported reading value type {type(self.value).__name__}")
        if self.unit is not None and not isinstance(self.unit, str):
            raise TypeError(f"unit must be str or None, got {self.unit!r}")


@dataclass(frozen=True, slots=True)
class Reading:
    """What one meter said for one data identifier at one data time.

    Natural key: ``(meter, di, data_time)``, compared as an instant. ``data_time`` is in the
    meter's own offset and must be whole seconds (meters state at most seconds; truncate a
    gateway-side time with ``.replace(microsecond=0)``). Stored back, its tzinfo is a fixed
    offset equal to the one written.
    """

    meter: str
    di: str
    data_time: datetime
    read_time: datetime
    values: Mapping[str, ReadingValue]
    quality: Quality
    kind: ReadingKind
    source: str

    def __post_init__(self) -> None:
        check_meter(self.meter)
        di = self.di
        if not (isinstance(di, str) and len(di) in (4, 8) and _HEX.issuperset(di)):
            raise ValueError(f"DI must be 4 or 8 uppercase hex digits, got {di!r}")
        _check_aware("data_time", self.data_time)
        if self.data_time.microsecond:
            raise ValueError(f"data_time must be whole seconds, got {self.data_time.isoformat()}")
        _check_aware("read_time", self.read_time)
        values = dict(self.values)
        for name, value in values.items():
            if not isinstance(name, str) or not name or name.startswith("$"):
                raise ValueError(f"value name must be a non-empty str not starting '$': {name!r}")
            if not isinstance(value, ReadingValue):
                raise TypeError(f"values[{name!r}] must be a ReadingValue, got {value!r}")
        _set(self, "values", MappingProxyType(values))
        _set(self, "quality", Quality(self.quality))
        _set(self, "kind", ReadingKind(self.kind))
        if not isinstance(self.source, str) or not self.source:
            raise ValueError(f"source (bus name) must be a non-empty str, got {self.source!r}")

    @property
    def key(self) -> tuple[str, str, datetime]:
        """The natural key; two readings with equal keys are the same reading to the spool."""
        return (self.meter, self.di, self.data_time)

    def __hash__(self) -> int:
        # The generated hash would hash the values proxy (unhashable); the key is consistent
        # with __eq__ because equal readings have equal keys (datetimes hash by instant).
        return hash(self.key)


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """Collection state of one item (a DI or a named group) for one meter on one day.

    ``next_attempt`` and ``updated`` are stored and returned in UTC.
    """

    meter: str
    day: date
    item: str
    state: LedgerState
    attempts: int
    reason: str | None
    next_attempt: datetime | None
    updated: datetime

    def __post_init__(self) -> None:
        check_meter(self.meter)
        if not isinstance(self.day, date) or isinstance(self.day, datetime):
            raise TypeError(f"day must be a date, got {self.day!r}")
        if not isinstance(self.item, str) or not self.item:
            raise ValueError(f"item must be a non-empty str, got {self.item!r}")
        _set(self, "state", LedgerState(self.state))
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise TypeError(f"attempts must be an int, got {self.attempts!r}")
        if self.attempts < 0:
            raise ValueError(f"attempts must be >= 0, got {self.attempts}")
        if self.reason is not None and not isinstance(self.reason, str):
            raise TypeError(f"reason must be str or None, got {self.reason!r}")
        if self.next_attempt is not None:
            _check_aware("next_attempt", self.next_attempt)
            _set(self, "next_attempt", self.next_attempt.astimezone(UTC))
        _check_aware("updated", self.updated)
        _set(self, "updated", self.updated.astimezone(UTC))

    @classmethod
    def pending(cls, meter: str, day: date, item: str, *, now: datetime) -> LedgerEntry:
        """A fresh entry: nothing tried yet, due immediately."""
        return cls(meter, day, item, LedgerState.PENDING, 0, None, None, now)

    def with_state(
        self,
        state: LedgerState,
        *,
        now: datetime,
        reason: str | None = None,
        next_attempt: datetime | None = None,
        attempt: bool = True,
    ) -> LedgerEntry:
        """This entry after an attempt (or a manual change when ``attempt`` is false)."""
        return dataclasses.replace(
            self,
            state=state,
            attempts=self.attempts + (1 if attempt else 0),
            reason=reason,
            next_attempt=next_attempt,
            updated=now,
        )


@dataclass(frozen=True, slots=True)
class LedgerSummary:
    """Counts per state for one day. ``success_rate`` is ``done / total`` as a Decimal rounded
    half-even to 4 places (``Decimal("0.9766")``), or ``None`` when the day has no entries."""

    day: date
    pending: int
    done: int
    failed: int
    success_rate: Decimal | None

    @property
    def total(self) -> int:
        return self.pending + self.done + self.failed


@dataclass(frozen=True, slots=True)
class Event:
    """A gateway or meter event (time sync sent, archive mismatch, relay command...).

    Natural key: ``(source, type, event_time, subject)``, the time compared as an instant;
    ``subject`` is ``""`` for gateway-wide events. ``details`` holds JSON values and Decimals;
    read back, sequences are lists and Decimals are exact.
    """

    source: str
    type: str
    subject: str
    event_time: datetime
    details: Mapping[str, JSONValue] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("source", "type", "subject"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a str, got {getattr(self, name)!r}")
        if not self.type:
            raise ValueError("event type must be non-empty")
        _check_aware("event_time", self.event_time)
        _set(self, "details", MappingProxyType(dict(self.details)))

    @property
    def key(self) -> tuple[str, str, datetime, str]:
        return (self.source, self.type, self.event_time, self.subject)

    def __hash__(self) -> int:
        return hash(self.key)


@dataclass(frozen=True, slots=True)
class Alarm:
    """Something found wrong at the edge (a check failed, the spool evicted data...).

    Natural key: ``(meter, type, window_start)``, the time compared as an instant; ``meter``
    is a 12-digit address, or ``""`` for an alarm about the gateway itself. ``window_start`` and
    ``window_end`` bound the period the alarm speaks for; writing the same key again is a no-op,
    so a check that re-runs over the same window raises its alarm once.
    """

    meter: str
    type: str
    window_start: datetime
    window_end: datetime
    raised: datetime
    severity: Severity
    details: Mapping[str, JSONValue] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.meter != "":
            check_meter(self.meter)
        if not isinstance(self.type, str) or not self.type:
            raise ValueError(f"alarm type must be a non-empty str, got {self.type!r}")
        _check_aware("window_start", self.window_start)
        _check_aware("window_end", self.window_end)
        if self.window_end < self.window_start:
            raise ValueError("window_end is before window_start")
        _check_aware("raised", self.raised)
        _set(self, "severity", Severity(self.severity))
        _set(self, "details", MappingProxyType(dict(self.details)))

    @property
    def key(self) -> tuple[str, str, datetime]:
        return (self.meter, self.type, self.window_start)

    def __hash__(self) -> int:
        return hash(self.key)


@dataclass(frozen=True, slots=True)
class SpoolStatistics:
    """A snapshot for metrics. ``file_bytes`` counts the database, its ``-wal`` and ``-shm``."""

    path: str
    schema_version: int
    rows: Mapping[str, int]
    readings_by_kind: Mapping[ReadingKind, int]
    file_bytes: int
    wal_bytes: int
