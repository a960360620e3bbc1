"""The concentrator side of a PLC/HPLC router module: Q/GDW 1376.2 over a :class:`Link`.

:class:`PlcDriver` owns the module's UART through a :class:`~drivers.plc_session.Session`
(framing, sequence numbers, matching replies to commands). Commands to the module are serialised
by a lock, as on the RS-485 channel: one in flight. What the module initiates is answered at
once, whatever else is going on: every AFN06 report is confirmed with AFN00 F1 echoing its seq
(unanswered reports stall HPLC routers), every AFN14 request is answered (what to read, the
clock, a delay-corrected frame), and an unsolicited AFN03 F10 at power-up is kept.

* :meth:`PlcDriver.start` — run mode (AFN03 F10, reported or queried), version (AFN03 F1),
  main-node address (AFN05 F1).
* :meth:`PlcDriver.sync_archive` — make the module's slave archive exactly the configured meters.
* Concentrator-led point reads (AFN13 F1) behind the same interface as
  :class:`~drivers.channel.Dlt645Channel` (``request``, ``broadcast``, ``resting_until``,
  ``statistics``, ``close``), so the collector drives either. A running router round is paused
  (AFN12 F2) around a point read and resumed (F3) afterwards.
* Router-led rounds: :meth:`PlcDriver.run_round` with a :class:`~drivers.plc_router.RoundSource`.

Wire timing (timeouts) uses the event loop's monotonic time; back-off uses the injected clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, TypeVar
from zoneinfo import ZoneInfo

from protocols.bcd import Address
from protocols.dlt645 import BroadcastTime, Edition, Message, decode_message, edition_of
from protocols.dlt645 import encode_frame as encode_645
from protocols.dlt645.frame import Frame as Frame645
from protocols.errors import RemoteProtocolError
from protocols.q13762 import (
    AddSlaves,
    Afn,
    ClockAnswer,
    CommMode,
    Confirm,
    DataUnit,
    DelayCorrectedFrame,
    DelayCorrectionRequest,
    DelayFlag,
    DeleteSlaves,
    Deny,
    DenyCode,
    Empty,
    Frame,
    MainNodeAddress,
    MonitorReply,
    MonitorRequest,
    ProtocolType,
    ReadAnswer,
    ReadDataReport,
    ReadFlag,
    ReadingMode,
    RouteWorkChange,
    RunModeInfo,
    SlaveCount,
    SlaveInfoList,
    SlaveInfoQuery,
    SlaveNode,
    StartBroadcast,
    VersionInfo,
    WorkChange,
)
from protocols.q13762 import ReadRequest as RouterAsks

from .backoff import MeterBackoff
from .channel import Exchange
from .clock import Clock
from .errors import (
    DriverError,
    LinkError,
    MeterRestingError,
    MeterTimeoutError,
    ReplyCorruptedError,
)
from .link import Link
from .plc_router import RoundReport, RoundRun, RoundSource, replies_to
from .plc_session import ModuleError, ModuleTimeoutError, NotInNetworkError, Session

U = TypeVar("U", bound=DataUnit)

_NO_ANSWER: Final = frozenset(
    {DenyCode.COMM_TIMEOUT, DenyCode.METER_NO_ANSWER, DenyCode.SLAVE_NO_ANSWER}
)
_BUSY: Final = frozenset(
    {DenyCode.MAIN_NODE_BUSY, DenyCode.MAX_CONCURRENCY_EXCEEDED, DenyCode.METER_BEING_READ}
)


class RouterError(DriverError):
    """A router-led round cannot run (one is already running)."""

    reason = "router"


@dataclass(frozen=True, slots=True)
class PlcSettings:
    main_node: Address = Address("000000000001")  # noqa: RUF009 - immutable value object
    comm_mode: CommMode = CommMode.NARROWBAND_PLC_CENTRAL  # until the module's first frame
    command_timeout_s: float = 3.0  # local commands: AFN03, 05, 10, 11, 12
    point_read_timeout_s: float = 90.0  # AFN13 F1
    retries: int = 1
    startup_wait_s: float = 1.0  # for the module's unsolicited AFN03 F10 before asking
    preamble: int = 0  # FE bytes before an embedded 645 frame (the captures carry none)
    zone: dt.tzinfo = ZoneInfo("Asia/Shanghai")  # noqa: RUF009 - the clock the router is told
    page_size: int = 20  # nodes per AFN10 F2 page
    add_batch: int = 10  # nodes per AFN11 F1
    delete_batch: int = 10
    backoff_after: int = 3
    backoff_initial_s: float = 60.0
    backoff_max_s: float = 3600.0


@dataclass(frozen=True, slots=True)
class ModuleInfo:
    """What :meth:`PlcDriver.start` learnt about the module."""

    version: VersionInfo
    run_mode: RunModeInfo
    comm_mode: CommMode
    main_node: Address
    reported_at_power_up: bool  # the run mode came unsolicited, not queried

    @property
    def monitor_timeout_s(self) -> int:
        return self.run_mode.monitor_timeout

    @property
    def router_led(self) -> bool:
        return self.run_mode.reading_mode in (ReadingMode.ROUTER_LED, ReadingMode.BOTH)


@dataclass(frozen=True, slots=True)
class ArchiveSync:
    """What :meth:`PlcDriver.sync_archive` changed (archive order)."""

    added: tuple[Address, ...]
    removed: tuple[Address, ...]
    kept: tuple[Address, ...]


@dataclass(frozen=True, slots=True)
class PlcStatistics:
    frames_in: int
    frames_out: int
    requests: int
    replies: int
    timeouts: int
    corrupted: int
    denies: int
    not_in_network: int
    retries: int
    backed_off: int
    broadcasts: int
    link_errors: int
    unmatched: int
    reports_confirmed: int
    read_requests: int
    clock_requests: int
    rounds: int
    unhandled: int
    framing: MappingProxyType[str, int]


@dataclass(slots=True)
class _Counters:
    requests: int = 0
    replies: int = 0
    timeouts: int = 0
    corrupted: int = 0
    not_in_network: int = 0
    retries: int = 0
    backed_off: int = 0
    broadcasts: int = 0
    reports_confirmed: int = 0
    read_requests: int = 0
    clock_requests: int = 0
    rounds: int = 0
    unhandled: int = 0


class RouterState(enum.Enum):
    """What the driver believes the router is doing (a point read pauses only a running one)."""

    IDLE = "idle"  # no round in progress (or none we know of)
    RUNNING = "running"
    PAUSED = "paused"


@dataclass(slots=True)
class _State:
    router: RouterState = RouterState.IDLE
    router_led: bool = True  # until AFN03 F10 says otherwise
    run_mode: RunModeInfo | None = None
    protocols: dict[Address, ProtocolType] = field(default_factory=dict)


class PlcDriver:
    """The PLC/HPLC module on one UART; see the module docstring."""

    def __init__(self, name: str, link: Link, settings: PlcSettings, clock: Clock) -> None:
        self.name = name
        self.link = link
        self.settings = settings
        self.clock = clock
        self.info: ModuleInfo | None = None
        self.monitor_timeout_s: int | None = None
        self._lock = asyncio.Lock()  # one command in flight
        self._session = Session(
            name,
            link,
            main_node=settings.main_node,
            comm_mode=settings.comm_mode,
            on_request=self._module_request,
        )
        self._counters = _Counters()
        self._backoff = MeterBackoff(
            clock,
            after=settings.backoff_after,
            initial_s=settings.backoff_initial_s,
            max_s=settings.backoff_max_s,
        )
        self._state = _State()
        self._run_mode_seen = asyncio.Event()
        self._round: RoundRun | None = None

    # -- state ------------------------------------------------------------------------------
    @property
    def router(self) -> RouterState:
        return self._state.router

    def statistics(self) -> PlcStatistics:
        c, w = self._counters, self._session.counters
        return PlcStatistics(
            w.frames_in, w.frames_out, c.requests, c.replies, c.timeouts, c.corrupted, w.denies,
            c.not_in_network, c.retries, c.backed_off, c.broadcasts, w.link_errors, w.unmatched,
            c.reports_confirmed, c.read_requests, c.clock_requests, c.rounds, c.unhandled,
            self._session.framing(),
        )  # fmt: skip

    def resting_until(self, address: Address) -> dt.datetime | None:
        return self._backoff.resting_until(address)

    def _succeeded(self, address: Address) -> None:
        self._backoff.succeeded(address)

    def _failed(self, address: Address) -> None:
        self._backoff.failed(address)

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> ModuleInfo:
        """Bring the module up: run mode, version, main-node address."""
        await self.link.open()
        self._session.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._run_mode_seen.wait(), self.settings.startup_wait_s)
        reported = self._state.run_mode is not None
        async with self._lock:
            run_mode = self._state.run_mode
            if run_mode is None:
                run_mode = await self._query(Afn.QUERY, 10, Empty(), RunModeInfo)
                self._state.run_mode = run_mode
            version = await self._query(Afn.QUERY, 1, Empty(), VersionInfo)
            await self._command(Afn.CONTROL, 1, MainNodeAddress(self.settings.main_node))
        self._state.router_led = run_mode.reading_mode in (ReadingMode.ROUTER_LED, ReadingMode.BOTH)
        self.monitor_timeout_s = run_mode.monitor_timeout
        self.info = ModuleInfo(
            version, run_mode, self._session.comm_mode, self.settings.main_node, reported
        )
        return self.info

    async def close(self) -> None:
        """Stop the receive loop (re-raising what crashed it, if anything) and close the link."""
        await self._session.close()

    # -- the slave archive ------------------------------------------------------------------
    async def sync_archive(self, meters: Mapping[Address, ProtocolType]) -> ArchiveSync:
        """Make the module's archive exactly ``meters`` (routing paused meanwhile).

        Only addresses are compared: the protocol bits of the AFN10 F2 node word are not
        verified against a real module, so a meter whose edition changed keeps its old entry.
        """
        wanted = dict(meters)
        async with self._lock:
            await self._command(Afn.ROUTE_CONTROL, 2)
            self._state.router = RouterState.PAUSED
            present = await self._list_archive()
            have = set(present)
            removed = tuple(a for a in present if a not in wanted)
            added = tuple(a for a in wanted if a not in have)
            kept = tuple(a for a in present if a in wanted)
            for batch in _batches(removed, self.settings.delete_batch):
                await self._change(Afn.ROUTE_SET, 2, batch, DenyCode.METER_NOT_FOUND, wanted)
            for batch in _batches(added, self.settings.add_batch):
                await self._change(Afn.ROUTE_SET, 1, batch, DenyCode.DUPLICATE_METER, wanted)
            self._state.protocols = wanted
            await self._command(Afn.ROUTE_CONTROL, 3)
            self._state.router = RouterState.RUNNING if self._state.router_led else RouterState.IDLE
        return ArchiveSync(added, removed, kept)

    async def _list_archive(self) -> list[Address]:
        count = (await self._query(Afn.ROUTE_QUERY, 1, Empty(), SlaveCount)).count
        present: list[Address] = []
        while len(present) < count:
            size = min(self.settings.page_size, count - len(present), 255)
            query = SlaveInfoQuery(len(present) + 1, size)
            page = await self._query(Afn.ROUTE_QUERY, 2, query, SlaveInfoList)
            if not page.nodes:
                break
            present.extend(n.address for n in page.nodes)
        return present

    async def _change(
        self,
        afn: Afn,
        fn: int,
        batch: Sequence[Address],
        harmless: DenyCode,
        protocols: Mapping[Address, ProtocolType],
    ) -> None:
        """Add (F1) or delete (F2) a batch; on a ``harmless`` deny (a meter already there, or
        already gone) the batch is redone one by one so the others still happen."""

        def unit(addresses: Sequence[Address]) -> DataUnit:
            if fn == 1:
                return AddSlaves(tuple(SlaveNode(a, protocols[a]) for a in addresses))
            return DeleteSlaves(tuple(addresses))

        try:
            await self._command(afn, fn, unit(batch))
        except ModuleError as exc:
            if exc.code != harmless:
                raise
            for address in batch:
                with contextlib.suppress(ModuleError):
                    await self._command(afn, fn, unit((address,)))

    # -- concentrator-led point reads --------------------------------------------------------
    async def request(self, message: Message) -> Exchange:
        """Read through the router (AFN13 F1); the meter's decoded reply, like the channel's."""
        frame645 = message.to_frame()
        address = frame645.address
        if self.resting_until(address) is not None:
            self._counters.backed_off += 1
            raise MeterRestingError(
                f"{self.name}: meter {address} is resting after repeated failures"
            )
        protocol = self._state.protocols.get(address) or _protocol_of(frame645)
        unit = MonitorRequest(
            protocol, DelayFlag.NOT_RELATED, (), encode_645(frame645, self.settings.preamble)
        )
        async with self._lock:
            paused = await self._pause_routing()
            try:
                return await self._point_read(message, address, unit)
            finally:
                if paused and self._state.router is RouterState.PAUSED:
                    await self._command(Afn.ROUTE_CONTROL, 3)
                    self._state.router = RouterState.RUNNING

    async def _point_read(
        self, message: Message, address: Address, unit: MonitorRequest
    ) -> Exchange:
        c = self._counters
        loop = asyncio.get_running_loop()
        failure: DriverError = MeterTimeoutError(f"{self.name}: no reply from {address}")
        attempts = self.settings.retries + 1
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                c.retries += 1
            c.requests += 1
            started = loop.time()
            try:
                reply, sent = await self._session.exchange(
                    Afn.ROUTE_FORWARD,
                    1,
                    unit,
                    slave=address,
                    wait_s=self.settings.point_read_timeout_s,
                )
            except ModuleTimeoutError:
                c.timeouts += 1
                failure = MeterTimeoutError(f"{self.name}: no answer for {address}")
                continue
            except LinkError:
                self._failed(address)
                raise
            if isinstance(reply.unit, Deny):
                code = reply.unit.code
                if code == DenyCode.SLAVE_NOT_IN_NETWORK:
                    c.not_in_network += 1
                    raise NotInNetworkError(
                        f"{self.name}: meter {address} is not in the module's network", code
                    )
                if code in _NO_ANSWER:
                    c.timeouts += 1
                    failure = MeterTimeoutError(
                        f"{self.name}: {address} did not answer ({code.name})"
                    )
                    continue
                failure = ModuleError(f"{self.name}: reading {address} denied: {code.name}", code)
                if code in _BUSY:
                    continue
                raise failure
            try:
                answer = _decode_reply(message, reply.unit)
            except MeterTimeoutError as exc:
                c.timeouts += 1
                failure = exc
                continue
            except ReplyCorruptedError as exc:
                c.corrupted += 1
                failure = exc
                continue
            c.replies += 1
            self._succeeded(address)
            elapsed = loop.time() - started
            return Exchange(message, answer, sent, len(reply.raw), elapsed, attempt)
        self._failed(address)
        raise _after(failure, attempts)

    async def broadcast(self, message: BroadcastTime) -> None:
        """Broadcast through the router (AFN05 F3): every meter in the archive hears it."""
        raw = encode_645(message.to_frame(), self.settings.preamble)
        async with self._lock:
            await self._command(Afn.CONTROL, 3, StartBroadcast(ProtocolType.DLT645_2007, raw))
        self._counters.broadcasts += 1

    async def _pause_routing(self) -> bool:
        if self._state.router is not RouterState.RUNNING:
            return False
        await self._command(Afn.ROUTE_CONTROL, 2)
        self._state.router = RouterState.PAUSED
        return True

    # -- router-led rounds ------------------------------------------------------------------
    async def run_round(
        self,
        source: RoundSource,
        *,
        idle_timeout_s: float,
        stop: asyncio.Event | None = None,
    ) -> RoundReport:
        """Restart routing (AFN12 F1) and answer the router until it reports the reading
        finished (AFN06 F3), nothing arrives for ``idle_timeout_s``, or ``stop`` is set: then
        routing is paused (AFN12 F2) and the round ends with what was reported so far."""
        if self._round is not None:
            raise RouterError(f"{self.name}: a router-led round is already running")
        loop = asyncio.get_running_loop()
        run = RoundRun(source, preamble=self.settings.preamble, started=loop.time())
        self._round = run
        self._counters.rounds += 1

        def armed(reply: Frame) -> None:
            # Armed in the receive loop, so an AFN14 F1 right behind the confirm already
            # belongs to this round, and one sent before the restart does not.
            if reply.afn is Afn.CONFIRM and reply.fn == 1:
                run.arm()

        try:
            async with self._lock:
                await self._command(Afn.ROUTE_CONTROL, 1, on_reply=armed)
                self._state.router = RouterState.RUNNING
            run.touch(loop.time())
            while not run.done.is_set():
                if stop is not None and stop.is_set():
                    async with self._lock:
                        with contextlib.suppress(DriverError):
                            await self._pause_routing()
                    break
                last = max(run.last_activity, self._session.last_received)
                remaining = last + idle_timeout_s - loop.time()
                if remaining <= 0:
                    break
                waits = [run.done.wait()] if stop is None else [run.done.wait(), stop.wait()]
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(_first_of(waits), remaining)
        finally:
            self._round = None
            run.close("timeout: the round ended without a report of the reply")
        if run.error is not None:
            raise run.error
        return run.report(loop.time())

    # -- what the module initiates ----------------------------------------------------------
    async def _module_request(self, frame: Frame) -> None:
        """Answer what the module initiated; nothing it sends may go unanswered."""
        unit = frame.unit
        c = self._counters
        run = self._round if self._round is not None and self._round.armed else None
        match unit:
            case RunModeInfo():
                self._state.run_mode = unit  # the power-up report is not answered
                self._run_mode_seen.set()
            case ReadDataReport() | RouteWorkChange() if frame.afn is Afn.REPORT:
                await self._session.answer(frame, Confirm(), afn=Afn.CONFIRM, fn=1)
                c.reports_confirmed += 1
                if isinstance(unit, ReadDataReport):
                    if run is not None:
                        run.on_report(frame.seq, unit)
                elif unit.code == WorkChange.READING_FINISHED:
                    self._state.router = RouterState.IDLE
                    if run is not None:
                        run.on_finished()
            case _ if frame.afn is Afn.REPORT:
                await self._session.answer(frame, Confirm(), afn=Afn.CONFIRM, fn=1)
                c.reports_confirmed += 1
            case RouterAsks():
                if self._state.router is RouterState.IDLE:
                    self._state.router = RouterState.RUNNING  # the router reads on its own
                c.read_requests += 1
                await self._session.answer(
                    frame, run.answer(unit) if run else ReadAnswer(ReadFlag.DONE)
                )
            case Empty() if frame.afn is Afn.ROUTE_READ and frame.fn == 2:
                c.clock_requests += 1
                local = self.clock.now().astimezone(self.settings.zone)
                await self._session.answer(
                    frame, ClockAnswer(local.replace(tzinfo=None, microsecond=0))
                )
            case DelayCorrectionRequest():
                # Our frames carry no time that a transit delay would make stale.
                await self._session.answer(frame, DelayCorrectedFrame(unit.frame))
            case _:
                c.unhandled += 1

    async def _command(
        self,
        afn: Afn,
        fn: int,
        unit: DataUnit | None = None,
        *,
        on_reply: Callable[[Frame], None] | None = None,
    ) -> DataUnit:
        return await self._session.command(
            afn, fn, unit, wait_s=self.settings.command_timeout_s, on_reply=on_reply
        )

    async def _query(self, afn: Afn, fn: int, unit: DataUnit | None, expect: type[U]) -> U:
        return await self._session.query(
            afn, fn, unit, expect, wait_s=self.settings.command_timeout_s
        )


def _decode_reply(request: Message, unit: DataUnit) -> Message:
    """The meter's reply inside an AFN13 F1 answer."""
    if not isinstance(unit, MonitorReply):
        raise ReplyCorruptedError(f"AFN13 F1 answered with {type(unit).__name__}")
    if not unit.frame:
        raise MeterTimeoutError("the module relayed an empty reply (the meter was silent)")
    if unit.frame645 is None:
        raise ReplyCorruptedError(f"garbled reply: {unit.frame645_error or 'not DL/T 645'}")
    try:
        reply = decode_message(unit.frame645)
    except RemoteProtocolError as exc:
        raise ReplyCorruptedError(f"reply content does not decode: {exc}") from None
    if not replies_to(request, reply):
        raise ReplyCorruptedError(f"the reply from {reply.address} does not answer the request")
    return reply


def _protocol_of(frame: Frame645) -> ProtocolType:
    edition = edition_of(frame.control, len(frame.data))
    return ProtocolType.DLT645_1997 if edition is Edition.V1997 else ProtocolType.DLT645_2007


def _after(failure: DriverError, attempts: int) -> DriverError:
    """``failure`` of the last attempt, saying how many were made."""
    message = f"{failure} after {attempts} attempts"
    if isinstance(failure, ModuleError):
        return type(failure)(message, failure.code)
    return type(failure)(message)


async def _first_of(waits: Sequence[Coroutine[object, object, object]]) -> None:
    """Return when the first of ``waits`` finishes; the others are cancelled."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def _batches(items: Sequence[Address], size: int) -> Iterable[Sequence[Address]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


__all__ = [
    "ArchiveSync",
    "ModuleError",
    "ModuleInfo",
    "ModuleTimeoutError",
    "NotInNetworkError",
    "PlcDriver",
    "PlcSettings",
    "PlcStatistics",
    "RoundReport",
    "RoundSource",
    "RouterError",
    "RouterState",
]
