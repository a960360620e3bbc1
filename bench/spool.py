"""Spool write throughput: ``Spool.write_readings`` vs raw ``sqlite3`` ``executemany``.

Workload: a district of 256 meters, each with one daily frozen reading (DI 05060101, five
Decimal values: total and four tariffs) per day; one batch of 256 readings per day, one
transaction per batch, ``synchronous=FULL`` (so every batch pays its fsync, as on the box).

(a) ``Spool.write_readings`` — validation-free encode, asyncio lock, aiosqlite worker thread,
    ``BEGIN IMMEDIATE``/``executemany``/``COMMIT``.
(b) the baseline written here: a plain ``sqlite3`` connection in the same process with the same
    pragmas and schema (``spool.schema.MIGRATIONS``), encoding the same columns inline and
    doing ``BEGIN IMMEDIATE``/``executemany``/``COMMIT`` — what a throw-away script does.

Both sides get a fresh file per round and the rounds alternate, so page cache and disk state
are shared fairly. Prints readings/s for both and the ratio a/b. Target: a/b >= 0.5.

    .venv/bin/python bench/spool.py [--dir DIR] [--days N] [--rounds N]

``--dir`` should be on the storage you care about (the default is the system temp dir).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

# Run as a script, this file's directory comes first on sys.path and "spool" would import this
# file instead of the package.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

from spool import MIGRATIONS, Quality, Reading, ReadingKind, ReadingValue, Spool  # noqa: E402

METERS = 256
CST = timezone(timedelta(hours=8))
DAY0 = datetime(2024, 1, 1, tzinfo=CST)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
TARIFFS = ("total", "t1", "t2", "t3", "t4")


def build_batches(days: int) -> list[list[Reading]]:
    batches = []
    for day in range(days):
        at = DAY0 + timedelta(days=day)
        read = at + timedelta(minutes=5, seconds=day % 60, microseconds=1234)
        batch = []
        for m in range(METERS):
            base = Decimal(1000 + m * 17 + day * 9) + Decimal(m % 100) / 100
            values = {
                name: ReadingValue(base / (1 if i == 0 else 4) + Decimal("0.00"), "kWh")
                for i, name in enumerate(TARIFFS)
            }
            batch.append(
                Reading(
                    f"{m:012d}",
                    "05060101",
                    at,
                    read,
                    values,
                    Quality.OK,
                    ReadingKind.DAILY_FROZEN,
                    "rs485-1",
                )
            )
        batches.append(batch)
    return batches


async def run_spool(path: Path, batches: list[list[Reading]]) -> float:
    async with Spool.connect(path) as spool:
        start = time.perf_counter()
        for batch in batches:
            await spool.write_readings(batch)
        elapsed = time.perf_counter() - start
        assert await spool.count_readings() == METERS * len(batches)
    return elapsed


INSERT = (
    "INSERT INTO readings (meter, di, data_epoch, data_time, read_time, kind, quality, source, "
    "value_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)


def run_raw(path: Path, batches: list[list[Reading]]) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    for migration in MIGRATIONS:
        for statement in migration.statements:
            conn.execute(statement)
    start = time.perf_counter()
    for batch in batches:
        rows = [
            (
                r.meter,
                r.di,
                int((r.data_time - EPOCH).total_seconds()),
                r.data_time.isoformat(),
                r.read_time.isoformat(),
                r.kind.value,
                r.quality.value,
                r.source,
                json.dumps(
                    {k: {"v": {"$dec": str(v.value)}, "u": v.unit} for k, v in r.values.items()},
                    separators=(",", ":"),
                ),
            )
            for r in batch
        ]
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(INSERT, rows)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    assert conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0] == METERS * len(batches)
    conn.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--days", type=int, default=100, help="batches per round and side")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    batches = build_batches(args.days)
    n = METERS * args.days
    spool_times: list[float] = []
    raw_times: list[float] = []
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="amigw-bench-") as tmp:
        for round_ in range(args.rounds):
            spool_times.append(asyncio.run(run_spool(Path(tmp, f"spool{round_}.db"), batches)))
            raw_times.append(run_raw(Path(tmp, f"raw{round_}.db"), batches))
        where = tmp
    spool_rate = n * len(spool_times) / sum(spool_times)
    raw_rate = n * len(raw_times) / sum(raw_times)
    print(
        f"workload: {METERS} meters x {args.days} days x {args.rounds} rounds, "
        f"batches of {METERS}, 5 Decimal values each, synchronous=FULL, in {where}"
    )
    print(f"(a) Spool.write_readings : {spool_rate:10,.0f} readings/s")
    print(f"(b) raw sqlite3          : {raw_rate:10,.0f} readings/s")
    ratio = spool_rate / raw_rate
    verdict = "ok" if ratio >= 0.5 else "MISSED"
    print(f"ratio a/b                : {ratio:10.2f}  (target >= 0.5: {verdict})")


if __name__ == "__main__":
    main()
