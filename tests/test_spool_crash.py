"""Crash safety: a writer killed with SIGKILL at random moments, damaged WAL and shm files, and
a corrupt page. After each, the spool opens (or refuses clearly) and keeps every committed row.

SIGKILL leaves what the process had written in the page cache, so this exercises SQLite's WAL
recovery and our one-transaction-per-batch discipline; true power loss additionally depends on
``synchronous=FULL`` fsyncing each commit, which no test on a running kernel can show.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from spool import (
    LedgerState,
    Quality,
    Reading,
    ReadingKind,
    ReadingValue,
    Spool,
    SpoolCorruptError,
)

ROOT = Path(__file__).resolve().parents[1]
BATCH = 200
CST = timezone(timedelta(hours=8))
T0 = datetime(2024, 1, 1, tzinfo=CST)

# Batch b: BATCH meters' daily frozen totals filed at T0 + b minutes, plus one ledger entry
# "b<n>" marked done in the same commit_collection. Prints b after each commit returns.
CHILD = r"""
import asyncio, sys
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from spool import LedgerEntry, LedgerState, Quality, Reading, ReadingKind, ReadingValue, Spool

path, start, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
T0 = datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=8)))
NOW = datetime(2024, 1, 1, tzinfo=timezone.utc)

async def main():
    spool = await Spool.open(path)
    b = start
    while True:
        at = T0 + timedelta(minutes=b)
        readings = [
            Reading(f"{m:012d}", "05060101", at, NOW, {
                "total": ReadingValue(Decimal(f"{b}.{m:03d}"), "kWh"),
                "t1": ReadingValue(Decimal("0.00"), "kWh"),
            }, Quality.OK, ReadingKind.DAILY_FROZEN, "rs485-1")
            for m in range(size)
        ]
        done = LedgerEntry("000000000000", date(2024, 1, 1), f"b{b}", LedgerState.DONE, 1,
                           None, None, NOW)
        await spool.commit_collection(readings, [done])
        print(b, flush=True)
        b += 1

asyncio.run(main())
"""


def _batches(readings: list[Reading]) -> Counter[int]:
    return Counter(int((r.data_time - T0) / timedelta(minutes=1)) for r in readings)


async def _verify(path: Path, reported: set[int]) -> int:
    """Check the spool after a kill; return the next batch number to write."""
    async with Spool.connect(path) as spool:  # runs quick_check
        conn = spool._require()
        (check,) = await conn.execute_fetchall("PRAGMA integrity_check")
        assert check[0] == "ok"
        # Counted in SQL: decoding every reading after every trial would dominate the run time.
        epoch0 = int(T0.timestamp())
        rows = await conn.execute_fetchall(
            "SELECT data_epoch, COUNT(*) FROM readings GROUP BY data_epoch"
        )
        counts = Counter({(epoch - epoch0) // 60: n for epoch, n in rows})
        ledger = {e.item for e in await spool.ledger() if e.state is LedgerState.DONE}
        for b, n in counts.items():
            assert n == BATCH, f"batch {b} is partial: {n} of {BATCH} rows"
        assert reported <= set(counts), f"lost committed batches {sorted(reported - set(counts))}"
        # Ledger and readings moved together: no 'done' without rows, no rows without 'done'.
        assert ledger == {f"b{b}" for b in counts}
        for r in await spool.readings(meter="000000000007", limit=3):
            b = int((r.data_time - T0) / timedelta(minutes=1))
            assert r.values["total"].value == Decimal(f"{b}.007")
        return max(counts, default=-1) + 1


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_no_committed_batch(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    rng = random.Random(0x5EED)
    reported: set[int] = set()
    next_batch = 0
    kills_after_commits = 0
    deadline = time.monotonic() + 12
    for trial in range(8):
        if time.monotonic() > deadline:
            break
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), str(next_batch), str(BATCH)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        # Early kills land in interpreter start-up or Spool.open (the first trial: mid-
        # migration); later ones in the write loop, mostly inside a transaction.
        time.sleep(rng.uniform(0.05, 1.0))
        child.send_signal(signal.SIGKILL)
        out, err = child.communicate(timeout=10)
        assert child.returncode == -signal.SIGKILL, err.decode()
        this_trial = {int(line) for line in out.split()}
        kills_after_commits += bool(this_trial)
        reported |= this_trial
        next_batch = asyncio.run(_verify(path, reported))
        assert next_batch >= max(reported, default=-1) + 1, f"trial {trial}"
    assert kills_after_commits >= 3, "too few trials reached the write loop to mean anything"
    assert len(reported) > 10


def _crash_image(src: Path, dst: Path) -> None:
    """Copy a live spool's files as a power cut would leave them: db, -wal and -shm."""
    for suffix in ("", "-wal", "-shm"):
        shutil.copyfile(f"{src}{suffix}", f"{dst}{suffix}")


