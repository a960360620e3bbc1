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
from gateway.checks import history as history_module
from gateway.checks.history import KEPT, Verified
from gateway.checks.series import verified_days
from gateway.config import Edition
from spool import ChecksStore, Quality, Reading, ReadingKind, ReadingValue, Spool

from .test_checks_rules import ZONE, at, row

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
    assert cache.meters[A].frozen == []  # in the spool until read back
    async with cache.loaded([A, B], NOW):
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


async def test_the_month_stays_in_the_spool_until_read_back_and_ages_out_there(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history_module, "_WARM", 1)
    await spool.write_readings(
        [
            reading(m, at(d), at(d, minute=5), forward_active_total=Decimal(f"{d}.5"))
            for m in (A, B)
            for d in (0, 1, 2)
        ]
    )
    cache = HistoryCache(ChecksStore(spool), spans(2, 24))
    assert await cache.refresh(at(2, 1)) == 4  # day 0 is more than two days back
    a, b = cache.meters[A], cache.meters[B]
    assert (a.frozen, a.held, a.empty) == ([], False, False)
    assert (a.newest, a.last_read) == (at(2), at(2, 0, 5))
    version = a.version
    async with cache.loaded([A], at(2, 1)):
        assert [s.time for s in a.frozen] == [at(1), at(2)]
        assert verified_days(a, Edition.V2007, ZONE) is not None
    async with cache.loaded([B], at(2, 1)):
        assert [s.dec("forward_active_total") for s in b.frozen] == [Decimal("1.5"), Decimal("2.5")]
    # One meter stays held (the last one read back): a new row joins its samples; the other
    # let its samples go, keeping its verified days, and is only told something changed.
    assert (a.held, a.frozen, a.version) == (False, [], version)
    assert [s.time for s in b.frozen] == [at(1), at(2)]
    days = verified_days(a, Edition.V2007, ZONE)
    assert days is not None
    assert days.get(at(1).date()) == Verified(at(1, 0, 5), Decimal("1.5"))
    await spool.write_readings(
        [reading(m, at(3), at(3, minute=5), forward_active_total=Decimal("3.5")) for m in (A, B)]
    )
    assert await cache.refresh(at(3, 1)) == 2
    assert a.version == version + 2  # the new row, and day 1 aging out in the spool
    assert (a.frozen, a.newest) == ([], at(3))
    assert [s.time for s in b.frozen] == [at(2), at(3)]
    async with cache.loaded([A], at(3, 1)):
        assert [s.dec("forward_active_total") for s in a.frozen] == [Decimal("2.5"), Decimal("3.5")]
    # Everything aged out: the released meter has nothing left, and says so.
    cache.trim(at(6))
    assert (b.held, b.frozen, b.empty) == (False, [], True)
