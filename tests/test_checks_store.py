"""The checks' tables in a real spool file: alarm life, balance journal, line loss, state."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import aiosqlite
import pytest

from spool import (
    CLEARED_SUFFIX,
    MIGRATIONS,
    Alarm,
    AlarmClear,
    BalanceEntry,
    BalanceKind,
    ChecksStore,
    JSONValue,
    LineLossResult,
    LineLossState,
    Outbox,
    Quality,
    Reading,
    ReadingKind,
    ReadingValue,
    Severity,
    Spool,
    Stream,
)
from spool.schema import migrate

from .test_checks_rules import at

METER = "000000000001"


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    async with Spool.connect(tmp_path / "spool.sqlite") as s:
        yield s


def alarm(type_: str = "clock_deviation", hour: int = 1) -> Alarm:
    return Alarm(
        METER, type_, at(1, hour), at(1, hour + 1), at(2), Severity.WARNING, {"state": "raised"}
    )


async def test_a_version_2_spool_gains_the_checks_tables(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    async with aiosqlite.connect(path, isolation_level=None) as conn:
        await migrate(conn, path, MIGRATIONS[:2])
    async with Spool.connect(path) as s:
        assert s.schema_version == len(MIGRATIONS) >= 3
        assert await ChecksStore(s).active_alarms() == []
        assert await ChecksStore(s).balance("A1") is None


async def test_raise_and_clear_once_and_both_reach_the_alarms_stream(spool: Spool) -> None:
    store = ChecksStore(spool)
    assert await store.apply_alarms([alarm()], []) == (1, 0)
    assert await store.apply_alarms([alarm()], []) == (0, 0)  # same key: raised once
    (state,) = await store.active_alarms()
    assert (state.window_start, state.first, state.cleared) == (at(1, 1), at(1, 2), None)
    clear = AlarmClear(METER, "clock_deviation", at(1, 1), at(1, 9), {"state": "cleared"})
    assert await store.apply_alarms([], [clear]) == (0, 1)
    assert await store.apply_alarms([], [clear]) == (0, 0)  # cleared once
    assert await store.active_alarms() == []
    (done,) = await store.alarm_states()
    assert done.cleared == at(1, 9)
    records = await spool.alarms()
    assert [(a.type, a.window_start, a.window_end, a.severity) for a in records] == [
        ("clock_deviation", at(1, 1), at(1, 2), Severity.WARNING),
        ("clock_deviation" + CLEARED_SUFFIX, at(1, 1), at(1, 9), Severity.WARNING),
    ]
    async with Outbox(spool) as outbox:
        take = await outbox.take(max_batches=4, max_records=10, flush=[Stream.ALARMS], now=at(3))
        (batch,) = await outbox.render(take.cut)
    published = json.loads(f"[{batch.records_json}]")
    assert [r["type"] for r in published] == ["clock_deviation", "clock_deviation.cleared"]
    assert published[0]["key"][2] == published[1]["key"][2]  # the same window start


async def test_a_clear_of_an_unknown_alarm_writes_nothing(spool: Spool) -> None:
    store = ChecksStore(spool)
    clear = AlarmClear(METER, "clock_deviation", at(1, 1), at(1, 9))
    assert await store.apply_alarms([], [clear]) == (0, 0)
    assert await spool.alarms() == []


async def test_alarm_states_filters(spool: Spool) -> None:
    store = ChecksStore(spool)
    await store.apply_alarms([alarm(hour=1), alarm(hour=5), alarm("clock_battery_low", 1)], [])
    await store.apply_alarms([], [AlarmClear(METER, "clock_deviation", at(1, 1), at(1, 3))])
    assert len(await store.alarm_states()) == 3
    assert len(await store.alarm_states(cleared_since=at(1, 4))) == 2
    assert len(await store.alarm_states(cleared_since=at(1, 2))) == 3
    assert [s.type for s in await store.active_alarms(types=["clock_battery_low"])] == [
        "clock_battery_low"
    ]
    assert await store.alarm_states(types=[]) == []


def entry(kind: BalanceKind, ref: str, hours: float, amount: str, kwh: str = "0") -> BalanceEntry:
    return BalanceEntry(
        "A1", kind, ref, "", at(1, hours), Decimal(kwh), Decimal(amount), Decimal(kwh), {"n": 1}
    )


async def test_balance_journal_keeps_a_running_balance_and_posts_once(spool: Spool) -> None:
    store = ChecksStore(spool)
    first = await store.post_balance(
        [
            entry(BalanceKind.OPENING, "opening", 0, "50.00"),
            entry(BalanceKind.CONSUMPTION, "m@1", 1, "-10.5660", "20.00"),
            entry(BalanceKind.CONSUMPTION, "m@1", 1, "-10.5660", "20.00"),  # duplicate in batch
        ]
    )
    assert [(p.entry.ref, p.balance) for p in first] == [
        ("opening", Decimal("50.00")),
        ("m@1", Decimal("39.4340")),
    ]
    again = await store.post_balance(
        [
            entry(BalanceKind.CONSUMPTION, "m@1", 1, "-10.5660", "20.00"),  # posted already
            entry(BalanceKind.TOP_UP, "T1", 2, "100"),
        ]
    )
    assert [(p.entry.ref, p.balance) for p in again] == [("T1", Decimal("139.4340"))]
    assert await store.balance("A1") == Decimal("139.4340")
    journal = await store.balance_entries("A1")
    assert [p.id for p in journal] == sorted(p.id for p in journal)
    assert journal[1].entry.details == {"n": 1}
    assert journal[1].entry.kwh == Decimal("20.00")
    assert (await store.latest_balance_entries())["A1"].entry.ref == "T1"
    assert [p.entry.ref for p in await store.balance_entries(since=at(1, 1, 30))] == ["T1"]


async def test_line_loss_incomplete_is_replaced_complete_is_final(spool: Spool) -> None:
    store = ChecksStore(spool)
    day = date(2025, 6, 1)

    def result(state: LineLossState, read: int, rate: str | None) -> LineLossResult:
        return LineLossResult(
            "TQ", day, state, "000000009001", Decimal("100") if rate else None,
            Decimal("96") if rate else None, Decimal(rate) if rate else None, read, 10,
            at(2, read), {"missing": []},
        )  # fmt: skip

    assert await store.save_line_loss([result(LineLossState.INCOMPLETE, 5, None)]) == 1
    assert await store.save_line_loss([result(LineLossState.INCOMPLETE, 5, None)]) == 0
    assert await store.save_line_loss([result(LineLossState.INCOMPLETE, 8, None)]) == 1
    assert await store.save_line_loss([result(LineLossState.COMPLETE, 10, "0.04")]) == 1
    assert await store.save_line_loss([result(LineLossState.INCOMPLETE, 9, None)]) == 0
    (stored,) = await store.line_losses(district="TQ")
    assert (stored.state, stored.rate, stored.users_read) == (
        LineLossState.COMPLETE, Decimal("0.04"), 10,
    )  # fmt: skip
    assert await store.line_losses(since=day + timedelta(days=1)) == []


async def test_line_loss_summaries_leave_the_details_in_the_spool(spool: Spool) -> None:
    store = ChecksStore(spool)
    details: dict[str, JSONValue] = {
        "users": {"000000000001": [Decimal("10.5"), Decimal("12.25")]},
        "missing": [],
    }
    full = LineLossResult(
        "TQ", date(2025, 6, 1), LineLossState.COMPLETE, "000000009001", Decimal("2"),
        Decimal("1.75"), Decimal("0.125"), 1, 1, at(2, 1), details,
    )  # fmt: skip
    await store.save_line_loss([full])
    (summary,) = await store.line_losses(details=False)
    assert summary == full.summary()
    assert summary.details == {}
    assert (summary.state, summary.master_kwh, summary.users_kwh, summary.rate) == (
        full.state, full.master_kwh, full.users_kwh, full.rate,
    )  # fmt: skip
    assert (summary.users_read, summary.users_total, summary.computed) == (1, 1, at(2, 1))
    (stored,) = await store.line_losses()
    assert stored.details == details


async def test_state_keeps_the_first_value(spool: Spool) -> None:
    store = ChecksStore(spool)
    assert await store.remember({"watch/1": "a", "watch/2": "b", "other": "c"}) == 3
    assert await store.remember({"watch/1": "z"}) == 0
    assert await store.state("watch/") == {"watch/1": "a", "watch/2": "b"}


async def test_scan_readings_pages_by_id_and_filters(spool: Spool) -> None:
    def reading(di: str, kind: ReadingKind, hours: int, value: object) -> Reading:
        return Reading(
            METER, di, at(1, hours), at(1, hours), {"x": ReadingValue(value)},  # type: ignore[arg-type]
            Quality.OK, kind, "b",
        )  # fmt: skip

    await spool.write_readings(
        [
            reading("05060101", ReadingKind.DAILY_FROZEN, 0, Decimal("1.50")),
            reading("04000501", ReadingKind.STATUS, 1, True),
            reading("03110000", ReadingKind.EVENT_COUNTER, 2, 7),
        ]
    )
    store = ChecksStore(spool)
    rows = await store.scan_readings(
        after_id=0, kinds=[ReadingKind.DAILY_FROZEN, ReadingKind.EVENT_COUNTER], since=at(0)
    )
    assert [(r.di, r.values["x"]) for r in rows] == [("05060101", Decimal("1.50")), ("03110000", 7)]
    assert (
        await store.scan_readings(
            after_id=rows[0].id, until_id=rows[0].id, kinds=[ReadingKind.STATUS], since=at(0)
        )
        == []
    )
    later = await store.scan_readings(after_id=0, kinds=list(ReadingKind), since=at(1, 1))
    assert [r.values["x"] for r in later] == [True, 7]
    assert await store.last_reading_id() == rows[-1].id
