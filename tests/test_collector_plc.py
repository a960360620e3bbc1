"""The collector over a PLC module (virtual, on a real pty): archive synchronisation and the
daily frozen readings in both reading modes, through the daemon's own wiring."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest

from drivers.clock import ManualClock
from gateway.collector.collector import Collector
from gateway.daemon import make_plc, plc_archive, plc_preparer
from protocols.bcd import Address
from protocols.q13762 import ProtocolType
from simulator.plc import VirtualPlcModule, module_settings
from simulator.scenario import build_district
from spool import LedgerState, Spool

from .districts import gateway_config, scenario_from

CST = dt.timezone(dt.timedelta(hours=8))
START = dt.datetime(2025, 6, 3, 9, 0, tzinfo=CST)
BAUD = 115200
METERS = [f"0000002000{i:02d}" for i in range(1, 9)]
STALE = Address("000000900001")

SCENARIO = f"""
name = "plc-test"
[simulation]
start = {START.isoformat()}
timezone = "Asia/Shanghai"
seed = 5
history_days = 2
[defaults]
bus = "plc"
initial_kwh = [100, 900]
[plc]
module_address = "000000000000"
[[meter_groups]]
first_address = "{METERS[0]}"
count = {len(METERS)}
"""


@pytest.mark.parametrize("mode", ["router", "concentrator"])
async def test_plc_district_is_collected_and_archive_synced(mode: str, tmp_path: Path) -> None:
    scenario = scenario_from(SCENARIO)
    clock = ManualClock(START)
    district = build_district(scenario, clock)
    assert district.plc is not None
    settings = module_settings(district.plc, baud=BAUD, carrier_latency_s=0.002, turnaround_s=0.001)
    # The module comes with a stale meter and without two of the configured ones.
    archive = [(Address(m), ProtocolType.DLT645_2007) for m in METERS[:-2]] + [
        (STALE, ProtocolType.DLT645_2007)
    ]
    async with VirtualPlcModule(district, settings, archive=archive) as module:
        plc_table = {
            "device": module.path, "baud": BAUD, "parity": "N", "mode": mode,
            "frame_timeout_ms": 1000, "point_read_timeout_s": 2,
        }  # fmt: skip
        config = gateway_config(scenario, tmp_path / "spool.sqlite", catch_up_days=1, plc=plc_table)
        spool = await Spool.open(config.spool.path)
        driver = make_plc(config, clock)
        assert driver is not None
        try:
            ready = await plc_preparer(driver, config, spool, clock)()
            assert ready
            assert set(module.archive) == set(plc_archive(config))
            (event,) = await spool.events(type="archive_sync")
            assert sorted(event.details["added"]) == METERS[-2:]
            assert event.details["removed"] == [STALE.digits]
            rounds = {"plc": driver} if mode == "router" else {}
            collector = Collector(
                config, spool, {"plc": driver}, clock, rounds=rounds, round_idle_s=5.0
            )
            await collector.plan()
            for _ in range(3):
                if mode == "router":
                    await collector.collect_round("plc")
                else:
                    await collector.collect_bus("plc")
                if not await spool.due(clock.now()):
                    break
                clock.advance(3600)
            for entry in await spool.ledger():
                assert entry.state is LedgerState.DONE, entry
            readings = await spool.readings(di="05060101")
            assert len(readings) == len(METERS) * 2  # today and yesterday's back-fill
            for r in readings:
                record = district.meters[Address(r.meter)].frozen_record(r.data_time.date())
                assert record is not None
                assert r.values["forward_active_total"].value == record.forward_active[0]
        finally:
            await driver.close()
            await spool.close()


async def test_a_stop_ends_a_router_round_early_and_cut_short_entries_stay_owed(
    tmp_path: Path,
) -> None:
    """SIGTERM must not wait out a long router-led round: the stop pauses routing (AFN12 F2),
    what was reported is committed, and the entries not reached keep zero attempts."""
    scenario = scenario_from(SCENARIO)
    clock = ManualClock(START)
    district = build_district(scenario, clock)
    assert district.plc is not None
    # A slow carrier: a full round of 8 meters takes many seconds.
    settings = module_settings(district.plc, baud=BAUD, carrier_latency_s=0.4, turnaround_s=0.001)
    archive = [(Address(m), ProtocolType.DLT645_2007) for m in METERS]
    async with VirtualPlcModule(district, settings, archive=archive) as module:
        plc_table = {
            "device": module.path, "baud": BAUD, "parity": "N", "mode": "router",
            "frame_timeout_ms": 1000, "point_read_timeout_s": 2,
        }  # fmt: skip
        config = gateway_config(scenario, tmp_path / "spool.sqlite", catch_up_days=0, plc=plc_table)
        spool = await Spool.open(config.spool.path)
        driver = make_plc(config, clock)
        assert driver is not None
        try:
            assert await plc_preparer(driver, config, spool, clock)()
            collector = Collector(
                config, spool, {"plc": driver}, clock, rounds={"plc": driver}, round_idle_s=600.0
            )
            await collector.plan()
            owed = len(await spool.due(clock.now()))
            round_task = asyncio.create_task(collector.collect_round("plc"))
            for _ in range(600):  # the router's reports arrive as the carrier allows
                if driver.statistics().reports_confirmed >= 10:
                    break
                await asyncio.sleep(0.05)
            collector.stop()
            # Bounded only so a regression fails instead of hanging for the 600 s idle limit.
            await asyncio.wait_for(round_task, 30)
            assert module.paused
            entries = await spool.ledger()
            done = [e for e in entries if e.state is LedgerState.DONE]
            pending = [e for e in entries if e.state is LedgerState.PENDING]
            assert done, "what the router reported before the stop is committed"
            assert len(done) < owed, "the round was cut short"
            assert pending
            assert all(e.attempts == 0 for e in pending)
        finally:
            await driver.close()
            await spool.close()
