"""Each meter's recent history as the rules read it, kept in memory and refreshed by id.

The collector files several DIs read in one session under one data time (a real-time snapshot
is energy, voltage, current and power; a status read is two words), so rows are merged by
``(meter, kind, data time)`` into one :class:`Sample` holding only the value names some rule
reads. Each kind is kept for its own span (:func:`spans`): daily frozen values and event
counters for the whole history (the rolling median; counter pairs across days a meter did not
answer), real-time snapshots for hours, the once-a-day clock, status and prepaid reads for a
couple of days. That is most of the checks' memory, so samples share what repeats (value
names, layouts, data times) and hold decimals packed (see :class:`Layout`).

:meth:`HistoryCache.refresh` reads only rows with an id above the last one it saw (ids only
grow), so a run after a collection pass costs what that pass wrote. Late rows (a back-filled
day) are inserted in time order. Rows evicted from the spool stay in memory until they age
out, which is harmless: they were true when read.
"""

from __future__ import annotations

import bisect
import datetime as dt
import struct
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Context, Decimal
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
#: rows per scan page: a page's rows and their parsed values are alive at once, so this bounds
#: the transient memory of a refresh (a bigger page saves little: the scan walks the id index)
_PAGE: Final = 5_000
T = TypeVar("T")

# A sample's values are held in the kind's canonical name order, described by a shared
# layout (names, places, quality), because a dict per sample (with its own key strings) and a
# Decimal per value were most of the checks' memory: 2,000 meters keep some 150,000 samples.
# A Decimal whose text is a plain ``[-]digits[.digits]`` is held as its integer coefficient
# with its number of places in the layout (a DI's scale is fixed, so layouts stay few), and
# rebuilt exactly, exponent included, when read; anything else (an exponent, a negative zero)
# is held as it came. A sample whose values are all such coefficients keeps them as one
# string of 8-byte words (a daily frozen value's five registers: 80 bytes, against 520 as
# Decimals); flags and counters go in a tuple, shared when it repeats.
_AS_IS: Final = -1
#: rebuilding rounds to no context's precision: this one holds every packed coefficient
_EXACT: Final = Context(prec=40)
#: tuples of small flags and counters shared between samples (cleared when it grows this big)
_SHARED: dict[tuple[tuple[Any, ...], tuple[type, ...]], tuple[Any, ...]] = {}
_SHARED_MAX: Final = 4096
_WORD: Final = struct.Struct("<q")
_WORDS: Final = {n: struct.Struct(f"<{n}q") for n in range(1, 1 + max(map(len, KEPT.values())))}

FORWARD_TOTAL: Final = "forward_active_total"
#: per kind, each kept name mapped to its canonical string (the one every sample holds)
_CANONICAL: Final[Mapping[ReadingKind, Mapping[str, str]]] = {
    kind: {name: name for name in names} for kind, names in KEPT.items()
}


def _pack(value: Any) -> tuple[Any, int]:
    """How a value is held, and its places if that is a decimal's coefficient (else -1)."""
    if not isinstance(value, Decimal):
        return value, _AS_IS
    text = str(value)
    if len(text) > _EXACT.prec:
        return value, _AS_IS
    whole, _, frac = text.partition(".")
    try:
        # str() of a Decimal has no sign but "-", no blanks, no "_": whatever int() rejects
        # has an exponent or is not finite.
        coefficient = int(whole + frac)
    except ValueError:
        return value, _AS_IS
    if coefficient == 0 and whole.startswith("-"):
        return value, _AS_IS
    return coefficient, len(frac)


def _blob(items: list[Any]) -> bytes | None:
    """Decimal coefficients as machine words, 8 bytes each in one object (an int object and
    a pointer each otherwise), or ``None`` if one does not fit."""
    try:
        return _WORDS[len(items)].pack(*items)
    except (KeyError, struct.error):
        return None


def _small(items: list[Any]) -> tuple[Any, ...]:
    """Flags and counters, which mostly repeat (no cover opened, no reverse power), in a
    tuple shared by every sample that says the same; anything else in a tuple of its own."""
    held = tuple(items)
    if all(v is None or (type(v) in (bool, int) and -5 <= v <= 256) for v in held):
        if len(_SHARED) >= _SHARED_MAX:
            _SHARED.clear()
        # Typed key: (True,) == (1,), and a flag must not come back as a counter.
        return _SHARED.setdefault((held, tuple(map(type, held))), held)
    return held


