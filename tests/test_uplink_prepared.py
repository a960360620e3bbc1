"""Batches prepared while the broker is away (spool.prepared): written ahead byte for byte as
they would be rendered, read back instead of rendered, gone with their acknowledgement, never
trusted when the file says otherwise, dropped before the cap evicts a record, and never what
fills the disk; and, against a real mosquitto, a backlog prepared during an outage delivered
whole and in order, also across a restart."""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import spool.prepared as prepared_module
from drivers.clock import SystemClock
from gateway.uplink import Uplink
from gateway.uplink.payloads import BatchEncoder, parse_batch
from spool import Batch, Outbox, Spool, SpoolFullError, Stream
from spool.prepared import directory_of
from tests.broker import Broker, Delivery, Subscriber, requires_mosquitto, spool_keys
from tests.test_uplink_broker import GW, config, readings, records_on, running

NOW = datetime(2024, 6, 1, tzinfo=UTC)
ENCODE = BatchEncoder(GW).encode


def outbox_of(spool: Spool) -> Outbox:
    return Outbox(spool, envelope=ENCODE)


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    async with Spool.connect(tmp_path / "spool.sqlite") as s:
        yield s


def segments(spool: Spool) -> list[str]:
    directory = directory_of(spool.path)
    return sorted(os.listdir(directory)) if directory.exists() else []


def file_of(spool: Spool, seq: int) -> str:
    """The segment file batch ``seq`` was prepared into."""
    with sqlite3.connect(spool.path) as conn:
        (segment,) = conn.execute(
            "SELECT segment FROM outbox_prepared WHERE seq = ?", (seq,)
        ).fetchone()
    return f"{segment:016x}.json"


async def live(outbox: Outbox, batches: list[Batch]) -> list[bytes]:
    """The same batches rendered from their records (their prepared rows set aside), as the
    uplink would publish them."""
    conn = sqlite3.connect(outbox._spool.path)
    saved = conn.execute("SELECT * FROM outbox_prepared").fetchall()
    conn.execute("DELETE FROM outbox_prepared")
    conn.commit()
    try:
        again = await outbox.render([b.ref for b in batches])
    finally:
        conn.executemany("INSERT INTO outbox_prepared VALUES (?, ?, ?, ?, ?)", saved)
        conn.commit()
        conn.close()
    assert all(b.payload is None for b in again)
    return [ENCODE(b) for b in again]


def published(batches: list[Batch]) -> list[bytes]:
    """What the uplink publishes for these batches."""
    return [bytes(b.payload) if b.payload is not None else ENCODE(b) for b in batches]


async def test_prepare_writes_full_batches_ahead_byte_for_byte(spool: Spool) -> None:
    await spool.write_readings(readings(0, 530))
    async with outbox_of(spool) as outbox:
        done = await outbox.prepare(max_batches=20, max_records=50, now=NOW)
        # Full batches only: the 30 left over wait for more records (or for the broker).
        assert (done.batches, done.records, done.held) == (10, 500, None)
        assert await outbox.waiting(1000) == {Stream.READINGS: 30}
        stats = await outbox.statistics()
        assert stats.prepared_batches == 10
        assert stats.open_batches == 10
        assert stats.prepared_bytes == done.bytes > 0
        (name,) = segments(spool)
        assert (directory_of(spool.path) / name).stat().st_size == done.bytes

        refs = await outbox.open_batches()
        read_back = await outbox.render(refs)
        assert [b.count for b in read_back] == [50] * 10
        assert all(isinstance(b.payload, bytearray) for b in read_back)  # read, not rendered
        assert published(read_back) == await live(outbox, read_back)
        # Prepared by this outbox and never handed out: a first send, asked once.
        assert outbox.first_send(refs[0].seq)
        assert not outbox.first_send(refs[0].seq)

        # Nothing more to prepare until a full batch is waiting.
        assert (await outbox.prepare(max_batches=20, max_records=50, now=NOW)).batches == 0


