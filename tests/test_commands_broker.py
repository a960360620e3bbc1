"""Head-end commands over a real mosquitto: the gateway built by ``gateway.daemon.build`` with a
simulated district on a real pty at 2400 baud, collecting while a head-end signs commands with
``mosquitto_pub``-like publishes. Each result arrives on ``cmd/result`` and each audit record
on ``events``; the relay in the simulator opens and closes as commanded; a command for another
gateway is never even received; results produced while the broker is away arrive after it
comes back; a replay after a daemon restart is still rejected."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from drivers.clock import ScaledClock
from gateway.config import Config
from gateway.daemon import Daemon, build
from gateway.uplink.payloads import parse_batch
from protocols.bcd import Address
from simulator.run import Simulation, start_simulation
from tests.broker import Broker, Subscriber, requires_mosquitto

from .districts import config_text, scenario_from
from .test_commands_service import KEYS, SECRET, SINGLE, command, write_keys

pytestmark = [pytest.mark.broker, requires_mosquitto]

ZONE = dt.timezone(dt.timedelta(hours=8))
START = dt.datetime(2025, 6, 3, 10, 0, tzinfo=ZONE)
GW = "gw-test"
M1, M2 = "000000005001", "000000005002"

SCENARIO = f"""
name = "commands-e2e"
[simulation]
start = {START.isoformat()}
timezone = "Asia/Shanghai"
seed = 5
history_days = 1
[defaults]
bus = "rs485-1"
profile = "residential"
[[buses]]
name = "rs485-1"
baud = 2400
turnaround_ms = 20
[[meter_groups]]
first_address = "{M1}"
count = 2
"""


def daemon_config(tmp: Path, sim: Simulation, broker: Broker, clock: ScaledClock) -> Config:
    pty = sim.endpoint("rs485-1")
    buses = {"rs485-1": {"kind": "serial", "device": pty.path, "baud": 2400, "parity": "N",
                         "timeout_ms": 600}}  # fmt: skip
    extra = (
        f'[clock]\nmode = "scaled"\norigin = "{clock.origin.isoformat()}"\n'
        f"speed = 1.0\nreal_origin = {clock.real_origin!r}\n"
    )
    doc = tomllib.loads(config_text(sim.scenario, tmp / "spool.sqlite", buses=buses, extra=extra))
    doc["uplink"] = {
        "host": broker.host, "port": broker.port, "batch_max_age_s": 0.05,
        "reconnect_min_s": 0.05, "reconnect_max_s": 0.3, "drain_records_per_s": 0,
    }  # fmt: skip
    doc["commands"] = {
        "enabled": True, "key_file": str(write_keys(tmp)), "confirm_timeout_s": 3.0,
        "confirm_interval_s": 0.2,
    }  # fmt: skip
    doc["checks"] = {"enabled": False}
    return Config.model_validate(doc)


@contextlib.asynccontextmanager
async def running(config: Config, clock: ScaledClock) -> AsyncIterator[Daemon]:
    daemon = await build(config, clock)
    task = asyncio.create_task(daemon.run())
    try:
        yield daemon
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 20)
        await daemon.spool.close()


async def connected(daemon: Daemon) -> None:
    """Until the uplink is subscribed (a clean session drops what was published before)."""
    uplink = daemon.uplink
    assert uplink is not None
    async with asyncio.timeout(10):
        while not uplink.statistics().connected:  # noqa: ASYNC110 - no event offered for it
            await asyncio.sleep(0.02)


async def head_end_publish(broker: Broker, topic: str, payload: bytes) -> None:
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.publish(topic, payload, qos=1)


def results_of(sub: Subscriber, command_id: str) -> list[dict[str, Any]]:
    out = [json.loads(m.payload) for m in sub.on("/cmd/result")]
    return [r for r in out if r["id"] == command_id]


async def final_result(sub: Subscriber, command_id: str, within: float = 30) -> dict[str, Any]:
    def finished() -> bool:
        return any(r["status"] != "accepted" for r in results_of(sub, command_id))

    await sub.wait_for(finished, within)
    return next(r for r in results_of(sub, command_id) if r["status"] != "accepted")


def audit_events(sub: Subscriber) -> list[dict[str, Any]]:
    records = []
    for m in sub.on("/events"):
        records += [r for r in parse_batch(m.payload).records if r["source"] == "commands"]
    return records


async def test_commands_end_to_end_through_mosquitto_and_a_pty(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert SECRET in KEYS
    clock = ScaledClock(START, speed=1.0)
    scenario = scenario_from(SCENARIO)
    with Broker.running(tmp_path / "broker") as broker:
        async with start_simulation(scenario, clock) as sim:
            config = daemon_config(tmp_path, sim, broker, clock)
            meter = next(m for m in sim.district.users if m.address == Address(M1))
            base = f"amigw/{GW}"
            async with Subscriber(broker, f"{base}/#", client_id="head-end") as sub:
                async with running(config, clock) as daemon:
                    assert daemon.commands is not None
                    await connected(daemon)

                    # On-demand read over the 2400-baud pty while the collector works the bus.
                    read = command("read", {"meters": [M1, M2], "items": ["00010000"]},
                                   id="c-read", issued=clock.now())  # fmt: skip
                    await head_end_publish(broker, f"{base}/cmd", read)
                    result = await final_result(sub, "c-read")
                    assert result["status"] == "done", result
                    values = [r["values"] for r in result["result"]["readings"]]
                    assert all("forward_active_total" in v for v in values)

                    # A trip, single-phase key: the relay opens and consumption stops.
                    trip = command("relay", {"meter": M1, "action": "trip"}, id="c-trip",
                                   key="he-single", secret=SINGLE, issued=clock.now())  # fmt: skip
                    await head_end_publish(broker, f"{base}/cmd", trip)
                    result = await final_result(sub, "c-trip")
                    assert result["result"]["outcome"] == "confirmed", result
                    assert meter.relay_open

                    # Another gateway's command is not ours: never received, never answered.
                    other = command("ping", id="c-other", gateway="gw-other", issued=clock.now())
                    await head_end_publish(broker, "amigw/gw-other/cmd", other)

                    close = command("relay", {"meter": M1, "action": "close"}, id="c-close",
                                    issued=clock.now())  # fmt: skip
                    await head_end_publish(broker, f"{base}/cmd", close)
                    result = await final_result(sub, "c-close")
                    assert result["result"]["outcome"] == "confirmed"
                    assert not meter.relay_open
                    assert results_of(sub, "c-other") == []

                    # Results made while the broker is away are held and sent after it returns.
                    broker.stop()
                    await asyncio.sleep(0.3)
                    daemon.commands.publish(json.dumps({"id": "held", "status": "done"}).encode())
                    broker.start()
                    await sub.wait_for(lambda: bool(results_of(sub, "held")), 20)

                    # Every command was audited and published on events.
                    def audited() -> bool:
                        ids = {(e["details"]["id"], e["type"]) for e in audit_events(sub)}
                        return {("c-trip", "command.done"), ("c-close", "command.done"),
                                ("c-read", "command.accepted")} <= ids  # fmt: skip

                    await sub.wait_for(audited, 20)
                    by = daemon.commands.statistics().by_result
                    assert by[("relay", "done")] == 2
                    assert by[("read", "done")] == 1

                # A replay after a restart of the daemon is rejected.
                async with running(config, clock) as again:
                    await connected(again)
                    await head_end_publish(broker, f"{base}/cmd", trip)

                    def replayed() -> bool:
                        return any(r.get("reason") == "replayed"
                                   for r in results_of(sub, "c-trip"))  # fmt: skip

                    await sub.wait_for(replayed, 20)
                    assert not meter.relay_open
    assert "without TLS" not in caplog.text  # loopback: no clear-text warning


async def test_a_resend_delivers_the_same_records_again_to_a_real_subscriber(
    tmp_path: Path,
) -> None:
    clock = ScaledClock(START, speed=1.0)
    scenario = scenario_from(SCENARIO)
    with Broker.running(tmp_path / "broker") as broker:
        async with start_simulation(scenario, clock) as sim:
            config = daemon_config(tmp_path, sim, broker, clock)
            base = f"amigw/{GW}"
            async with Subscriber(broker, f"{base}/#", client_id="head-end") as sub:

                def readings() -> list[tuple[int, dict[str, Any]]]:
                    out = []
                    for m in sub.on("/readings"):
                        batch = parse_batch(m.payload)
                        out += [(batch.seq, r) for r in batch.records]
                    return out

                async with running(config, clock) as daemon:
                    await connected(daemon)
                    # The frozen readings of the day before, as collection sends them.
                    await sub.wait_for(
                        lambda: sum(r["meter"] == M1 and r["kind"] == "daily_frozen"
                                    for _, r in readings()) >= 1, 30,
                    )  # fmt: skip
                    first = [(s, r) for s, r in readings() if r["meter"] == M1]
                    frozen = [r for _, r in first if r["kind"] == "daily_frozen"]
                    day = dt.datetime.fromisoformat(frozen[0]["data_time"])
                    last_seq = max(s for s, _ in readings())
                    end = day + dt.timedelta(seconds=1)
                    resend = command(
                        "resend",
                        {"start": day.isoformat(), "end": end.isoformat(), "meters": [M1],
                         "streams": ["readings"]},
                        id="c-resend", issued=clock.now(),
                    )  # fmt: skip
                    await head_end_publish(broker, f"{base}/cmd", resend)
                    result = await final_result(sub, "c-resend")
                    assert result["status"] == "done", result
                    queued = result["result"]["queued"]["readings"]
                    sent_before = [r for r in frozen if r["data_time"] == frozen[0]["data_time"]]
                    assert queued == len(sent_before) >= 1

                    def again() -> list[dict[str, Any]]:
                        return [r for s, r in readings() if s > last_seq
                                and r["data_time"] == frozen[0]["data_time"]
                                and r["meter"] == M1]  # fmt: skip

                    await sub.wait_for(lambda: len(again()) >= queued, 20)
                    assert sorted(json.dumps(r["key"]) for r in again()) == sorted(
                        json.dumps(r["key"]) for r in sent_before
                    )
                    # The same records, values exact (Decimals compared as text).
                    assert sorted(json.dumps(r, sort_keys=True, default=str) for r in again()) == (
                        sorted(json.dumps(r, sort_keys=True, default=str) for r in sent_before)
                    )