class Layout:
    """The value names of a sample in canonical order, each one's places (-1: held as is)
    and the sample's quality; one object per distinct combination, shared by every sample
    that has it."""

    __slots__ = ("index", "names", "places", "quality")

    def __init__(self, names: tuple[str, ...], places: tuple[int, ...], quality: Quality) -> None:
        self.names = names
        self.places = places
        self.quality = quality
        self.index = {name: i for i, name in enumerate(names)}

    def value(self, items: bytes | tuple[Any, ...], i: int) -> Any:
        places = self.places[i]
        if places == _AS_IS:
            return items[i]
        held = _WORD.unpack_from(items, i << 3)[0] if isinstance(items, bytes) else items[i]
        return Decimal(held).scaleb(-places, _EXACT)


_LayoutKey = tuple[tuple[str, ...], tuple[int, ...], Quality]
_LAYOUTS: dict[_LayoutKey, Layout] = {}


def _layout(names: tuple[str, ...], places: tuple[int, ...], quality: Quality) -> Layout:
    # Few in practice: names are subsets of KEPT, and a DI's scale is fixed.
    key = (names, places, quality)
    found = _LAYOUTS.get(key)
    if found is None:
        found = _LAYOUTS[key] = Layout(*key)
    return found


class Values(Mapping[str, Any]):
    """A read-only view of a sample's values by name (decimals rebuilt on access)."""

    __slots__ = ("_items", "_layout")

    def __init__(self, layout: Layout, items: bytes | tuple[Any, ...]) -> None:
        self._layout = layout
        self._items = items

    def __getitem__(self, name: str) -> Any:
        return self._layout.value(self._items, self._layout.index[name])

    def get(self, name: str, default: Any = None) -> Any:
        i = self._layout.index.get(name)
        return default if i is None else self._layout.value(self._items, i)

    def __iter__(self) -> Iterator[str]:
        return iter(self._layout.names)

    def __len__(self) -> int:
        return len(self._layout.names)


class Sample:
    """What one meter said at one data time, merged over the DIs read together.

    ``quality`` is the quality of the row that carried ``forward_active_total`` (else the
    first row's); ``read`` is the latest read time among the merged rows.
    """

    __slots__ = ("_items", "_layout", "read", "time")

    def __init__(
        self, time: dt.datetime, read: dt.datetime, quality: Quality, values: Mapping[str, Any]
    ) -> None:
        self.time = time
        self.read = read
        self._layout = _layout((), (), quality)
        self._items: bytes | tuple[Any, ...] = ()
        self._merge({name: _pack(value) for name, value in values.items()}, quality)

    def __repr__(self) -> str:
        return f"Sample({self.time.isoformat()}, {self.quality.value}, {dict(self.values)})"

    @property
    def quality(self) -> Quality:
        return self._layout.quality

    @property
    def values(self) -> Values:
        return Values(self._layout, self._items)

    def get(self, name: str) -> Any:
        layout = self._layout
        i = layout.index.get(name)
        return None if i is None else layout.value(self._items, i)

    def dec(self, name: str) -> Decimal | None:
        value = self.get(name)
        return value if isinstance(value, Decimal) else None

    def number(self, name: str) -> int | None:
        value = self.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def flag(self, name: str) -> bool | None:
        value = self.get(name)
        return value if isinstance(value, bool) else None

    def _merge(self, packed: dict[str, tuple[Any, int]], quality: Quality) -> None:
        """Add (or replace) values, packed (:func:`_pack`) under canonical names."""
        layout = self._layout
        if layout.names:
            items = self._items
            raw = _WORDS[len(layout.names)].unpack(items) if isinstance(items, bytes) else items
            merged = {
                name: (held, places)
                for name, held, places in zip(layout.names, raw, layout.places, strict=True)
            }
            merged.update(packed)
        else:
            merged = packed
        names = tuple(sorted(merged))
        held = [merged[n][0] for n in names]
        places = tuple(merged[n][1] for n in names)
        blob = _blob(held) if _AS_IS not in places else None
        self._layout = _layout(names, places, quality)
        self._items = blob if blob is not None else _small(held)


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
        # Keys are built per call (f-strings); one stored string each, not one per meter.
        self.derived[sys.intern(key)] = (self.version, value)
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
        # The canonical name strings are kept, not the row's: one copy for every sample.
        canonical = _CANONICAL[row.kind]
        packed = {canonical[k]: _pack(v) for k, v in row.values.items() if k in canonical}
        series = self.series.setdefault(row.kind, [])
        i = bisect.bisect_left(series, row.data_time, key=_key)
        if i < len(series) and series[i].time == row.data_time:
            sample = series[i]
            sample._merge(packed, row.quality if FORWARD_TOTAL in packed else sample.quality)
            sample.read = max(sample.read, row.read_time)
            return
        sample = Sample(row.data_time, row.read_time, row.quality, {})
        sample._merge(packed, row.quality)
        series.insert(i, sample)

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
