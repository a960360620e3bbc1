"""``amigw run`` as a real process against a simulated district on real ptys and TCP.

The daemon is killed with SIGKILL in the middle of collection and restarted: everything it
had committed is still there, and collection resumes from the ledger until the day is complete.
Then SIGTERM stops it cleanly (exit 0, within a few seconds).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import sqlite3
import sys
import time
from pathlib import Path

from drivers.clock import ScaledClock
from protocols.bcd import Address
from simulator.run import start_simulation
from spool import LedgerState, Spool

from .districts import config_text, scenario_from

CST = dt.timezone(dt.timedelta(hours=8))
START = dt.datetime(2025, 6, 3, 9, 0, tzinfo=CST)

SCENARIO = f"""
name = "e2e"
[simulation]
start = {START.isoformat()}
timezone = "Asia/Shanghai"
seed = 3
history_days = 3
[defaults]
bus = "rs485-1"
[[buses]]
name = "rs485-1"
baud = 9600
turnaround_ms = 20
[[buses]]
name = "dtu-1"
kind = "tcp"
baud = 9600
turnaround_ms = 20
[[meter_groups]]
first_address = "000000003001"
count = 6
[[meter_groups]]
first_address = "000000003101"
count = 3
bus = "dtu-1"
"""


def readings_now(path: Path) -> set[tuple[str, str, int, str]]:
    """Natural keys and values of what is committed, read as another process would."""
    if not path.exists():
        return set()
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        try:
            rows = conn.execute("SELECT meter, di, data_epoch, value_json FROM readings").fetchall()
        except sqlite3.OperationalError:
            return set()
    return {(m, di, epoch, values) for m, di, epoch, values in rows}


async def start_daemon(config_path: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "run", "-c", str(config_path), "--log-level", "WARNING",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def test_kill_minus_9_loses_nothing_and_collection_resumes(tmp_path: Path) -> None:
    scenario = scenario_from(SCENARIO)
    clock = ScaledClock(START, speed=1.0)
    async with start_simulation(scenario, clock) as sim:
        pty = sim.endpoint("rs485-1")
        tcp = sim.endpoint("dtu-1")
        spool_path = tmp_path / "spool.sqlite"
        buses = {
            "rs485-1": {
                "kind": "serial",
                "device": pty.path,
                "baud": 9600,
                "parity": "N",
                "timeout_ms": 500,
            },
            "dtu-1": {
                "kind": "tcp",
                "host": tcp.host,
                "port": tcp.port,
                "baud": 9600,
                "timeout_ms": 500,
            },
        }
        extra = (
            f'[clock]\nmode = "scaled"\norigin = "{clock.origin.isoformat()}"\n'
            f"speed = 1.0\nreal_origin = {clock.real_origin!r}\n"
        )
        # A request in flight when the daemon is killed can make the first one after the
        # restart fail: retry soon, so the test sees the day completed.
        quick_retry = {"retry_initial_s": 10}
        text = config_text(
            scenario, spool_path, buses=buses, extra=extra, catch_up_days=2, collection=quick_retry
        )
        config_path = tmp_path / "amigw.toml"
        config_path.write_text(text, encoding="utf-8")

        daemon = await start_daemon(config_path)
        deadline = time.monotonic() + 30
        while len(readings_now(spool_path)) < 6:
            assert daemon.returncode is None, (
                (await daemon.stderr.read()).decode() if daemon.stderr else ""
            )
            assert time.monotonic() < deadline, "the daemon committed nothing"
            await asyncio.sleep(0.05)
        daemon.send_signal(signal.SIGKILL)
        await daemon.wait()
        committed = readings_now(spool_path)
        assert committed

        # The spool opens cleanly after the kill, and keeps everything committed.
        spool = await Spool.open(spool_path)
        await spool.close()
        assert readings_now(spool_path) >= committed

        daemon = await start_daemon(config_path)
        deadline = time.monotonic() + 90
        while True:
            spool = await Spool.open(spool_path)
            ledger = await spool.ledger()
            await spool.close()
            if ledger and all(e.state is LedgerState.DONE for e in ledger):
                break
            assert daemon.returncode is None, (
                (await daemon.stderr.read()).decode() if daemon.stderr else ""
            )
            assert time.monotonic() < deadline, [
                e for e in ledger if e.state is not LedgerState.DONE
            ]
            await asyncio.sleep(0.2)

        stop = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        status = await asyncio.wait_for(daemon.wait(), 10)
        assert status == 0, (await daemon.stderr.read()).decode() if daemon.stderr else ""
        assert time.monotonic() - stop < 5

        final = readings_now(spool_path)
        assert committed <= final
        spool = await Spool.open(spool_path)
        try:
            frozen = await spool.readings(di="05060101")
            assert len(frozen) == 9 * 3  # today and two back-filled days, every meter
            for r in frozen:
                record = sim.district.meters[Address(r.meter)].frozen_record(r.data_time.date())
                assert record is not None
                assert r.values["forward_active_total"].value == record.forward_active[0]
        finally:
            await spool.close()
