"""Each meter's recent history as the rules read it, kept in memory and refreshed by id.

The collector files several DIs read in one session under one data time (a real-time snapshot
is energy, voltage, current and power; a status read is two words), so rows are merged by
``(meter, kind, data time)`` into one :class:`Sample` holding only the value names some rule
reads. Each kind is judged over its own span (:func:`spans`): daily frozen values and event
counters over the whole history (the rolling median; counter pairs across days a meter did not
answer), real-time snapshots over hours, the once-a-day clock, status and prepaid reads over a
couple of days. Samples share what repeats (value names, layouts, data times) and hold
decimals packed (see :class:`Layout`).

The short-span kinds stay in memory. The long-span ones (:data:`LONG`, a month of every
meter: they were most of the checks' memory) stay in the spool: :meth:`HistoryCache.refresh`
only notes which meters they changed (bumping the history's version), and the checker reads a
chunk of meters' long history back (:meth:`HistoryCache.loaded`) to judge them, then lets it
go, keeping only what the district rules read every run: each day's verified value, compact
(:class:`VerifiedDays`). The last few dozen meters judged stay held a while (a refresh adds
their new rows): a meter's items of the day arrive over a few minutes, each one a new version
of its history to judge, and reading the month back each time cost more than judging it.

:meth:`HistoryCache.refresh` reads only rows with an id above the last one it saw (ids only
grow), so a run after a collection pass costs what that pass wrote. Late rows (a back-filled
day) are inserted in time order. Short-span rows evicted from the spool stay in memory until
they age out, which is harmless: they were true when read.
"""

from __future__ import annotations

import bisect
import contextlib
import datetime as dt
import struct
import sys
from array import array
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Iterator, Mapping
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
#: the kinds judged over the whole history, read from the spool per chunk of meters
LONG: Final = frozenset({ReadingKind.DAILY_FROZEN, ReadingKind.EVENT_COUNTER})
_LONG_NAMES: Final = frozenset().union(*(KEPT[k] for k in LONG))
#: once-a-day snapshots are kept this long: two reads, with a day's slack
DAILY_SNAPSHOT_SPAN: Final = dt.timedelta(hours=60)
#: rows per scan page: a page's rows and their parsed values are alive at once, so this bounds
#: the transient memory of a refresh (a bigger page saves little: the scan walks the id index)
_PAGE: Final = 2_000
#: meters whose long-span rows are read back in one query: some 1,200 rows, under a page
_LOAD_METERS: Final = 8
#: meters whose long-span samples stay held after they were judged (under a megabyte)
_WARM: Final = 40
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


_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_US: Final = dt.timedelta(microseconds=1)
_OFFSETS: dict[int, dt.tzinfo] = {}


def _zone_of(offset_s: int) -> dt.tzinfo:
    found = _OFFSETS.get(offset_s)
    if found is None:
        found = _OFFSETS[offset_s] = dt.timezone(dt.timedelta(seconds=offset_s))
    return found


@dataclass(frozen=True, slots=True)
class Verified:
    """A day's verified daily value as the district rules read it: when it was read, and its
    forward active total (``None`` if the value carried none)."""

    read: dt.datetime
    forward_total: Decimal | None


