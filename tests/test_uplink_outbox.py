"""The outbox in the spool: batches, sequence numbers, acknowledgement, resend order, the ledger
change log, migration of a version-1 spool, and the record JSON read back exactly."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.uplink.payloads import BatchEncoder, event_of, ledger_of, parse_batch, reading_of
from spool import (
    MIGRATIONS,
    Alarm,
    Event,
    LedgerEntry,
    LedgerState,
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

CST = timezone(timedelta(hours=8))
T0 = datetime(2024, 5, 1, tzinfo=CST)
NOW = datetime(2024, 5, 2, 1, 2, 3, 456789, tzinfo=UTC)


def reading(
    n: int, *, di: str = "05060101", kind: ReadingKind = ReadingKind.DAILY_FROZEN
) -> Reading:
    return Reading(
        f"{n % 1000:012d}",
        di,
        T0 + timedelta(days=n // 1000),
        NOW,
        {"total": ReadingValue(Decimal(f"{n}.10"), "kWh"), "flag": ReadingValue(True)},
        Quality.OK,
        kind,
        "rs485-1",
    )


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    async with Spool.connect(tmp_path / "spool.sqlite") as s:
        yield s


async def cut_all(outbox: Outbox, size: int, *, flush: bool = True) -> list[Any]:
    take = await outbox.take(
        max_batches=1000, max_records=size, flush=set(Stream) if flush else (), now=NOW
    )
    return await outbox.render(take.cut)


def keys(batch: Any) -> list[tuple[Any, ...]]:
    return [tuple(r["key"]) for r in parse_batch(BatchEncoder("gw").encode(batch)).records]


async def test_full_batches_first_and_short_ones_only_when_flushed(spool: Spool) -> None:
    await spool.write_readings([reading(i) for i in range(25)])
    outbox = Outbox(spool)
    take = await outbox.take(max_batches=10, max_records=10, now=NOW)
    assert [(r.stream, r.first_id, r.last_id, r.records) for r in take.cut] == [
        (Stream.READINGS, 1, 10, 10),
        (Stream.READINGS, 11, 20, 10),
    ]
    assert take.waiting == {Stream.READINGS: 5}
    # The five left over go only when the stream is flushed (its oldest record is old enough).
    assert (await outbox.take(max_batches=10, max_records=10, now=NOW)).cut == ()
    take = await outbox.take(max_batches=10, max_records=10, flush={Stream.READINGS}, now=NOW)
    assert [(r.first_id, r.last_id) for r in take.cut] == [(21, 25)]
    seqs = [r.seq for r in await outbox.open_batches()]
    assert seqs == [1, 2, 3]


async def test_max_batches_and_stream_priority(spool: Spool) -> None:
    await spool.write_readings([reading(i) for i in range(30)])
    at = NOW.replace(microsecond=0)
    await spool.write_events(
        [Event("rs485-1", "time_sync", "", at + timedelta(seconds=i)) for i in range(3)]
    )
    await spool.write_alarms(
        [Alarm("000000000001", "tamper", at, at + timedelta(hours=1), at, Severity.MAJOR)]
    )
    outbox = Outbox(spool)
    take = await outbox.take(max_batches=3, max_records=10, flush=set(Stream), now=NOW)
    # Alarms first, then events, then readings; capped at three batches.
    assert [r.stream for r in take.cut] == [Stream.ALARMS, Stream.EVENTS, Stream.READINGS]
    assert [r.seq for r in take.cut] == [1, 2, 3]


async def test_render_keeps_record_order_and_values_exact(spool: Spool) -> None:
    readings = [reading(i) for i in range(57)]
    readings.append(reading(57, di="9010"))
    await spool.write_readings(readings)
    async with Outbox(spool, names=lambda di: f"name {di}" if di != "9010" else None) as outbox:
        batches = await cut_all(outbox, 10)
        assert [b.count for b in batches] == [10, 10, 10, 10, 10, 8]
        back = [
            reading_of(r)
            for b in batches
            for r in parse_batch(BatchEncoder("gw").encode(b)).records
        ]
        assert back == readings
        assert [r.values["total"].value for r in back[:3]] == [
            Decimal("0.10"),
            Decimal("1.10"),
            Decimal("2.10"),
        ]
        records = parse_batch(BatchEncoder("gw").encode(batches[-1])).records
        assert records[-2]["name"] == "name 05060101"
        assert records[-1]["name"] is None
        assert records[0]["key"] == ["000000000050", "05060101", int(T0.timestamp())]


async def test_grouped_and_one_by_one_rendering_agree(spool: Spool) -> None:
    await spool.write_readings([reading(i) for i in range(40)])
    async with Outbox(spool) as outbox:
        refs = (await outbox.take(max_batches=10, max_records=7, flush=set(Stream), now=NOW)).cut
        grouped = await outbox.render(refs)
        assert all(outbox._renderer._grouped.values()), "SQLite chose another plan"
        outbox._renderer._grouped = dict.fromkeys(Stream, False)
        single = await outbox.render(refs)
        assert grouped == single
        assert sum(b.count for b in grouped) == 40


async def test_sequence_numbers_survive_restart_and_are_never_reused(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    async with Spool.connect(path) as spool:
        await spool.write_readings([reading(i) for i in range(20)])
        outbox = Outbox(spool)
        refs = (await outbox.take(max_batches=10, max_records=10, now=NOW)).cut
        assert [r.seq for r in refs] == [1, 2]
        assert await outbox.acknowledge([1, 2]) == 2
        assert await outbox.open_batches() == []
    async with Spool.connect(path) as spool:
        await spool.write_readings([reading(i) for i in range(20, 30)])
        outbox = Outbox(spool)
        refs = (await outbox.take(max_batches=10, max_records=10, now=NOW)).cut
        # Every batch was acknowledged and deleted, yet numbering carries on from 3.
        assert [(r.seq, r.first_id) for r in refs] == [(3, 21)]


async def test_unacknowledged_batches_are_resent_in_order_with_same_content(
    tmp_path: Path,
) -> None:
    path = tmp_path / "spool.sqlite"
    async with Spool.connect(path) as spool:
        await spool.write_readings([reading(i) for i in range(50)])
        outbox = Outbox(spool)
        first = await cut_all(outbox, 10)
        await outbox.acknowledge([first[1].seq, first[3].seq])  # acks may come out of order
    async with Spool.connect(path) as spool:
        outbox = Outbox(spool)
        refs = await outbox.open_batches()
        assert [r.seq for r in refs] == [1, 3, 5]
        again = await outbox.render(refs)
        assert again == [first[0], first[2], first[4]]
        # Nothing new is cut from records already in a batch.
        assert (
            await outbox.take(max_batches=5, max_records=10, flush=set(Stream), now=NOW)
        ).cut == ()


async def test_take_commits_acknowledgements_with_the_cut(spool: Spool) -> None:
    await spool.write_readings([reading(i) for i in range(30)])
    outbox = Outbox(spool)
    refs = (await outbox.take(max_batches=2, max_records=10, now=NOW)).cut
    take = await outbox.take(max_batches=2, max_records=10, acknowledge=[refs[0].seq, 999], now=NOW)
    assert take.acknowledged == 1
    assert [r.seq for r in await outbox.open_batches()] == [2, 3]


async def test_ledger_changes_are_a_stream_and_leave_with_their_batch(spool: Spool) -> None:
    day = date(2024, 5, 1)
    entry = LedgerEntry.pending("000000000001", day, "daily_frozen", now=NOW)
    await spool.ensure_ledger([entry])
    await spool.ensure_ledger([entry])  # already there: no change, nothing logged
    done = entry.with_state(LedgerState.DONE, now=NOW + timedelta(minutes=1))
    await spool.commit_collection([reading(1)], [done])
    async with Outbox(spool) as outbox:
        batches = await cut_all(outbox, 100)
        ledger = next(b for b in batches if b.stream is Stream.LEDGER)
        records = parse_batch(BatchEncoder("gw").encode(ledger)).records
        assert [ledger_of(r) for r in records] == [entry, done]
        assert [r["key"] for r in records] == [
            ["000000000001", "2024-05-01", "daily_frozen", 1],
            ["000000000001", "2024-05-01", "daily_frozen", 2],
        ]
        await outbox.acknowledge([ledger.seq])
    conn = spool._require()
    assert list(await conn.execute_fetchall("SELECT count(*) FROM ledger_changes")) == [(0,)]
    assert len(await spool.ledger()) == 1  # the ledger itself is untouched


async def test_events_and_alarms_render_back_exactly(spool: Spool) -> None:
    at = datetime(2024, 5, 1, 8, 30, 0, 123456, tzinfo=CST)
    event = Event("rs485-1", "time_sync", "", at, {"drift": Decimal("-61.50"), "m": ["a", 1]})
    alarm = Alarm("", "spool_evicted_unsent", at, at + timedelta(hours=1), at, Severity.WARNING,
                  {"evicted": {"frozen": 3}, "ratio": Decimal("0.10")})  # fmt: skip
    await spool.write_events([event])
    await spool.write_alarms([alarm])
    async with Outbox(spool) as outbox:
        batches = {b.stream: b for b in await cut_all(outbox, 10)}
    (rec,) = parse_batch(BatchEncoder("gw").encode(batches[Stream.EVENTS])).records
    assert event_of(rec) == event
    assert event_of(rec).details["drift"] == Decimal("-61.50")
    assert rec["key"] == ["rs485-1", "time_sync", 1714523400123456, ""]
    (rec,) = parse_batch(BatchEncoder("gw").encode(batches[Stream.ALARMS])).records
    assert rec["details"]["ratio"] == Decimal("0.10")
    assert rec["key"] == ["", "spool_evicted_unsent", 1714523400123456]


async def test_statistics_depth_and_oldest_unsent(spool: Spool) -> None:
    outbox = Outbox(spool)
    empty = await outbox.statistics()
    assert (empty.depth, empty.open_batches, empty.oldest_unsent) == (0, 0, None)
    assert await outbox.empty()
    await spool.write_readings([reading(i) for i in range(15)])
    refs = (await outbox.take(max_batches=1, max_records=10, now=NOW)).cut
    stats = await outbox.statistics()
    assert stats.unsent[Stream.READINGS] == 15
    assert (stats.open_batches, stats.last_seq, stats.oldest_unsent) == (1, 1, NOW)
    await outbox.acknowledge([refs[0].seq])
    stats = await outbox.statistics()
    assert (stats.depth, stats.open_batches) == (5, 0)
    assert not await outbox.empty()


async def test_version_1_spool_is_migrated_with_everything_unsent(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    async with aiosqlite.connect(path, isolation_level=None) as conn:
        await migrate(conn, path, MIGRATIONS[:1])
        await conn.execute(
            "INSERT INTO ledger VALUES ('000000000001', '2024-05-01', 'clock', 'done', 1, NULL,"
            " NULL, '2024-05-01T00:00:00.000000Z')"
        )
    async with Spool.connect(path) as spool:
        assert spool.schema_version == len(MIGRATIONS) >= 2
        await spool.write_readings([reading(1)])
        async with Outbox(spool) as outbox:
            batches = await cut_all(outbox, 10)
    assert {b.stream: b.count for b in batches} == {Stream.LEDGER: 1, Stream.READINGS: 1}


_EXAMPLES = itertools.count()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    values=st.dictionaries(
        st.text("abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=12),
        st.tuples(
            st.one_of(
                st.decimals(allow_nan=False, allow_infinity=False),
                st.integers(-(10**12), 10**12),
                st.text(max_size=20),
                st.booleans(),
                st.none(),
            ),
            st.one_of(st.none(), st.sampled_from(["kWh", "V", "A", "元", 'q"u\\o'])),
        ),
        max_size=6,
    ),
    source=st.text(min_size=1, max_size=10),
    offset=st.integers(-12 * 60, 14 * 60),
)
async def test_any_reading_comes_back_exactly(
    tmp_path: Path, values: dict[str, tuple[Any, str | None]], source: str, offset: int
) -> None:
    zone = timezone(timedelta(minutes=offset))
    r = Reading(
        "000000130495",
        "0001FF00",
        datetime(2024, 5, 1, 0, 15, tzinfo=zone),
        datetime(2024, 5, 1, 0, 16, 1, 5, tzinfo=zone),
        {n: ReadingValue(v, u) for n, (v, u) in values.items()},
        Quality.UNVERIFIED,
        ReadingKind.CURVE,
        source,
    )
    path = tmp_path / f"example{next(_EXAMPLES)}.sqlite"
    async with Spool.connect(path, quick_check=False) as spool:
        await spool.write_readings([r])
        async with Outbox(spool, names=lambda di: 'forward "active", block') as outbox:
            (batch,) = await cut_all(outbox, 5)
    (record,) = parse_batch(BatchEncoder("gw").encode(batch)).records
    back = reading_of(record)
    assert back == r
    for name, item in r.values.items():
        assert type(back.values[name].value) is type(item.value)
        assert str(back.values[name].value) == str(item.value)


async def test_batches_are_cut_across_gaps_in_the_ids(spool: Spool) -> None:
    await spool.write_readings([reading(i) for i in range(30)])
    # Eviction (or a rolled-back write) leaves holes in the ids.
    await spool._require().execute("DELETE FROM readings WHERE id BETWEEN 5 AND 12")
    outbox = Outbox(spool)
    take = await outbox.take(max_batches=5, max_records=10, flush=set(Stream), now=NOW)
    assert [(r.first_id, r.last_id, r.records) for r in take.cut] == [
        (1, 18, 10),
        (19, 28, 10),
        (29, 30, 2),
    ]
    batches = await outbox.render(take.cut)
    assert [b.count for b in batches] == [10, 10, 2]


async def test_take_renders_what_it_cut_in_the_same_call(spool: Spool) -> None:
    await spool.write_readings([reading(i) for i in range(35)])
    async with Outbox(spool, names=lambda di: f"name {di}") as outbox:
        take = await outbox.take(max_batches=10, max_records=10, now=NOW, render=True)
        assert [b.seq for b in take.rendered] == [r.seq for r in take.cut] == [1, 2, 3]
        assert list(take.rendered) == await outbox.render(take.cut)
        assert [b.count for b in take.rendered] == [10, 10, 10]
        # Without render the batches come back unrendered, to be rendered on demand.
        assert (await outbox.take(max_batches=10, max_records=10, now=NOW)).rendered == ()


async def test_reading_formats_are_made_once_and_keep_text_literal(spool: Spool) -> None:
    # Names and sources are text inside a printf format: '%' and quotes must come out as-is.
    name = 'forward "active" 100% %s %d'
    sources = ["rs485-1", 'bus "2" 50%']
    rows = [
        Reading(f"{i:012d}", di, T0, NOW, {"total": ReadingValue(Decimal(f"{i}.5"), "kWh")},
                Quality.OK, ReadingKind.DAILY_FROZEN, sources[i % 2])
        for i, di in enumerate(["05060101", "05060201", "05060101", "9010"] * 3)
    ]  # fmt: skip
    await spool.write_readings(rows)
    asked: list[str] = []

    def names(di: str) -> str | None:
        asked.append(di)
        return None if di == "9010" else name

    async with Outbox(spool, names=names) as outbox:
        first = await cut_all(outbox, 5)
        # One format per (DI, kind, quality, source) seen: three here, a name lookup each.
        assert sorted(asked) == ["05060101", "05060201", "9010"]
        again = await outbox.render([b.ref for b in first])  # every format known by now
        assert again == first
        assert sorted(asked) == ["05060101", "05060201", "9010"]
    back = [r for b in first for r in parse_batch(BatchEncoder("gw").encode(b)).records]
    assert [reading_of(r) for r in back] == rows
    assert [r["name"] for r in back[:4]] == [name, name, name, None]
    assert {r["source"] for r in back} == set(sources)


async def test_more_combinations_than_formats_kept(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("spool.render.MAX_FORMS", 2)
    dis = ["05060101", "05060201", "05060301", "05060401", "05060501"]
    rows = [reading(i, di=dis[i % 5]) for i in range(40)]
    await spool.write_readings(rows)
    async with Outbox(spool, names=lambda di: f"name {di}") as outbox:
        batches = await cut_all(outbox, 10)  # every batch holds all five DIs
        again = await outbox.render([b.ref for b in batches])
    assert again == batches
    back = [r for b in batches for r in parse_batch(BatchEncoder("gw").encode(b)).records]
    assert [reading_of(r) for r in back] == rows
    assert [r["name"] for r in back[:5]] == [f"name {di}" for di in dis]


async def test_ids_are_counted_again_once_a_range_shows_gaps(spool: Spool) -> None:
    await spool.write_readings([reading(i) for i in range(40)])
    async with Outbox(spool) as outbox:
        take = await outbox.take(max_batches=2, max_records=10, now=NOW, render=True)
        assert [(r.first_id, r.last_id) for r in take.cut] == [(1, 10), (11, 20)]
        # Every id of those ranges held a record: the next cut takes ids by their span. A
        # duplicate write uses an id up (41) and eviction deletes some (24..26) meanwhile.
        await spool.write_readings([reading(0), *[reading(i) for i in range(40, 60)]])
        await spool._require().execute("DELETE FROM readings WHERE id BETWEEN 24 AND 26")
        take = await outbox.take(max_batches=2, max_records=10, now=NOW, render=True)
        assert [(r.first_id, r.last_id) for r in take.cut] == [(21, 30), (31, 40)]
        assert [b.count for b in take.rendered] == [7, 10]  # short of records, none lost
        # That render showed the gap: the ids are counted again, and batches are full again.
        take = await outbox.take(max_batches=5, max_records=10, now=NOW, render=True)
        assert [(r.first_id, r.last_id, b.count) for r, b in zip(take.cut, take.rendered,
                                                                  strict=True)] == [
            (42, 51, 10),
            (52, 61, 10),
        ]  # fmt: skip
        sent = [r["key"] for b in await outbox.render(await outbox.open_batches())
                for r in parse_batch(BatchEncoder("gw").encode(b)).records]  # fmt: skip
    written = [reading(i) for i in range(60) if i not in (23, 24, 25)]
    assert sent == [[r.meter, r.di, int(r.data_time.timestamp())] for r in written]
