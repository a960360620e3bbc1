"""Prometheus metrics: one custom collector over the components' ``statistics()`` snapshots,
served from prometheus-client's own HTTP thread (docs/metrics.md lists every metric).

Two kinds of figures, read two ways, and the HTTP thread touches neither component directly:

* **live** — the in-memory counters of the channels, the PLC driver, the collector, the uplink,
  the checks and the commands service. A scrape asks the event loop for a fresh copy
  (``call_soon_threadsafe``) and waits a moment for it; a loop busy past that (a long check
  run) gets the copy taken at the last refresh, so a scrape never blocks on the gateway.
* **stored** — figures counted in the spool (rows, bytes, outbox depth, evictions, the ledger,
  active alarms). aiosqlite belongs to the loop, so :meth:`Metrics.run` counts them there every
  ``refresh_interval_s`` and scrapes read the last snapshot.

A listen address already in use is logged as an error and retried at each refresh; collection
never depends on the endpoint. Per-meter series exist only with ``per_meter = true``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import start_wsgi_server
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)

from drivers.channel import ChannelStatistics, Dlt645Channel
from drivers.clock import Clock
from drivers.plc import PlcDriver, PlcStatistics
from gateway import __version__
from gateway.checks import Checker
from gateway.checks.checker import CheckerStatistics
from gateway.checks.context import district_of
from gateway.checks.engine import judged_types
from gateway.collector.collector import NEVER, Collector, CollectorSnapshot, item_of
from gateway.collector.plans import Item
from gateway.config import Config
from gateway.uplink import Uplink, UplinkStatistics
from spool import (
    CapsStatistics,
    ChecksStore,
    LedgerEntry,
    LedgerState,
    Outbox,
    OutboxStatistics,
    Spool,
    SpoolClosedError,
    SpoolError,
    SpoolStatistics,
)

log = logging.getLogger("amigw.metrics")

#: how long a scrape waits for the event loop before it serves the last refreshed copy
LIVE_WAIT_S: Final = 1.0
#: PUBACK latency buckets: loopback brokers answer in milliseconds, cellular links in seconds
LATENCY_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class CommandStatistics(Protocol):
    @property
    def by_result(self) -> Mapping[tuple[str, str], int]:
        """Commands handled, keyed by (command type, result)."""
        ...


class CommandSource(Protocol):
    def statistics(self) -> CommandStatistics: ...


def publish_latency() -> Histogram:
    """The uplink's PUBACK latency histogram (give its ``observe`` to the uplink); registered
    only in a :class:`Metrics` registry, never the process-global one."""
    return Histogram(
        "amigw_uplink_publish_latency_seconds",
        "Time from handing a batch to the broker until its PUBACK.",
        buckets=LATENCY_BUCKETS,
        registry=None,
    )


@dataclass(frozen=True, slots=True)
class Live:
    """The in-memory snapshots, taken together on the event loop."""

    at: dt.datetime
    channels: Mapping[str, ChannelStatistics]
    plc: PlcStatistics | None
    collector: CollectorSnapshot
    uplink: UplinkStatistics | None
    checker: CheckerStatistics | None
    commands: Mapping[tuple[str, str], int] | None
    meters: tuple[str, ...]  # the archive (configuration, plus changes made by command)


@dataclass(frozen=True, slots=True)
class Stored:
    """The figures counted in the spool at the last refresh."""

    at: dt.datetime
    spool: SpoolStatistics
    outbox: OutboxStatistics
    caps: CapsStatistics
    open_entries: Mapping[tuple[str, str], int]  # (state, item)
    catch_up_backlog: int
    today: Mapping[tuple[str, str], int]  # (district, state): meters by today's daily frozen
    meter_open: Mapping[str, int]
    active_alarms: Mapping[str, int]


class Metrics:
    """The exporter of one daemon: its registry, HTTP endpoint and refresh task."""

    def __init__(
        self,
        config: Config,
        clock: Clock,
        spool: Spool,
        collector: Collector,
        *,
        channels: Mapping[str, Dlt645Channel],
        plc: PlcDriver | None = None,
        uplink: Uplink | None = None,
        checker: Checker | None = None,
        commands: CommandSource | None = None,
        latency: Histogram | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.settings = config.metrics
        self.config = config
        self.clock = clock
        self.spool = spool
        self.collector = collector
        self.channels = dict(channels)
        self.plc = plc
        self.uplink = uplink
        self.checker = checker
        self.commands = commands
        self._sleep = sleep
        self._outbox = uplink.outbox if uplink is not None else Outbox(spool)
        self._alarm_types = judged_types(config.checks)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._live: Live | None = None
        self._stored: Stored | None = None
        self._refresh_failures = 0
        self._refresh_s = 0.0
        self._stop = asyncio.Event()
        self._server: WSGIServer | None = None
        self._bind_error: str | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Exporter(self))
        if latency is not None:
            self.registry.register(latency)

    # -- the endpoint ------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int] | None:
        """Where the endpoint listens, or ``None`` while it could not bind."""
        if self._server is None:
            return None
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> bool:
        """Bind the endpoint (call on the event loop); ``False`` when the address is taken or
        refused: logged as an error once, retried by :meth:`run`, and collection goes on."""
        self._loop = asyncio.get_running_loop()
        if self._server is not None:
            return True
        where = f"{self.settings.listen}:{self.settings.port}"
        try:
            self._server, _ = start_wsgi_server(
                self.settings.port, self.settings.listen, self.registry
            )
        except OSError as exc:
            text = f"{exc.strerror or exc}"
            if text != self._bind_error:
                log.error(
                    "metrics endpoint %s unavailable (%s); collection goes on, binding retried"
                    " every %g s",
                    where,
                    text,
                    self.settings.refresh_interval_s,
                )
            self._bind_error = text
            return False
        if self._bind_error is not None:
            log.info("metrics endpoint %s bound after: %s", where, self._bind_error)
        else:
            log.info("metrics endpoint on http://%s/metrics", where)
        self._bind_error = None
        return True

    def close(self) -> None:
        """Stop serving and release the address (a scrape still answering finishes on its own
        thread)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    # -- the refresh task --------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Refresh the stored figures every ``refresh_interval_s`` (and retry a refused bind)
        until :meth:`stop`; the endpoint is closed on the way out."""
        try:
            self.start()
            while not self._stop.is_set():
                await self.refresh()
                if self._server is None:
                    self.start()
                sleeper = asyncio.ensure_future(self._sleep(self.settings.refresh_interval_s))
                stopper = asyncio.ensure_future(self._stop.wait())
                try:
                    await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    sleeper.cancel()
                    stopper.cancel()
        finally:
            self.close()

    async def refresh(self) -> None:
        """Take both snapshots now (on the event loop). A spool that is busy or full keeps the
        last stored figures and counts a refresh failure."""
        started = time.perf_counter()
        self._live = self.read_live()
        try:
            self._stored = await self._read_stored()
        except SpoolClosedError:
            return  # shutting down
        except SpoolError as exc:
            self._refresh_failures += 1
            level = logging.WARNING if self._refresh_failures == 1 else logging.DEBUG
            log.log(level, "metrics keep the last spool figures: %s", exc)
        self._refresh_s = time.perf_counter() - started

    def read_live(self) -> Live:
        commands = None if self.commands is None else self.commands.statistics().by_result
        return Live(
            at=self.clock.now(),
            channels={name: c.statistics() for name, c in self.channels.items()},
            plc=None if self.plc is None else self.plc.statistics(),
            collector=self.collector.statistics(),
            uplink=None if self.uplink is None else self.uplink.statistics(),
            checker=None if self.checker is None else self.checker.statistics(),
            commands=None if commands is None else MappingProxyType(dict(commands)),
            meters=tuple(sorted(self.collector.meters)),
        )

    async def _read_stored(self) -> Stored:
        now = self.clock.now()
        today = now.astimezone(self.config.gateway.zone).date()
        open_entries: Counter[tuple[str, str]] = Counter()
        meter_open: Counter[str] = Counter()
        owed_today: dict[str, str] = {}
        backlog = 0
        # Only the open entries are decoded (the partial index serves them): done entries
        # outnumber them by far once a district is collected.
        for state in (LedgerState.PENDING, LedgerState.FAILED):
            for entry in await self.spool.ledger(state=state):
                open_entries[state.value, _item(entry)] += 1
                meter_open[entry.meter] += 1
                if entry.item != Item.DAILY_FROZEN.value:
                    continue
                if entry.day == today:
                    owed_today[entry.meter] = state.value
                elif entry.day < today and entry.next_attempt != NEVER:
                    backlog += 1
        # Planning gives every archive meter today's daily frozen entry at once, so once the
        # day is planned a meter that owes none has it done.
        day: Counter[tuple[str, str]] = Counter()
        if (await self.spool.ledger_summary(today)).total:
            for address, plan in self.collector.meters.items():
                district = district_of(plan.config, self.config)
                day[district, owed_today.get(address, LedgerState.DONE.value)] += 1
        alarms = Counter(a.type for a in await ChecksStore(self.spool).active_alarms())
        return Stored(
            at=now,
            spool=await self.spool.statistics(),
            outbox=await self._outbox.statistics(),
            caps=await self.spool.caps.statistics(),
            open_entries=MappingProxyType(dict(open_entries)),
            catch_up_backlog=backlog,
            today=MappingProxyType(dict(day)),
            meter_open=MappingProxyType(dict(meter_open)),
            active_alarms=MappingProxyType(dict(alarms)),
        )

    # -- what a scrape reads (HTTP thread) ---------------------------------------------------

    def snapshots(self) -> tuple[Live | None, Stored | None]:
        return self._live_now(), self._stored

    def _live_now(self) -> Live | None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return self._live
        with contextlib.suppress(RuntimeError):  # no running loop: the HTTP thread
            if asyncio.get_running_loop() is loop:
                return self.read_live()  # collected on the loop itself (a test, a CLI)
        done: concurrent.futures.Future[Live] = concurrent.futures.Future()

        def read() -> None:
            if done.set_running_or_notify_cancel():
                try:
                    done.set_result(self.read_live())
                except Exception as exc:  # handed to the scrape, which reports it
                    done.set_exception(exc)

        try:
            loop.call_soon_threadsafe(read)
        except RuntimeError:  # the loop closed in between
            return self._live
        try:
            return done.result(LIVE_WAIT_S)
        except TimeoutError:
            done.cancel()
            return self._live


def _item(entry: LedgerEntry) -> str:
    try:
        return item_of(entry.item).value
    except ValueError:
        return "other"


# -- families --------------------------------------------------------------------------------

Rows = Iterable[tuple[Sequence[str], float]]


def _counter(name: str, doc: str, labels: Sequence[str], rows: Rows) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for values, value in rows:
        family.add_metric(values, value)
    return family


def _gauge(name: str, doc: str, labels: Sequence[str], rows: Rows) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for values, value in rows:
        family.add_metric(values, value)
    return family


# (metric suffix, statistics field, help) shared by the RS-485 channels and the PLC driver
_BUS_COUNTERS: Final = (
    ("requests", "requests", "Requests sent to meters (each retry counts)."),
    ("replies", "replies", "Replies accepted."),
    ("timeouts", "timeouts", "Requests that timed out."),
    ("retries", "retries", "Requests sent again after a timeout or a garbled reply."),
    ("corrupted_replies", "corrupted", "Replies rejected as garbled (checksum, framing)."),
    ("unmatched_replies", "unmatched", "Frames that answered no request in flight."),
    ("link_errors", "link_errors", "Port or connection failures."),
    ("backed_off", "backed_off", "Requests refused because the meter rests after failures."),
    ("broadcasts", "broadcasts", "Broadcast time-sync frames sent."),
)
_PLC_COUNTERS: Final = (
    ("frames_received", "frames_in", "1376.2 frames received from the module."),
    ("frames_sent", "frames_out", "1376.2 frames sent to the module."),
    ("denies", "denies", "Commands the module denied."),
    ("not_in_network", "not_in_network", "Reads the module refused: meter not in its network."),
    ("rounds", "rounds", "Router-led rounds run."),
)
_UPLINK_COUNTERS: Final = (
    ("connections", "connects", "Broker connections established."),
    ("connect_failures", "connect_failures", "Broker connections that failed or broke."),
    ("batches_published", "batches_published", "Batches published (PUBACK received)."),
    ("batches_resent", "batches_resent", "Batches sent again (new connection or no ack)."),
    ("batches_acked", "batches_acked", "Batches acknowledged (broker or head-end)."),
    ("records_acked", "records_acked", "Records in acknowledged batches."),
    ("headend_acks", "headend_acks", "Acknowledgements received from the head-end."),
    ("bad_acks", "bad_acks", "Head-end acknowledgements that did not parse."),
    ("batches_prepared", "batches_prepared", "Batches written ahead while the broker was away."),
    ("prepare_failures", "prepare_failures", "Preparing batches failed (disk full, say)."),
)


class _Exporter:
    """The custom collector: builds every family from the two snapshots at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        live, stored = self.m.snapshots()
        info = InfoMetricFamily("amigw_build", "The running amigw version.")
        info.add_metric([], {"version": __version__, "gateway": self.m.config.gateway.id})
        yield info
        yield _counter(
            "amigw_metrics_refresh_failures",
            "Refreshes that kept stale spool figures.",
            [],
            [((), self.m._refresh_failures)],
        )
        yield _gauge(
            "amigw_metrics_refresh_duration_seconds",
            "Time the last refresh took.",
            [],
            [((), self.m._refresh_s)],
        )
        if live is not None:
            yield from self._buses(live)
            yield from self._collector(live.collector)
            yield from self._uplink(live.uplink)
            yield from self._alarms(live.checker, stored)
            yield from self._commands(live.commands)
        if stored is not None:
            yield from self._ledger(stored)
            yield from self._spool(stored)
        if self.m.settings.per_meter and live is not None:
            yield from self._meters(live, stored)

    def _buses(self, live: Live) -> Iterator[Metric]:
        buses: dict[str, ChannelStatistics | PlcStatistics] = dict(live.channels)
        if live.plc is not None:
            buses["plc"] = live.plc
        for suffix, field, doc in _BUS_COUNTERS:
            rows = [((bus,), getattr(s, field)) for bus, s in buses.items()]
            yield _counter(f"amigw_bus_{suffix}", doc, ["bus"], rows)
        yield _counter(
            "amigw_bus_wrong_address",
            "Replies from another meter than the one asked.",
            ["bus"],
            [((bus,), s.wrong_address) for bus, s in live.channels.items()],
        )
        yield _counter(
            "amigw_bus_frame_errors",
            "Bytes the framer rejected, by reason (bad-checksum, bad-end, truncated, ...).",
            ["bus", "reason"],
            [((bus, r), n) for bus, s in buses.items() for r, n in sorted(s.framing.items())],
        )
        if live.plc is not None:
            for suffix, field, doc in _PLC_COUNTERS:
                yield _counter(f"amigw_plc_{suffix}", doc, [], [((), getattr(live.plc, field))])

    def _collector(self, c: CollectorSnapshot) -> Iterator[Metric]:
        yield _counter(
            "amigw_collector_readings",
            "Readings read from meters, by plan item.",
            ["item"],
            [((item,), n) for item, n in sorted(c.readings_by_item.items())],
        )
        yield _counter(
            "amigw_collector_sessions",
            "Plan sessions run, by item and result.",
            ["item", "result"],
            [(key, n) for key, n in sorted(c.sessions_by_item.items())],
        )
        yield _counter(
            "amigw_collector_stored_readings",
            "Readings newly stored (duplicates excluded).",
            [],
            [((), c.stats.readings_new)],
        )
        yield _counter(
            "amigw_collector_time_syncs",
            "Broadcast time syncs sent.",
            [],
            [((), c.stats.time_syncs)],
        )
        yield _counter(
            "amigw_collector_passes",
            "Passes over the due ledger entries of a bus.",
            [],
            [((), c.stats.passes)],
        )

    def _ledger(self, s: Stored) -> Iterator[Metric]:
        yield _gauge(
            "amigw_ledger_open_entries",
            "Ledger entries not done (all days), by state and item.",
            ["state", "item"],
            [(key, n) for key, n in sorted(s.open_entries.items())],
        )
        yield _gauge(
            "amigw_collector_catch_up_backlog_entries",
            "Daily frozen entries of past days still to be read (back-fill, 补抄).",
            [],
            [((), s.catch_up_backlog)],
        )
        by_district: dict[str, Counter[str]] = {}
        for (district, state), n in s.today.items():
            by_district.setdefault(district, Counter())[state] = n
        yield _gauge(
            "amigw_collection_meters",
            "Archive meters by the state of today's daily frozen reading, by district.",
            ["district", "state"],
            [
                ((d, st.value), by_district[d][st.value])
                for d in sorted(by_district)
                for st in LedgerState
            ],
        )
        yield _gauge(
            "amigw_collection_success_ratio",
            "Share of archive meters with today's daily frozen reading, by district (采集成功率).",
            ["district"],
            [
                ((d,), counts[LedgerState.DONE.value] / counts.total())
                for d, counts in sorted(by_district.items())
                if counts.total()
            ],
        )

    def _spool(self, s: Stored) -> Iterator[Metric]:
        sp, out, caps = s.spool, s.outbox, s.caps
        yield _gauge(
            "amigw_spool_rows",
            "Rows per spool table.",
            ["table"],
            [((t,), n) for t, n in sorted(sp.rows.items())],
        )
        yield _gauge(
            "amigw_spool_readings",
            "Stored readings by kind.",
            ["kind"],
            [((k.value,), n) for k, n in sp.readings_by_kind.items()],
        )
        yield _gauge(
            "amigw_spool_file_bytes",
            "Database, -wal and -shm file sizes.",
            [],
            [((), sp.file_bytes)],
        )
        yield _gauge("amigw_spool_wal_bytes", "Size of the -wal file.", [], [((), sp.wal_bytes)])
        yield _gauge(
            "amigw_spool_used_bytes", "Database pages in use.", [], [((), caps.used_bytes)]
        )
        yield _gauge(
            "amigw_spool_max_bytes",
            "The spool's size cap.",
            [],
            [] if caps.max_bytes is None else [((), caps.max_bytes)],
        )
        yield _gauge(
            "amigw_spool_unsent_records",
            "Records not yet acknowledged, by stream.",
            ["stream"],
            [((k.value,), n) for k, n in out.unsent.items()],
        )
        oldest = out.oldest_unsent
        age = 0.0 if oldest is None else max(0.0, (s.at - oldest).total_seconds())
        yield _gauge(
            "amigw_spool_oldest_unsent_age_seconds",
            "Age of the oldest unacknowledged record (0 when none).",
            [],
            [((), age)],
        )
        yield _gauge(
            "amigw_spool_open_batches",
            "Batches cut and not yet acknowledged.",
            [],
            [((), out.open_batches)],
        )
        yield _gauge(
            "amigw_spool_prepared_batches",
            "Open batches whose JSON was written ahead while the broker was away.",
            [],
            [((), out.prepared_batches)],
        )
        yield _gauge(
            "amigw_spool_prepared_bytes",
            "Bytes of prepared batches beside the spool (counted by the cap).",
            [],
            [((), out.prepared_bytes)],
        )
        yield _counter(
            "amigw_spool_evicted_records",
            "Records evicted to keep the spool under its cap, by class.",
            ["class"],
            [((k.value,), n) for k, n in caps.evicted.items()],
        )
        yield _counter(
            "amigw_spool_eviction_runs",
            "Eviction runs since start.",
            [],
            [((), caps.eviction_runs)],
        )
        yield _counter(
            "amigw_spool_full_errors",
            "Writes refused: the spool stayed full after eviction.",
            [],
            [((), caps.full_errors)],
        )

    def _uplink(self, u: UplinkStatistics | None) -> Iterator[Metric]:
        if u is None:
            return
        yield _gauge(
            "amigw_uplink_connected",
            "1 while connected to the broker.",
            [],
            [((), float(u.connected))],
        )
        yield _counter(
            "amigw_uplink_reconnects",
            "Broker connections established after the first.",
            [],
            [((), max(0, u.connects - 1))],
        )
        for suffix, field, doc in _UPLINK_COUNTERS:
            yield _counter(f"amigw_uplink_{suffix}", doc, [], [((), getattr(u, field))])
        yield _gauge(
            "amigw_uplink_inflight_batches", "Batches awaiting their ack.", [], [((), u.inflight)]
        )
        yield _counter(
            "amigw_uplink_paced_seconds",
            "Time the drain waited for its pacer.",
            [],
            [((), u.paced_s)],
        )

    def _alarms(self, c: CheckerStatistics | None, s: Stored | None) -> Iterator[Metric]:
        if c is None:
            return
        active = {} if s is None else s.active_alarms
        types = sorted(self.m._alarm_types | set(c.raised) | set(c.cleared) | set(active))
        yield _counter(
            "amigw_alarms_raised",
            "Alarms raised since start, by type.",
            ["type"],
            [((t,), c.raised.get(t, 0)) for t in types],
        )
        yield _counter(
            "amigw_alarms_cleared",
            "Alarms cleared since start, by type.",
            ["type"],
            [((t,), c.cleared.get(t, 0)) for t in types],
        )
        if s is not None:
            yield _gauge(
                "amigw_alarms_active",
                "Alarms raised and not cleared, by type.",
                ["type"],
                [((t,), active.get(t, 0)) for t in types],
            )
        yield _counter("amigw_checks_runs", "Check runs completed.", [], [((), c.runs)])
        yield _counter("amigw_checks_failures", "Check runs that failed.", [], [((), c.failures)])
        yield _gauge(
            "amigw_checks_last_run_duration_seconds",
            "Duration of the last run.",
            [],
            [((), c.last_duration_s)],
        )

    def _commands(self, by_result: Mapping[tuple[str, str], int] | None) -> Iterator[Metric]:
        if by_result is None:
            return
        yield _counter(
            "amigw_commands",
            "Head-end commands handled, by type and result.",
            ["type", "result"],
            [(key, n) for key, n in sorted(by_result.items())],
        )

    def _meters(self, live: Live, stored: Stored | None) -> Iterator[Metric]:
        meters = live.meters
        c = live.collector
        yield _counter(
            "amigw_meter_failed_sessions",
            "Failed plan sessions per meter.",
            ["meter"],
            [((m,), c.meter_failures.get(m, 0)) for m in meters],
        )
        yield _gauge(
            "amigw_meter_last_success_age_seconds",
            "Time since the meter's last successful session (none since start: absent).",
            ["meter"],
            [
                ((m,), max(0.0, (live.at - c.meter_last_ok[m]).total_seconds()))
                for m in meters
                if m in c.meter_last_ok
            ],
        )
        if stored is not None:
            yield _gauge(
                "amigw_meter_open_entries",
                "Ledger entries not done per meter.",
                ["meter"],
                [((m,), stored.meter_open.get(m, 0)) for m in meters],
            )


__all__ = [
    "LATENCY_BUCKETS",
    "CommandSource",
    "CommandStatistics",
    "Live",
    "Metrics",
    "Stored",
    "publish_latency",
]
