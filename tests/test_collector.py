"""The collector against a simulated district, in memory, under a manual clock.

Three simulated days of a 12-meter district; two meters are silent all of day 2 and are
back-filled from their frozen history on day 3. Every stored value is compared with the
simulator's own frozen record.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from drivers.clock import ManualClock
from drivers.errors import MeterTimeoutError
from gateway.collector.collector import NEVER, Collector
from gateway.collector.plans import Item
from gateway.daemon import make_channel
from protocols.bcd import Address
from simulator.channel import MemoryChannel
from simulator.district import District
from simulator.run import start_simulation
from simulator.scenario import build_district
from spool import LedgerState, Quality, ReadingKind, Spool

from .districts import gateway_config, scenario_from

ZONE = ZoneInfo("Asia/Shanghai")
START = dt.datetime(2025, 6, 1, 8, 0, tzinfo=ZONE)
SILENT = ("000000001003", "000000001004")
WRONG = "000000001009"
DRIFTING = "000000001005"
FAR_OFF = "000000001006"

SCENARIO = f"""
name = "collector-test"
[simulation]
start = {START.isoformat()}
timezone = "Asia/Shanghai"
seed = 7
history_days = 3

[defaults]
bus = "rs485-1"
profile = "residential"

[[buses]]
name = "rs485-1"
baud = 2400
[[buses]]
name = "rs485-2"
baud = 1200

[[meter_groups]]
first_address = "000000001001"
count = 10

[[meters]]
address = "000000000097"
edition = "1997"
bus = "rs485-2"
[[meters]]
address = "000000000098"
edition = "1997"
bus = "rs485-2"

[[timeline]]
kind = "silent"
meters = ["{SILENT[0]}", "{SILENT[1]}"]
start = "2025-06-02T00:00:00+08:00"
end = "2025-06-03T00:00:00+08:00"

[[timeline]]
kind = "wrong_address"
meter = "{WRONG}"
start = "+0h"

[[timeline]]
kind = "clock_drift"
meter = "{DRIFTING}"
start = "+0h"
offset_s = 90

[[timeline]]
kind = "clock_drift"
meter = "{FAR_OFF}"
start = "+0h"
offset_s = 900
"""


@dataclass
class Rig:
    clock: ManualClock
    district: District
    spool: Spool
    collector: Collector
    channels: dict[str, Any]

    async def work_all(self) -> None:
        await self.collector.plan()
        for bus in self.channels:
            while await self.collector.collect_bus(bus):
                pass

    async def live_through(
        self, until: dt.datetime, step: dt.timedelta = dt.timedelta(minutes=10)
    ) -> None:
        while self.clock.now() < until:
            self.clock.advance(min(step, until - self.clock.now()).total_seconds())
            await self.work_all()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with memory_rig(tmp_path) as rig:
        yield rig


@contextlib.asynccontextmanager
async def memory_rig(tmp_path: Path, **config: Any) -> AsyncIterator[Rig]:
    scenario = scenario_from(SCENARIO)
    clock = ManualClock(START)
    district = build_district(scenario, clock)
    gw = gateway_config(scenario, tmp_path / "spool.sqlite", **config)
    spool = await Spool.open(gw.spool.path)
    channels: dict[str, Any] = {b.name: MemoryChannel(district, b.name, clock) for b in gw.bus}
    collector = Collector(gw, spool, channels, clock)
    try:
        yield Rig(clock, district, spool, collector, channels)
    finally:
        await spool.close()


@contextlib.asynccontextmanager
async def wire_rig(tmp_path: Path) -> AsyncIterator[Rig]:
    """The same district on real ptys (rs485-1) and TCP (rs485-2 as a DTU), through the
    daemon's own channels; meters still follow the manual clock, wire timing is real."""
    text = SCENARIO.replace(
        'name = "rs485-1"\nbaud = 2400', 'name = "rs485-1"\nbaud = 19200\nturnaround_ms = 5'
    )
    text = text.replace(
        'name = "rs485-2"\nbaud = 1200',
        'name = "rs485-2"\nkind = "tcp"\nbaud = 19200\nturnaround_ms = 5',
    )
    # The wrong-address meter costs a full timeout per attempt and is covered in memory.
    text = text.replace('kind = "wrong_address"', 'kind = "slow"\ndelay_ms = 1')
    scenario = scenario_from(text)
    clock = ManualClock(START)
    async with start_simulation(scenario, clock) as sim:
        pty, tcp = sim.endpoint("rs485-1"), sim.endpoint("rs485-2")
        fast = {"timeout_ms": 300, "retries": 1, "inter_frame_gap_ms": 0}
        buses = {
            "rs485-1": {"kind": "serial", "device": pty.path, "baud": 19200, "parity": "N", **fast},
            "rs485-2": {"kind": "tcp", "host": tcp.host, "port": tcp.port, "baud": 19200, **fast},
        }
        # Status and event counters are read in the memory variant; here the wire is the point.
        quick = {"read_status": False, "read_events": False}
        gw = gateway_config(scenario, tmp_path / "spool.sqlite", buses=buses, collection=quick)
        spool = await Spool.open(gw.spool.path)
        channels: dict[str, Any] = {b.name: make_channel(b, clock) for b in gw.bus}
        collector = Collector(gw, spool, channels, clock)
        try:
            yield Rig(clock, sim.district, spool, collector, channels)
        finally:
            for channel in channels.values():
                await channel.close()
            await spool.close()


