"""Records ⇄ SQLite column values: tagged-Decimal JSON, instants, and row tuples.

JSON text columns write a Decimal as ``{"$dec": "0.00"}`` (its exact ``str``), so it comes back
as the same Decimal, trailing zeros and exponent included; keys starting with ``$`` are
reserved for such tags. A reading's values column is
``{"<name>": {"v": <value>, "u": "<unit>"}}`` (``"u"`` omitted when there is no unit).

Instants: a reading's data time is kept as written (ISO 8601 with the meter's offset) and as UTC
epoch seconds; an event's time as ISO text and UTC epoch microseconds; ledger times as
fixed-width UTC text (``2024-05-01T00:00:00.000000Z``) so text order is time order.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from spool.records import (
    Alarm,
    Event,
    JSONValue,
    LedgerEntry,
    LedgerState,
    Quality,
    Reading,
    ReadingKind,
    ReadingValue,
    Severity,
)

DECIMAL_TAG = "$dec"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)
_MICROSECOND = timedelta(microseconds=1)


def _plain(obj: object) -> Any:
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if isinstance(obj, Decimal):
        return {DECIMAL_TAG: str(obj)}
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise ValueError(f"non-finite float {obj!r} is not JSON")
        return obj
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            if not isinstance(key, str) or key.startswith("$"):
                raise ValueError(f"JSON keys must be str not starting '$' (reserved): {key!r}")
            out[key] = _plain(value)
        return out
    if isinstance(obj, list | tuple):
        return [_plain(item) for item in obj]
    raise TypeError(f"{type(obj).__name__} is not JSON-able (convert it first): {obj!r}")


def _hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and DECIMAL_TAG in obj:
        return Decimal(obj[DECIMAL_TAG])
    return obj


def dumps(obj: Mapping[str, JSONValue]) -> str:
    """Compact UTF-8 JSON with Decimals tagged; raises on anything that would not round-trip."""
    return json.dumps(_plain(obj), ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def loads(text: str) -> Any:
    return json.loads(text, object_hook=_hook)


def encode_values(values: Mapping[str, ReadingValue]) -> str:
    # Hot path (every reading): values are already validated flat scalars, so skip _plain's walk.
    out: dict[str, dict[str, Any]] = {}
    for name, item in values.items():
        value: Any = item.value
        if isinstance(value, Decimal):
            value = {DECIMAL_TAG: str(value)}
        out[name] = {"v": value} if item.unit is None else {"v": value, "u": item.unit}
    return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


def decode_values(text: str) -> dict[str, ReadingValue]:
    raw: dict[str, dict[str, Any]] = json.loads(text, object_hook=_hook)
    return {name: ReadingValue(item["v"], item.get("u")) for name, item in raw.items()}


def epoch_seconds(moment: datetime) -> int:
    """UTC epoch seconds, floored (exact for the whole-second times readings carry)."""
    return (moment - _EPOCH) // _SECOND


def epoch_seconds_ceil(moment: datetime) -> int:
    """Smallest whole second >= moment: ``n >= ceil(t)`` iff ``n >= t`` for integer seconds."""
    return -((_EPOCH - moment) // _SECOND)


def epoch_micros(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND


def utc_text(moment: datetime) -> str:
    # isoformat pads the year to 4 digits (strftime's %Y does not on glibc), keeping it fixed width.
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def require_aware(name: str, moment: datetime) -> datetime:
    if moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {moment.isoformat()}")
    return moment


# Row tuples in the column order the INSERT and SELECT statements in spool.store use.
ReadingRow = tuple[str, str, int, str, str, str, str, str, str]
LedgerRow = tuple[str, str, str, str, int, str | None, str | None, str]
EventRow = tuple[str, str, str, int, str, str]
AlarmRow = tuple[str, str, int, str, str, str, str, str]


def reading_row(r: Reading) -> ReadingRow:
    return (
        r.meter,
        r.di,
        epoch_seconds(r.data_time),
        r.data_time.isoformat(),
        r.read_time.isoformat(),
        r.kind.value,
        r.quality.value,
        r.source,
        encode_values(r.values),
    )


def row_reading(row: Sequence[Any]) -> Reading:
    meter, di, _epoch, data_time, read_time, kind, quality, source, value_json = row
    return Reading(
        meter=meter,
        di=di,
        data_time=datetime.fromisoformat(data_time),
        read_time=datetime.fromisoformat(read_time),
        values=decode_values(value_json),
        quality=Quality(quality),
        kind=ReadingKind(kind),
        source=source,
    )


def ledger_row(e: LedgerEntry) -> LedgerRow:
    return (
        e.meter,
        e.day.isoformat(),
        e.item,
        e.state.value,
        e.attempts,
        e.reason,
        None if e.next_attempt is None else utc_text(e.next_attempt),
        utc_text(e.updated),
    )


def row_ledger(row: Sequence[Any]) -> LedgerEntry:
    meter, day, item, state, attempts, reason, next_attempt, updated = row
    return LedgerEntry(
        meter=meter,
        day=date.fromisoformat(day),
        item=item,
        state=LedgerState(state),
        attempts=attempts,
        reason=reason,
        next_attempt=None if next_attempt is None else datetime.fromisoformat(next_attempt),
        updated=datetime.fromisoformat(updated),
    )


def event_row(e: Event) -> EventRow:
    return (
        e.source,
        e.type,
        e.subject,
        epoch_micros(e.event_time),
        e.event_time.isoformat(),
        dumps(e.details),
    )


def row_event(row: Sequence[Any]) -> Event:
    source, type_, subject, _us, event_time, details = row
    return Event(
        source=source,
        type=type_,
        subject=subject,
        event_time=datetime.fromisoformat(event_time),
        details=loads(details),
    )


def alarm_row(a: Alarm) -> AlarmRow:
    return (
        a.meter,
        a.type,
        epoch_micros(a.window_start),
        a.window_start.isoformat(),
        a.window_end.isoformat(),
        a.raised.isoformat(),
        a.severity.value,
        dumps(a.details),
    )


def row_alarm(row: Sequence[Any]) -> Alarm:
    meter, type_, _us, window_start, window_end, raised, severity, details = row
    return Alarm(
        meter=meter,
        type=type_,
        window_start=datetime.fromisoformat(window_start),
        window_end=datetime.fromisoformat(window_end),
        raised=datetime.fromisoformat(raised),
        severity=Severity(severity),
        details=loads(details),
    )