class VerifiedDays:
    """Each local day's verified daily value of one meter (see
    :func:`~gateway.checks.series.verified_by_day`), kept between runs while the samples it
    comes from stay in the spool: per day a read time (microseconds and UTC offset) and the
    forward total as a packed coefficient, some 30 bytes a day against a few hundred for a
    sample. Valid for the history ``version`` it was built from."""

    __slots__ = ("_first", "_odd", "_offsets", "_places", "_reads", "_totals", "key", "version")

    def __init__(
        self, by_day: Mapping[dt.date, Sample], key: tuple[object, ...], version: int
    ) -> None:
        self.key = key
        self.version = version
        first = min(by_day, default=dt.date(1970, 1, 1)).toordinal()
        n = max(by_day, default=dt.date(1970, 1, 1)).toordinal() - first + 1 if by_day else 0
        self._first = first
        self._reads = array("q", bytes(8 * n))
        self._offsets = array("i", bytes(4 * n))
        self._totals = array("q", bytes(8 * n))
        #: per day: the total's places; _NONE: no value that day; _AS_IS: in ``_odd``
        self._places = bytearray(b"\xff" * n)
        self._odd: dict[int, Decimal] | None = None
        for day, sample in by_day.items():
            i = day.toordinal() - first
            read = sample.read
            offset = read.utcoffset()
            self._reads[i] = (read - _EPOCH) // _US
            self._offsets[i] = 0 if offset is None else offset // dt.timedelta(seconds=1)
            total = sample.dec(FORWARD_TOTAL)
            held, places = (None, _NO_TOTAL) if total is None else _pack(total)
            if places == _AS_IS or (held is not None and not -(1 << 63) <= held < 1 << 63):
                if self._odd is None:
                    self._odd = {}
                self._odd[i] = cast(Decimal, total)
                places = _ODD
            elif held is not None:
                self._totals[i] = held
            self._places[i] = places

    def get(self, day: dt.date) -> Verified | None:
        i = day.toordinal() - self._first
        if not 0 <= i < len(self._places) or self._places[i] == _NONE:
            return None
        read = (_EPOCH + self._reads[i] * _US).astimezone(_zone_of(self._offsets[i]))
        return Verified(read, self._total(i))

    def totals(self) -> dict[dt.date, Decimal]:
        """Each day's forward total, for the days that have one."""
        out = {}
        for i, places in enumerate(self._places):
            if places not in (_NONE, _NO_TOTAL):
                total = self._total(i)
                assert total is not None
                out[dt.date.fromordinal(self._first + i)] = total
        return out

    def _total(self, i: int) -> Decimal | None:
        places = self._places[i]
        if places == _NO_TOTAL:
            return None
        if places == _ODD:
            assert self._odd is not None
            return self._odd[i]
        return Decimal(self._totals[i]).scaleb(-places, _EXACT)


