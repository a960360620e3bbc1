"""The demonstration: a simulated district and the gateway collecting from it, in one process.

When a mosquitto binary is installed, the demo starts a private broker on a free loopback port,
points the gateway's uplink at it and subscribes to the gateway's topics, printing what arrives
(batches per topic, and every alarm raised or cleared).

:func:`config_for` writes the gateway configuration that matches a scenario (the same meters
on the same bus names), with each bus pointing at the simulator's endpoint — the file a field
engineer would write for that district. :func:`run_demo` starts the simulated district, runs
the real daemon against it over ptys, TCP and the virtual PLC module with both sharing one
scaled clock (so a simulated day passes in about a minute), and reports the day's collection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

from drivers.clock import ScaledClock
from gateway.config import Config, parse_config
from simulator.run import Simulation, start_simulation
from simulator.scenario import Scenario
from spool import Spool

from .daemon import build


def _toml(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return f"{key} = {'true' if value else 'false'}"
    if isinstance(value, int | float):
        return f"{key} = {value!r}"
    return f'{key} = "{value}"'


def config_for(
    scenario: Scenario,
    spool: Path,
    *,
    buses: Mapping[str, Mapping[str, Any]] | None = None,
    plc: Mapping[str, Any] | None = None,
    gateway_id: str = "gw-demo",
    catch_up_days: int = 2,
    collection: Mapping[str, Any] | None = None,
    extra: str = "",
) -> str:
    """The gateway configuration (TOML) for every meter of ``scenario``, on its bus names.

    ``buses`` gives each bus's keys (``device`` or ``host``/``port``...); a bus it does not
    name gets a placeholder serial device (fine for in-memory channels, which never open it).
    """
    buses = buses or {}
    plans = list(scenario.meters) + ([scenario.master] if scenario.master else [])
    names = sorted({p.bus for p in plans} - {"plc"})
    lines = [
        "[gateway]",
        _toml("id", gateway_id),
        _toml("timezone", scenario.zone.name),
        "[spool]",
        _toml("path", str(spool)),
        "[collection]",
        _toml("catch_up_days", catch_up_days),
        *(_toml(k, v) for k, v in (collection or {}).items()),
    ]
    for name in names:
        lines += ["[[bus]]", _toml("name", name)]
        keys = buses.get(name, {"kind": "serial", "device": f"/dev/null-{name}"})
        lines += [_toml(k, v) for k, v in keys.items()]
    if plc is not None:
        lines += ["[plc]"] + [_toml(k, v) for k, v in plc.items()]
    for plan in plans:
        lines += [
            "[[meter]]",
            _toml("address", plan.address.digits),
            _toml("edition", plan.config.edition.value[-4:]),
            _toml("bus", plan.bus),
        ]
        if plan is scenario.master:
            lines += ['role = "master"', _toml("phases", plan.config.phases)]
        if plan.config.prepaid is not None:
            lines += ['prepaid = "remote"']
    return "\n".join(lines) + "\n" + extra


def config_for_simulation(sim: Simulation, spool: Path, clock: ScaledClock, **kwargs: Any) -> str:
    """:func:`config_for` with every bus pointing at the running simulation's endpoints."""
    buses: dict[str, dict[str, Any]] = {}
    plc: dict[str, Any] | None = None
    for e in sim.endpoints:
        if e.kind == "pty":
            # A pty cannot carry even parity; the wire accounting stays 8E1.
            buses[e.bus] = {"kind": "serial", "device": e.path, "baud": e.baud, "parity": "N"}
        elif e.kind == "tcp":
            buses[e.bus] = {"kind": "tcp", "host": e.host, "port": e.port, "baud": e.baud}
        else:
            plc = {"device": e.path, "baud": e.baud, "parity": "N", "mode": "router"}
    clock_table = (
        f'[clock]\nmode = "scaled"\norigin = "{clock.origin.isoformat()}"\n'
        f"speed = {clock.speed!r}\nreal_origin = {clock.real_origin!r}\n"
    )
    extra = clock_table + kwargs.pop("extra_tables", "")
    return config_for(sim.scenario, spool, buses=buses, plc=plc, extra=extra, **kwargs)


