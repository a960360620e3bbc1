"""Benchmark: an on-demand read command, from its publish to its result, against the wire limit.

A head-end publishes a signed ``read`` command (one meter, ``--items`` DIs) on ``cmd`` of a
private mosquitto; the gateway's uplink receives it, the command service checks it (envelope,
HMAC, replay cache and audit in the spool) and reads the meter over a simulated 2400-baud
RS-485 bus on a real pty (50 ms turnaround); the result comes back on ``cmd/result``. Printed
for ``--rounds`` commands: the median end-to-end latency, the median time of the same meter
exchanges made directly on the channel, the wire-limit time of those exchanges (every byte at
11 bits per byte, 8E1, plus the turnaround of each exchange) and the ratios against it.
Everything is measured in the same run. Back to back, the direct exchanges also wait out the
channel's inter-frame gap, which the command's own checks and audit writes overlap with.
Skipped (exit 0, with the reason) without mosquitto.

Run: ``.venv/bin/python bench/commands.py [--rounds 10] [--items 2]``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

_HERE = os.path.dirname(os.path.abspath(__file__))
# Run as a script, this directory comes first on sys.path and would shadow the "simulator"
# package with bench/simulator.py; the repository root brings the tests' broker helper.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

import aiomqtt  # noqa: E402

from drivers.channel import Exchange  # noqa: E402
from drivers.clock import ScaledClock  # noqa: E402
from gateway.collector.collector import Collector  # noqa: E402
from gateway.commands import CommandService, KeyRing, sign  # noqa: E402
from gateway.commands.keys import HeadEndKey  # noqa: E402
from gateway.config import parse_config  # noqa: E402
from gateway.daemon import make_channel  # noqa: E402
from gateway.uplink import Uplink  # noqa: E402
from protocols.bcd import Address  # noqa: E402
from protocols.dlt645 import ReadRequest, find  # noqa: E402
from simulator.run import start_simulation  # noqa: E402
from simulator.scenario import parse_scenario  # noqa: E402
from spool import Spool  # noqa: E402
from tests.broker import MOSQUITTO, Broker  # noqa: E402

CST = dt.timezone(dt.timedelta(hours=8))
START = dt.datetime(2025, 6, 3, 10, 0, tzinfo=CST)
BAUD, TURNAROUND_MS = 2400, 50
METER = "000000100001"
SECRET = bytes(range(32))
ITEMS = ["00010000", "0201FF00", "02020100", "04000503"]


def signed(n: int, items: list[str], now: dt.datetime) -> bytes:
    body: dict[str, object] = {
        "schema": "amigw.cmd/1", "id": f"bench-{n}-{os.urandom(4).hex()}", "gateway": "bench",
        "type": "read", "issued": now.isoformat(),
        "expires": (now + dt.timedelta(seconds=60)).isoformat(), "key": "he-1",
        "params": {"meters": [METER], "items": items},
    }  # fmt: skip
    body["signature"] = sign(body, SECRET)
    return json.dumps(body).encode()


async def run(rounds: int, items: list[str], workdir: Path) -> None:
    scenario = parse_scenario({
        "name": "bench-commands",
        "simulation": {"start": START, "history_days": 1, "seed": 1},
        "defaults": {"bus": "rs485-1"},
        "buses": [{"name": "rs485-1", "baud": BAUD, "turnaround_ms": TURNAROUND_MS}],
        "meter_groups": [{"first_address": METER, "count": 1}],
    })  # fmt: skip
    clock = ScaledClock(START)
    with Broker.running(workdir / "broker") as broker:
        async with start_simulation(scenario, clock) as sim:
            path = sim.endpoint("rs485-1").path
            config = parse_config(
                f'[gateway]\nid = "bench"\n[spool]\npath = "{workdir / "spool.sqlite"}"\n'
                f'[[bus]]\nname = "rs485-1"\ndevice = "{path}"\nbaud = {BAUD}\nparity = "N"\n'
                f'[[meter]]\naddress = "{METER}"\nbus = "rs485-1"\n'
                f'[uplink]\nhost = "{broker.host}"\nport = {broker.port}\n'
                "batch_max_age_s = 0.05\n[commands]\nrate_per_min = 6000\nrate_burst = 100\n"
            )
            spool = await Spool.open(config.spool.path)
            channel = make_channel(config.bus[0], clock)
            collector = Collector(config, spool, {"rs485-1": channel}, clock)
            uplink = Uplink(config.uplink, "bench", spool, clock)  # type: ignore[arg-type]
            keys = KeyRing.of(HeadEndKey("he-1", SECRET))
            service = CommandService(
                config, keys, spool, clock, collector=collector, publish=uplink.post_result
            )
            uplink.attach_commands(service.submit_nowait)
            tasks = [asyncio.create_task(uplink.run()), asyncio.create_task(service.run())]
            try:
                while not uplink.statistics().connected:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
                e2e = await measure_e2e(broker, rounds, items, clock)
                direct, wire = await measure_direct(channel, rounds, items)
            finally:
                service.stop()
                uplink.stop()
                await asyncio.gather(*tasks)
                await channel.close()
                await spool.close()
    median_e2e, median_direct = statistics.median(e2e), statistics.median(direct)
    print(f"on-demand read: 1 meter x {len(items)} item(s), {BAUD} bd 8E1, "
          f"{TURNAROUND_MS} ms turnaround, {rounds} rounds")  # fmt: skip
    print(f"    wire limit of the exchanges:   {wire * 1000:8.2f} ms")
    print(f"    direct on the channel:         {median_direct * 1000:8.2f} ms"
          f"   ratio {median_direct / wire:6.3f}")  # fmt: skip
    print(f"    publish -> cmd/result (MQTT):  {median_e2e * 1000:8.2f} ms"
          f"   ratio {median_e2e / wire:6.3f}")  # fmt: skip
    print(f"    command overhead over direct:  {(median_e2e - median_direct) * 1000:8.2f} ms")


async def measure_e2e(
    broker: Broker, rounds: int, items: list[str], clock: ScaledClock
) -> list[float]:
    out: list[float] = []
    async with aiomqtt.Client(broker.host, broker.port, identifier="bench-head-end") as client:
        await client.subscribe("amigw/bench/cmd/result", qos=1)
        messages = aiomqtt_messages(client)
        for n in range(rounds):
            payload = signed(n, items, clock.now())
            wanted = json.loads(payload)["id"]
            started = time.perf_counter()
            await client.publish("amigw/bench/cmd", payload, qos=1)
            while True:
                result = json.loads(await anext(messages))
                if result["id"] == wanted and result["status"] != "accepted":
                    break
            out.append(time.perf_counter() - started)
            if result["status"] != "done":
                raise SystemExit(f"the read failed: {result}")
    return out


async def aiomqtt_messages(client: aiomqtt.Client):  # type: ignore[no-untyped-def]
    async for message in client.messages:
        yield message.payload


async def measure_direct(
    channel: object, rounds: int, items: list[str]
) -> tuple[list[float], float]:
    out: list[float] = []
    exchanges: list[Exchange] = []
    requests = [ReadRequest(Address(METER), find(i).di) for i in items]  # type: ignore[union-attr]
    for _ in range(rounds):
        started = time.perf_counter()
        exchanges = [await channel.request(r) for r in requests]  # type: ignore[attr-defined]
        out.append(time.perf_counter() - started)
    wire = sum((e.request_bytes + e.reply_bytes) * 11 / BAUD + TURNAROUND_MS / 1000
               for e in exchanges)  # fmt: skip
    return out, wire


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--items", type=int, default=2, choices=range(1, len(ITEMS) + 1))
    args = parser.parse_args()
    if MOSQUITTO is None:
        print("bench/commands.py: skipped, mosquitto is not installed")
        return
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(args.rounds, ITEMS[: args.items], Path(tmp)))


if __name__ == "__main__":
    main()