# Markers in VerifiedDays' places (a DI's places are a handful).
_NONE: Final = 0xFF
_NO_TOTAL: Final = 0xFE
_ODD: Final = 0xFD


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
    #: whether the long-span kinds are in ``series`` (always, unless a cache lets them go)
    held: bool = True
    #: the latest data time of a long-span row within its span (while not held)
    newest: dt.datetime | None = None
    #: when the oldest long-span sample read back ages out (while not held; ``None``: unknown)
    expires: dt.datetime | None = None
    #: the verified days the district rules read (see :class:`VerifiedDays`)
    days: VerifiedDays | None = None

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

    def release(self, kinds: Collection[ReadingKind]) -> None:
        """Let go of the samples of ``kinds`` and of everything derived from the series."""
        for kind in kinds:
            self.series.pop(kind, None)
        self.derived.clear()
        self.held = False

    def touch(self, data_time: dt.datetime, read_time: dt.datetime, span: dt.timedelta) -> None:
        """A long-span row was written (its values stay in the spool until read back)."""
        self.version += 1
        if self.last_read is None or read_time > self.last_read:
            self.last_read = read_time
        if self.newest is None or data_time > self.newest:
            self.newest = data_time
        if self.expires is not None:
            self.expires = min(self.expires, data_time + span)

    def trim(self, kind: ReadingKind, before: dt.datetime) -> None:
        series = self.series.get(kind)
        if series:
            cut = bisect.bisect_left(series, before, key=_key)
            if cut:
                del series[:cut]
                self.version += 1

    @property
    def empty(self) -> bool:
        return not any(self.series.values()) and (self.held or self.newest is None)


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
        #: meters held after their block (least recently judged first)
        self._warm: dict[str, None] = {}

    def get(self, meter: str) -> MeterHistory:
        history = self.meters.get(meter)
        if history is None:
            history = self.meters[meter] = MeterHistory(meter, held=False)
        return history

    async def refresh(self, now: dt.datetime) -> int:
        """Read what was written since the last refresh (the long-span kinds only noted);
        drop what aged out. Return rows read."""
        top = await self._store.last_reading_id()
        read = 0
        groups: dict[dt.timedelta, list[ReadingKind]] = {}
        for kind, span in self.spans.items():
            if kind not in LONG:
                groups.setdefault(span, []).append(kind)
        # Every scan stops at the same id, so a row written between two scans waits for the
        # next refresh instead of being skipped.
        for kind in LONG & self.spans.keys():
            read += await self._touch(kind, top, now)
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

    async def _touch(self, kind: ReadingKind, top: int, now: dt.datetime) -> int:
        """New rows of a long-span kind: the held meters take them (values read), the others
        only note them."""
        span = self.spans[kind]
        after = self.last_id
        read = 0
        while after < top:
            if self._warm:
                rows = await self._store.scan_readings(
                    after_id=after, until_id=top, kinds=[kind], since=now - span, limit=_PAGE
                )
                for row in rows:
                    history = self.get(row.meter)
                    if history.held:
                        history.add(row)
                    else:
                        history.touch(row.data_time, row.read_time, span)
                last, n = (rows[-1].id if rows else top), len(rows)
            else:
                touched = await self._store.scan_touched(
                    after_id=after, until_id=top, kinds=[kind], since=now - span, limit=_PAGE
                )
                for _, meter, data_time, read_time in touched:
                    self.get(meter).touch(data_time, read_time, span)
                last, n = (touched[-1][0] if touched else top), len(touched)
            read += n
            if n < _PAGE:
                break
            after = last
        return read

    def trim(self, now: dt.datetime) -> None:
        longest = max((self.spans[k] for k in LONG & self.spans.keys()), default=None)
        for history in self.meters.values():
            for kind, span in self.spans.items():
                history.trim(kind, now - span)
            # What is in the spool ages out as it would in memory: the history changes.
            if not history.held and history.expires is not None and history.expires < now:
                history.version += 1
                history.expires = None
            if history.newest is not None and (longest is None or history.newest < now - longest):
                history.newest = None

    @contextlib.asynccontextmanager
    async def loaded(self, meters: Collection[str], now: dt.datetime) -> AsyncIterator[None]:
        """The long-span samples of ``meters`` read back from the spool into their histories
        (as of the last refresh) for the duration of the block. After it, the last
        ``_WARM`` meters stay held (a refresh adds their new rows); the others let them go,
        with the values derived from them (only :attr:`MeterHistory.days` stays)."""
        chosen = [m for m in meters if m in self.meters]
        cold = [m for m in chosen if not self.meters[m].held]
        try:
            await self._load(cold, now)
        except BaseException:
            # Half read back: let it go as it was (expires and newest were left as they are).
            for meter in cold:
                self._warm.pop(meter, None)
                self.meters[meter].release(LONG)
            raise
        try:
            yield
        finally:
            # The meters judged last stay held a while: a meter's items of the day arrive
            # over a few minutes, and each would otherwise read its month back again.
            for meter in chosen:
                self._warm.pop(meter, None)
                self._warm[meter] = None
            while len(self._warm) > _WARM:
                self._release(next(iter(self._warm)))

    def _release(self, meter: str) -> None:
        """Let a held meter's long-span samples go back to the spool, noting when the oldest
        ages out and the newest data time."""
        self._warm.pop(meter, None)
        history = self.meters[meter]
        kinds = LONG & self.spans.keys()
        held = [(kind, series) for kind in kinds if (series := history.series.get(kind))]
        history.expires = min((s[0].time + self.spans[k] for k, s in held), default=None)
        history.newest = max((s[-1].time for _, s in held), default=None)
        history.release(kinds)

    def _attach(self, rows: list[ScanRow], now: dt.datetime) -> None:
        """Rows read back from the spool (which a refresh already counted: no new version)
        into their histories, each sample built once from every row of its data time, as
        :meth:`MeterHistory.add` would have merged them in id order."""
        merged: dict[tuple[str, ReadingKind, dt.datetime], list[Any]] = {}
        for row in rows:
            if row.data_time < now - self.spans[row.kind]:
                continue
            canonical = _CANONICAL[row.kind]
            packed = {canonical[k]: _pack(v) for k, v in row.values.items() if k in canonical}
            key = (row.meter, row.kind, row.data_time)
            got = merged.get(key)
            if got is None:
                merged[key] = [row.quality, row.read_time, packed]
                continue
            if FORWARD_TOTAL in packed:
                got[0] = row.quality
            got[1] = max(got[1], row.read_time)
            got[2].update(packed)
        for (meter, kind, time), (quality, read, packed) in merged.items():
            sample = Sample(time, read, quality, {})
            sample._merge(packed, quality)
            self.meters[meter].series.setdefault(kind, []).append(sample)
        for meter, kind in {(m, k) for m, k, _ in merged}:
            self.meters[meter].series[kind].sort(key=_key)

    async def _load(self, meters: list[str], now: dt.datetime) -> None:
        kinds = LONG & self.spans.keys()
        for history in map(self.meters.__getitem__, meters):
            history.held = True
        if not kinds or not meters:
            return
        since = now - max(self.spans[k] for k in kinds)
        # A few meters per query, so the rows parsed at once stay a page or so.
        for i in range(0, len(meters), _LOAD_METERS):
            chunk = meters[i : i + _LOAD_METERS]
            rows = await self._store.scan_meters(
                chunk, kinds=kinds, since=since, until_id=self.last_id, names=_LONG_NAMES
            )
            self._attach(rows, now)
            del rows