def frozen_total(rig: Rig, meter: str, day: dt.date) -> Decimal:
    record = rig.district.meters[Address(meter)].frozen_record(day)
    assert record is not None, f"the simulator has no record of {meter} for {day}"
    return record.forward_active[0]


@pytest.mark.parametrize("transport", ["memory", "pty+tcp"])
async def test_three_days_with_two_silent_meters_backfilled(transport: str, tmp_path: Path) -> None:
    rigs = {"memory": memory_rig, "pty+tcp": wire_rig}
    async with rigs[transport](tmp_path) as rig:
        await _three_days(rig, step=dt.timedelta(minutes=10 if transport == "memory" else 120))


async def _three_days(rig: Rig, step: dt.timedelta) -> None:
    day1, day2, day3 = dt.date(2025, 6, 1), dt.date(2025, 6, 2), dt.date(2025, 6, 3)
    await rig.work_all()
    await rig.live_through(dt.datetime(2025, 6, 2, 23, 50, tzinfo=ZONE), step)

    day2_ledger = {(e.meter, e.item): e for e in await rig.spool.ledger(day=day2)}
    for meter in SILENT:
        entry = day2_ledger[(meter, Item.DAILY_FROZEN.value)]
        assert entry.state is LedgerState.FAILED
        assert entry.attempts >= 2
    await rig.live_through(dt.datetime(2025, 6, 3, 6, 0, tzinfo=ZONE), step)

    # The ledger of each day is complete for every meter that answers for itself.
    for day in (day1, day2, day3):
        for entry in await rig.spool.ledger(day=day):
            if entry.meter == WRONG and rig.channels["rs485-1"].__class__ is MemoryChannel:
                continue
            assert entry.state is LedgerState.DONE, entry
    # Day 2 of the silent meters came from their history on day 3, equal to the simulator.
    for meter in SILENT:
        readings = await rig.spool.readings(meter=meter, di="05060101")
        by_day = {r.data_time.date(): r for r in readings}
        assert set(by_day) >= {day1, day2, day3}
        assert by_day[day2].read_time.astimezone(ZONE).date() == day3
    # Every frozen value of every 2007 meter equals the simulator's record.
    checked = 0
    for reading in await rig.spool.readings(di="05060101"):
        assert reading.data_time.timetz() == dt.time(0, tzinfo=reading.data_time.tzinfo)
        assert reading.quality is Quality.OK
        day = reading.data_time.date()
        assert reading.values["forward_active_total"].value == frozen_total(rig, reading.meter, day)
        assert reading.values["forward_active_total"].unit == "kWh"
        checked += 1
    assert checked >= 8 * 3 + 2 * 2  # back-filled days included


async def test_a_meter_answering_for_another_address_never_lands_a_reading(rig: Rig) -> None:
    await rig.work_all()
    assert await rig.spool.readings(meter=WRONG) == []
    assert rig.channels["rs485-1"].wrong_address > 0
    # The address that answered instead is not in the archive: recorded for the archive check.
    unknown = await rig.spool.events(type="unknown_meter")
    assert unknown
    assert all(
        e.subject not in {str(m.address) for m in rig.collector.meters.values()} for e in unknown
    )
    assert {e.source for e in unknown} == {"rs485-1"}
    entries = await rig.spool.ledger(meter=WRONG)
    assert entries
    assert not [e for e in entries if e.state is LedgerState.DONE]
    assert [e for e in entries if e.state is LedgerState.FAILED]


async def test_1997_meters_are_read_and_flagged_not_frozen(rig: Rig) -> None:
    await rig.work_all()
    for meter in ("000000000097", "000000000098"):
        readings = await rig.spool.readings(meter=meter, kind=ReadingKind.DAILY_FROZEN)
        assert len(readings) == 1
        (reading,) = readings
        assert reading.di == "901F"
        assert reading.quality is Quality.NOT_FROZEN
        live = rig.district.meters[Address(meter)].registers().forward_active[0]
        assert reading.values["forward_active_total"].value == live
        # no back-fill is planned for a meter without daily history
        days = {e.day for e in await rig.spool.ledger(meter=meter)}
        assert days == {START.date()}


async def test_time_sync_only_under_the_rules(rig: Rig) -> None:
    await rig.work_all()
    events = await rig.spool.events(type="time_sync")
    assert len(events) == 1
    assert events[0].source == "rs485-1"
    assert events[0].details["meters"] == [DRIFTING]
    assert rig.channels["rs485-1"].broadcasts == 1
    assert rig.channels["rs485-2"].broadcasts == 0
    far = await rig.spool.events(type="clock_drift_out_of_range")
    assert [e.subject for e in far] == [FAR_OFF]
    # The broadcast took: the drifting meter's clock is re-checked and now right.
    await rig.live_through(START + dt.timedelta(hours=1))
    meter = rig.district.meters[Address(DRIFTING)]
    assert abs(meter.clock_error().total_seconds()) < 5
    clock_entry = next(e for e in await rig.spool.ledger(meter=DRIFTING) if e.item == "clock")
    assert clock_entry.state is LedgerState.DONE
    # Not twice the same day, even with meters still off.
    assert rig.channels["rs485-1"].broadcasts == 1
    # The meter 15 minutes off was never corrected by broadcast.
    assert rig.district.meters[Address(FAR_OFF)].clock_error().total_seconds() > 800


