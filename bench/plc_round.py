"""Benchmark: one router-led round over a 1,000-meter PLC district, through a real pty.

The virtual PLC module (115200 bd, 1 ms carrier latency per hop) walks its archive; the driver
answers every AFN14 F1 with the freeze time (05060001) and then the daily frozen forward
energies (05060101) of yesterday, and confirms every AFN06 F2. Printed: the time the round
took, the success rate (meters whose two values equal the virtual meter's frozen record), frames
per second on the UART, and the ratio against a baseline from the same run: the wire floor —
every byte that crossed the UART at 11 bits per byte plus the carrier latency of every read, with
no processing, no scheduling slack and no turnaround. Run: ``.venv/bin/python bench/plc_round.py``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sys
import time

# Run as a script, this file's directory comes first on sys.path and "simulator" would import
# the sibling benchmark instead of the package.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

from drivers.clock import ManualClock  # noqa: E402
from drivers.link import Link, SerialSettings, serial_opener  # noqa: E402
from drivers.plc import PlcDriver, PlcSettings  # noqa: E402
from protocols.bcd import Address  # noqa: E402
from protocols.dlt645 import Message, ReadRequest, ReadResponse  # noqa: E402
from protocols.q13762 import ProtocolType  # noqa: E402
from simulator.plc import VirtualPlcModule, module_settings  # noqa: E402
from simulator.scenario import build_district, parse_scenario  # noqa: E402

METERS = 1000
BAUD = 115200
LATENCY_S = 0.001
FREEZE_TIME, FROZEN_ENERGY = 0x05060001, 0x05060101
START = dt.datetime(2025, 6, 3, 0, 30, tzinfo=dt.timezone(dt.timedelta(hours=8)))


class DailyFrozen:
    """The collector's part of the round: two requests per meter, replies kept."""

    def __init__(self) -> None:
        self.todo: dict[Address, list[int]] = {}
        self.replies: dict[Address, list[Message]] = {}
        self.failures: dict[Address, str] = {}

    def next_request(self, address: Address) -> Message | None:
        queue = self.todo.setdefault(address, [FREEZE_TIME, FROZEN_ENERGY])
        return ReadRequest(address, queue.pop(0)) if queue else None

    def on_reply(self, address: Address, reply: Message) -> None:
        self.replies.setdefault(address, []).append(reply)

    def on_failure(self, address: Address, reason: str) -> None:
        self.failures[address] = reason


def values(reply: Message) -> tuple[object, ...] | None:
    if not isinstance(reply, ReadResponse):
        return None
    item = reply.decode()
    return None if item is None else tuple(v.value for v in item.values)


async def run() -> None:
    began = time.perf_counter()
    scenario = parse_scenario(
        {
            "name": "plc-bench",
            "simulation": {"start": START, "history_days": 2, "seed": 1000},
            "defaults": {"bus": "plc", "initial_kwh": [300, 9000], "scale": [0.4, 2.0]},
            "plc": {"module_address": "000000000001"},
            "meter_groups": [{"first_address": "000000100001", "count": METERS}],
        }
    )
    clock = ManualClock(START)
    district = build_district(scenario, clock)
    meters = {m.address: m for m in district.users}
    built_s = time.perf_counter() - began

    settings = module_settings(
        district.plc, baud=BAUD, carrier_latency_s=LATENCY_S, turnaround_s=0.001
    )
    async with VirtualPlcModule(district, settings) as module:
        link = Link(
            "plc", serial_opener(SerialSettings(module.path, BAUD, "N")), char_time=11 / BAUD
        )
        driver = PlcDriver("plc", link, PlcSettings(startup_wait_s=0.2), clock)
        try:
            started = time.perf_counter()
            await driver.start()
            sync = await driver.sync_archive(dict.fromkeys(meters, ProtocolType.DLT645_2007))
            synced_s = time.perf_counter() - started

            before = module.statistics()
            source = DailyFrozen()
            t0 = time.perf_counter()
            report = await driver.run_round(source, idle_timeout_s=5.0)
            round_s = time.perf_counter() - t0
            after = module.statistics()
        finally:
            await driver.close()

    ok = 0
    for address, meter in meters.items():
        record = meter.daily_record(1)
        got = source.replies.get(address, [])
        if record is not None and len(got) == 2:
            ok += (
                values(got[0]) == (record.freeze_time,) and values(got[1]) == record.forward_active
            )

    frames = (after.frames_in - before.frames_in) + (after.frames_out - before.frames_out)
    wire_bytes = (after.bytes_in - before.bytes_in) + (after.bytes_out - before.bytes_out)
    reads = after.router_reads - before.router_reads
    floor_s = wire_bytes * 11 / BAUD + reads * LATENCY_S
    print(f"district: {METERS} meters built in {built_s:.1f} s")
    print(
        f"start + archive sync: {synced_s:.2f} s (added {len(sync.added)}, "
        f"removed {len(sync.removed)})"
    )
    print(
        f"round: {round_s:.1f} s, finished={report.finished}, {report.requests_answered} "
        f"requests, {report.reports} reports, {report.failures} failures, "
        f"{report.duplicates} duplicates"
    )
    print(f"success: {ok}/{METERS} meters = {100 * ok / METERS:.1f} % equal to the frozen records")
    print(f"UART: {frames} frames, {frames / round_s:.0f} frames/s, {wire_bytes} bytes")
    print(f"wire floor (same run): {floor_s:.1f} s -> round / floor = {round_s / floor_s:.2f}")
    print(f"total: {time.perf_counter() - began:.1f} s")


if __name__ == "__main__":
    asyncio.run(run())
