"""Each meter's recent history as the rules read it, kept in memory and refreshed by id.

The collector files several DIs read in one session under one data time (a real-time snapshot
is energy, voltage, current and power; a status read is two words), so rows are merged by
``(meter, kind, data time)`` into one :class:`Sample` holding only the value names some rule
reads. Each kind is kept for its own span (:func:`spans`): daily frozen values and event
counters for the whole history (the rolling median; counter pairs across days a meter did not
answer), real-time snapshots for hours, the once-a-day clock, status and prepaid reads for a
couple of days. That is the whole memory footprint of the checks.

:meth:`HistoryCache.refresh` reads only rows with an id above the last one it saw (ids only
grow), so a run after a collection pass costs what that pass wrote. Late rows (a back-filled
day) are inserted in time order. Rows evicted from the spool stay in memory until they age
out, which is harmless: they were true when read.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final, TypeVar, cast

from spool import ChecksStore, Quality, ReadingKind, ScanRow

#: the value names each kind contributes (anything else stays in the spool)
KEPT: Final[Mapping[ReadingKind, frozenset[str]]] = {
    ReadingKind.DAILY_FROZEN: frozenset(
        {
            "forward_active_total", "forward_active_sharp", "forward_active_peak",
            "forward_active_flat", "forward_active_valley", "reverse_active_total",
        }
    ),
    ReadingKind.REALTIME: frozenset(
        {
            "forward_active_total", "reverse_active_total", "active_power_total",
            "voltage_a", "voltage_b", "voltage_c", "current_a", "current_b", "current_c",
        }
    ),
    ReadingKind.CLOCK: frozenset({"meter_time", "gateway_time", "drift"}),
    ReadingKind.STATUS: frozenset(
        {"clock_battery_low", "active_power_reverse", "relay_open", "relay_trip_commanded"}
    ),
    ReadingKind.EVENT_COUNTER: frozenset(
        {"meter_cover_open_count", "terminal_cover_open_count", "power_down_count"}
    ),
    ReadingKind.PREPAID: frozenset(
        {"remaining_amount", "overdraft_amount", "remaining_energy", "overdraft_energy"}
    ),
}  # fmt: skip
#: once-a-day snapshots are kept this long: two reads, with a day's slack
DAILY_SNAPSHOT_SPAN: Final = dt.timedelta(hours=60)
_PAGE: Final = 50_000
T = TypeVar("T")


@dataclass(slots=True)
class Sample:
    """What one meter said at one data time, merged over the DIs read together.

    ``quality`` is the quality of the row that carried ``forward_active_total`` (else the
    first row's); ``read`` is the latest read time among the merged rows.
    """

    time: dt.datetime
    read: dt.datetime
    quality: Quality
    values: dict[str, Any]

    def dec(self, name: str) -> Decimal | None:
        value = self.values.get(name)
        return value if isinstance(value, Decimal) else None

    def number(self, name: str) -> int | None:
        value = self.values.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def flag(self, name: str) -> bool | None:
        value = self.values.get(name)
        return value if isinstance(value, bool) else None


def _key(sample: Sample) -> dt.datetime:
    return sample.time


@dataclass(slots=True)
class MeterHistory:
    """One meter's recent samples per kind, each list in data-time order."""

    meter: str
    series: dict[ReadingKind, list[Sample]] = field(default_factory=dict)
    #: bumped on every change, so values derived from the series can be cached per version
    version: int = 0
    #: the latest read time of anything this meter said (kept when its samples age out)
    last_read: dt.datetime | None = None
    derived: dict[str, tuple[int, object]] = field(default_factory=dict)

    def memo(self, key: str, make: Callable[[], T]) -> T:
        """``make()``, computed once per version of this history (rules share derivations)."""
        hit = self.derived.get(key)
        if hit is not None and hit[0] == self.version:
            return cast(T, hit[1])
        value = make()
        self.derived[key] = (self.version, value)
        return value

    def of(self, kind: ReadingKind) -> list[Sample]:
        return self.series.get(kind, [])

    @property
    def frozen(self) -> list[Sample]:
        return self.of(ReadingKind.DAILY_FROZEN)

    @property
    def realtime(self) -> list[Sample]:
        return self.of(ReadingKind.REALTIME)

    def add(self, row: ScanRow) -> None:
        self.version += 1
        if self.last_read is None or row.read_time > self.last_read:
            self.last_read = row.read_time
        kept = KEPT[row.kind]
        values = {k: v for k, v in row.values.items() if k in kept}
        series = self.series.setdefault(row.kind, [])
        i = bisect.bisect_left(series, row.data_time, key=_key)
        if i < len(series) and series[i].time == row.data_time:
            sample = series[i]
            if "forward_active_total" in values:
                sample.quality = row.quality
            sample.values.update(values)
            sample.read = max(sample.read, row.read_time)
            return
        series.insert(i, Sample(row.data_time, row.read_time, row.quality, values))

    def trim(self, kind: ReadingKind, before: dt.datetime) -> None:
        series = self.series.get(kind)
        if series:
            cut = bisect.bisect_left(series, before, key=_key)
            if cut:
                del series[:cut]
                self.version += 1

    @property
    def empty(self) -> bool:
        return not any(self.series.values())


def history_of(meter: str, rows: Iterable[ScanRow]) -> MeterHistory:
    """A history built from rows directly (tests, benchmarks)."""
    h = MeterHistory(meter)
    for row in rows:
        h.add(row)
    return h


def spans(history_days: int, realtime_hours: int) -> dict[ReadingKind, dt.timedelta]:
    """How long each kind stays in memory."""
    days = dt.timedelta(days=history_days)
    daily = max(DAILY_SNAPSHOT_SPAN, dt.timedelta(hours=realtime_hours))
    return {
        ReadingKind.DAILY_FROZEN: days,
        ReadingKind.EVENT_COUNTER: days,
        ReadingKind.REALTIME: dt.timedelta(hours=realtime_hours),
        ReadingKind.CLOCK: daily,
        ReadingKind.STATUS: daily,
        ReadingKind.PREPAID: daily,
    }


class HistoryCache:
    """Recent history of every meter that has readings, refreshed incrementally."""

    def __init__(self, store: ChecksStore, spans: Mapping[ReadingKind, dt.timedelta]) -> None:
        self._store = store
        self.spans = dict(spans)
        self.meters: dict[str, MeterHistory] = {}
        self.last_id = 0
        self.rows = 0

    def get(self, meter: str) -> MeterHistory:
        history = self.meters.get(meter)
        if history is None:
            history = self.meters[meter] = MeterHistory(meter)
        return history

    async def refresh(self, now: dt.datetime) -> int:
        """Read what was written since the last refresh; drop what aged out. Return rows read."""
        top = await self._store.last_reading_id()
        read = 0
        groups: dict[dt.timedelta, list[ReadingKind]] = {}
        for kind, span in self.spans.items():
            groups.setdefault(span, []).append(kind)
        # Every scan stops at the same id, so a row written between two scans waits for the
        # next refresh instead of being skipped.
        for span, kinds in groups.items():
            after = self.last_id
            while after < top:
                rows = await self._store.scan_readings(
                    after_id=after, until_id=top, kinds=kinds, since=now - span, limit=_PAGE
                )
                for row in rows:
                    self.get(row.meter).add(row)
                read += len(rows)
                if len(rows) < _PAGE:
                    break
                after = rows[-1].id
        self.last_id = max(self.last_id, top)
        self.rows += read
        self.trim(now)
        return read

    def trim(self, now: dt.datetime) -> None:
        for history in self.meters.values():
            for kind, span in self.spans.items():
                history.trim(kind, now - span)
