"""Caps: the size cap evicts by value in the documented order, counts and logs each class and
raises an alarm for unsent data; a full disk (SQLITE_FULL) is relieved by eviction and counted,
and when nothing can be freed the writer gets SpoolFullError while the daemon keeps going."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.config import parse_config
from gateway.daemon import Daemon
from spool import (
    Event,
    EvictionClass,
    LedgerEntry,
    Outbox,
    Quality,
    Reading,
    ReadingKind,
    ReadingValue,
    Severity,
    Spool,
    SpoolFullError,
    Stream,
)
from spool.caps import EVICTION_ALARM, LOW_WATER

CST = timezone(timedelta(hours=8))
T0 = datetime(2024, 5, 1, tzinfo=CST)
NOW = datetime(2024, 6, 1, 12, 34, tzinfo=UTC)
PAD = "x" * 200  # rows of every class about the same size


class FixedClock:
    def now(self) -> datetime:
        return NOW


def readings(start: int, n: int, kind: ReadingKind) -> list[Reading]:
    di = {ReadingKind.CURVE: "06000001", ReadingKind.REALTIME: "02010100"}.get(kind, "05060101")
    return [
        Reading(
            f"{i % 500:012d}",
            di,
            T0 + timedelta(minutes=15 * (i // 500)),
            NOW,
            {"total": ReadingValue(Decimal(f"{i}.00"), "kWh"), "pad": ReadingValue(PAD)},
            Quality.OK,
            kind,
            "rs485-1",
        )
        for i in range(start, start + n)
    ]


def events(start: int, n: int) -> list[Event]:
    return [
        Event("rs485-1", "meter_event", f"{i:012d}", T0 + timedelta(seconds=i), {"pad": PAD})
        for i in range(start, start + n)
    ]


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    async with Spool.connect(tmp_path / "spool.sqlite", clock=FixedClock()) as s:
        yield s


async def send_everything(spool: Spool) -> None:
    """Cut and acknowledge whatever is in the spool now: it counts as sent."""
    async with Outbox(spool) as outbox:
        take = await outbox.take(max_batches=10_000, max_records=500, flush=set(Stream), now=NOW)
        await outbox.acknowledge([r.seq for r in take.cut])


async def ids(spool: Spool, table: str, where: str = "1") -> list[int]:
    rows = await spool._fetch(f"SELECT id FROM {table} WHERE {where} ORDER BY id")
    return [int(r[0]) for r in rows]


async def test_eviction_follows_value_order(spool: Spool, caplog: pytest.LogCaptureFixture) -> None:
    # Sent: curves, events and daily frozen readings the head-end already has.
    await spool.write_readings(readings(0, 1000, ReadingKind.CURVE))
    await spool.write_events(events(0, 500))
    await spool.write_readings(readings(1000, 1000, ReadingKind.DAILY_FROZEN))
    await send_everything(spool)
    sent_bytes = await spool.caps.used_bytes()
    # Unsent: snapshots, events, then frozen and billing data.
    await spool.write_readings(readings(2000, 1500, ReadingKind.CURVE))
    await spool.write_readings(readings(3500, 500, ReadingKind.REALTIME))
    snapshot_bytes = await spool.caps.used_bytes()
    await spool.write_events(events(500, 3000))
    event_bytes = await spool.caps.used_bytes()
    await spool.write_readings(readings(4000, 1000, ReadingKind.DAILY_FROZEN))
    await spool.write_readings(readings(5000, 1000, ReadingKind.BILLING))
    total = await spool.caps.used_bytes()
    assert await spool.caps.enforce() is None  # no cap: nothing happens

    # A cap that needs everything sent, every snapshot and about half of the unsent events.
    keep = total - (event_bytes - (event_bytes - snapshot_bytes) // 2)
    spool.caps.max_bytes = int(keep / LOW_WATER)
    caplog.set_level(logging.INFO, logger="amigw.spool.caps")
    # The write that crosses the cap is kept: eviction makes room, never refuses new data.
    assert await spool.write_readings(readings(6000, 10, ReadingKind.DAILY_FROZEN)) == 10
    report = spool.caps.last_report
    assert report is not None
    assert report.reason == "cap"
    assert report.used_after <= keep

    assert await ids(spool, "readings", "kind = 'curve' OR kind = 'realtime'") == []
    left_events = await ids(spool, "events")
    assert 0 < len(left_events) < 3000
    # Oldest first: what is left is the newest tail of the unsent events.
    assert left_events == list(range(3501 - len(left_events), 3501))
    assert len(await ids(spool, "readings", "kind IN ('daily_frozen', 'billing')")) == 2010
    # The sent frozen readings went (sent goes first), the unsent ones all stayed.
    assert await ids(spool, "readings", "id <= 2000") == []

    evicted = report.evicted
    assert evicted[EvictionClass.SENT] == 2500
    assert evicted[EvictionClass.SNAPSHOT] == 2000
    assert evicted[EvictionClass.EVENT] == 3000 - len(left_events)
    assert evicted[EvictionClass.FROZEN] == 0
    assert await spool.caps.evicted() == dict(evicted)
    messages = [r.getMessage() for r in caplog.records]
    assert any("evicted 2500 sent record(s)" in m for m in messages)
    assert any("evicted 2000 snapshot record(s)" in m for m in messages)
    # Unsent data was lost to the head-end: an alarm says so, and it goes upstream too.
    (alarm,) = await spool.alarms(type=EVICTION_ALARM)
    assert alarm.severity is Severity.WARNING
    assert alarm.meter == ""
    assert alarm.window_start == NOW.replace(minute=0)
    assert alarm.details["evicted"] == {k.value: n for k, n in evicted.items()}
    assert sent_bytes < total


async def test_sent_records_go_first_snapshots_before_frozen(spool: Spool) -> None:
    await spool.write_readings(readings(0, 1000, ReadingKind.DAILY_FROZEN))
    await spool.write_readings(readings(1000, 1000, ReadingKind.CURVE))
    await send_everything(spool)
    await spool.write_readings(readings(2000, 200, ReadingKind.CURVE))  # unsent
    used = await spool.caps.used_bytes()
    # Room for the unsent curves and about half of the sent frozen readings.
    spool.caps.max_bytes = int(used * 0.35 / LOW_WATER)
    report = await spool.caps.enforce()
    assert report is not None
    # Sent curves (lower value) went before sent frozen readings; nothing unsent was touched.
    assert await ids(spool, "readings", "kind = 'curve' AND id <= 2000") == []
    assert 0 < len(await ids(spool, "readings", "kind = 'daily_frozen'")) < 1000
    assert len(await ids(spool, "readings", "id > 2000")) == 200
    assert report.unsent == 0
    assert await spool.alarms() == []  # housekeeping only: no alarm


async def test_counts_survive_restart_and_frozen_eviction_is_major(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    async with Spool.connect(path, clock=FixedClock()) as spool:
        await spool.write_readings(readings(0, 2000, ReadingKind.DAILY_FROZEN))
        spool.caps.max_bytes = int(await spool.caps.used_bytes() * 0.5)
        report = await spool.caps.enforce()
        assert report is not None
        assert report.evicted[EvictionClass.FROZEN] > 0
        (alarm,) = await spool.alarms()
        assert alarm.severity is Severity.MAJOR
    async with Spool.connect(path) as spool:
        assert (await spool.caps.evicted())[EvictionClass.FROZEN] == report.evicted[
            EvictionClass.FROZEN
        ]


async def test_evicting_every_record_of_an_open_batch_closes_it(spool: Spool) -> None:
    await spool.write_readings(readings(0, 300, ReadingKind.CURVE))
    async with Outbox(spool) as outbox:
        refs = (await outbox.take(max_batches=3, max_records=100, now=NOW)).cut
        spool.caps.max_bytes = int(await spool.caps.used_bytes() * 0.3)
        await spool.caps.enforce()
        left = await outbox.open_batches()
        assert len(left) < 3
        assert [r.seq for r in left] == [r.seq for r in refs][3 - len(left) :]


async def set_page_limit(spool: Spool) -> None:
    """Make the database unable to grow: SQLite answers SQLITE_FULL as on a full disk."""
    conn = spool._require()
    rows = list(await conn.execute_fetchall("PRAGMA page_count"))
    await conn.execute(f"PRAGMA max_page_count = {int(rows[0][0])}")


async def test_full_disk_is_relieved_by_eviction_and_counted(
    spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    await spool.write_readings(readings(0, 2000, ReadingKind.CURVE))
    await send_everything(spool)
    await set_page_limit(spool)
    caplog.set_level(logging.WARNING, logger="amigw.spool.caps")
    new = readings(5000, 300, ReadingKind.DAILY_FROZEN)
    assert await spool.write_readings(new) == 300
    assert spool.caps.full_errors == 1
    assert (await spool.caps.evicted())[EvictionClass.SENT] > 0
    assert len(await ids(spool, "readings", "kind = 'daily_frozen'")) == 300
    assert any("spool full" in r.getMessage() for r in caplog.records)


async def test_full_disk_with_nothing_to_evict_raises_and_writes_nothing(spool: Spool) -> None:
    entries = [
        LedgerEntry.pending(f"{m:012d}", date(2024, 5, 1), "daily_frozen", now=NOW)
        for m in range(200)
    ]
    await spool.ensure_ledger(entries)
    async with Outbox(spool) as outbox:  # the ledger log is sent and dropped: nothing evictable
        take = await outbox.take(max_batches=10, max_records=500, flush=set(Stream), now=NOW)
        await outbox.acknowledge([r.seq for r in take.cut])
    await set_page_limit(spool)
    more = [
        LedgerEntry.pending(f"{m:012d}", date(2024, 5, d), "clock", now=NOW)
        for m in range(200)
        for d in range(2, 30)
    ]
    with pytest.raises(SpoolFullError, match="full"):
        await spool.ensure_ledger(more)
    assert spool.caps.full_errors == 1  # counted; no retry, as eviction freed nothing
    assert len(await spool.ledger()) == 200


async def test_daemon_pauses_collection_on_a_full_spool_and_carries_on(tmp_path: Path) -> None:
    config = parse_config(f'[gateway]\nid = "gw"\n[spool]\npath = "{tmp_path / "s.sqlite"}"\n')

    class Collector:
        runs = 0
        stopping = False

        async def run(self) -> None:
            self.runs += 1
            if self.runs == 1:
                raise SpoolFullError("spool.sqlite", "database or disk is full")

        def stop(self) -> None:
            self.stopping = True

    class Clock:
        slept = 0.0

        def now(self) -> datetime:
            return NOW

        async def sleep(self, seconds: float) -> None:
            self.slept += seconds

    collector, clock = Collector(), Clock()
    daemon = Daemon(config, clock, None, {}, collector)  # type: ignore[arg-type]
    await daemon.run()
    assert collector.runs == 2
    assert clock.slept == 60.0
