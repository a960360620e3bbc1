"""Spool behaviour against real SQLite files: readings, ledger, events, statistics, migrations."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import aiosqlite
import pytest

from spool import (
    MIGRATIONS,
    SCHEMA_VERSION,
    Event,
    LedgerEntry,
    LedgerState,
    Migration,
    Quality,
    Reading,
    ReadingKind,
    ReadingValue,
    Spool,
    SpoolClosedError,
    SpoolCorruptError,
    SpoolIntegrityError,
    SpoolUnavailableError,
    SpoolVersionError,
)
from spool.schema import migrate, user_version

CST = timezone(timedelta(hours=8))
DAY = date(2024, 5, 1)
T0 = datetime(2024, 5, 1, tzinfo=CST)
NOW = datetime(2024, 5, 1, 1, 0, tzinfo=UTC)


def meter(i: int) -> str:
    return f"{i:012d}"


def frozen(i: int, day_offset: int = 0, total: str = "100.00", **kw: object) -> Reading:
    fields: dict[str, object] = {
        "meter": meter(i),
        "di": "05060101",
        "data_time": T0 + timedelta(days=day_offset),
        "read_time": T0 + timedelta(days=day_offset, minutes=3),
        "values": {"total": ReadingValue(Decimal(total), "kWh")},
        "quality": Quality.OK,
        "kind": ReadingKind.DAILY_FROZEN,
        "source": "rs485-1",
    }
    fields.update(kw)
    return Reading(**fields)  # type: ignore[arg-type]


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    async with Spool.connect(tmp_path / "spool.sqlite") as s:
        yield s


# -- opening ------------------------------------------------------------------------------------


async def test_open_sets_durability_pragmas_and_schema(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    async with await Spool.open(path, busy_timeout=2.5) as s:
        assert s.schema_version == SCHEMA_VERSION == len(MIGRATIONS)
        conn = s._require()
        pragmas = {}
        for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout"):
            rows = list(await conn.execute_fetchall(f"PRAGMA {name}"))
            pragmas[name] = rows[0][0]
        assert pragmas == {
            "journal_mode": "wal",
            "synchronous": 2,  # FULL
            "foreign_keys": 1,
            "busy_timeout": 2500,
        }
    assert s.closed
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"readings", "ledger", "events"} <= tables
    raw.close()


async def test_closed_spool_refuses_use(tmp_path: Path) -> None:
    s = await Spool.open(tmp_path / "spool.sqlite")
    await s.close()
    await s.close()  # idempotent
    with pytest.raises(SpoolClosedError, match=r"spool\.sqlite"):
        await s.count_readings()


async def test_future_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.sqlite"
    with sqlite3.connect(path) as raw:
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(SpoolVersionError, match=r"future\.sqlite.*newer than this amigw"):
        await Spool.open(path)


async def test_unopenable_path_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(SpoolUnavailableError, match=r"missing/spool\.sqlite"):
        await Spool.open(tmp_path / "missing" / "spool.sqlite")


async def test_not_a_database_is_reported_as_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "garbage.sqlite"
    path.write_bytes(b"this is not an SQLite file" * 200)
    with pytest.raises(SpoolCorruptError, match=r"garbage\.sqlite"):
        await Spool.open(path)


async def test_migrations_from_empty_file_and_cut_mid_migration(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite"
    path.touch()  # an empty file is a valid, empty database
    extra = Migration("half", ("CREATE TABLE outbox (id INTEGER PRIMARY KEY)", "NOT SQL AT ALL"))
    async with aiosqlite.connect(path, isolation_level=None) as conn:
        with pytest.raises(sqlite3.OperationalError):
            await migrate(conn, path, [*MIGRATIONS, extra])
        # The first migration committed; the broken one left nothing behind.
        assert await user_version(conn) == len(MIGRATIONS)
        tables = {r[0] for r in await conn.execute_fetchall("SELECT name FROM sqlite_master")}
        assert "readings" in tables
        assert "outbox" not in tables
        fixed = Migration("whole", ("CREATE TABLE outbox (id INTEGER PRIMARY KEY)",))
        assert await migrate(conn, path, [*MIGRATIONS, fixed]) == len(MIGRATIONS) + 1
        assert await migrate(conn, path, [*MIGRATIONS, fixed]) == len(MIGRATIONS) + 1  # no-op


async def test_reopen_keeps_rows(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    async with Spool.connect(path) as s:
        await s.write_readings([frozen(i) for i in range(10)])
    async with Spool.connect(path) as s:
        assert await s.count_readings() == 10


# -- readings -----------------------------------------------------------------------------------


async def test_duplicate_natural_key_is_a_no_op(spool: Spool) -> None:
    assert await spool.write_readings([frozen(1), frozen(2)]) == 2
    changed = frozen(1, total="999.99", source="plc", quality=Quality.ESTIMATED)
    # Same key written again, inside a batch with one new reading and an in-batch duplicate.
    assert await spool.write_readings([changed, frozen(3), frozen(3)]) == 1
    assert await spool.count_readings() == 3
    stored = await spool.latest(meter(1), "05060101")
    assert stored == frozen(1)
    # The same instant written with another offset is the same key.
    utc_twin = frozen(1, data_time=T0.astimezone(UTC))
    assert await spool.write_readings([utc_twin]) == 0
    assert await spool.write_readings([]) == 0


async def test_readings_filters_and_order(spool: Spool) -> None:
    batch = [frozen(i, d) for i in (3, 1, 2) for d in (2, 0, 1)]
    batch.append(frozen(1, 0, di="9010", kind=ReadingKind.REALTIME))
    await spool.write_readings(batch)
    everything = await spool.readings()
    assert [(r.data_time, r.meter, r.di) for r in everything] == sorted(
        (r.data_time, r.meter, r.di) for r in batch
    )
    assert len(await spool.readings(meter=meter(1))) == 4
    assert len(await spool.readings(di="9010")) == 1
    assert [r.kind for r in await spool.readings(kind=ReadingKind.REALTIME)] == ["realtime"]
    day1 = await spool.readings(since=T0 + timedelta(days=1), until=T0 + timedelta(days=2))
    assert {r.data_time for r in day1} == {T0 + timedelta(days=1)}
    assert len(day1) == 3
    # Bounds are instants: the same window expressed in UTC selects the same rows.
    since_utc = (T0 + timedelta(days=1)).astimezone(UTC)
    assert await spool.readings(since=since_utc, until=since_utc + timedelta(days=1)) == day1
    # since is inclusive to the second, even with a sub-second bound.
    just_after = T0 + timedelta(days=2, microseconds=1)
    assert await spool.readings(since=just_after) == []
    assert len(await spool.readings(limit=2)) == 2
    with pytest.raises(ValueError, match="aware"):
        await spool.readings(since=datetime(2024, 5, 1))


async def test_latest(spool: Spool) -> None:
    assert await spool.latest(meter(1), "05060101") is None
    await spool.write_readings([frozen(1, d, total=f"{100 + d}.00") for d in (0, 5, 2)])
    latest = await spool.latest(meter(1), "05060101")
    assert latest is not None
    assert latest.values["total"].value == Decimal("105.00")


# -- ledger -------------------------------------------------------------------------------------


def pending(i: int, item: str = "05060101", day: date = DAY) -> LedgerEntry:
    return LedgerEntry.pending(meter(i), day, item, now=NOW)


async def test_ensure_ledger_leaves_existing_entries_alone(spool: Spool) -> None:
    assert await spool.ensure_ledger([pending(1), pending(2)]) == 2
    done = pending(1).with_state(LedgerState.DONE, now=NOW + timedelta(minutes=1))
    await spool.update_ledger([done])
    assert await spool.ensure_ledger([pending(1), pending(2), pending(3)]) == 1
    by_meter = {e.meter: e for e in await spool.ledger(day=DAY)}
    assert by_meter[meter(1)] == done
    assert by_meter[meter(3)] == pending(3)
    assert await spool.ensure_ledger([]) == 0


async def test_update_ledger_upserts_every_field(spool: Spool) -> None:
    e = pending(1)
    await spool.update_ledger([e])  # insert through the upsert
    retry = NOW + timedelta(minutes=15)
    failed = e.with_state(LedgerState.FAILED, now=NOW, reason="no answer", next_attempt=retry)
    await spool.update_ledger([failed])
    (back,) = await spool.ledger()
    assert back == failed
    assert (back.attempts, back.reason, back.next_attempt) == (1, "no answer", retry)


async def test_ledger_filters(spool: Spool) -> None:
    other_day = DAY + timedelta(days=1)
    await spool.ensure_ledger([pending(1), pending(2), pending(1, day=other_day)])
    await spool.update_ledger([pending(2).with_state(LedgerState.DONE, now=NOW)])
    assert len(await spool.ledger()) == 3
    assert len(await spool.ledger(day=DAY)) == 2
    assert len(await spool.ledger(meter=meter(1))) == 2
    assert [e.meter for e in await spool.ledger(state=LedgerState.DONE)] == [meter(2)]
    assert len(await spool.ledger(day=DAY, meter=meter(1), state=LedgerState.PENDING)) == 1


async def test_due_semantics(spool: Spool) -> None:
    yesterday = DAY - timedelta(days=1)
    entries = [
        pending(1),  # pending, never tried: due
        pending(2).with_state(LedgerState.DONE, now=NOW),  # done: never due
        pending(3).with_state(  # failed, retry in the future: not due yet
            LedgerState.FAILED, now=NOW, next_attempt=NOW + timedelta(minutes=10)
        ),
        pending(4).with_state(  # failed, retry exactly now: due
            LedgerState.FAILED, now=NOW, next_attempt=NOW
        ),
        pending(9, day=yesterday),  # an older day comes first
    ]
    await spool.update_ledger(entries)
    due = await spool.due(NOW)
    assert [(e.day, e.meter) for e in due] == [
        (yesterday, meter(9)),
        (DAY, meter(1)),
        (DAY, meter(4)),
    ]
    # "now" may be given in any offset; it is compared as an instant.
    later_cst = (NOW + timedelta(minutes=10)).astimezone(CST)
    assert [e.meter for e in await spool.due(later_cst)] == [meter(9), meter(1), meter(3), meter(4)]
    assert len(await spool.due(NOW, limit=1)) == 1


async def test_ledger_summary(spool: Spool) -> None:
    empty = await spool.ledger_summary(DAY)
    assert (empty.total, empty.success_rate) == (0, None)
    entries = [pending(i) for i in range(7)]
    entries = [
        e.with_state(LedgerState.DONE, now=NOW) if i < 4 else e for i, e in enumerate(entries)
    ]
    entries[6] = entries[6].with_state(LedgerState.FAILED, now=NOW, reason="timeout")
    await spool.update_ledger(entries)
    await spool.ensure_ledger([pending(1, day=DAY + timedelta(days=1))])  # another day
    summary = await spool.ledger_summary(DAY)
    assert (summary.pending, summary.done, summary.failed, summary.total) == (2, 4, 1, 7)
    assert summary.success_rate == Decimal("0.5714")  # 4/7, half-even to 4 places


# -- commit_collection --------------------------------------------------------------------------


async def test_commit_collection_writes_both(spool: Spool) -> None:
    await spool.ensure_ledger([pending(1), pending(2)])
    readings = [frozen(1), frozen(2)]
    updates = [pending(i).with_state(LedgerState.DONE, now=NOW) for i in (1, 2)]
    assert await spool.commit_collection(readings, updates) == 2
    assert await spool.count_readings() == 2
    assert {e.state for e in await spool.ledger()} == {LedgerState.DONE}


async def test_commit_collection_is_atomic(spool: Spool) -> None:
    await spool.write_readings([frozen(9)])
    await spool.ensure_ledger([pending(1)])
    good = pending(1).with_state(LedgerState.DONE, now=NOW)
    # A record the schema refuses (CHECK attempts >= 0), smuggled past Python's validation,
    # makes the ledger half fail after the readings half already ran in the transaction.
    bad = pending(2).with_state(LedgerState.DONE, now=NOW)
    object.__setattr__(bad, "attempts", -1)
    with pytest.raises(SpoolIntegrityError, match=r"spool\.sqlite.*CHECK"):
        await spool.commit_collection([frozen(1), frozen(2)], [good, bad])
    assert await spool.count_readings() == 1  # only the reading written before
    assert await spool.ledger() == [pending(1)]
    # The spool is still usable after the rollback.
    assert await spool.commit_collection([frozen(1)], [good]) == 1


@pytest.mark.parametrize("delay", [None, 0.0, 0.002, 0.01, 0.03])
async def test_cancelled_write_is_all_or_nothing(spool: Spool, delay: float | None) -> None:
    big = [frozen(i) for i in range(5_000)]
    task = asyncio.create_task(spool.write_readings(big))
    # None: cancelled before it ran; 0: while awaiting BEGIN; later: during executemany/COMMIT.
    if delay is not None:
        await asyncio.sleep(0)  # let it encode and queue BEGIN
        await asyncio.sleep(delay)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):  # a late cancel finds it finished
        await task
    assert await spool.count_readings() in (0, len(big))
    # No transaction was left open on the shared connection.
    assert await spool.write_readings([frozen(0, 1)]) == 1


async def test_concurrent_writers_do_not_interleave(spool: Spool) -> None:
    async def writer(base: int) -> int:
        total = 0
        done = pending(base).with_state(LedgerState.DONE, now=NOW)
        for d in range(20):
            batch = [frozen(base + i, d) for i in range(20)]
            total += await spool.commit_collection(batch, [done])
        return total

    results = await asyncio.gather(*(writer(b * 100) for b in range(4)))
    assert results == [400] * 4
    assert await spool.count_readings() == 1600


# -- events and statistics ----------------------------------------------------------------------


async def test_events_round_trip_and_dedupe(spool: Spool) -> None:
    t = datetime(2024, 5, 1, 2, 0, 0, 123456, tzinfo=UTC)
    sync = Event("gateway", "time_sync", meter(1), t, {"skew_s": Decimal("-3.5"), "ok": True})
    relay = Event("head-end", "relay_trip", meter(2), t + timedelta(seconds=1), {"by": "张三"})
    mismatch = Event("gateway", "archive_mismatch", "", t - timedelta(hours=1), {"n": [1, 2]})
    assert await spool.write_events([sync, relay, mismatch]) == 3
    assert await spool.write_events([dataclasses.replace(sync, details={"other": 1})]) == 0
    assert await spool.events() == [mismatch, sync, relay]
    assert await spool.events(since=t) == [sync, relay]
    assert await spool.events(type="relay_trip") == [relay]
    assert await spool.events(until=t) == [mismatch]
    (back,) = await spool.events(type="time_sync")
    assert str(back.details["skew_s"]) == "-3.5"
    assert back.event_time.microsecond == 123456


async def test_statistics(spool: Spool) -> None:
    await spool.write_readings([frozen(i) for i in range(5)])
    await spool.write_readings([frozen(1, kind=ReadingKind.PREPAID, di="00900200")])
    await spool.ensure_ledger([pending(1)])
    await spool.write_events([Event("gateway", "start", "", NOW)])
    stats = await spool.statistics()
    assert stats.schema_version == SCHEMA_VERSION
    assert dict(stats.rows) == {"readings": 6, "ledger": 1, "events": 1}
    assert stats.readings_by_kind[ReadingKind.DAILY_FROZEN] == 5
    assert stats.readings_by_kind[ReadingKind.PREPAID] == 1
    assert stats.readings_by_kind[ReadingKind.CURVE] == 0
    files = [spool.path, Path(f"{spool.path}-wal"), Path(f"{spool.path}-shm")]
    assert stats.file_bytes == sum(p.stat().st_size for p in files if p.exists())
    assert stats.wal_bytes > 0  # rows sit in the WAL until a checkpoint
    with pytest.raises(TypeError):
        stats.rows["readings"] = 0  # type: ignore[index]
