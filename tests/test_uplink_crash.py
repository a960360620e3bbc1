"""SIGKILL at random moments while a gateway collects and forwards (tests/uplink_child.py: the
real spool and Uplink against a real mosquitto), many times over; then a clean drain.

After all trials a subscriber that was there throughout must have:

* every record the spool holds (every committed one), first seen in the order it was stored;
* every committed batch's ledger change;
* duplicates only as whole batches sent again with the same number and bytes, every copy of a
  record under one sequence number (so the copies share a natural key);
* no batch again once its acknowledgement was committed (``a`` lines) in an earlier trial.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiosqlite
import pytest

from gateway.uplink.payloads import parse_batch
from spool import Spool
from spool.prepared import directory_of
from tests.broker import Broker, Delivery, Subscriber, free_port, requires_mosquitto, spool_keys

pytestmark = [pytest.mark.broker, pytest.mark.slow, requires_mosquitto]

ROOT = Path(__file__).resolve().parents[1]
CHILD = ROOT / "tests" / "uplink_child.py"
GATEWAY = "gw-crash"
BUDGET_S = 20.0
MIN_TRIALS = 10
MAX_TRIALS = 40


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker.running(tmp_path / "broker") as b:
        yield b


async def child(path: Path, port: int, start: int, mode: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, str(CHILD), str(path), str(port), str(start), mode,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip


def parse(out: bytes) -> tuple[set[int], set[int]]:
    committed: set[int] = set()
    acked: set[int] = set()
    # A kill can cut the last line short: only whole lines count.
    for line in out.decode().split("\n")[:-1]:
        word, *numbers = line.split()
        if word == "c":
            committed.add(int(numbers[0]))
        elif word == "a":
            acked.update(int(n) for n in numbers)
    return committed, acked


async def scalar(path: Path, sql: str) -> int:
    async with aiosqlite.connect(path) as conn:
        rows = list(await conn.execute_fetchall(sql))
    return int(rows[0][0])


async def next_batch(path: Path) -> int:
    return await scalar(path, "SELECT count(DISTINCT data_epoch) FROM readings")


async def test_sigkill_during_ingest_and_drain_loses_nothing(
    broker: Broker, tmp_path: Path
) -> None:
    path = tmp_path / "spool.sqlite"
    async with Spool.connect(path):
        pass  # created and migrated once, so every trial starts from a spool
    rng = random.Random(0xA316)
    committed: set[int] = set()
    acked_by_trial: list[set[int]] = []
    boundaries: list[int] = []  # subscriber message count when each trial had settled
    kills_after_acks = 0
    deadline = time.monotonic() + BUDGET_S
    async with Subscriber(broker, f"amigw/{GATEWAY}/#") as sub:
        for trial in range(MAX_TRIALS):
            if trial >= MIN_TRIALS and time.monotonic() > deadline:
                break
            start = await next_batch(path)
            process = await child(path, broker.port, start, "ingest")
            # Early kills land in start-up and the first connect, later ones while batches are
            # written, cut, published and acknowledged all at once.
            await asyncio.sleep(rng.uniform(0.2, 1.4))
            process.send_signal(signal.SIGKILL)
            out, err = await process.communicate()
            assert process.returncode == -signal.SIGKILL, err.decode()[-2000:]
            done, acked = parse(out)
            assert done <= set(range(start, start + len(done) + 1)), "batches out of order"
            committed |= done
            acked_by_trial.append(acked)
            kills_after_acks += bool(acked)
            await sub.quiet(0.15)  # what this trial sent has arrived before the next starts
            boundaries.append(len(sub.messages))

        drain = await child(path, broker.port, 0, "drain")
        out, err = await asyncio.wait_for(drain.communicate(), 30)
        assert drain.returncode == 0, err.decode()[-2000:]
        assert b"drained" in out
        _, acked = parse(out)
        acked_by_trial.append(acked)
        await sub.quiet(0.2)

    assert kills_after_acks >= 3, "too few trials reached the acknowledgement path"
    stored = await spool_keys(path)
    assert {k[2] for k in stored["readings"]} == {
        int((b * 60) + 1704038400) for b in range(len(stored["readings"]) // 30)
    }, "the spool lost or tore a committed batch"
    assert len(stored["readings"]) >= 30 * len(committed)

    delivery = Delivery.of(sub.messages)
    assert delivery.first_order["readings"] == stored["readings"]
    ledger_items = {key[2] for key in delivery.first_order["ledger"]}
    assert {f"b{b}" for b in committed} <= ledger_items

    # A batch acknowledged (and committed) in trial k never comes again in a later trial.
    seqs_by_trial = []
    previous = 0
    for boundary in [*boundaries, len(sub.messages)]:
        seqs_by_trial.append(
            {parse_batch(m.payload).seq for m in sub.messages[previous:boundary]
             if not m.topic.endswith("/status")}
        )  # fmt: skip
        previous = boundary
    for k, acked in enumerate(acked_by_trial):
        for later in seqs_by_trial[k + 1 :]:
            assert not acked & later, f"batches {sorted(acked & later)} resent after their ack"
    assert delivery.duplicated <= set().union(*seqs_by_trial)
    print(
        f"{len(acked_by_trial) - 1} kills, {len(committed)} committed batches reported, "
        f"{len(stored['readings'])} readings, {len(delivery.seqs)} batches delivered, "
        f"{len(delivery.duplicated)} delivered more than once"
    )


async def prepared_rows(path: Path) -> int:
    return await scalar(path, "SELECT count(*) FROM outbox_prepared")


async def test_sigkill_while_preparing_during_an_outage_loses_nothing(
    broker: Broker, tmp_path: Path
) -> None:
    """Killed again and again while the broker is away and batches are prepared (segment bytes
    written, fsynced, their index committed, or not yet): then the broker is back, and every
    committed record arrives once, in order, from the segments or rendered again."""
    path = tmp_path / "spool.sqlite"
    async with Spool.connect(path):
        pass  # created and migrated once, so every trial starts from a spool
    rng = random.Random(0x5E6)
    dead = free_port()  # no broker listens here: the children prepare
    committed: set[int] = set()
    seen_prepared = 0
    deadline = time.monotonic() + BUDGET_S / 2
    for trial in range(MAX_TRIALS):
        if trial >= MIN_TRIALS and time.monotonic() > deadline:
            break
        start = await next_batch(path)
        process = await child(path, dead, start, "outage")
        await asyncio.sleep(rng.uniform(0.3, 1.2))
        process.send_signal(signal.SIGKILL)
        out, err = await process.communicate()
        assert process.returncode == -signal.SIGKILL, err.decode()[-2000:]
        done, _ = parse(out)
        committed |= done
        seen_prepared = max(seen_prepared, await prepared_rows(path))
    assert seen_prepared > 0, "no trial got as far as preparing a batch"

    async with Subscriber(broker, f"amigw/{GATEWAY}/#") as sub:
        drain = await child(path, broker.port, 0, "drain")
        out, err = await asyncio.wait_for(drain.communicate(), 30)
        assert drain.returncode == 0, err.decode()[-2000:]
        stored = await spool_keys(path)
        # The drain stops once the broker acknowledged the last batch; the broker may hand it
        # on to the subscriber a moment later on a busy machine.
        await sub.wait_for(
            lambda: (
                len(Delivery.of(sub.messages).first_order.get("readings", []))
                >= len(stored["readings"])
            ),
            within=20,
        )
    assert len(stored["readings"]) >= 30 * len(committed)
    delivery = Delivery.of(sub.messages)  # asserts one batch per record, same bytes per seq
    assert delivery.first_order["readings"] == stored["readings"]
    assert not delivery.duplicated  # nothing reached a broker before this drain
    assert await prepared_rows(path) == 0
    assert not list(directory_of(path).iterdir())
    print(f"{len(committed)} committed batches, up to {seen_prepared} prepared at a kill")