def _batch(b: int) -> list[Reading]:
    at = T0 + timedelta(minutes=b)
    return [
        Reading(
            f"{m:012d}",
            "05060101",
            at,
            at,
            {"total": ReadingValue(Decimal(b), "kWh")},
            Quality.OK,
            ReadingKind.DAILY_FROZEN,
            "bus",
        )
        for m in range(BATCH)
    ]


def _append_garbage_to_wal_and_shm(image: Path) -> None:
    rng = random.Random(7)
    with open(f"{image}-wal", "ab") as wal:
        wal.write(rng.randbytes(3 * 4096 + 123))
    Path(f"{image}-shm").write_bytes(rng.randbytes(32768))


def _tear_last_wal_frame(image: Path) -> None:
    wal = Path(f"{image}-wal")
    with open(wal, "r+b") as f:
        f.truncate(wal.stat().st_size - 100)
    os.remove(f"{image}-shm")


def _damage_readings_root_page(path: Path) -> None:
    with sqlite3.connect(path) as raw:
        (root,) = raw.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'readings'"
        ).fetchone()
        (page_size,) = raw.execute("PRAGMA page_size").fetchone()
    raw.close()
    with open(path, "r+b") as f:
        f.seek((root - 1) * page_size + 100)
        f.write(b"\xaa" * 200)


async def test_garbage_after_wal_and_stale_shm_keep_committed_rows(tmp_path: Path) -> None:
    live, image = tmp_path / "live.sqlite", tmp_path / "image.sqlite"
    async with Spool.connect(live) as spool:
        for b in range(5):
            await spool.write_readings(_batch(b))
        assert (await spool.statistics()).wal_bytes > 0  # the rows are only in the WAL
        _crash_image(live, image)
    _append_garbage_to_wal_and_shm(image)
    async with Spool.connect(image) as spool:
        assert _batches(await spool.readings()) == dict.fromkeys(range(5), BATCH)
        assert await spool.write_readings(_batch(5)) == BATCH  # and it stays writable


async def test_torn_last_commit_drops_only_that_batch(tmp_path: Path) -> None:
    live, image = tmp_path / "live.sqlite", tmp_path / "image.sqlite"
    async with Spool.connect(live) as spool:
        for b in range(3):
            await spool.write_readings(_batch(b))
        _crash_image(live, image)
    _tear_last_wal_frame(image)  # the last commit frame is torn, as by a cut mid-fsync
    async with Spool.connect(image) as spool:
        assert _batches(await spool.readings()) == {0: BATCH, 1: BATCH}


async def test_corrupt_page_is_refused_with_the_file_name(tmp_path: Path) -> None:
    path = tmp_path / "damaged.sqlite"
    async with Spool.connect(path) as spool:
        for b in range(10):
            await spool.write_readings(_batch(b))
    # Closing checkpointed the WAL into the main file, so the damage hits the real b-tree.
    _damage_readings_root_page(path)
    with pytest.raises(SpoolCorruptError, match=r"damaged\.sqlite.*quick_check failed"):
        await Spool.open(path)
