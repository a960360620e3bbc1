"""Spool records and codec: validation at construction, exact round trips through SQLite."""

from __future__ import annotations

import asyncio
import tempfile
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spool import (
    Event,
    JSONValue,
    LedgerEntry,
    LedgerState,
    Quality,
    Reading,
    ReadingKind,
    ReadingValue,
    Spool,
    codec,
)

CST = timezone(timedelta(hours=8))
T0 = datetime(2024, 5, 1, tzinfo=CST)


def reading(**overrides: object) -> Reading:
    fields: dict[str, object] = {
        "meter": "000000000001",
        "di": "05060101",
        "data_time": T0,
        "read_time": T0 + timedelta(minutes=7, microseconds=123),
        "values": {"total": ReadingValue(Decimal("123.45"), "kWh")},
        "quality": Quality.OK,
        "kind": ReadingKind.DAILY_FROZEN,
        "source": "rs485-1",
    }
    fields.update(overrides)
    return Reading(**fields)  # type: ignore[arg-type]


# -- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"meter": "12345678901"}, ValueError, "12 decimal digits"),
        ({"meter": "12345678901a"}, ValueError, "12 decimal digits"),
        ({"meter": "١٢٣٤٥٦٧٨٩٠١٢"}, ValueError, "12 decimal digits"),  # non-ASCII digits
        ({"di": "9a10"}, ValueError, "uppercase hex"),
        ({"di": "050601"}, ValueError, "uppercase hex"),
        ({"data_time": datetime(2024, 5, 1)}, ValueError, "timezone-aware"),
        ({"data_time": T0.replace(microsecond=5)}, ValueError, "whole seconds"),
        ({"read_time": datetime(2024, 5, 1)}, ValueError, "timezone-aware"),
        ({"values": {"total": Decimal(1)}}, TypeError, "ReadingValue"),
        ({"values": {"$dec": ReadingValue(1)}}, ValueError, "not starting"),
        ({"values": {"": ReadingValue(1)}}, ValueError, "non-empty"),
        ({"quality": "great"}, ValueError, "great"),
        ({"kind": "weekly"}, ValueError, "weekly"),
        ({"source": ""}, ValueError, "source"),
    ],
)
def test_reading_refuses_bad_fields(overrides: dict[str, object], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        reading(**overrides)


def test_reading_value_refuses_float() -> None:
    with pytest.raises(TypeError, match="never float"):
        ReadingValue(1.5, "kWh")  # type: ignore[arg-type]


def test_reading_coerces_enum_strings_and_freezes_values() -> None:
    values = {"total": ReadingValue(Decimal(1), "kWh")}
    r = reading(quality="not_frozen", kind="billing", values=values)
    assert r.quality is Quality.NOT_FROZEN
    assert r.kind is ReadingKind.BILLING
    values["other"] = ReadingValue(2)
    assert "other" not in r.values  # copied, not aliased
    with pytest.raises(TypeError):
        r.values["x"] = ReadingValue(3)  # type: ignore[index]


def test_readings_hash_and_compare_by_value() -> None:
    a = reading()
    twin = reading(values={"total": ReadingValue(Decimal("123.45"), "kWh")})
    assert a == twin
    assert len({a, twin, reading(di="9010")}) == 2
    assert a.key == ("000000000001", "05060101", T0)
    assert a != reading(source="plc")  # same key, different record


def test_ledger_entry_normalises_times_to_utc() -> None:
    state: object = "failed"  # a plain string is coerced to the StrEnum
    e = LedgerEntry(
        "000000000001", date(2024, 5, 1), "05060101", state, 2, "timeout",  # type: ignore[arg-type]
        T0 + timedelta(hours=1), T0,
    )  # fmt: skip
    assert e.state is LedgerState.FAILED
    assert e.updated == T0
    assert e.updated.tzinfo is UTC
    assert e.next_attempt is not None
    assert e.next_attempt.utcoffset() == timedelta(0)
    with pytest.raises(ValueError, match="attempts"):
        LedgerEntry("000000000001", date(2024, 5, 1), "x", LedgerState.DONE, -1, None, None, T0)
    with pytest.raises(TypeError, match="date"):
        LedgerEntry("000000000001", T0, "x", LedgerState.DONE, 0, None, None, T0)


def test_ledger_entry_with_state_counts_the_attempt() -> None:
    e = LedgerEntry.pending("000000000001", date(2024, 5, 1), "05060101", now=T0)
    later = T0 + timedelta(minutes=5)
    failed = e.with_state(LedgerState.FAILED, now=later, reason="timeout", next_attempt=later)
    assert (failed.attempts, failed.state, failed.reason, failed.updated) == (
        1,
        LedgerState.FAILED,
        "timeout",
        later,
    )


# -- codec ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["0.00", "0", "-0.000", "1E+2", "123456789012345678901234567890.123", "1e-30", "NaN"]
)
def test_decimal_round_trip_is_exact(text: str) -> None:
    d = Decimal(text)
    (back,) = codec.decode_values(codec.encode_values({"x": ReadingValue(d)})).values()
    assert isinstance(back.value, Decimal)
    assert str(back.value) == str(d)  # same digits and exponent, not merely equal


