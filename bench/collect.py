"""Benchmark: the collector's daily frozen collection against the wire limit.

(a) 256 meters on one simulated RS-485 bus at 2400 baud, 50 ms turnaround, over a real pty:
    the collector (ledger, plan sessions, channel with its default 20 ms inter-frame gap) reads
    every meter's freeze time and frozen energies. Printed: elapsed time, the wire-limit time
    for the same frames — every byte sent and received at 11 bits per byte (8E1: start, 8 data,
    parity, stop; the pty itself runs 8N1, the accounting is the field's) plus the turnaround of
    every exchange — and their ratio. Target: ratio <= 1.15.
(b) 1,000 meters behind a virtual PLC module in router-led mode (115200 baud UART, 1 ms carrier
    latency): time for the collector to complete one round, and the success rate (ledger entries
    done, each value equal to the simulator's frozen record).

Run: ``.venv/bin/python bench/collect.py [--meters 256] [--plc-meters 1000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

# Run as a script, this directory comes first on sys.path and would shadow the "simulator"
# package with bench/simulator.py.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

from drivers.channel import Exchange  # noqa: E402
from drivers.clock import ScaledClock  # noqa: E402
from gateway.collector.collector import Collector  # noqa: E402
from gateway.config import MeterConfig, parse_config  # noqa: E402
from gateway.daemon import make_channel, make_plc, plc_preparer  # noqa: E402
from protocols.bcd import Address  # noqa: E402
from protocols.dlt645 import Message  # noqa: E402
from simulator.plc import VirtualPlcModule, module_settings  # noqa: E402
from simulator.run import start_simulation  # noqa: E402
from simulator.scenario import build_district, parse_scenario  # noqa: E402
from spool import LedgerEntry, LedgerState, Spool  # noqa: E402

CST = dt.timezone(dt.timedelta(hours=8))
START = dt.datetime(2025, 6, 3, 9, 0, tzinfo=CST)
BAUD, TURNAROUND_MS = 2400, 50


def scenario(meters: int, bus: str, extra: dict[str, object] | None = None) -> dict[str, object]:
    doc: dict[str, object] = {
        "name": "bench",
        "simulation": {"start": START, "history_days": 2, "seed": 1},
        "defaults": {"bus": bus, "initial_kwh": [100, 9000]},
        "meter_groups": [{"first_address": "000000100001", "count": meters}],
    }
    doc.update(extra or {})
    return doc


def config_text(meters: int, spool: Path, bus_table: str) -> str:
    lines = ["[gateway]", 'id = "bench"', "[spool]", f'path = "{spool}"', bus_table]
    for i in range(meters):
        lines += [
            "[[meter]]",
            f'address = "{100001 + i:012d}"',
            f'bus = "{"plc" if "[plc]" in bus_table else "rs485-1"}"',
        ]
    return "\n".join(lines) + "\n"


def pending_daily(
    meters: Sequence[MeterConfig], day: dt.date, now: dt.datetime
) -> list[LedgerEntry]:
    return [
        LedgerEntry(m.address, day, "daily_frozen", LedgerState.PENDING, 0, None, None, now)
        for m in meters
    ]


class Recording:
    """Wraps a channel to keep every exchange's byte counts for the wire-limit sum."""

    def __init__(self, channel: object) -> None:
        self.inner = channel
        self.name = channel.name  # type: ignore[attr-defined]
        self.exchanges: list[Exchange] = []

    async def request(self, message: Message) -> Exchange:
        exchange: Exchange = await self.inner.request(message)  # type: ignore[attr-defined]
        self.exchanges.append(exchange)
        return exchange

    async def broadcast(self, message: object) -> None:
        await self.inner.broadcast(message)  # type: ignore[attr-defined]

    def resting_until(self, address: Address) -> dt.datetime | None:
        return self.inner.resting_until(address)  # type: ignore[attr-defined,no-any-return]


