"""The virtual PLC/HPLC router module: a district's power-line meters behind a Q/GDW 1376.2 UART.

:class:`VirtualPlcModule` owns a pty pair. The concentrator opens :attr:`VirtualPlcModule.path`
(raw, parity none: a pty rejects even parity) as it would the module's UART; the module serves the
master end from the event loop and speaks 1376.2 at the configured baud. Wire timing is real
(``time.monotonic``, never the simulated clock): a frame is handled once its last byte would have
arrived (``bytes x 11 / baud`` after the previous one), a reply starts a turnaround later and is
paced out at the same rate, and reaching a meter over the power line costs the carrier latency
(plus the meter's own extra latency and any slow-reply fault).

What it does, as the concentrator sees it:

* power-up: an unsolicited AFN03 F10 run-mode report after ``boot_delay``;
* AFN03 F1/F10, AFN05 F1 (main-node address), F2 (event reporting), F3 (broadcast to the meters
  in the archive), AFN01 F1/F2/F3 (F2 clears the archive), AFN10 F1/F2 (count, paged list),
  AFN11 F1/F2 (add: a duplicate is denied 6; delete: an unknown meter is denied 7);
* AFN13 F1 point read: denied 12 for a meter not in the archive (the field's archive mismatch),
  11 when the meter stays silent, otherwise the meter's reply bytes as received;
* AFN12 F1 restart / F3 resume start the router-led round when the reading mode allows it (F3
  continues a paused round), F2 pauses it. The round walks the archive: AFN14 F1 per meter until
  the concentrator answers 01 (done) or 00 (skip); each 02 frame is carried to the meter and its
  reply reported with AFN06 F2, re-sent up to ``report_retries`` times until confirmed by AFN00
  F1 with the same sequence number (then given up: on to the next meter). A silent meter gets
  no report and an AFN14 F1 left unanswered for ``answer_timeout`` is skipped; either way the
  router moves on. The round ends with AFN06 F3 "reading finished".

Options of the scenario's ``[plc]`` table (:meth:`ModuleSettings.from_config`): ``comm_mode``
(1 narrow-band, 3 HPLC), ``reading_mode`` (``"concentrator"``, ``"router"``, ``"both"``),
``carrier_latency_ms`` (default ``relay_delay_ms``), ``meter_latency_ms`` (address -> extra ms),
``no_answer_ms``, ``monitor_timeout_s``, ``answer_timeout_ms``, ``report_retries``,
``boot_delay_ms``, ``max_slaves``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import os
import time
import tty
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Any, Final, Self

from protocols.bcd import Address
from protocols.dlt645.frame import Frame as Frame645
from protocols.q13762 import (
    AddressField,
    AddSlaves,
    Afn,
    CommMode,
    Confirm,
    Control,
    DataUnit,
    DeleteSlaves,
    Deny,
    DenyCode,
    Direction,
    EventReporting,
    Frame,
    MainNodeAddress,
    ModuleMode,
    MonitorReply,
    MonitorRequest,
    Prm,
    ProtocolType,
    Q13762Framer,
    Rate,
    ReadAnswer,
    ReadDataReport,
    ReadFlag,
    ReadingMode,
    ReadRequest,
    RouteWorkChange,
    RunModeInfo,
    SlaveCount,
    SlaveInfoList,
    SlaveInfoQuery,
    SlaveNodeInfo,
    StartBroadcast,
    UplinkInfo,
    VersionInfo,
    WorkChange,
    encode_frame,
)

from .bus import idle_gap, paced_write, wire_seconds
from .district import District, PlcConfig
from .scenario import PLC_BUS

_READING_MODES: Final = {
    "concentrator": ReadingMode.CONCENTRATOR_LED,
    "router": ReadingMode.ROUTER_LED,
    "both": ReadingMode.BOTH,
}
_MODULE_MODE: Final = {
    CommMode.NARROWBAND_PLC_CENTRAL: ModuleMode.NARROWBAND,
    CommMode.NARROWBAND_PLC_DISTRIBUTED: ModuleMode.NARROWBAND,
    CommMode.HPLC: ModuleMode.BROADBAND,
    CommMode.MICRO_POWER_WIRELESS: ModuleMode.MICRO_POWER,
}
DEFAULT_MAIN_NODE: Final = Address("000000000000")
DEFAULT_VERSION: Final = VersionInfo("AM", "GW", dt.date(2024, 5, 1), 101)
_OPTION_KEYS: Final = frozenset(
    {
        "comm_mode", "reading_mode", "carrier_latency_ms", "meter_latency_ms", "no_answer_ms",
        "monitor_timeout_s", "answer_timeout_ms", "report_retries", "boot_delay_ms", "max_slaves",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ModuleSettings:
    """How the virtual module behaves; times in seconds."""

    baud: int = 9600
    main_node: Address = DEFAULT_MAIN_NODE
    comm_mode: CommMode = CommMode.NARROWBAND_PLC_CENTRAL
    reading_mode: ReadingMode = ReadingMode.BOTH
    turnaround_s: float = 0.05
    carrier_latency_s: float = 0.4
    meter_latency_s: Mapping[Address, float] = field(default_factory=dict)
    no_answer_s: float = 1.0  # how long the module listens for a silent meter
    monitor_timeout_s: int = 90  # reported in AFN03 F10
    answer_timeout_s: float = 2.0  # router-led: wait for the concentrator's AFN14 / AFN00
    report_retries: int = 3
    boot_delay_s: float = 0.0
    max_slaves: int = 2040
    page_limit: int = 32  # most nodes in one AFN10 F2 page
    reads_per_meter: int = 64  # AFN14 F1 asked of one meter in a round, at most
    version: VersionInfo = DEFAULT_VERSION

    @classmethod
    def from_config(cls, config: PlcConfig) -> ModuleSettings:
        """The settings a scenario's ``[plc]`` table describes; unknown options are an error."""
        o = dict(config.options)
        unknown = sorted(set(o) - _OPTION_KEYS)
        if unknown:
            raise ValueError(f"plc.options: unknown option(s) {', '.join(unknown)}")
        mode = str(o.get("reading_mode", "both"))
        if mode not in _READING_MODES:
            raise ValueError(
                f"plc.options.reading_mode: {mode!r} is not one of {list(_READING_MODES)}"
            )
        return cls(
            baud=config.baud,
            main_node=Address.parse(config.module_address),
            comm_mode=CommMode(int(o.get("comm_mode", CommMode.NARROWBAND_PLC_CENTRAL))),
            reading_mode=_READING_MODES[mode],
            turnaround_s=config.turnaround_ms / 1000,
            carrier_latency_s=float(o.get("carrier_latency_ms", config.relay_delay_ms)) / 1000,
            meter_latency_s={
                Address.parse(str(a)): float(ms) / 1000
                for a, ms in dict(o.get("meter_latency_ms", {})).items()
            },
            no_answer_s=float(o.get("no_answer_ms", 1000)) / 1000,
            monitor_timeout_s=int(o.get("monitor_timeout_s", 90)),
            answer_timeout_s=float(o.get("answer_timeout_ms", 2000)) / 1000,
            report_retries=int(o.get("report_retries", 3)),
            boot_delay_s=float(o.get("boot_delay_ms", 0)) / 1000,
            max_slaves=int(o.get("max_slaves", 2040)),
        )

    @property
    def router_led(self) -> bool:
        return self.reading_mode in (ReadingMode.ROUTER_LED, ReadingMode.BOTH)


