"""``amigw run``: the daemon. Everything runs under one ``asyncio.TaskGroup``.

Start-up order: configuration (already validated), clock, spool, bus channels and the PLC
module, then the collector, the edge checks and, when ``[uplink]`` is configured, the uplink,
side by side in the TaskGroup; with ``[commands]`` enabled, the head-end command service too
(fed by the uplink's ``cmd`` subscription; its key file is checked with the configuration).
SIGTERM or SIGINT asks them all to stop: the exchange in flight finishes, its results are
committed, the uplink settles its PUBACKs and says ``offline``, the channels and the spool are
closed, and the process exits 0. A full spool (``SpoolFullError``
after eviction) pauses collection instead of ending the daemon. With ``[metrics]`` enabled
(the default) the Prometheus endpoint serves from its own thread while the daemon runs; a
listen address in use is logged and retried, never fatal (:mod:`gateway.metrics`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from drivers.channel import ChannelSettings, Dlt645Channel
from drivers.clock import Clock, ScaledClock, SystemClock
from drivers.errors import DriverError
from drivers.link import Link, SerialSettings, serial_opener, tcp_opener
from drivers.plc import PlcDriver, PlcSettings
from gateway.checks import Checker
from gateway.collector.collector import Collector, MeterAccess, RoundRunner
from gateway.config import Config, Edition, SerialBusConfig, TcpBusConfig
from gateway.logs import add_secrets
from gateway.metrics import Metrics, publish_latency
from gateway.systemd import (
    Notifier,
    Watchdog,
    day_progress,
    report_status,
    stall_budgets,
    status_line,
    watchdog_timeout,
)
from gateway.uplink import Uplink
from protocols.bcd import Address
from protocols.q13762 import ProtocolType
from spool import CommandsStore, Event, JSONValue, Spool, SpoolFullError

if TYPE_CHECKING:
    from gateway.commands import CommandService

log = logging.getLogger("amigw.daemon")

#: how often the ``STATUS=`` line is refreshed (real seconds)
STATUS_INTERVAL_S = 30.0

#: how long collection pauses after the spool stayed full even after eviction
FULL_PAUSE_S = 60.0


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
    driver: PlcDriver,
    config: Config,
    spool: Spool,
    clock: Clock,
    archive: Callable[[], Mapping[Address, ProtocolType]] | None = None,
) -> Callable[[], Awaitable[bool]]:
    """Bring the module up and make its archive match the configuration (retried until it
    does); ``archive``, when given, says what the archive is now (command changes included)."""

    async def prepare() -> bool:
        try:
            info = await driver.start()
            sync = await driver.sync_archive(plc_archive(config) if archive is None else archive())
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
    uplink: Uplink | None = None
    checker: Checker | None = None
    commands: CommandService | None = None
    metrics: Metrics | None = None
    paused: bool = False  # collection waits for room in the spool

    def stop(self) -> None:
        self.collector.stop()
        if self.metrics is not None:
            self.metrics.stop()
        if self.uplink is not None:
            self.uplink.stop()
        if self.checker is not None:
            self.checker.stop()
        if self.commands is not None:
            self.commands.stop()

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._collect(), name="collector")
                if self.uplink is not None:
                    tasks.create_task(self.uplink.run(), name="uplink")
                if self.checker is not None:
                    tasks.create_task(self.checker.run(), name="checks")
                if self.commands is not None:
                    tasks.create_task(self.commands.run(), name="commands")
                if self.metrics is not None:
                    tasks.create_task(self.metrics.run(), name="metrics")
                # The spool is open and every part has its task: ready (systemd's READY=1).
                for callback in self.on_ready:
                    callback()
        finally:
            for channel in self.channels.values():
                await channel.close()
            if self.plc is not None:
                await self.plc.close()

    async def _collect(self) -> None:
        """The collector, restarted after a pause when the spool is full (it re-plans from the
        ledger, so the items whose commit failed are read again)."""
        while not self.collector.stopping:
            try:
                await self.collector.run()
            except* SpoolFullError as group:
                log.error(
                    "spool full even after eviction; collection pauses %.0f s: %s",
                    FULL_PAUSE_S, group.exceptions[0],
                )  # fmt: skip
            else:
                return
            self.paused = True
            waited = 0.0
            while waited < FULL_PAUSE_S and not self.collector.stopping:
                await self.clock.sleep(1.0)
                waited += 1.0
            self.paused = False

    async def status(self) -> str:
        """The one-line summary systemd shows (``STATUS=``): the archive's meters complete
        today (changes made by command included), then the ledger items behind them."""
        today = self.collector.local(self.clock.now()).date()
        progress = await day_progress(self.spool, self.collector.meters, today)
        connected = unsent = None
        if self.uplink is not None:
            connected = self.uplink.statistics().connected
            unsent = (await self.uplink.outbox.statistics()).depth
        return status_line(progress, uplink=connected, unsent=unsent, paused=self.paused)


def _spellings(secret: bytes) -> tuple[str, ...]:
    """How a key file may spell a secret: hex in either case, or text."""
    return (secret.hex(), secret.hex().upper(), secret.decode("utf-8", "replace"))


async def make_commands(daemon: Daemon, headend: Callable[[], bool] | None) -> CommandService:
    """The head-end command service, fed by the uplink's ``cmd`` subscription; archive changes
    made by command earlier are laid over the configured meters first."""
    # Imported here: a daemon without [commands] does not carry the command code (2.5 MB).
    from gateway.commands import CommandService, load_keys  # noqa: PLC0415
    from gateway.commands.archive import overlay  # noqa: PLC0415

    config = daemon.config
    keys = load_keys(config.commands.key_file)
    # Masked in every log line, however the key file spells them (hex or text).
    add_secrets(*(text for k in keys.keys.values() for text in _spellings(k.secret)))
    applied = overlay(daemon.collector.meters, await CommandsStore(daemon.spool).archive(), config)
    if applied:
        log.info("%d archive change(s) made by command applied over the configuration", applied)
    uplink = daemon.uplink
    service = CommandService(
        config, keys, daemon.spool, daemon.clock,
        collector=daemon.collector,
        ledgers=None if daemon.checker is None else daemon.checker.ledgers,
        plc=daemon.plc, headend=headend,
        publish=None if uplink is None else uplink.post_result,
    )  # fmt: skip
    if uplink is not None:
        uplink.attach_commands(service.submit_nowait, config.commands.results_held)
    else:
        log.warning("[commands] is enabled but there is no [uplink] to receive them from")
    return service


async def build(config: Config, clock: Clock | None = None) -> Daemon:
    clock = clock or make_clock(config)
    spool = await Spool.open(config.spool.path, max_bytes=config.spool.max_bytes, clock=clock)
    channels = {b.name: make_channel(b, clock) for b in config.bus}
    accesses: dict[str, MeterAccess] = dict(channels)
    rounds: dict[str, RoundRunner] = {}
    prepare: dict[str, Callable[[], Awaitable[bool]]] = {}
    plc = make_plc(config, clock)
    if plc is not None:
        from gateway.commands.archive import plc_archive as planned_plc_archive  # noqa: PLC0415

        accesses["plc"] = plc
        prepare["plc"] = plc_preparer(
            plc, config, spool, clock, lambda: planned_plc_archive(collector.meters)
        )
        if config.plc is not None and config.plc.mode == "router":
            rounds["plc"] = plc
    collector = Collector(config, spool, accesses, clock, rounds=rounds, prepare=prepare)
    daemon = Daemon(config, clock, spool, channels, collector, plc)
    latency = publish_latency() if config.metrics.enabled else None
    if config.uplink is not None:
        daemon.uplink = Uplink(
            config.uplink, config.gateway.id, spool, clock,
            on_published=None if latency is None else latency.observe,
        )  # fmt: skip
    uplink = daemon.uplink
    # The checks' auto-protect (no cut-off while the head-end is unreachable) asks the uplink.
    headend = None if uplink is None else (lambda: uplink.statistics().connected)
    daemon.checker = Checker(config, spool, clock, headend=headend)
    if config.commands.enabled:
        daemon.commands = await make_commands(daemon, headend)
    if config.metrics.enabled:
        daemon.metrics = Metrics(
            config, clock, spool, collector,
            channels=channels, plc=plc, uplink=uplink, checker=daemon.checker,
            commands=daemon.commands,
            latency=None if uplink is None else latency,
        )  # fmt: skip
    return daemon


async def serve(
    config: Config, clock: Clock | None = None, *, reload: Callable[[], None] | None = None
) -> int:
    """Run until SIGTERM/SIGINT; return the exit status. SIGHUP calls ``reload``.

    Under systemd (``$NOTIFY_SOCKET``): ``READY=1`` once running, ``STATUS=`` lines, the
    watchdog when ``$WATCHDOG_USEC`` asks for it, ``STOPPING=1`` on SIGTERM.
    """
    notifier = Notifier.from_environ()
    notifier.status("starting: opening the spool")
    config.spool.path.parent.mkdir(parents=True, exist_ok=True)
    daemon = await build(config, clock)
    loop = asyncio.get_running_loop()

    def stop() -> None:
        notifier.stopping()
        notifier.status("stopping: finishing the exchanges in flight")
        daemon.stop()

    def reread() -> None:
        assert reload is not None
        notifier.reloading()
        reload()
        notifier.ready()

    signals = [signal.SIGTERM, signal.SIGINT]
    for sig in signals:
        loop.add_signal_handler(sig, stop)
    if reload is not None:
        signals.append(signal.SIGHUP)
        loop.add_signal_handler(signal.SIGHUP, reread)

    def ready() -> None:
        notifier.ready(f"collecting {len(daemon.collector.meters)} meters")
        log.info("ready")

    daemon.on_ready.append(ready)
    stopped = asyncio.Event()
    background = []
    if notifier.enabled:
        background.append(
            asyncio.create_task(report_status(notifier, daemon.status, STATUS_INTERVAL_S, stopped))
        )
        timeout = watchdog_timeout()
        if timeout is not None:
            budgets = stall_budgets(config, daemon.collector.round_idle_s)
            watchdog = Watchdog(notifier, timeout, daemon.collector, budgets)
            background.append(asyncio.create_task(watchdog.run(), name="watchdog"))
    log.info(
        "amigw %s started: %d bus(es), %d meter(s), spool %s",
        config.gateway.id, len(config.bus), len(config.meter), config.spool.path,
    )  # fmt: skip
    try:
        await daemon.run()
    finally:
        stopped.set()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        for sig in signals:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        await daemon.spool.close()
        notifier.close()
    log.info("amigw stopped")
    return 0