async def rs485(meters: int) -> None:
    sc = parse_scenario(
        scenario(
            meters,
            "rs485-1",
            {"buses": [{"name": "rs485-1", "baud": BAUD, "turnaround_ms": TURNAROUND_MS}]},
        )
    )
    clock = ScaledClock(START)
    async with start_simulation(sc, clock) as sim:
        with tempfile.TemporaryDirectory() as tmp:
            path = sim.endpoint("rs485-1").path
            bus = f'[[bus]]\nname = "rs485-1"\ndevice = "{path}"\nbaud = {BAUD}\nparity = "N"\n'
            config = parse_config(config_text(meters, Path(tmp) / "spool.sqlite", bus))
            spool = await Spool.open(config.spool.path)
            channel = Recording(make_channel(config.bus[0], clock))
            collector = Collector(config, spool, {"rs485-1": channel}, clock)  # type: ignore[dict-item]
            day = START.date()
            await spool.ensure_ledger(pending_daily(config.meter, day, clock.now()))
            started = time.perf_counter()
            await collector.collect_bus("rs485-1")
            elapsed = time.perf_counter() - started
            summary = await spool.ledger_summary(day)
            for entry in await spool.ledger(state=LedgerState.FAILED):
                print(f"    failed: {entry.meter} {entry.item}: {entry.reason}")
            await channel.inner.close()  # type: ignore[attr-defined]
            await spool.close()
    wire = sum(
        (e.request_bytes + e.reply_bytes) * 11 / BAUD + TURNAROUND_MS / 1000
        for e in channel.exchanges
    )
    n = len(channel.exchanges)
    print(
        f"(a) RS-485: {meters} meters, {BAUD} bd 8E1, {TURNAROUND_MS} ms turnaround, {n} exchanges"
    )
    print(f"    ledger: {summary.done} done, {summary.failed} failed, {summary.pending} pending")
    print(f"    elapsed:                {elapsed:9.2f} s")
    print(f"    wire limit:             {wire:9.2f} s")
    verdict = "met" if elapsed / wire <= 1.15 else "NOT met"
    print(f"    ratio elapsed / wire:   {elapsed / wire:9.3f}   (target <= 1.15: {verdict})")


async def plc(meters: int) -> None:
    sc = parse_scenario(scenario(meters, "plc", {"plc": {"module_address": "000000000000"}}))
    clock = ScaledClock(START)
    district = build_district(sc, clock)
    assert district.plc is not None
    settings = module_settings(
        district.plc, baud=115200, carrier_latency_s=0.001, turnaround_s=0.001
    )
    async with VirtualPlcModule(district, settings) as module:
        with tempfile.TemporaryDirectory() as tmp:
            table = (
                f'[plc]\ndevice = "{module.path}"\nbaud = 115200\nparity = "N"\nmode = "router"\n'
            )
            config = parse_config(config_text(meters, Path(tmp) / "spool.sqlite", table))
            spool = await Spool.open(config.spool.path)
            driver = make_plc(config, clock)
            assert driver is not None
            assert await plc_preparer(driver, config, spool, clock)()
            collector = Collector(
                config, spool, {"plc": driver}, clock, rounds={"plc": driver}, round_idle_s=10
            )
            day = START.date()
            await spool.ensure_ledger(pending_daily(config.meter, day, clock.now()))
            started = time.perf_counter()
            await collector.collect_round("plc")
            elapsed = time.perf_counter() - started
            summary = await spool.ledger_summary(day)
            right = 0
            for r in await spool.readings(di="05060101"):
                record = district.meters[Address(r.meter)].frozen_record(r.data_time.date())
                right += (
                    record is not None
                    and r.values["forward_active_total"].value == record.forward_active[0]
                )
            await driver.close()
            await spool.close()
    print(f"(b) PLC router-led: {meters} meters, 115200 bd UART, 1 ms carrier latency")
    print(f"    round completed in:     {elapsed:9.2f} s")
    print(f"    success rate:           {summary.done / meters:9.3%}")
    print(f"    values equal to the simulator's frozen records: {right} of {meters}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--meters", type=int, default=256)
    parser.add_argument("--plc-meters", type=int, default=1000)
    args = parser.parse_args()
    asyncio.run(rs485(args.meters))
    asyncio.run(plc(args.plc_meters))


if __name__ == "__main__":
    main()
