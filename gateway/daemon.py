"""``amigw run``: the daemon. Everything runs under one ``asyncio.TaskGroup``.

Start-up order: configuration (already validated), clock, spool, bus channels, collector.
SIGTERM or SIGINT asks the collector to stop: the exchange in flight finishes, its results are
committed, the channels and the spool are closed, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from drivers.channel import ChannelSettings, Dlt645Channel
from drivers.clock import Clock, ScaledClock, SystemClock
from drivers.errors import DriverError
from drivers.link import Link, SerialSettings, serial_opener, tcp_opener
from drivers.plc import PlcDriver, PlcSettings
from gateway.collector.collector import Collector, MeterAccess, RoundRunner
from gateway.config import Config, Edition, SerialBusConfig, TcpBusConfig
from protocols.bcd import Address
from protocols.q13762 import ProtocolType
from spool import Event, JSONValue, Spool

log = logging.getLogger("amigw.daemon")


def make_clock(config: Config) -> Clock:
    c = config.clock
    if c.mode == "scaled":
        assert c.origin is not None
        return ScaledClock(c.origin, c.speed, c.real_origin)
    return SystemClock()


def make_channel(bus: SerialBusConfig | TcpBusConfig, clock: Clock) -> Dlt645Channel:
    char_time = 11 / bus.baud
    if isinstance(bus, SerialBusConfig):
        opener = serial_opener(
            SerialSettings(bus.device, bus.baud, bus.parity, bus.bytesize, bus.stopbits)
        )
    else:
        opener = tcp_opener(bus.host, bus.port, bus.connect_timeout_ms / 1000)
    settings = ChannelSettings(
        timeout_s=bus.timeout_ms / 1000,
        retries=bus.retries,
        inter_frame_gap_s=bus.inter_frame_gap_ms / 1000,
        preamble=bus.preamble,
        backoff_after=bus.backoff_after,
        backoff_max_s=bus.backoff_max_s,
    )
    return Dlt645Channel(bus.name, Link(bus.name, opener, char_time=char_time), settings, clock)


def make_plc(config: Config, clock: Clock) -> PlcDriver | None:
    plc = config.plc
    if plc is None:
        return None
    opener = serial_opener(SerialSettings(plc.device, plc.baud, plc.parity))
    settings = PlcSettings(
        main_node=Address(plc.main_node),
        command_timeout_s=plc.frame_timeout_ms / 1000,
        point_read_timeout_s=plc.point_read_timeout_s,
        zone=config.gateway.zone,
    )
    return PlcDriver("plc", Link("plc", opener, char_time=11 / plc.baud), settings, clock)


def plc_archive(config: Config) -> dict[Address, ProtocolType]:
    return {
        Address(m.address): ProtocolType.DLT645_2007
        if m.edition is Edition.V2007
        else ProtocolType.DLT645_1997
        for m in config.meter
        if m.bus == "plc"
    }


def plc_preparer(
    driver: PlcDriver, config: Config, spool: Spool, clock: Clock
) -> Callable[[], Awaitable[bool]]:
    """Bring the module up and make its archive match the configuration (retried until it does)."""

    async def prepare() -> bool:
        try:
            info = await driver.start()
            sync = await driver.sync_archive(plc_archive(config))
        except DriverError as exc:
            log.warning("PLC module not ready: %s", exc)
            return False
        details: dict[str, JSONValue] = {
            "added": [str(a) for a in sync.added],
            "removed": [str(a) for a in sync.removed],
            "kept": len(sync.kept),
            "router_led": info.router_led,
        }
        await spool.write_events([Event("plc", "archive_sync", "", clock.now(), details)])
        log.info(
            "PLC archive synchronised: %d added, %d removed", len(sync.added), len(sync.removed)
        )
        return True

    return prepare


@dataclass
class Daemon:
    """The running gateway: its parts, so tests and the CLI can reach them."""

    config: Config
    clock: Clock
    spool: Spool
    channels: dict[str, Dlt645Channel]
    collector: Collector
    plc: PlcDriver | None = None
    on_ready: list[Callable[[], None]] = field(default_factory=list)

    def stop(self) -> None:
        self.collector.stop()

    async def run(self) -> None:
        for callback in self.on_ready:
            callback()
        try:
            await self.collector.run()
        finally:
            for channel in self.channels.values():
                await channel.close()
            if self.plc is not None:
                await self.plc.close()


async def build(config: Config, clock: Clock | None = None) -> Daemon:
    clock = clock or make_clock(config)
    spool = await Spool.open(config.spool.path)
    channels = {b.name: make_channel(b, clock) for b in config.bus}
    accesses: dict[str, MeterAccess] = dict(channels)
    rounds: dict[str, RoundRunner] = {}
    prepare: dict[str, Callable[[], Awaitable[bool]]] = {}
    plc = make_plc(config, clock)
    if plc is not None:
        accesses["plc"] = plc
        prepare["plc"] = plc_preparer(plc, config, spool, clock)
        if config.plc is not None and config.plc.mode == "router":
            rounds["plc"] = plc
    collector = Collector(config, spool, accesses, clock, rounds=rounds, prepare=prepare)
    return Daemon(config, clock, spool, channels, collector, plc)


async def serve(config: Config, clock: Clock | None = None) -> int:
    """Run until SIGTERM/SIGINT; return the exit status."""
    config.spool.path.parent.mkdir(parents=True, exist_ok=True)
    daemon = await build(config, clock)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.stop)
    log.info(
        "amigw %s started: %d bus(es), %d meter(s), spool %s",
        config.gateway.id, len(config.bus), len(config.meter), config.spool.path,
    )  # fmt: skip
    try:
        await daemon.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        await daemon.spool.close()
    log.info("amigw stopped")
    return 0