async def test_acknowledged_batches_take_their_segment_files_along(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    await spool.write_readings(readings(0, 400))
    async with outbox_of(spool) as outbox:
        monkeypatch.setattr(prepared_module, "SEGMENT_BYTES", 1)  # a segment per prepare call
        await outbox.prepare(max_batches=4, max_records=50, now=NOW)
        await outbox.prepare(max_batches=4, max_records=50, now=NOW)
        monkeypatch.undo()
        refs = await outbox.open_batches()
        first, second = file_of(spool, refs[0].seq), file_of(spool, refs[4].seq)
        assert segments(spool) == sorted([first, second])
        # Half of the first segment's batches: it stays.
        await outbox.acknowledge([r.seq for r in refs[:2]])
        assert segments(spool) == sorted([first, second])
        await outbox.acknowledge([r.seq for r in refs[2:4]])
        assert segments(spool) == [second]
        await outbox.acknowledge([r.seq for r in refs[4:]])
        assert segments(spool) == []
        assert (await outbox.statistics()).prepared_batches == 0


async def test_a_prepared_batch_not_as_written_is_rendered_from_its_records(
    spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    await spool.write_readings(readings(0, 300))
    async with outbox_of(spool) as outbox:
        await outbox.prepare(max_batches=6, max_records=50, now=NOW)
        refs = await outbox.open_batches()
        expected = await live(outbox, await outbox.render(refs))
        path = directory_of(spool.path) / file_of(spool, refs[0].seq)
        data = bytearray(path.read_bytes())
        first = len(expected[0])
        data[first] = ord("x")  # the second batch no longer starts an object
        path.write_bytes(data[: len(data) - 10])  # and the last one is cut short
        again = await outbox.render(refs)
        assert published(again) == expected
        assert outbox._prepared.unreadable == 2
        assert (await outbox.statistics()).prepared_batches == 4
        assert "2 prepared batch(es) not as written" in caplog.text
        path.unlink()  # the whole segment gone: everything is rendered again
        assert published(await outbox.render(refs)) == expected
        assert (await outbox.statistics()).prepared_batches == 0


async def test_a_prepared_message_in_another_envelope_is_rendered_again(spool: Spool) -> None:
    await spool.write_readings(readings(0, 150))
    async with outbox_of(spool) as outbox:
        await outbox.prepare(max_batches=3, max_records=50, now=NOW)
    # The gateway's id changed in the configuration: the messages written ahead carry the old.
    renamed = BatchEncoder("gw-renamed").encode
    async with Outbox(spool, envelope=renamed) as outbox:
        again = await outbox.render(await outbox.open_batches())
        assert [b.payload for b in again] == [None] * 3
        assert outbox._prepared.unreadable == 3
        assert all(b'"gateway":"gw-renamed"' in renamed(b) for b in again)


async def test_leftovers_are_swept_and_a_new_process_never_appends_to_an_old_segment(
    tmp_path: Path,
) -> None:
    path = tmp_path / "spool.sqlite"
    async with Spool.connect(path) as spool:
        await spool.write_readings(readings(0, 200))
        async with outbox_of(spool) as outbox:
            await outbox.prepare(max_batches=2, max_records=50, now=NOW)
        # A crash between writing bytes and committing their rows leaves a file no row needs.
        (old,) = segments(spool)
        stray = f"{7:016x}.json"
        (directory_of(path) / stray).write_bytes(b'{"half":')
    async with Spool.connect(path) as spool, outbox_of(spool) as outbox:
        assert segments(spool) == sorted([old, stray])
        await outbox.prepare(max_batches=2, max_records=50, now=NOW)
        refs = await outbox.open_batches()
        # The stray file went; the new segment is a new file, not the old one continued.
        new = file_of(spool, refs[2].seq)
        assert new != old
        assert segments(spool) == sorted([old, new])
        assert len(refs) == 4
        rendered = await outbox.render(refs)
        assert published(rendered) == await live(outbox, rendered)
        # Batches prepared by another process are resent as far as this one knows.
        assert not outbox.first_send(refs[0].seq)
        assert outbox.first_send(refs[2].seq)


async def test_a_full_disk_fails_the_prepare_and_loses_nothing(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    await spool.write_readings(readings(0, 200))
    async with outbox_of(spool) as outbox:
        await outbox.prepare(max_batches=1, max_records=50, now=NOW)
        (name,) = segments(spool)
        size = (directory_of(spool.path) / name).stat().st_size

        def full(fd: int, buffers: Any) -> int:
            os.write(fd, bytes(buffers[0][:100]))  # a short write first, then no space
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(prepared_module.os, "writev", full)
        with pytest.raises(SpoolFullError, match="No space left"):
            await outbox.prepare(max_batches=2, max_records=50, now=NOW)
        monkeypatch.undo()
        # The cut was rolled back, the segment cut back to what its rows describe.
        assert (directory_of(spool.path) / name).stat().st_size == size
        assert await outbox.waiting(1000) == {Stream.READINGS: 150}
        assert len(await outbox.open_batches()) == 1
        done = await outbox.prepare(max_batches=3, max_records=50, now=NOW)
        assert done.batches == 3
        assert len(segments(spool)) == 2
        rendered = await outbox.render(await outbox.open_batches())
        assert [b.count for b in rendered] == [50] * 4


async def test_preparing_leaves_the_disk_its_reserve(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    await spool.write_readings(readings(0, 100))
    monkeypatch.setattr(prepared_module, "FREE_RESERVE", 1.0)
    async with outbox_of(spool) as outbox:
        done = await outbox.prepare(max_batches=2, max_records=50, now=NOW)
        assert (done.batches, done.held) == (0, "disk")
        assert await outbox.waiting(1000) == {Stream.READINGS: 100}


async def test_the_cap_counts_prepared_bytes_and_drops_them_before_any_record(
    tmp_path: Path,
) -> None:
    async with Spool.connect(tmp_path / "spool.sqlite") as spool:
        await spool.write_readings(readings(0, 1000))
        used = await spool.caps.used_bytes()
        async with outbox_of(spool) as outbox:
            done = await outbox.prepare(max_batches=10, max_records=50, now=NOW)
            assert done.batches == 10
            assert await spool.caps.used_bytes() == used + done.bytes
            # Near the cap (prepared bytes counted), preparing holds back.
            spool.caps.max_bytes = used + done.bytes + 1000
            held = await outbox.prepare(max_batches=10, max_records=50, now=NOW)
            assert (held.batches, held.held) == (0, "cap")
            # Over the cap: the prepared JSON goes first, and that is enough here.
            spool.caps.max_bytes = used + done.bytes // 2
            report = await spool.caps.enforce()
            assert report is not None
            assert report.prepared_dropped == 10
            assert report.total == 0
            assert (await spool.caps.evicted()) == dict.fromkeys(report.evicted, 0)
            assert segments(spool) == []
            stats = await outbox.statistics()
            assert (stats.prepared_batches, stats.open_batches) == (0, 10)
            # The batches are rendered from their records when sent.
            rendered = await outbox.render(await outbox.open_batches())
            assert [b.count for b in rendered] == [50] * 10


# -- against a real broker ----------------------------------------------------------------------


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker.running(tmp_path / "broker") as b:
        yield b


async def prepared_count(outbox: Outbox) -> int:
    return (await outbox.statistics()).prepared_batches


async def wait_until(check: Any, within: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@pytest.mark.broker
@requires_mosquitto
async def test_a_backlog_prepared_during_an_outage_is_delivered_whole_and_in_order(
    broker: Broker, spool: Spool, tmp_path: Path
) -> None:
    async with Subscriber(broker, f"amigw/{GW}/#") as sub:
        broker.stop()
        uplink = Uplink(config(broker, prepare_after_s=0), GW, spool, SystemClock())
        async with running(uplink):
            await spool.write_readings(readings(0, 1000))
            await spool.write_readings(readings(1000, 1020))  # 20 left for a short batch
            await wait_until(lambda: _at_least(uplink.outbox, 40))
            assert segments(spool)
            assert await uplink.outbox.waiting(1000) == {Stream.READINGS: 20}
            broker.start()
            await sub.wait_for(lambda: records_on(sub, "readings") == 2020, within=30)
            await wait_until(uplink.outbox.empty)
            await wait_until(lambda: _no_segments(spool))
        stats = uplink.statistics()
    assert stats.batches_prepared == 40
    assert stats.batches_resent == 0  # prepared, then sent for the first time
    delivery = Delivery.of(sub.messages)
    assert delivery.first_order == await spool_keys(tmp_path / "spool.sqlite")
    assert not delivery.duplicated
    seqs = [parse_batch(m.payload).seq for m in sub.on("/readings")]
    assert seqs == sorted(seqs)


@pytest.mark.broker
@requires_mosquitto
async def test_prepared_batches_survive_a_restart_and_are_sent_from_the_file(
    broker: Broker, tmp_path: Path
) -> None:
    path = tmp_path / "spool.sqlite"
    async with Subscriber(broker, f"amigw/{GW}/#") as sub:
        broker.stop()
        async with Spool.connect(path) as spool:
            uplink = Uplink(config(broker, prepare_after_s=0), GW, spool, SystemClock())
            async with running(uplink):
                await spool.write_readings(readings(0, 500))
                await wait_until(lambda: _at_least(uplink.outbox, 10))
        # The daemon is back (the prepared rows and files are still there), then the broker.
        async with Spool.connect(path) as spool:
            uplink = Uplink(config(broker, prepare_after_s=3600), GW, spool, SystemClock())
            async with running(uplink):
                assert await prepared_count(uplink.outbox) == 10
                broker.start()
                await sub.wait_for(lambda: records_on(sub, "readings") == 500, within=30)
                await wait_until(uplink.outbox.empty)
                await wait_until(lambda: _no_segments(spool))
            stats = uplink.statistics()
    assert stats.batches_prepared == 0
    assert stats.batches_resent == 10
    assert Delivery.of(sub.messages).first_order == await spool_keys(path)


async def _at_least(outbox: Outbox, n: int) -> bool:
    return await prepared_count(outbox) >= n


async def _no_segments(spool: Spool) -> bool:
    return not segments(spool)