def test_values_json_is_tagged_and_compact() -> None:
    encoded = codec.encode_values(
        {"total": ReadingValue(Decimal("0.10"), "kWh"), "word": ReadingValue("0A1F")}
    )
    assert encoded == '{"total":{"v":{"$dec":"0.10"},"u":"kWh"},"word":{"v":"0A1F"}}'


def test_event_details_round_trip_nested_decimals() -> None:
    details: dict[str, JSONValue] = {
        "delta": Decimal("-0.50"),
        "nested": {"list": [Decimal("1.0"), 2, "三"]},
    }
    assert codec.loads(codec.dumps(details)) == details
    assert str(codec.loads(codec.dumps(details))["delta"]) == "-0.50"


@pytest.mark.parametrize(
    ("details", "error"),
    [
        ({"$dec": "1"}, ValueError),
        ({"x": float("nan")}, ValueError),
        ({"x": datetime.now(UTC)}, TypeError),
        ({"x": {1: 2}}, ValueError),
    ],
)
def test_event_details_refuse_what_would_not_round_trip(
    details: dict[str, JSONValue], error: type[Exception]
) -> None:
    with pytest.raises(error):
        codec.dumps(details)


def test_since_until_boundaries_are_exact() -> None:
    t = datetime(2024, 5, 1, 0, 0, 0, tzinfo=UTC)
    assert codec.epoch_seconds_ceil(t) == codec.epoch_seconds(t) == 1714521600
    assert codec.epoch_seconds_ceil(t + timedelta(microseconds=1)) == 1714521601
    assert codec.epoch_seconds(t - timedelta(microseconds=1)) == 1714521599


@given(st.lists(st.datetimes(timezones=st.just(UTC)), min_size=2, max_size=2))
def test_ledger_times_are_fixed_width_so_text_order_is_time_order(pair: list[datetime]) -> None:
    a, b = (codec.utc_text(t) for t in pair)
    assert len(a) == len(b) == 27
    assert (a < b) == (pair[0] < pair[1])
    assert datetime.fromisoformat(a) == pair[0]


# -- property: every field survives SQLite ------------------------------------------------------

OFFSETS = st.integers(-12 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
AWARE = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31), timezones=OFFSETS
)
SCALARS = st.one_of(
    st.decimals(allow_nan=False, allow_infinity=False, places=None),
    st.integers(-(2**62), 2**62),
    st.text(max_size=8),
    st.booleans(),
    st.none(),
)
VALUES = st.dictionaries(
    st.text(min_size=1, max_size=6).filter(lambda s: not s.startswith("$")),
    st.builds(ReadingValue, SCALARS, st.one_of(st.none(), st.sampled_from(["kWh", "V", "元"]))),
    max_size=5,
)
READINGS = st.builds(
    Reading,
    meter=st.text("0123456789", min_size=12, max_size=12),
    di=st.text("0123456789ABCDEF", min_size=8, max_size=8) | st.sampled_from(["9010", "C032"]),
    data_time=AWARE.map(lambda t: t.replace(microsecond=0)),
    read_time=AWARE,
    values=VALUES,
    quality=st.sampled_from(Quality),
    kind=st.sampled_from(ReadingKind),
    source=st.text(min_size=1, max_size=10),
)


def _key(r: Reading) -> tuple[str, str, int]:
    return (r.meter, r.di, codec.epoch_seconds(r.data_time))


async def _write_and_read(path: Path, batch: list[Reading]) -> tuple[int, list[Reading]]:
    async with Spool.connect(path) as spool:
        new = await spool.write_readings(batch)
        return new, await spool.readings()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(READINGS, max_size=6))
def test_every_field_round_trips_through_sqlite(batch: list[Reading]) -> None:
    first: dict[tuple[str, str, int], Reading] = {}
    for r in batch:
        first.setdefault(_key(r), r)
    with tempfile.TemporaryDirectory() as tmp:
        new, back = asyncio.run(_write_and_read(Path(tmp) / "spool.sqlite", batch))
    assert new == len(first)
    assert len(back) == len(first)
    for got in back:
        want = first[_key(got)]  # the first writer of a key wins
        assert got == want
        assert got.data_time.utcoffset() == want.data_time.utcoffset()
        assert got.read_time.utcoffset() == want.read_time.utcoffset()
        for name, value in want.values.items():
            assert type(got.values[name].value) is type(value.value)
            assert str(got.values[name].value) == str(value.value)


def test_event_record_freezes_details() -> None:
    e = Event("gw", "time_sync", "000000000001", T0, {"offset_s": 3})
    with pytest.raises(TypeError):
        e.details["x"] = 1  # type: ignore[index]
    with pytest.raises(ValueError, match="type"):
        Event("gw", "", "", T0)
