"""The checks' in-memory history: what a sample holds, exactly, and what samples share.

Two thousand meters keep some 150,000 samples, so the history shares what repeats (value
names, data times, offsets, small flag and counter tuples) and holds decimals packed; these
tests pin that the packing loses nothing (value, exponent, type) and that the sharing happens
when the history is read from a real spool.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gateway.checks import HistoryCache, history_of, spans
from gateway.checks.history import KEPT
from spool import ChecksStore, Quality, Reading, ReadingKind, ReadingValue, Spool

from .test_checks_rules import at, row

A, B = "000000000001", "000000000002"
NOW = at(3)


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    async with Spool.connect(tmp_path / "spool.sqlite") as s:
        yield s


def reading(meter: str, when: dt.datetime, read: dt.datetime, **values: Any) -> Reading:
    return Reading(
        meter, "05060101", when, read,
        {k: ReadingValue(v, "kWh" if isinstance(v, Decimal) else None) for k, v in values.items()},
        Quality.OK, ReadingKind.DAILY_FROZEN, "bus-1",
    )  # fmt: skip


@pytest.mark.parametrize(
    "text",
    ["1234.56", "0.00", "-0.00", "-12.300", "7", "5E+3", "1.5E-7", "NaN", "-Infinity",
     "12345678901234567890123456789.5", "99999999999999999999.99"],
)  # fmt: skip
def test_a_decimal_comes_back_exactly_with_its_exponent(text: str) -> None:
    value = Decimal(text)
    h = history_of(A, [row(ReadingKind.DAILY_FROZEN, at(1), forward_active_total=value)])
    back = h.frozen[0].values["forward_active_total"]
    assert isinstance(back, Decimal)
    assert str(back) == text or (back.is_nan() and value.is_nan())
    assert back.as_tuple() == value.as_tuple()
    assert h.frozen[0].dec("forward_active_total") == back or value.is_nan()


def test_flags_and_counters_keep_their_type_when_shared() -> None:
    # (True,) == (1,): a shared tuple must not turn a counter into a flag or back.
    h = history_of(
        A,
        [
            row(ReadingKind.STATUS, at(1), relay_open=True),
            row(ReadingKind.EVENT_COUNTER, at(1), power_down_count=1),
            row(ReadingKind.STATUS, at(2), relay_open=1),
            row(ReadingKind.EVENT_COUNTER, at(2), power_down_count=True),
        ],
    )
    status, counters = h.of(ReadingKind.STATUS), h.of(ReadingKind.EVENT_COUNTER)
    assert [type(s.values["relay_open"]) for s in status] == [bool, int]
    assert [type(s.values["power_down_count"]) for s in counters] == [int, bool]
    assert (status[0].flag("relay_open"), status[1].flag("relay_open")) == (True, None)
    assert (counters[0].number("power_down_count"), counters[1].number("power_down_count")) == (
        1,
        None,
    )


def test_rows_of_one_data_time_merge_and_unkept_names_are_dropped() -> None:
    late = at(1, minute=9)
    h = history_of(
        A,
        [
            row(ReadingKind.DAILY_FROZEN, at(1), quality=Quality.NOT_FROZEN,
                reverse_active_total=Decimal("0.00"), reactive_q1_total=Decimal("3.00")),
            row(ReadingKind.DAILY_FROZEN, at(1), read=late, forward_active_total=Decimal("12.50"),
                forward_active_peak=Decimal("4.00")),
            row(ReadingKind.DAILY_FROZEN, at(1), read=at(1, minute=1),
                reverse_active_total=Decimal("0.10")),
        ],
    )  # fmt: skip
    (sample,) = h.frozen
    assert dict(sample.values) == {
        "forward_active_peak": Decimal("4.00"),
        "forward_active_total": Decimal("12.50"),
        "reverse_active_total": Decimal("0.10"),
    }
    assert sample.quality is Quality.OK  # the row that carried the forward total
    assert sample.read == late
    assert sample.values.get("reactive_q1_total", "absent") == "absent"
    with pytest.raises(KeyError):
        sample.values["reactive_q1_total"]


async def test_meters_share_names_midnights_and_offsets(spool: Spool) -> None:
    midnight = at(1)
    await spool.write_readings(
        [
            reading(m, midnight, at(1, minute=5 + i), forward_active_total=Decimal(f"{100 + i}.25"),
                    reverse_active_total=Decimal("0.00"))
            for i, m in enumerate((A, B))
        ]
    )  # fmt: skip
    cache = HistoryCache(ChecksStore(spool), spans(30, 24))
    assert await cache.refresh(NOW) == 2
    a, b = cache.meters[A].frozen[0], cache.meters[B].frozen[0]
    assert a.time == b.time == midnight
    assert a.time is b.time
    assert a.read != b.read
    assert a.read.tzinfo is b.read.tzinfo is a.time.tzinfo
    kept = {name: name for name in KEPT[ReadingKind.DAILY_FROZEN]}
    for x, y in zip(a.values, b.values, strict=True):
        assert x is y is kept[x]
    assert (a.dec("forward_active_total"), b.dec("forward_active_total")) == (
        Decimal("100.25"),
        Decimal("101.25"),
    )
    assert a.values["reverse_active_total"] == Decimal("0.00")