@dataclass(frozen=True, slots=True)
class ModuleStatistics:
    frames_in: int
    frames_out: int
    bytes_in: int
    bytes_out: int
    point_reads: int
    point_reads_silent: int
    not_in_network: int
    denies: int
    broadcasts: int
    pauses: int  # AFN12 F2
    resumes: int  # AFN12 F3
    rounds_started: int
    rounds_finished: int
    read_requests: int  # AFN14 F1 sent (first time)
    unanswered: int  # AFN14 F1 the concentrator did not answer in time
    router_reads: int  # frames carried to a meter in router-led rounds
    router_reads_silent: int
    reports: int  # AFN06 F2 sent (first time)
    reports_resent: int
    unconfirmed: int  # reports given up after every re-send
    stray_answers: int  # concentrator answers matching nothing outstanding
    framing: MappingProxyType[str, int]


_COUNTERS: Final = tuple(f.name for f in dataclasses.fields(ModuleStatistics))[:-1]


class VirtualPlcModule:
    """A PLC/HPLC router module on a pty; see the module docstring."""

    def __init__(
        self,
        district: District,
        settings: ModuleSettings | None = None,
        *,
        bus: str = PLC_BUS,
        archive: Iterable[tuple[Address, ProtocolType]] = (),
    ) -> None:
        if settings is None:
            settings = (
                ModuleSettings.from_config(district.plc) if district.plc else ModuleSettings()
            )
        self.district = district
        self.settings = settings
        self.bus = bus
        self.main_node = settings.main_node
        self.event_reporting = False
        self._archive: dict[Address, ProtocolType] = dict(archive)
        self._counts: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        self._framer = Q13762Framer()
        self._master = self._slave = -1
        self.path = ""
        self._idle: asyncio.TimerHandle | None = None
        self._rx_free = 0.0  # when the UART finishes receiving what it has been given
        self._tx_lock = asyncio.Lock()
        self._carrier_lock = asyncio.Lock()
        self._commands: asyncio.Queue[tuple[Frame, float]] = asyncio.Queue()
        self._answers: dict[int, asyncio.Future[tuple[Frame, float]]] = {}
        self._seq = 0
        self._running = asyncio.Event()  # set while the router may work (not paused)
        self._running.set()
        self._round: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._transmits: set[asyncio.Future[None]] = set()

    # -- state ------------------------------------------------------------------------------
    @property
    def archive(self) -> Mapping[Address, ProtocolType]:
        """The slave archive as the module holds it now (a copy, in archive order)."""
        return MappingProxyType(dict(self._archive))

    @property
    def round_running(self) -> bool:
        """A router-led round is in progress (possibly paused)."""
        return self._round is not None and not self._round.done()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def statistics(self) -> ModuleStatistics:
        framing = self._framer.statistics()
        return ModuleStatistics(**self._counts, framing=framing.rejected)

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._master, self._slave = os.openpty()
        # Raw on the slave side, which stays open here so the master never sees EIO while the
        # concentrator reopens the port.
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.path = os.ttyname(self._slave)
        loop.add_reader(self._master, self._readable)
        self._tasks.append(asyncio.create_task(self._serve(), name="plc-module-commands"))
        self._tasks.append(asyncio.create_task(self._power_up(), name="plc-module-power-up"))

    async def close(self) -> None:
        if self._master >= 0:
            asyncio.get_running_loop().remove_reader(self._master)
        if self._idle is not None:
            self._idle.cancel()
        await self._stop_round()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task  # a crash inside the module surfaces here, not silently
        self._tasks.clear()
        for sending in list(self._transmits):
            sending.cancel()  # closing: a frame cut short is what a powered-off module leaves
            with contextlib.suppress(asyncio.CancelledError):
                await sending
        for fd in (self._master, self._slave):
            if fd >= 0:
                os.close(fd)
        self._master = self._slave = -1

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _power_up(self) -> None:
        await asyncio.sleep(self.settings.boot_delay_s)
        await self._send(self._initiated(Afn.QUERY, 10, self._run_mode()), time.monotonic())

    # -- the UART ---------------------------------------------------------------------------
    def _readable(self) -> None:
        try:
            data = os.read(self._master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return  # EIO: nobody has the slave open
        self._framer.feed(data)
        self._take_frames()
        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(
            idle_gap(self.settings.baud), self._flush
        )

    def _flush(self) -> None:
        self._idle = None
        self._framer.feed_eof()
        self._take_frames()

    def _take_frames(self) -> None:
        for frame in self._framer.frames():
            now = time.monotonic()
            # The concentrator's bytes reach the pty at once; on a real UART the last one
            # arrives a wire time later, after whatever was still being received.
            ready = max(now, self._rx_free) + wire_seconds(len(frame.raw), self.settings.baud)
            self._rx_free = ready
            self._counts["frames_in"] += 1
            self._counts["bytes_in"] += len(frame.raw)
            if frame.control.direction is Direction.UPLINK:
                continue  # not for us
            if frame.control.prm is Prm.RESPONDER or frame.afn in (Afn.CONFIRM, Afn.ROUTE_READ):
                waiter = self._answers.get(frame.seq)
                if waiter is None or waiter.done():
                    self._counts["stray_answers"] += 1
                else:
                    waiter.set_result((frame, ready))
            else:
                self._commands.put_nowait((frame, ready))

    async def _send(self, frame: Frame, not_before: float) -> None:
        # Shielded: a round cancelled mid-frame must not leave half a frame on the wire.
        task = asyncio.ensure_future(self._transmit(encode_frame(frame), not_before))
        self._transmits.add(task)
        task.add_done_callback(self._transmits.discard)
        await asyncio.shield(task)

    async def _transmit(self, raw: bytes, not_before: float) -> None:
        async with self._tx_lock:
            start = max(not_before, time.monotonic())
            await paced_write(self._write, raw, self.settings.baud, start)
            self._counts["frames_out"] += 1
            self._counts["bytes_out"] += len(raw)

    async def _write(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            try:
                n = os.write(self._master, view)
            except BlockingIOError:
                await asyncio.sleep(
                    0.002
                )  # the pty buffer is full: the concentrator is not reading
                continue
            view = view[n:]

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFF
        return self._seq

    def _initiated(self, afn: Afn, fn: int, unit: DataUnit) -> Frame:
        control = Control(Direction.UPLINK, Prm.INITIATOR, self.settings.comm_mode)
        return Frame(control, UplinkInfo(seq=self._next_seq()), afn, fn, unit)

    async def _reply(
        self,
        request: Frame,
        ready: float,
        unit: DataUnit,
        *,
        afn: Afn | None = None,
        fn: int | None = None,
        slave: Address | None = None,
    ) -> None:
        """Answer ``request`` (same AFN and Fn unless given) a turnaround after ``ready``."""
        control = Control(Direction.UPLINK, Prm.RESPONDER, self.settings.comm_mode)
        info = UplinkInfo(seq=request.seq, module_flag=slave is not None, phase=self._phase(slave))
        address = None if slave is None else AddressField(slave, self.main_node)
        frame = Frame(
            control,
            info,
            request.afn if afn is None else afn,
            request.fn if fn is None else fn,
            unit,
            address,
        )
        await self._send(frame, ready + self.settings.turnaround_s)

    async def _confirm(self, request: Frame, ready: float) -> None:
        await self._reply(request, ready, Confirm(status=1, wait_seconds=0), afn=Afn.CONFIRM, fn=1)

    async def _deny(self, request: Frame, ready: float, code: DenyCode) -> None:
        self._counts["denies"] += 1
        await self._reply(request, ready, Deny(code), afn=Afn.CONFIRM, fn=2)

    def _phase(self, slave: Address | None) -> int:
        return 0 if slave is None else int(slave.digits[-1]) % 3 + 1

    # -- commands from the concentrator -----------------------------------------------------
    async def _serve(self) -> None:
        while True:
            frame, ready = await self._commands.get()
            await self._handle(frame, ready)

    async def _handle(self, frame: Frame, ready: float) -> None:
        unit = frame.unit
        match (frame.afn, frame.fn):
            case (Afn.QUERY, 1):
                await self._reply(frame, ready, self.settings.version)
            case (Afn.QUERY, 10):
                await self._reply(frame, ready, self._run_mode())
            case (Afn.CONTROL, 1) if isinstance(unit, MainNodeAddress):
                self.main_node = unit.address
                await self._confirm(frame, ready)
            case (Afn.CONTROL, 2) if isinstance(unit, EventReporting):
                self.event_reporting = unit.allow
                await self._confirm(frame, ready)
            case (Afn.CONTROL, 3) if isinstance(unit, StartBroadcast):
                await self._broadcast(frame, unit, ready)
            case (Afn.INITIALIZE, 1 | 2 | 3):
                await self._stop_round()
                if frame.fn == 2:
                    self._archive.clear()
                await self._confirm(frame, ready)
                if frame.fn == 1:  # a hardware reset reboots the module: it reports again
                    self._tasks.append(asyncio.create_task(self._power_up()))
            case (Afn.ROUTE_QUERY, 1):
                count = SlaveCount(len(self._archive), self.settings.max_slaves)
                await self._reply(frame, ready, count)
            case (Afn.ROUTE_QUERY, 2) if isinstance(unit, SlaveInfoQuery):
                await self._reply(frame, ready, self._page(unit))
            case (Afn.ROUTE_SET, 1) if isinstance(unit, AddSlaves):
                await self._add(frame, unit, ready)
            case (Afn.ROUTE_SET, 2) if isinstance(unit, DeleteSlaves):
                await self._delete(frame, unit, ready)
            case (Afn.ROUTE_CONTROL, 1 | 2 | 3):
                await self._route_control(frame.fn)
                await self._confirm(frame, ready)
            case (Afn.ROUTE_FORWARD, 1) if isinstance(unit, MonitorRequest):
                await self._point_read(frame, unit, ready)
            case _:
                await self._deny(frame, ready, DenyCode.MAIN_NODE_UNSUPPORTED)

    def _run_mode(self) -> RunModeInfo:
        s = self.settings
        rate = Rate(s.baud) if s.baud <= 0x7FFF else Rate(s.baud // 1000, kbps=True)
        return RunModeInfo(
            module_mode=_MODULE_MODE.get(s.comm_mode, ModuleMode.NARROWBAND),
            route_management=True,
            needs_slave_archive=True,
            reading_mode=s.reading_mode,
            delay_broadcast_flags=0,
            channel_count=1,
            outage_info=0,
            reserved=0,
            monitor_timeout=s.monitor_timeout_s,
            broadcast_timeout=120,
            max_frame_length=512,
            max_file_packet=256,
            upgrade_wait=10,
            main_node=self.main_node,
            max_slaves=s.max_slaves,
            slave_count=len(self._archive),
            protocol_date=dt.date(2013, 6, 1),
            filing_date=None,
            version=s.version,
            rates=(rate,),
        )

    def _page(self, query: SlaveInfoQuery) -> SlaveInfoList:
        # Slave indexes count from 1; a start of 0 is read as 1, as field modules do.
        start = max(query.start_index, 1) - 1
        count = min(query.count, self.settings.page_limit)
        nodes = list(self._archive.items())[start : start + count]
        # Node info word: D3..D0 relay level, D7..D4 signal quality, D10..D8 phase,
        # D13..D11 protocol.
        return SlaveInfoList(
            len(self._archive),
            tuple(
                SlaveNodeInfo(a, (p & 7) << 11 | self._phase(a) << 8 | 0xF << 4) for a, p in nodes
            ),
        )

    async def _add(self, frame: Frame, unit: AddSlaves, ready: float) -> None:
        new = [n.address for n in unit.nodes]
        if any(a in self._archive for a in new) or len(set(new)) < len(new):
            await self._deny(frame, ready, DenyCode.DUPLICATE_METER)
        elif len(self._archive) + len(new) > self.settings.max_slaves:
            await self._deny(frame, ready, DenyCode.INVALID_DATA_UNIT)
        else:
            self._archive.update((n.address, n.protocol) for n in unit.nodes)
            await self._confirm(frame, ready)

    async def _delete(self, frame: Frame, unit: DeleteSlaves, ready: float) -> None:
        if any(a not in self._archive for a in unit.addresses):
            await self._deny(frame, ready, DenyCode.METER_NOT_FOUND)
            return
        for a in unit.addresses:
            del self._archive[a]
        await self._confirm(frame, ready)

    async def _broadcast(self, frame: Frame, unit: StartBroadcast, ready: float) -> None:
        if unit.frame645 is None:
            await self._deny(frame, ready, DenyCode.FORMAT_ERROR)
            return
        self._counts["broadcasts"] += 1
        await self._confirm(frame, ready)
        async with self._carrier_lock:
            await asyncio.sleep(self.settings.carrier_latency_s)
            for address in list(self._archive):
                meter = self.district.meters.get(address)
                if meter is not None and self.district.bus_of(address) == self.bus:
                    meter.handle(unit.frame645)  # nobody answers a broadcast

    async def _point_read(self, frame: Frame, unit: MonitorRequest, ready: float) -> None:
        self._counts["point_reads"] += 1
        slave = frame.address.destination if frame.address is not None else None
        if slave is None or unit.frame645 is None:
            await self._deny(frame, ready, DenyCode.FORMAT_ERROR)
            return
        if slave not in self._archive:
            self._counts["not_in_network"] += 1
            await self._deny(frame, ready, DenyCode.SLAVE_NOT_IN_NETWORK)
            return
        reply, transit = await self._carry(slave, unit.frame645, ready)
        if reply is None:
            self._counts["point_reads_silent"] += 1
            await self._deny(frame, time.monotonic(), DenyCode.SLAVE_NO_ANSWER)
            return
        answer = MonitorReply(round(transit), unit.protocol, reply)
        await self._reply(frame, time.monotonic(), answer, slave=slave)

    async def _carry(
        self, slave: Address, request: Frame645, start: float
    ) -> tuple[bytes | None, float]:
        """Carry one 645 frame to ``slave`` over the power line: its reply bytes (``None`` when
        it stays silent) and the transit time in seconds."""
        async with self._carrier_lock:
            s = self.settings
            latency = s.carrier_latency_s + s.meter_latency_s.get(slave, 0.0)
            await _sleep_until(start + latency)
            on_bus = slave in self.district.meters and self.district.bus_of(slave) == self.bus
            reply = self.district.respond(self.bus, request) if on_bus else None
            if reply is None or reply.delay_s > s.no_answer_s:
                await asyncio.sleep(s.no_answer_s)
                return None, time.monotonic() - start
            await asyncio.sleep(reply.delay_s)
            return reply.data, time.monotonic() - start

    # -- the router-led round ---------------------------------------------------------------
    async def _route_control(self, fn: int) -> None:
        if fn == 2:
            self._counts["pauses"] += 1
            self._running.clear()
            return
        if fn == 3:
            self._counts["resumes"] += 1
        self._running.set()
        if not self.settings.router_led:
            return
        if fn == 1:
            await self._stop_round()
        if fn == 1 or not self.round_running:
            self._round = asyncio.create_task(self._walk(), name="plc-module-round")

    async def _stop_round(self) -> None:
        task, self._round = self._round, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # Each step hands on the instant its answer finished arriving, so the next frame is paced
    # from it instead of sleeping twice (every sleep costs up to a millisecond of loop slack).
    async def _walk(self) -> None:
        self._counts["rounds_started"] += 1
        at = time.monotonic()
        for index, slave in enumerate(list(self._archive), start=1):
            if slave in self._archive:  # not deleted meanwhile
                at = await self._read_meter(slave, index, at)
        await self._running.wait()
        await self._report(Afn.REPORT, 3, RouteWorkChange(WorkChange.READING_FINISHED), at)
        self._counts["rounds_finished"] += 1

    async def _read_meter(self, slave: Address, index: int, at: float) -> float:
        """Ask what to read from ``slave`` until told "done"; when the last answer arrived."""
        for _ in range(self.settings.reads_per_meter):
            await self._running.wait()
            self._counts["read_requests"] += 1
            ask = self._initiated(Afn.ROUTE_READ, 1, ReadRequest(self._phase(slave), slave, index))
            got = await self._ask(ask, at)
            if got is None:
                self._counts["unanswered"] += 1
                return time.monotonic()
            answer, at = got
            unit = answer.unit
            if not isinstance(unit, ReadAnswer) or unit.read_flag is not ReadFlag.READ:
                return at  # 01 done, 00 skip, or a deny: on to the next meter
            if unit.frame645 is None:
                return at
            if self.paused:
                await self._running.wait()
                at = time.monotonic()
            self._counts["router_reads"] += 1
            reply, transit = await self._carry(slave, unit.frame645, at)
            if reply is None:
                self._counts["router_reads_silent"] += 1
                return time.monotonic()
            protocol = self._archive.get(slave, ProtocolType.DLT645_2007)
            report = ReadDataReport(index, protocol, round(transit), reply)
            confirmed = await self._report(Afn.REPORT, 2, report, time.monotonic())
            if confirmed is None:
                return time.monotonic()
            at = confirmed
        return at

    async def _ask(self, frame: Frame, not_before: float) -> tuple[Frame, float] | None:
        """Send a module-initiated frame; the concentrator's answer with its seq and when its
        last byte arrived, or ``None`` when no answer came in time."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[tuple[Frame, float]] = loop.create_future()
        self._answers[frame.seq] = waiter
        try:
            await self._send(frame, not_before)
            try:
                return await asyncio.wait_for(waiter, self.settings.answer_timeout_s)
            except TimeoutError:
                return None
        finally:
            if self._answers.get(frame.seq) is waiter:
                del self._answers[frame.seq]

    async def _report(self, afn: Afn, fn: int, unit: DataUnit, at: float) -> float | None:
        """An AFN06 report, re-sent (same seq) until the concentrator confirms it; when the
        confirmation arrived, or ``None`` when it never did (or was a deny)."""
        frame = self._initiated(afn, fn, unit)
        if fn == 2:
            self._counts["reports"] += 1
        for attempt in range(self.settings.report_retries + 1):
            if attempt:
                self._counts["reports_resent"] += 1
            got = await self._ask(frame, at if not attempt else time.monotonic())
            if got is not None:
                answer, ready = got
                return ready if answer.afn is Afn.CONFIRM and answer.fn == 1 else None
        self._counts["unconfirmed"] += 1
        return None


async def _sleep_until(instant: float) -> None:
    delay = instant - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


def module_settings(config: PlcConfig | None, **overrides: Any) -> ModuleSettings:
    """Settings from a scenario's ``[plc]`` table (defaults without one), with overrides —
    e.g. a baud above what the scenario schema allows, or a shorter latency for a benchmark."""
    base = ModuleSettings.from_config(config) if config is not None else ModuleSettings()
    return dataclasses.replace(base, **overrides)


__all__ = ["ModuleSettings", "ModuleStatistics", "VirtualPlcModule", "module_settings"]
