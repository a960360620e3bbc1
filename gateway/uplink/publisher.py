"""The uplink: store-and-forward from the spool's outbox to the broker, losing nothing.

One connection at a time (:class:`~.session.Session`), re-established with :class:`Backoff`.
On each connection:

1. birth — the retained ``status`` ``online`` (the will, fixed at connect, is ``offline``);
2. ``ack = "headend"``: subscribe to ``ack``; with head-end commands, to ``cmd`` (handed to
   :mod:`gateway.commands`), publishing their results on ``cmd/result`` (held while offline);
3. resend every open batch of the outbox, oldest ``seq`` first, with its old number;
4. drain — cut new batches as records arrive (a full batch at once, a short one when its oldest
   record has waited ``batch_max_age_s``), keep up to ``window`` in flight, paced by a token
   bucket (``drain_records_per_s``) so a backlog after an outage does not flood the broker;
5. a periodic retained status (spool depth, oldest unsent age, evictions).

While there is no connection (after ``prepare_after_s``, so a blip costs nothing) the uplink
*prepares*: it cuts full batches as records arrive and writes their JSON ahead beside the spool
(:meth:`~spool.outbox.Outbox.prepare`, :mod:`spool.prepared`). When the broker is back they are
open batches like any other, read back instead of rendered, so a backlog drains at the speed of
publishing. Preparing stops short of the spool's cap and of the disk's reserve, and the cap
drops prepared JSON before it evicts any record.

A batch is acknowledged by its PUBACK (``broker``) or by the head-end's ack message
(``headend``; unanswered batches are sent again after ``headend_ack_timeout_s``). Acks are
committed to the outbox with the next group of cut batches (see :mod:`.feed`), or by a flusher
task that outlives connections when no cut comes along within ``ACK_DELAY_S``: one fsync per
group instead of per batch. A batch is never deleted before its ack, and a late commit can only
cause a duplicate.

Stopping finishes the PUBACKs in flight (bounded), publishes a retained ``offline`` status,
commits the acks and disconnects. Errors: :class:`~.errors.UplinkError` from the connection is
logged once per distinct failure and answered with back-off; a spool that is busy or full
delays the drain and the ack commits, and the daemon carries on; anything else propagates.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import random
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Final

from gateway import __version__
from gateway.config import UplinkConfig
from protocols.dlt645 import Edition, lookup
from spool import Batch, Clock, Outbox, Spool, SpoolUnavailableError

from . import status
from .errors import BrokerRefusedError, TlsSetupError, UplinkError
from .feed import IDLE_POLL_S, SPOOL_RETRY_S, AckBook, Feed, first_of
from .pacing import Pacer
from .payloads import BatchEncoder, Topics, parse_ack
from .reconnect import Backoff, RealTimer, Timer
from .session import Session, SessionSettings, TlsSettings
from .window import InFlight, Window

log = logging.getLogger("amigw.uplink")

#: how long a stop waits for PUBACKs of batches already handed to the broker
_STOP_GRACE_S: Final = 10.0
#: acknowledgements wait this long for a cut to commit them along, then commit on their own
ACK_DELAY_S: Final = 0.05
#: preparing waits this long after it failed (a full disk, say) or was held back for room
PREPARE_RETRY_S: Final = 60.0
#: batches prepared per call at most: what one call holds in memory (~2 MB of 200-reading
#: batches), and how long it holds the spool's write lock
PREPARE_BATCHES: Final = 20
_SENT: Final = memoryview(b"")


@functools.lru_cache(maxsize=4096)
def di_name(di: str) -> str | None:
    """The registry's title of a DI (8 hex digits: DL/T 645-2007, 4: 1997), or None."""
    try:
        code = int(di, 16)
    except ValueError:
        return None
    item = lookup(Edition.V2007 if len(di) == 8 else Edition.V1997, code)
    return None if item is None else item.title


def session_settings(config: UplinkConfig, gateway: str, will: bytes) -> SessionSettings:
    topics = Topics(config.prefix, gateway)
    tls = config.tls
    return SessionSettings(
        host=config.host,
        port=config.effective_port,
        client_id=config.client_id or f"amigw-{gateway}",
        will_topic=topics.status,
        will_payload=will,
        username=config.username,
        password=None if config.password is None else config.password.get_secret_value(),
        tls=None if tls is None else TlsSettings(tls.ca, tls.cert, tls.key, tls.insecure),
        mqtt_version=config.mqtt_version,
        keepalive_s=config.keepalive_s,
        persistent=config.persistent_session,
        session_expiry_s=config.session_expiry_s,
        window=config.window,
        connect_timeout_s=config.connect_timeout_s,
        publish_timeout_s=config.publish_timeout_s,
    )


