"""A gateway in miniature for the SIGKILL trials: the real spool and the real Uplink in one
process, collecting and forwarding at the same time, until it is killed.

    python tests/uplink_child.py SPOOL PORT START ingest   # write batches START, START+1, ...
    python tests/uplink_child.py SPOOL PORT START outage   # the same, preparing at once (no
                                                           # broker is expected on PORT)
    python tests/uplink_child.py SPOOL PORT 0 drain        # forward what is left, then exit 0

Batch ``b`` is ``SIZE`` daily frozen readings filed at ``T0 + b`` minutes plus the ledger entry
``b<b>`` marked done, in one ``commit_collection``. Prints, flushed as it happens:

* ``c <b>`` once batch ``b`` is committed (durable);
* ``a <seq> <seq> ...`` once those acknowledgements are committed to the outbox.
"""

from __future__ import annotations

import asyncio
import random
import sys
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

from drivers.clock import SystemClock
from gateway.config import UplinkConfig
from gateway.uplink import Uplink
from spool import LedgerEntry, LedgerState, Quality, Reading, ReadingKind, ReadingValue, Spool

SIZE = 30
T0 = datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=8)))
NOW = datetime(2024, 1, 2, tzinfo=UTC)
GATEWAY = "gw-crash"


def batch(b: int) -> tuple[list[Reading], LedgerEntry]:
    at = T0 + timedelta(minutes=b)
    readings = [
        Reading(
            f"{m:012d}",
            "05060101",
            at,
            NOW,
            {"total": ReadingValue(Decimal(f"{b}.{m:03d}"), "kWh")},
            Quality.OK,
            ReadingKind.DAILY_FROZEN,
            "rs485-1",
        )
        for m in range(SIZE)
    ]
    done = LedgerEntry("000000000000", date(2024, 1, 1), f"b{b}", LedgerState.DONE, 1, None,
                       None, NOW)  # fmt: skip
    return readings, done


def acknowledged(seqs: Sequence[int]) -> None:
    print("a", *seqs, flush=True)


async def main(path: str, port: int, start: int, mode: str) -> None:
    config = UplinkConfig(
        host="127.0.0.1",
        port=port,
        window=8,
        batch_max_records=40,
        batch_max_age_s=0.02,
        reconnect_min_s=0.05,
        reconnect_max_s=0.2,
        drain_records_per_s=0,
        keepalive_s=5,
        prepare_after_s=0 if mode == "outage" else 30,
    )
    async with Spool.connect(path) as spool:
        uplink = Uplink(config, GATEWAY, spool, SystemClock(), on_acknowledged=acknowledged)
        task = asyncio.create_task(uplink.run())
        if mode in ("ingest", "outage"):
            rng = random.Random(start)
            b = start
            while not task.done():
                readings, done = batch(b)
                await spool.commit_collection(readings, [done])
                print("c", b, flush=True)
                b += 1
                await asyncio.sleep(rng.uniform(0, 0.02))
        else:
            # Polls the outbox: "everything acknowledged and committed" has no event of its own.
            while not await uplink.outbox.empty():  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            print("drained", flush=True)
        uplink.stop()
        await task


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))
