"""The outbox's worker thread: jobs run whole, in order, on one connection of its own (configured
like the spool's); sqlite3 errors come back mapped; closing joins the thread."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from spool import Outbox, Spool, SpoolClosedError, SpoolError, SpoolIntegrityError
from spool.store import DEFAULT_BUSY_TIMEOUT
from spool.worker import Worker


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    async with Spool.connect(tmp_path / "spool.sqlite") as s:
        yield s


def worker(spool: Spool) -> Worker:
    return Worker(spool.path, busy_timeout=DEFAULT_BUSY_TIMEOUT, name="test-worker")


async def test_jobs_run_in_order_on_one_thread_and_connection(spool: Spool) -> None:
    w = worker(spool)
    seen: list[tuple[int, str, int]] = []

    def job(n: int) -> object:
        def run(conn: sqlite3.Connection) -> int:
            seen.append((n, threading.current_thread().name, id(conn)))
            return n * 10

        return run

    try:
        results = await asyncio.gather(*(w.call(job(n)) for n in range(20)))
        assert results == [n * 10 for n in range(20)]
        assert [n for n, _, _ in seen] == list(range(20))
        assert {name for _, name, _ in seen} == {"test-worker"}
        assert len({conn for _, _, conn in seen}) == 1
        # Configured like the spool's connection: FULL sync (2), the same busy timeout.
        settings = await w.call(
            lambda c: (c.execute("PRAGMA synchronous").fetchone()[0],
                       c.execute("PRAGMA busy_timeout").fetchone()[0])
        )  # fmt: skip
        assert settings == (2, int(DEFAULT_BUSY_TIMEOUT * 1000))
    finally:
        await w.close()


async def test_errors_come_back_mapped_and_the_worker_carries_on(spool: Spool) -> None:
    w = worker(spool)
    try:
        with pytest.raises(SpoolError, match="no such table"):
            await w.call(lambda c: c.execute("SELECT * FROM no_such_table").fetchall())
        with pytest.raises(SpoolIntegrityError):
            await w.call(
                lambda c: c.execute(
                    "INSERT INTO outbox_batches (stream, first_id, last_id, records, created_us)"
                    " VALUES ('readings', 5, 1, 1, 0)"  # last_id < first_id: refused
                )
            )
        with pytest.raises(ZeroDivisionError):
            await w.call(lambda c: 1 // 0)
        assert await w.call(lambda c: c.execute("SELECT 7").fetchone()[0]) == 7
    finally:
        await w.close()


async def test_a_cancelled_caller_does_not_cut_its_job_short(spool: Spool) -> None:
    w = worker(spool)
    release = threading.Event()

    def slow_write(conn: sqlite3.Connection) -> None:
        release.wait(10)
        conn.execute("UPDATE outbox_cursor SET taken = 42 WHERE stream = 'alarms'")

    try:
        task = asyncio.create_task(w.call(slow_write))
        await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        release.set()
        # The next job runs after it, on the same thread: the write is there.
        taken = await w.call(
            lambda c: c.execute(
                "SELECT taken FROM outbox_cursor WHERE stream = 'alarms'"
            ).fetchone()[0]
        )
        assert taken == 42
    finally:
        release.set()
        await w.close()


async def test_closing_joins_the_thread_and_refuses_later_jobs(tmp_path: Path) -> None:
    async with Spool.connect(tmp_path / "spool.sqlite") as spool:
        outbox = Outbox(spool)
        await outbox.acknowledge([1])  # starts the outbox's worker
        assert any(t.name == "amigw-outbox" for t in threading.enumerate())
    # Closing the spool closed the outbox's worker with it.
    assert not any(t.name == "amigw-outbox" for t in threading.enumerate())
    with pytest.raises(SpoolClosedError):
        await outbox.acknowledge([1])