async def test_nothing_is_read_twice_and_restart_resumes_from_the_ledger(
    rig: Rig, tmp_path: Path
) -> None:
    await rig.work_all()
    first = await rig.spool.count_readings()
    requests = sum(c.requests for c in rig.channels.values())
    # A new collector on the same spool (a restart) owes nothing more today.
    again = Collector(rig.collector.config, rig.spool, rig.channels, rig.clock)
    await again.restore()
    await again.plan()
    for bus in rig.channels:
        await again.collect_bus(bus)
    assert await rig.spool.count_readings() == first
    # Only the meters that failed (wrong address) were tried again.
    extra = sum(c.requests for c in rig.channels.values()) - requests
    assert extra <= 2 * 3  # its due items, each with its retries, at most


async def test_final_failure_is_never_due_again(rig: Rig) -> None:
    await rig.work_all()
    rig.clock.advance(5 * 86400)
    await rig.work_all()
    never = [e for e in await rig.spool.ledger() if e.next_attempt == NEVER]
    assert all(e.reason for e in never)
    due = await rig.spool.due(rig.clock.now())
    assert not [e for e in due if e.next_attempt == NEVER]


async def test_realtime_snapshots_every_slot_and_missed_slots_are_not_read_late(
    tmp_path: Path,
) -> None:
    async with memory_rig(tmp_path, collection={"realtime_interval_s": 900}) as rig:
        await rig.work_all()
        await rig.live_through(START + dt.timedelta(hours=2), dt.timedelta(minutes=5))
        meter = "000000001001"
        snaps = await rig.spool.readings(meter=meter, kind=ReadingKind.REALTIME)
        times = sorted({r.data_time for r in snaps})
        assert len(times) >= 8  # 08:00 .. 10:00, every quarter of an hour
        for a, b in itertools.pairwise(times):
            assert dt.timedelta(minutes=10) <= b - a <= dt.timedelta(minutes=20)
        assert {r.di for r in snaps} >= {"0001FF00", "0201FF00"}
        # The gateway was down for an hour: those slots are not read afterwards.
        rig.clock.advance(3600)
        await rig.work_all()
        skipped = [e for e in await rig.spool.ledger(meter=meter) if e.item.startswith("realtime/")
                   and e.reason == "the real-time slot passed before it was read"]  # fmt: skip
        assert len(skipped) >= 2
        assert all(e.next_attempt == NEVER for e in skipped)


async def test_a_stop_in_the_middle_of_a_session_is_not_an_attempt(rig: Rig) -> None:
    await rig.collector.plan()
    channel = rig.channels["rs485-1"]
    real_request = channel.request
    calls = 0

    async def stop_after_first(message: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            rig.collector.stop()
        return await real_request(message)

    channel.request = stop_after_first
    await rig.collector.collect_bus("rs485-1")
    assert calls == 1
    entries = await rig.spool.ledger(day=START.date())
    assert all(e.state is LedgerState.PENDING for e in entries)
    assert all(e.attempts == 0 for e in entries)


async def test_a_failed_item_is_retried_at_its_retry_time_not_the_idle_fallback(
    tmp_path: Path,
) -> None:
    """The running collector (planner and bus workers) retries after ``retry_initial_s``: a
    wake time left over from planning must not make the bus sleep the 300 s idle fallback."""
    flaky = "000000000097"  # on rs485-2, where no other meter fails and wakes the bus
    async with memory_rig(tmp_path, collection={"retry_initial_s": 30}) as rig:
        channel = rig.channels["rs485-2"]
        real_request = channel.request
        failed: list[dt.datetime] = []

        async def first_time_silent(message: Any) -> Any:
            if str(message.address) == flaky and not failed:
                failed.append(rig.clock.now())
                raise MeterTimeoutError(f"{flaky}: no reply")
            return await real_request(message)

        channel.request = first_time_silent
        task = asyncio.create_task(rig.collector.run())
        try:
            done_at = None
            for _ in range(60):  # 60 steps of 5 s: well under the 300 s fallback
                for _ in range(50):
                    await asyncio.sleep(0)
                entries = await rig.spool.ledger(meter=flaky, day=START.date())
                if failed and entries and all(e.state is LedgerState.DONE for e in entries
                                              if e.item == "daily_frozen"):  # fmt: skip
                    done_at = rig.clock.now()
                    break
                rig.clock.advance(5)
        finally:
            rig.collector.stop()
            await task
        assert failed, "the flaky meter was never asked"
        assert done_at is not None, "the failed item was not retried within 300 s"
        assert dt.timedelta(seconds=30) <= done_at - failed[0] <= dt.timedelta(seconds=60)