async def _report(spool: Spool, config: Config, clock: ScaledClock, out: TextIO) -> None:
    today = clock.now().astimezone(config.gateway.zone).date()
    for day in sorted({e.day for e in await spool.ledger()}):
        s = await spool.ledger_summary(day)
        rate = f"{s.success_rate:.1%}" if s.success_rate is not None else "-"
        mark = " (today)" if day == today else ""
        print(
            f"  {day}{mark}: {s.done} done, {s.failed} failed, {s.pending} pending, success {rate}",
            file=out,
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def _broker(workdir: Path) -> Iterator[int | None]:
    """A private mosquitto on a free loopback port, or ``None`` when none is installed."""
    binary = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if binary is None:
        yield None
        return
    port = _free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    # The binary was found on PATH or at Debian's location; the config is our own file.
    proc = subprocess.Popen(  # noqa: S603
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(5)


async def _subscribe(port: int, topic: str, seen: Counter[str], out: TextIO) -> None:
    import aiomqtt  # noqa: PLC0415 - only when a broker runs

    for _ in range(50):
        try:
            async with aiomqtt.Client("127.0.0.1", port, identifier="amigw-demo-headend") as client:
                await client.subscribe(topic, qos=1)
                async for message in client.messages:
                    kind = str(message.topic).rsplit("/", 1)[-1]
                    seen[kind] += 1
                    if kind != "alarms" or not isinstance(message.payload, bytes):
                        continue
                    for record in json.loads(message.payload).get("records", []):
                        print(
                            f"  alarm on {message.topic}: {record.get('type')} "
                            f"meter {record.get('meter')} since {record.get('window_start')}",
                            file=out,
                        )
        except aiomqtt.MqttError:
            await asyncio.sleep(0.2)


async def run_demo(scenario: Scenario, *, speed: float, duration_s: float, out: TextIO) -> int:
    clock = ScaledClock(scenario.start, speed=speed)
    async with start_simulation(scenario, clock) as sim:
        print(f"simulated district {scenario.name!r}: {len(sim.district.meters)} meters", file=out)
        for e in sim.endpoints:
            print(f"  {e.describe()}", file=out)
        with tempfile.TemporaryDirectory(prefix="amigw-demo-") as tmp, _broker(Path(tmp)) as port:
            uplink = (
                ""
                if port is None
                else f'[uplink]\nhost = "127.0.0.1"\nport = {port}\nbatch_max_age_s = 1\n'
            )
            text = config_for_simulation(
                sim, Path(tmp) / "spool.sqlite", clock, extra_tables=uplink
            )
            config = parse_config(text, "demo configuration")
            (Path(tmp) / "amigw.toml").write_text(text, encoding="utf-8")
            daemon = await build(config, clock)
            seen: Counter[str] = Counter()
            listener = None
            if port is None:
                print("mosquitto is not installed: the uplink is off in this demo", file=out)
            else:
                topic = (
                    f"{config.uplink.prefix if config.uplink else 'amigw'}/{config.gateway.id}/#"
                )
                print(f"broker 127.0.0.1:{port}; the head-end side subscribes to {topic}", file=out)
                listener = asyncio.create_task(_subscribe(port, topic, seen, out))
            print(
                f"gateway {config.gateway.id} collecting; simulated time runs {speed:g}x", file=out
            )
            task = asyncio.create_task(daemon.run())
            started = asyncio.get_running_loop().time()
            try:
                while asyncio.get_running_loop().time() - started < duration_s and not task.done():
                    await asyncio.sleep(min(10.0, duration_s))
                    now = clock.now().astimezone(config.gateway.zone)
                    stats = daemon.collector.stats
                    print(
                        f"[{now:%Y-%m-%d %H:%M}] readings {stats.readings_new}, sessions "
                        f"{stats.sessions_ok} ok / {stats.sessions_failed} failed, "
                        f"time syncs {stats.time_syncs}",
                        file=out,
                    )
            finally:
                daemon.stop()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                if listener is not None:
                    await asyncio.sleep(1.0)
                    listener.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await listener
            print("collection ledger:", file=out)
            await _report(daemon.spool, config, clock, out)
            kinds: dict[str, int] = {}
            for event in await daemon.spool.events():
                kinds[event.type] = kinds.get(event.type, 0) + 1
            print(f"events: {kinds or 'none'}", file=out)
            print(f"readings stored: {await daemon.spool.count_readings()}", file=out)
            if port is not None:
                print(f"received over MQTT (messages per topic): {dict(seen) or 'none'}", file=out)
            await daemon.spool.close()
    return 0
