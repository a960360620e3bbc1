"""Uplink drain throughput: one million spooled readings through the real ``Uplink`` vs a raw
aiomqtt loop publishing the same payloads, against a local mosquitto started here.

Workload: 250 meters x 4000 days of daily frozen readings (DI 05060101, five Decimal values),
written into a fresh spool first (not timed), and copied for each run.

(a) ``Uplink`` after a broker outage — the backlog a box holds when its broker comes back.
    The uplink runs with the broker down (``prepare_after_s = 0``), so it prepares: cuts full
    batches and writes their JSON ahead beside the spool (``spool.prepared``; untimed, printed).
    Then mosquitto starts, and the clock runs from the moment the uplink's connection is up
    (its CONNACK, as (b) is timed from its connection; the reconnect back-off is a setting,
    not drain speed) until the last batch's acknowledgement is committed: each batch read back
    from its segment, published with QoS 1 and a window of ``window`` publishes in flight, and
    deleted from the outbox when its PUBACK arrives (acks grouped per commit,
    ``synchronous=FULL``). Pacing is off (``drain_records_per_s = 0``). **The ratio a/b is
    the target.**
(c) ``Uplink`` on a backlog nothing prepared (the copy, broker up from the start: an upgrade
    from a version that did not prepare, or preparing held back by the cap): cuts batches from
    the outbox, renders them in SQLite and publishes them, timed from its CONNACK the same way.
    Printed for the record (its timing includes the recording below).
(b) the baseline: one aiomqtt client publishing the very payloads (a) sent, in the same order,
    QoS 1, the same window (a semaphore around ``await publish``), no spool and no rendering.

(c) records what it publishes by copying each payload into memory reserved and touched before
the clock starts (keeping every payload object alive instead would pay the kernel's first-touch
page faults for half a gigabyte of fresh heap, about a second on a small VM, a cost of the
recording, not of the uplink); (b) publishes those objects. (a) records only each payload's
size, checked against (c)'s, batch by batch (tests/test_uplink_prepared.py checks that prepared
batches are byte for byte what rendering gives); its timing carries no recording.

(a) and (b) run ``--rounds`` times each (default 2), interleaved, each (a) on a fresh copy of
the spool, and the best of each is compared: on a small shared VM one run of either can be
slowed by a neighbour by half. Prints readings/s for each (and every run) and the ratios a/b
(target >= 0.7) and c/b.

    .venv/bin/python bench/drain.py [--readings N] [--batch N] [--window N] [--rounds N]
                                    [--dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

# Run as a script, this file's directory comes first on sys.path and "spool" would import
# bench/spool.py instead of the package.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import aiomqtt  # noqa: E402

from drivers.clock import SystemClock  # noqa: E402
from gateway.config import UplinkConfig  # noqa: E402
from gateway.uplink import Uplink  # noqa: E402
from spool import Batch, Quality, Reading, ReadingKind, ReadingValue, Spool, codec  # noqa: E402

METERS = 250
CST = timezone(timedelta(hours=8))
DAY0 = datetime(2014, 1, 1, tzinfo=CST)
TARIFFS = ("total", "t1", "t2", "t3", "t4")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def mosquitto(directory: Path, port: int | None = None) -> Iterator[int]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = port or free_port()
    conf = directory / "mosquitto.conf"
    conf.write_text(
        f"user {getpass.getuser()}\nlistener {port} 127.0.0.1\nallow_anonymous true\n"
        "set_tcp_nodelay true\n"
        f"log_dest file {directory}/mosquitto.log\n"
    )
    process = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("mosquitto did not start") from None
                time.sleep(0.02)
        yield port
    finally:
        process.terminate()
        process.wait()


def sample(day: int, meter: int, read: datetime) -> Reading:
    base = Decimal(1000 + meter * 17 + day * 9) + Decimal(meter % 100) / 100
    values = {
        name: ReadingValue(base / (1 if i == 0 else 4) + Decimal("0.00"), "kWh")
        for i, name in enumerate(TARIFFS)
    }
    return Reading(
        f"{meter:012d}",
        "05060101",
        DAY0 + timedelta(days=day),
        read,
        values,
        Quality.OK,
        ReadingKind.DAILY_FROZEN,
        "rs485-1",
    )


def fill(path: Path, readings: int) -> None:
    """Spool ``readings`` readings: rows made by the spool's own codec, inserted in bulk (the
    fill is not what is measured, and building a million Reading objects would take minutes)."""
    read = datetime(2024, 6, 1, tzinfo=UTC)
    template = codec.reading_row(sample(0, 0, read))
    insert = (
        "INSERT INTO readings (meter, di, data_epoch, data_time, read_time, kind, quality, "
        "source, value_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    for day in range(readings // METERS):
        rows = []
        for meter in range(METERS):
            if meter == 0 or day % 97 == 0:  # spot-check the shortcut against the codec
                row = codec.reading_row(sample(day, meter, read))
            else:
                base = Decimal(1000 + meter * 17 + day * 9) + Decimal(meter % 100) / 100
                parts = [base] + [base / 4 + Decimal("0.00")] * 4
                values = ",".join(
                    f'"{n}":{{"v":{{"$dec":"{v + Decimal("0.00")}"}},"u":"kWh"}}'
                    for n, v in zip(TARIFFS, parts, strict=True)
                )
                at = DAY0 + timedelta(days=day)
                head = (f"{meter:012d}", template[1], codec.epoch_seconds(at), at.isoformat())
                row = (*head, *template[4:8], "{" + values + "}")
            rows.append(row)
        conn.executemany(insert, rows)
    conn.execute("COMMIT")
    conn.close()


class Recording:
    """Payloads copied, in order, into one buffer whose pages are touched up front."""

    def __init__(self, size: int) -> None:
        self._buffer = bytearray(size)
        self._buffer[::4096] = bytes(len(range(0, size, 4096)))  # touch every page now
        self._ends: list[int] = []
        self._spilled: list[bytes] = []  # beyond the buffer (a poor size estimate)

    def add(self, payload: bytes) -> None:
        start = self._ends[-1] if self._ends else 0
        end = start + len(payload)
        if self._spilled or end > len(self._buffer):
            self._spilled.append(payload)
            return
        self._buffer[start:end] = payload
        self._ends.append(end)

    def payloads(self) -> list[bytes]:
        view = memoryview(self._buffer)
        starts = [0, *self._ends[:-1]]
        kept = [bytes(view[a:b]) for a, b in zip(starts, self._ends, strict=True)]
        return kept + self._spilled


async def drain_with_uplink(
    path: Path,
    port: int,
    total: int,
    batch: int,
    window: int,
    *,
    outage: contextlib.ExitStack | None = None,
) -> tuple[float, list[bytes], float]:
    """Drain ``path`` through an ``Uplink``: elapsed seconds, what it published, and (with
    ``outage``: the broker is started into that stack once the backlog is prepared) the
    preparing time. What it published: every payload, or with ``outage`` their sizes only."""
    # About 460 bytes a reading are published; room for more (a spill is kept as objects).
    recording = Recording(total * 640 if outage is None else 0)
    sizes: list[int] = []
    async with Spool.connect(path) as spool:
        config = UplinkConfig(
            host="127.0.0.1",
            port=port,
            window=window,
            batch_max_records=batch,
            batch_max_age_s=0.05,
            drain_records_per_s=0,
            status_interval_s=3600,
            prepare_offline=outage is not None,
            prepare_after_s=0,
            reconnect_min_s=0.02,
            reconnect_max_s=0.05,
        )
        batches = -(-total // batch)
        done = asyncio.Event()
        acked = 0

        def on_acknowledged(seqs: Sequence[int]) -> None:
            nonlocal acked
            acked += len(seqs)
            if acked >= batches:
                done.set()

        uplink = Uplink(config, "bench-gw", spool, SystemClock(), on_acknowledged=on_acknowledged)
        message = uplink._message

        def capture(b: Batch) -> bytes | bytearray:
            payload = message(b)
            recording.add(payload)
            return payload

        def measure(b: Batch) -> bytes | bytearray:
            payload = message(b)
            sizes.append(len(payload))
            return payload

        uplink._message = capture if outage is None else measure  # type: ignore[method-assign]
        serve = uplink._serve
        connected: list[float] = []

        async def timed_serve(session: Any, backoff: Any) -> None:
            connected.append(time.perf_counter())
            await serve(session, backoff)

        uplink._serve = timed_serve  # type: ignore[method-assign]
        prepare_s = 0.0
        start = time.perf_counter()
        task = asyncio.create_task(uplink.run())
        if outage is not None:
            # Polled: the figure is read from the spool, nothing signals it.
            while (await uplink.outbox.statistics()).prepared_batches < batches:  # noqa: ASYNC110
                await asyncio.sleep(0.2)
            prepare_s = time.perf_counter() - start
            outage.enter_context(mosquitto(path.parent, port))
        await done.wait()
        start = connected[0]
        elapsed = time.perf_counter() - start
        uplink.stop()
        await task
        assert await uplink.outbox.empty()
        stats = uplink.statistics()
        assert stats.records_acked == total, stats
        assert stats.batches_prepared == (batches if outage is not None else 0), stats
    return elapsed, (recording.payloads() if outage is None else sizes), prepare_s


async def raw_publish(port: int, payloads: list[bytes], window: int) -> float:
    async with aiomqtt.Client("127.0.0.1", port, max_inflight_messages=window) as client:
        client.pending_calls_threshold = window + 50
        slots = asyncio.Semaphore(window)

        async def one(payload: bytes) -> None:
            try:
                await client.publish("amigw/bench-gw/readings", payload, qos=1)
            finally:
                slots.release()

        start = time.perf_counter()
        async with asyncio.TaskGroup() as tasks:
            for payload in payloads:
                await slots.acquire()
                tasks.create_task(one(payload))
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument(
        "--batch", type=int, default=UplinkConfig.model_fields["batch_max_records"].default
    )
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2, help="runs of (a) and of (b); best kept")
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    total = args.readings - args.readings % METERS
    rounds = max(1, args.rounds)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="amigw-drain-") as tmp:
        paths = [Path(tmp, name, "spool.sqlite") for name in ["c", *map(str, range(rounds))]]
        for path in paths:
            path.parent.mkdir()
        t0 = time.perf_counter()

        async def create() -> None:
            async with Spool.connect(paths[0]):
                pass

        asyncio.run(create())
        fill(paths[0], total)
        for path in paths[1:]:
            shutil.copyfile(paths[0], path)
        print(f"spooled {total:,} readings in {time.perf_counter() - t0:.1f} s (not timed)")
        outage: list[float] = []
        raw: list[float] = []
        with mosquitto(Path(tmp)) as port:
            cold_s, payloads, _ = asyncio.run(
                drain_with_uplink(paths[0], port, total, args.batch, args.window)
            )
            for path in paths[1:]:
                # Each outage drain meets a broker of its own, started once the backlog is
                # prepared; the baseline runs in between on the shared one.
                with contextlib.ExitStack() as broker:
                    seconds, sizes, prepare_s = asyncio.run(
                        drain_with_uplink(
                            path, free_port(), total, args.batch, args.window, outage=broker
                        )
                    )
                outage.append(seconds)
                print(f"backlog prepared during the outage in {prepare_s:.1f} s (not timed)")
                assert sizes == [len(p) for p in payloads], "prepared and rendered batches differ"
                raw.append(asyncio.run(raw_publish(port, payloads, args.window)))
        size = sum(len(p) for p in payloads)
    print(
        f"workload: {total:,} daily frozen readings, batches of {args.batch} "
        f"({len(payloads):,} messages, {size / 1e6:,.0f} MB), window {args.window}, QoS 1; "
        f"best of {rounds} for (a) and (b), runs interleaved"
    )
    outage_s, raw_s = min(outage), min(raw)
    rows = (
        ("(a) Uplink after an outage (prepared)", outage_s, outage),
        ("(c) Uplink, nothing prepared         ", cold_s, [cold_s]),
        ("(b) raw aiomqtt loop, same payloads  ", raw_s, raw),
    )
    for label, seconds, runs in rows:
        every = ", ".join(f"{r:.2f}" for r in runs)
        print(f"{label} : {total / seconds:10,.0f} readings/s ({seconds:.2f} s; runs {every})")
    ratio = raw_s / outage_s
    verdict = "ok" if ratio >= 0.7 else "MISSED"
    print(f"ratio a/b                              : {ratio:10.2f}  (target >= 0.7: {verdict})")
    print(f"ratio c/b                              : {raw_s / cold_s:10.2f}")


if __name__ == "__main__":
    main()