class Uplink:
    """Drains ``spool`` to the broker in ``config``; :meth:`run` until :meth:`stop`."""

    def __init__(
        self,
        config: UplinkConfig,
        gateway: str,
        spool: Spool,
        clock: Clock,
        *,
        timer: Timer | None = None,
        rng: random.Random | None = None,
        names: Callable[[str], str | None] = di_name,
        on_acknowledged: Callable[[Sequence[int]], None] | None = None,
        version: str = __version__,
        on_published: Callable[[float], None] | None = None,
    ) -> None:
        self.config = config
        self.gateway = gateway
        self.spool = spool
        self.clock = clock
        self.timer: Timer = timer or RealTimer()
        self.topics = Topics(config.prefix, gateway)
        self._encoder = BatchEncoder(gateway)
        self.outbox = Outbox(spool, names=names, envelope=self._encoder.encode)
        self.version = version
        self._rng = rng or random.Random()
        self._pacer = Pacer(
            config.drain_records_per_s, burst=config.batch_max_records, timer=self.timer
        )
        self._stop = asyncio.Event()
        self._closing = asyncio.Event()
        self._acks = AckBook(on_acknowledged)
        #: told each PUBACK's latency in seconds (metrics' histogram)
        self._on_published = on_published
        self._window: Window | None = None
        self._since: datetime | None = None
        self._counts = dict.fromkeys(
            (
                "connects", "connect_failures", "published", "resent", "headend_acks",
                "bad_acks", "prepared", "prepare_failures",
            ),
            0,
        )  # fmt: skip
        # Connected or not, and since when not (timer's clock): when preparing may start.
        self._connected = asyncio.Event()
        self._disconnected = asyncio.Event()
        self._disconnected.set()
        self._offline_since: float | None = None
        self._last_error: str | None = None
        # Head-end commands (gateway.commands): who takes ``cmd`` payloads, and the results
        # waiting for ``cmd/result`` (bounded: the oldest go first while the link stays down).
        self._on_command: Callable[[bytes], object] | None = None
        self._results: deque[bytes] = deque(maxlen=1000)
        self._results_ready = asyncio.Event()

    # -- lifecycle -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask :meth:`run` to finish: in-flight PUBACKs, ``offline`` status, ack commits."""
        self._stop.set()

    def attach_commands(self, handler: Callable[[bytes], object], held: int = 1000) -> None:
        """Subscribe to ``cmd`` on every connection and hand each payload to ``handler``
        (which must not block); keep up to ``held`` results for :meth:`post_result`."""
        self._on_command = handler
        self._results = deque(self._results, maxlen=held)

    def post_result(self, payload: bytes) -> None:
        """Queue a ``cmd/result`` payload: sent at once when connected, else after reconnecting
        (the oldest are dropped beyond the bound)."""
        self._results.append(payload)
        self._results_ready.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def statistics(self) -> status.UplinkStatistics:
        c = self._counts
        return status.UplinkStatistics(
            connected=self._window is not None,
            connects=c["connects"],
            connect_failures=c["connect_failures"],
            batches_published=c["published"],
            batches_resent=c["resent"],
            batches_acked=self._acks.batches,
            records_acked=self._acks.records,
            acks_uncommitted=len(self._acks.pending),
            inflight=0 if self._window is None else len(self._window.inflight),
            headend_acks=c["headend_acks"],
            bad_acks=c["bad_acks"],
            paced_s=self._pacer.waited_s,
            last_error=self._last_error,
            batches_prepared=c["prepared"],
            prepare_failures=c["prepare_failures"],
        )

    async def run(self) -> None:
        _warn_if_plain(self.config)
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._flush_acks(), name="uplink-acks")
                self._offline_since = self.timer.monotonic()
                tasks.create_task(self._prepare_offline(), name="uplink-prepare")
                try:
                    await self._connect_loop()
                finally:
                    self._closing.set()
        finally:
            await self.outbox.close()

    # -- connections ---------------------------------------------------------------------------

    async def _connect_loop(self) -> None:
        backoff = Backoff(
            self.config.reconnect_min_s,
            self.config.reconnect_max_s,
            timer=self.timer,
            rng=self._rng,
        )
        while not self.stopping:
            try:
                await self._connect_once(backoff)
            except UplinkError as exc:
                self._counts["connect_failures"] += 1
                self._log_failure(exc, backoff.failures)
            if self.stopping:
                break
            await first_of(self.timer.sleep(backoff.next_delay()), self._stop.wait())

    def _log_failure(self, exc: UplinkError, failures: int) -> None:
        text = str(exc)
        repeated = text == self._last_error
        self._last_error = text
        if repeated:
            log.debug("uplink still failing (%d in a row): %s", failures + 1, text)
        elif isinstance(exc, BrokerRefusedError | TlsSetupError):
            log.error("uplink: %s (retrying with back-off)", text)
        else:
            log.warning("uplink: %s (retrying with back-off)", text)

    async def _connect_once(self, backoff: Backoff) -> None:
        will = status.offline(gateway=self.gateway, version=self.version, reason="connection lost")
        settings = session_settings(self.config, self.gateway, will)
        try:
            async with Session.open(settings) as session:
                self._counts["connects"] += 1
                self._since = self.clock.now()
                self._disconnected.clear()
                self._connected.set()
                log.info(
                    "uplink connected to %s:%d as %s (MQTT %s, ack=%s, window %d)",
                    settings.host, settings.port, settings.client_id, settings.mqtt_version,
                    self.config.ack, self.config.window,
                )  # fmt: skip
                try:
                    await self._serve(session, backoff)
                finally:
                    self._window = None
                    self._connected.clear()
                    self._disconnected.set()
                    self._offline_since = self.timer.monotonic()
        except BaseExceptionGroup as group:
            # A TaskGroup of this connection failed: report its first connection error; a bug
            # (anything that is not an UplinkError) propagates untouched.
            uplink, rest = group.split(UplinkError)
            if rest is not None or uplink is None:
                raise
            raise _first(uplink) from group

    async def _serve(self, session: Session, backoff: Backoff) -> None:
        await session.publish(self.topics.status, await self._online(), retain=True)
        headend = self.config.ack == "headend"
        if headend:
            await session.subscribe(self.topics.ack)
        # Only this gateway's own topics: never a wildcard that could take another's commands.
        commands = self._on_command is not None
        if commands:
            await session.subscribe(self.topics.cmd)
        backoff.reset()
        if self._last_error is not None:
            log.info("uplink back after: %s", self._last_error)
            self._last_error = None
        window = self._window = Window(self.config.window)
        async with asyncio.TaskGroup() as tasks:
            side = [tasks.create_task(self._status_loop(session), name="uplink-status")]
            if headend or commands:
                side.append(tasks.create_task(self._receive(session, window), name="uplink-ack"))
            if commands:
                side.append(tasks.create_task(self._results_loop(session), name="uplink-results"))
            if headend:
                side.append(
                    tasks.create_task(
                        self._resend_unanswered(session, window, tasks), name="uplink-resend"
                    )
                )
            await self._drain(session, window, tasks)
            for task in side:
                task.cancel()
        await session.publish(
            self.topics.status,
            status.offline(
                gateway=self.gateway, version=self.version, reason="shutdown", now=self.clock.now()
            ),
            retain=True,
        )

    # -- the drain -----------------------------------------------------------------------------

    async def _drain(self, session: Session, window: Window, tasks: asyncio.TaskGroup) -> None:
        feed = Feed(
            self.outbox,
            self.spool,
            self.config,
            size=window.size,
            acks=self._acks,
            clock=self.clock,
            timer=self.timer,
            stop=self._stop,
        )
        await feed.start(tasks)
        # A sender waiting for a free slot wakes when stopping (one watcher, not one per wait).
        watch = asyncio.ensure_future(self._stop.wait())
        watch.add_done_callback(lambda _: window.wake())
        try:
            while (item := await feed.get()) is not None:
                batch, resend = item
                await self._send(session, window, tasks, batch, resend=resend)
        finally:
            watch.cancel()
        # Stopping: let the broker acknowledge what it already has (bounded), then leave the
        # rest open for the next start.
        try:
            async with asyncio.timeout(min(_STOP_GRACE_S, self.config.publish_timeout_s)):
                await window.wait_settled(keep_published=self.config.ack == "headend")
        except TimeoutError:
            log.warning("uplink stopping with %d batch(es) unacknowledged", len(window.inflight))
        window.cancel_all()

    async def _send(
        self,
        session: Session,
        window: Window,
        tasks: asyncio.TaskGroup,
        batch: Batch,
        *,
        resend: bool = False,
    ) -> None:
        if batch.seq in self._acks:
            return
        if batch.count == 0:  # every record of it was evicted: nothing left to deliver
            self._acknowledged(window, batch.seq, 0)
            return
        if self._pacer.rate:
            await self._pacer.take(batch.count)
        if window.free <= 0:
            await window.wait_free()
        if self.stopping:
            return
        payload = self._message(batch)
        # The entry keeps the payload, not the records: they are a view into the whole group
        # rendered with them, which can go once every batch of it is encoded.
        entry = InFlight(Batch(batch.ref, batch.count, _SENT), payload, self.timer.monotonic())
        window.add(entry)
        entry.task = tasks.create_task(self._publish(session, window, entry))
        if resend:
            self._counts["resent"] += 1

    def _message(self, batch: Batch) -> bytes | bytearray:
        """What ``batch`` is published as: prepared ahead, or its records in the envelope."""
        return batch.payload if batch.payload is not None else self._encoder.encode(batch)

    async def _publish(self, session: Session, window: Window, entry: InFlight) -> None:
        await session.publish(self.topics.stream(entry.batch.stream), entry.payload, qos=1)
        self._counts["published"] += 1
        if self._on_published is not None:
            self._on_published(self.timer.monotonic() - entry.sent_at)
        window.published(entry)
        if self.config.ack == "broker":
            self._acknowledged(window, entry.batch.seq, entry.batch.count)

    def _acknowledged(self, window: Window, seq: int, records: int) -> None:
        window.release(seq)
        self._acks.add(seq, records)
        if not window.inflight and not self._acks.cutting:
            self._acks.due.set()

    # -- head-end acknowledgement --------------------------------------------------------------

    async def _receive(self, session: Session, window: Window) -> None:
        async for topic, payload in session.messages():
            if topic == self.topics.cmd and self._on_command is not None:
                self._on_command(payload)
                continue
            if topic != self.topics.ack:
                continue
            try:
                seqs = parse_ack(payload)
            except UplinkError as exc:
                self._counts["bad_acks"] += 1
                level = logging.WARNING if self._counts["bad_acks"] == 1 else logging.DEBUG
                log.log(level, "ignoring a bad ack from the head-end (%d so far): %s",
                        self._counts["bad_acks"], exc)  # fmt: skip
                continue
            for seq in seqs:
                self._counts["headend_acks"] += 1
                entry = window.inflight.get(seq)
                # An ack for a batch of an earlier connection or run still confirms it.
                self._acknowledged(window, seq, 0 if entry is None else entry.batch.count)

    async def _results_loop(self, session: Session) -> None:
        """Publish command results in order; one leaves the queue only after its PUBACK."""
        while True:
            while self._results:
                await session.publish(self.topics.cmd_result, self._results[0], qos=1)
                self._results.popleft()
            self._results_ready.clear()
            await self._results_ready.wait()

    async def _resend_unanswered(
        self, session: Session, window: Window, tasks: asyncio.TaskGroup
    ) -> None:
        timeout = self.config.headend_ack_timeout_s
        while True:
            await self.timer.sleep(min(timeout / 4, 5.0))
            now = self.timer.monotonic()
            for entry in list(window.inflight.values()):
                if entry.published and now - entry.sent_at >= timeout:
                    entry.published = False
                    entry.sent_at = now
                    self._counts["resent"] += 1
                    entry.task = tasks.create_task(self._publish(session, window, entry))

    # -- preparing while the broker is away ----------------------------------------------------

    async def _prepare_offline(self) -> None:
        """While disconnected for ``prepare_after_s``: cut full batches as records arrive and
        write their JSON ahead (:meth:`~spool.outbox.Outbox.prepare`), a window at a time."""
        if not self.config.prepare_offline:
            return
        ended = asyncio.ensure_future(first_of(self._stop.wait(), self._closing.wait()))
        held: str | None = None
        failures = 0
        per_call = min(self.config.window, PREPARE_BATCHES)
        seen = self.spool.write_count
        try:
            while not ended.done():
                if self._connected.is_set():
                    await first_of(self._disconnected.wait(), asyncio.shield(ended))
                    continue
                since = self._offline_since or self.timer.monotonic()
                wait = since + self.config.prepare_after_s - self.timer.monotonic()
                if wait > 0:
                    await first_of(
                        self.timer.sleep(wait), self._connected.wait(), asyncio.shield(ended)
                    )
                    continue
                pause = 0.0
                started = self.timer.monotonic()
                try:
                    done = await self.outbox.prepare(
                        max_batches=per_call,
                        max_records=self.config.batch_max_records,
                        now=self.clock.now(),
                    )
                except SpoolUnavailableError as exc:
                    self._counts["prepare_failures"] += 1
                    failures += 1
                    level = logging.WARNING if failures == 1 else logging.DEBUG
                    log.log(level, "uplink cannot prepare batches (%d in a row), records wait"
                            " unprepared: %s", failures, exc)  # fmt: skip
                    pause = PREPARE_RETRY_S
                else:
                    failures = 0
                    self._counts["prepared"] += done.batches
                    if done.held != held:
                        if done.held is not None:
                            log.info("uplink: preparing paused to leave room (%s)", done.held)
                        else:
                            log.info("uplink: preparing resumed")
                        held = done.held
                    if held is not None:
                        pause = PREPARE_RETRY_S
                    elif done.batches >= per_call:
                        continue  # a backlog: the next ones at once
                    else:
                        # Less than a window of full batches: wait for records, then look
                        # again no sooner than IDLE_POLL_S after this look.
                        await first_of(
                            self.spool.wait_written(seen),
                            self._connected.wait(),
                            asyncio.shield(ended),
                        )
                        seen = self.spool.write_count
                        pause = max(0.0, started + IDLE_POLL_S - self.timer.monotonic())
                if pause > 0:
                    await first_of(
                        self.timer.sleep(pause), self._connected.wait(), asyncio.shield(ended)
                    )
        finally:
            ended.cancel()

    # -- committing acknowledgements -----------------------------------------------------------

    async def _flush_acks(self) -> None:
        """Commit acknowledgements no cut has taken along (idle periods, between connections,
        and everything left when :meth:`run` ends)."""
        acks = self._acks
        failures = 0
        while True:
            acks.arrived.clear()
            if not acks.pending:
                if self._closing.is_set():
                    return
                await first_of(acks.arrived.wait(), self._closing.wait())
                continue
            commits = acks.commits
            if not acks.due.is_set():
                await first_of(self.timer.sleep(ACK_DELAY_S), self._closing.wait(), acks.due.wait())
            if acks.commits != commits and not (acks.due.is_set() or self._closing.is_set()):
                continue  # a cut committed some meanwhile and more cuts are coming: wait for them
            acks.due.clear()
            batch = acks.snapshot()
            if not batch:
                continue
            try:
                await self.outbox.acknowledge(batch)
            except SpoolUnavailableError as exc:
                failures += 1
                if failures == 1:
                    log.warning("uplink cannot commit acknowledgements yet: %s", exc)
                if self._closing.is_set() and failures >= 3:
                    log.warning("%d acknowledged batch(es) will be sent again", len(acks.pending))
                    return
                await self.timer.sleep(SPOOL_RETRY_S)
                continue
            failures = 0
            acks.committed(batch)

    # -- status --------------------------------------------------------------------------------

    async def _online(self) -> bytes:
        now = self.clock.now()
        return status.online(
            gateway=self.gateway,
            version=self.version,
            now=now,
            since=self._since,
            spool=await status.spool_figures(self.spool, self.outbox, now),
            uplink=self.statistics(),
            ack=self.config.ack,
            window=self.config.window,
        )

    async def _status_loop(self, session: Session) -> None:
        while True:
            await self.timer.sleep(self.config.status_interval_s)
            await session.publish(self.topics.status, await self._online(), retain=True)


def _warn_if_plain(config: UplinkConfig) -> None:
    """Commands and readings in clear text are fine on loopback, not across a network."""
    if config.tls is not None:
        return
    try:
        loopback = ipaddress.ip_address(config.host).is_loopback
    except ValueError:
        loopback = config.host == "localhost"
    if not loopback:
        log.warning(
            "uplink: MQTT to %s without TLS: commands and data travel in clear text"
            " (configure [uplink.tls])",
            config.host,
        )


def _first(group: BaseExceptionGroup[UplinkError]) -> UplinkError:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first(exc)
        return exc
    return UplinkError("connection failed")
