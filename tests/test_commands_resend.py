"""Resend of a date range: the outbox re-queues records already sent as new batches over runs of
matching ids only (so nothing outside the range or the meters goes out), the drain hands them
out once with its next cut while its cursor and dense-ids path stay as they were, a range too
large is refused whole, evicted parts are reported; and the ``resend`` command end to end
against a real SQLite spool, its result valid against ``cmd-result.json``."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gateway.uplink.payloads import BatchEncoder, parse_batch
from spool import (
    Alarm,
    Batch,
    Event,
    EvictionClass,
    Outbox,
    Quality,
    Reading,
    ReadingKind,
    ReadingValue,
    Severity,
    Spool,
    Stream,
)

from .test_commands_service import GW, Rig, command, rig_for
from .test_uplink_payloads import assert_valid

T0 = datetime(2025, 6, 1, tzinfo=UTC)
NOW = datetime(2025, 6, 3, 2, tzinfo=UTC)
METERS = ("000000004001", "000000004002", "000000004003")


def day_readings(days: int, meters: tuple[str, ...] = METERS) -> list[Reading]:
    """Per day, one frozen reading per meter: ids interleave the meters and the days."""
    return [
        Reading(
            meter,
            "05060101",
            T0 + timedelta(days=d),
            NOW,
            {"total": ReadingValue(Decimal(f"{d}.{i}"), "kWh")},
            Quality.OK,
            ReadingKind.DAILY_FROZEN,
            "rs485-1",
        )
        for d in range(days)
        for i, meter in enumerate(meters)
    ]


def records(batches: list[Batch]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for batch in batches:
        out += parse_batch(BatchEncoder(GW).encode(batch)).records
    return out


async def drain(outbox: Outbox, size: int = 4) -> list[Batch]:
    """Cut and acknowledge everything waiting, as the uplink does."""
    sent: list[Batch] = []
    while True:
        take = await outbox.take(max_batches=100, max_records=size, flush=set(Stream), now=NOW,
                                 render=True)  # fmt: skip
        if not take.cut:
            return sent
        sent += take.rendered
        await outbox.acknowledge([b.seq for b in take.rendered])


async def test_requeue_sends_the_same_records_of_the_range_and_meter_only(tmp_path: Path) -> None:
    async with Spool.connect(tmp_path / "spool.sqlite") as spool:
        await spool.write_readings(day_readings(10))
        uplink = Outbox(spool)
        first = records(await drain(uplink))
        assert len(first) == 30
        assert await uplink.open_batches() == []

        # The command service has an outbox of its own: the uplink's next cut hands out its batches.
        service = Outbox(spool)
        done = await service.requeue(
            start=T0 + timedelta(days=2), end=T0 + timedelta(days=6), meters=[METERS[1]],
            max_records=100, batch_records=3, now=NOW,
        )  # fmt: skip
        assert not done.refused
        assert done.queued == {Stream.READINGS: 4}
        assert done.matched == {Stream.READINGS: 4, Stream.ALARMS: 0, Stream.EVENTS: 0}
        assert done.unheld == ()
        # Every matching id stands alone between other meters' rows: one batch per record.
        assert [b.records for b in done.batches] == [1, 1, 1, 1]
        assert all(b.first_id == b.last_id for b in done.batches)

        take = await uplink.take(max_batches=100, max_records=4, now=NOW, render=True)
        assert [r.seq for r in take.cut] == [b.seq for b in done.batches]
        again = records(list(take.rendered))
        wanted = [r for r in first if r["meter"] == METERS[1]
                  and "2025-06-03" <= r["data_time"][:10] <= "2025-06-06"]  # fmt: skip
        assert [r["key"] for r in again] == [r["key"] for r in wanted]
        assert again == wanted  # the same records, byte for byte
        # Handed out once: the next cut has nothing (the cursor did not move back).
        assert (
            await uplink.take(max_batches=100, max_records=4, flush=set(Stream), now=NOW)
        ).cut == ()
        await uplink.acknowledge([r.seq for r in take.cut])
        assert await uplink.empty()


async def test_whole_runs_make_full_batches_and_the_dense_path_still_counts_right(
    tmp_path: Path,
) -> None:
    async with Spool.connect(tmp_path / "spool.sqlite") as spool:
        await spool.write_readings(day_readings(4))
        uplink = Outbox(spool)
        await drain(uplink)
        done = await Outbox(spool).requeue(
            start=T0, end=T0 + timedelta(days=4), max_records=100, batch_records=5, now=NOW
        )
        # One run of 12 ids: cut at 5 records, as a drain would.
        assert [(b.first_id, b.last_id, b.records) for b in done.batches] == [
            (1, 5, 5), (6, 10, 5), (11, 12, 2)
        ]  # fmt: skip
        # New records after the resend: the cut from the cursor is whole and exact, resent
        # batches ride along once, and the dense-ids fast path is not misled by them.
        await spool.write_readings(day_readings(8)[12:])
        take = await uplink.take(max_batches=100, max_records=4, flush=set(Stream), now=NOW,
                                 render=True)  # fmt: skip
        fresh = [b for b in take.rendered if b.seq not in {r.seq for r in done.batches}]
        assert [b.count for b in fresh] == [4, 4, 4]
        assert [b.ref.first_id for b in fresh] == [13, 17, 21]
        assert sum(b.count for b in take.rendered) == 12 + 12
        await spool.write_readings(day_readings(9)[24:])
        later = await uplink.take(max_batches=100, max_records=4, flush=set(Stream), now=NOW,
                                  render=True)  # fmt: skip
        assert [(b.ref.first_id, b.count) for b in later.rendered] == [(25, 3)]


async def test_a_restart_resends_requeued_batches_like_any_open_batch(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    async with Spool.connect(path) as spool:
        await spool.write_readings(day_readings(2))
        await drain(Outbox(spool))
        done = await Outbox(spool).requeue(
            start=T0, end=T0 + timedelta(days=1), max_records=100, batch_records=10, now=NOW
        )
    async with Spool.connect(path) as spool:
        uplink = Outbox(spool)
        refs = await uplink.open_batches()
        assert refs == list(done.batches)
        assert len(records(await uplink.render(refs))) == 3
        # Listed as resends at the start: the first cut does not hand them out a second time.
        assert (
            await uplink.take(max_batches=10, max_records=4, flush=set(Stream), now=NOW)
        ).cut == ()


async def test_too_many_records_are_refused_whole_and_streams_filter(tmp_path: Path) -> None:
    async with Spool.connect(tmp_path / "spool.sqlite") as spool:
        await spool.write_readings(day_readings(5))
        await spool.write_events(
            [Event("collector", "session", METERS[0], T0 + timedelta(hours=1))]
        )
        await spool.write_alarms([Alarm(METERS[0], "clock", T0, T0 + timedelta(days=1), NOW,
                                        Severity.WARNING)])  # fmt: skip
        await drain(Outbox(spool))
        outbox = Outbox(spool)
        refused = await outbox.requeue(start=T0, end=T0 + timedelta(days=5), max_records=14,
                                       batch_records=10, now=NOW)  # fmt: skip
        assert refused.refused
        assert sum(refused.matched.values()) == 17
        assert refused.batches == ()
        assert await outbox.open_batches() == []
        some = await outbox.requeue(start=T0, end=T0 + timedelta(days=1), meters=[METERS[0]],
                                    streams=[Stream.EVENTS, Stream.ALARMS], max_records=14,
                                    batch_records=10, now=NOW)  # fmt: skip
        assert some.queued == {Stream.EVENTS: 1, Stream.ALARMS: 1}
        with pytest.raises(ValueError, match="cannot resend ledger"):
            await outbox.requeue(start=T0, end=NOW, streams=[Stream.LEDGER], max_records=1,
                                 batch_records=1, now=NOW)  # fmt: skip


async def test_records_not_sent_yet_are_not_queued_twice(tmp_path: Path) -> None:
    async with Spool.connect(tmp_path / "spool.sqlite") as spool:
        await spool.write_readings(day_readings(2))
        await drain(Outbox(spool))
        await spool.write_readings(day_readings(4)[6:])  # waiting: they go out anyway
        done = await Outbox(spool).requeue(start=T0, end=T0 + timedelta(days=4), max_records=100,
                                           batch_records=10, now=NOW)  # fmt: skip
        assert done.queued == {Stream.READINGS: 6}


# -- the command ------------------------------------------------------------------------------


async def resend_rig(rig: Rig) -> list[dict[str, Any]]:
    await rig.spool.write_readings(day_readings(10))
    return records(await drain(Outbox(rig.spool)))


def resend(params: dict[str, Any], **kw: Any) -> bytes:
    payload = command("resend", params, **kw)
    assert_valid("cmd", json.loads(payload))
    return payload


async def test_the_resend_command_queues_and_reports_per_stream(tmp_path: Path) -> None:
    async with rig_for(tmp_path, resend_max_records=20) as rig:
        first = await resend_rig(rig)
        out = await rig.send(resend({"start": "2025-06-01T08:00:00+08:00",
                                     "end": "2025-06-04T08:00:00+08:00",
                                     "streams": ["readings", "alarms"]}))  # fmt: skip
        assert [r["status"] for r in out] == ["accepted", "done"]
        result = out[-1]["result"]
        assert result["queued"] == {"readings": 9, "alarms": 0}
        assert result["matched"] == {"readings": 9, "alarms": 0}
        assert result["evicted"] == []
        assert result["start"] == "2025-06-01T00:00:00.000000Z"
        assert rig.service.outbox is not None
        uplink = Outbox(rig.spool)
        refs = await uplink.open_batches()
        assert [r.seq for r in refs] == list(range(result["seqs"][0], result["seqs"][1] + 1))
        again = records(await uplink.render(refs))
        assert {json.dumps(r["key"]) for r in again} == {
            json.dumps(r["key"]) for r in first if r["data_time"][:10] < "2025-06-04"
        }

        too_many = await rig.final(resend({"start": "2025-06-01T00:00:00Z",
                                           "end": "2025-06-30T00:00:00Z"}))  # fmt: skip
        assert too_many["status"] == "failed"
        assert "30 records match, more than resend_max_records (20)" in too_many["detail"]
        assert too_many["result"]["queued"] == {"readings": 0, "alarms": 0, "events": 0}
        assert len(await uplink.open_batches()) == len(refs)

        nothing = await rig.final(resend({"start": "2024-01-01T00:00:00Z",
                                          "end": "2024-02-01T00:00:00Z"}))  # fmt: skip
        assert nothing["status"] == "done"
        assert nothing["detail"] == "the spool holds no record of the range that was sent before"


async def test_evicted_parts_of_the_range_are_reported(tmp_path: Path) -> None:
    async with rig_for(tmp_path) as rig:
        await resend_rig(rig)
        # What eviction leaves: the oldest frozen readings gone, and its counter.
        db = rig.spool._require()
        await db.execute("DELETE FROM readings WHERE id <= 6")
        await db.execute("INSERT INTO spool_counters (name, value) VALUES ('evicted.sent', 6)")
        await db.commit()
        result = await rig.final(resend({"start": "2025-06-01T00:00:00Z",
                                         "end": "2025-06-05T00:00:00Z",
                                         "streams": ["readings"]}))  # fmt: skip
        assert result["status"] == "done"
        assert result["result"]["queued"] == {"readings": 6}
        frozen = [e for e in result["result"]["evicted"] if e["records"] == "frozen"]
        assert frozen == [{"stream": "readings", "records": "frozen",
                           "start": "2025-06-01T00:00:00.000000Z",
                           "end": "2025-06-03T00:00:00.000000Z"}]  # fmt: skip


async def test_a_large_resend_is_handed_out_a_window_at_a_time_each_batch_once(
    tmp_path: Path,
) -> None:
    async with Spool.connect(tmp_path / "spool.sqlite") as spool:
        await spool.write_readings(day_readings(10))
        uplink = Outbox(spool)
        await drain(uplink)
        done = await Outbox(spool).requeue(
            start=T0, end=T0 + timedelta(days=10), meters=[METERS[0]], max_records=100,
            batch_records=10, now=NOW,
        )  # fmt: skip
        assert len(done.batches) == 10  # one per record: the other meters' rows lie between
        await spool.write_readings(day_readings(12)[30:])  # new records cut meanwhile
        handed: list[int] = []
        fresh = 0
        for _ in range(5):
            take = await uplink.take(max_batches=3, max_records=4, flush=set(Stream), now=NOW,
                                     render=True)  # fmt: skip
            assert len(take.rendered) == len(take.cut)
            resent = [b.seq for b in take.cut if b.seq in {r.seq for r in done.batches}]
            assert len(resent) <= 3
            handed += resent
            fresh += sum(b.count for b in take.rendered if b.seq not in resent)
        assert handed == [b.seq for b in done.batches]
        assert fresh == 6


async def test_an_open_resend_counts_its_records_only_and_leaves_the_rest_evictable(
    tmp_path: Path,
) -> None:
    async with Spool.connect(tmp_path / "spool.sqlite") as spool:
        await spool.write_readings(day_readings(10))  # 30 readings, ids 1..30
        outbox = Outbox(spool)
        await drain(outbox)
        assert (await outbox.statistics()).unsent[Stream.READINGS] == 0
        # Day 0 again (ids 1..3), and two readings not cut yet.
        done = await outbox.requeue(
            start=T0, end=T0 + timedelta(days=1), max_records=100, batch_records=5, now=NOW
        )
        assert [(b.first_id, b.last_id) for b in done.batches] == [(1, 3)]
        await spool.write_readings(day_readings(11)[30:32])
        stats = await outbox.statistics()
        # The three reopened and the two waiting: not everything from id 1 on.
        assert stats.unsent[Stream.READINGS] == 5
        assert stats.oldest_unsent == NOW  # the reopened records' read time
        # Everything must go (a cap of one byte): the sent records after the reopened ones go
        # as sent, the reopened and the waiting ones only with the unsent frozen data.
        spool.caps.max_bytes = 1
        report = await spool.caps.enforce()
        assert report is not None
        assert report.evicted[EvictionClass.SENT] == 27
        assert report.evicted[EvictionClass.FROZEN] == 5
