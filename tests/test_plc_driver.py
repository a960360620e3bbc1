"""The PLC driver against the virtual PLC module over a real pty (start, archive sync, point
reads, back-off, router-led rounds), and against a scripted module for what the module
initiates (clock requests, reports to confirm, re-sent reports)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import tty
from collections.abc import AsyncIterator
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from drivers.clock import ManualClock
from drivers.errors import MeterRestingError, MeterTimeoutError, ReplyCorruptedError
from drivers.link import Link, SerialSettings, serial_opener
from drivers.plc import (
    NotInNetworkError,
    PlcDriver,
    PlcSettings,
    RouterState,
)
from protocols.bcd import Address
from protocols.dlt645 import BroadcastTime, Message, ReadRequest, ReadResponse
from protocols.dlt645 import encode_frame as encode_645
from protocols.q13762 import (
    Afn,
    ClockAnswer,
    CommMode,
    Confirm,
    Control,
    DataUnit,
    DelayCorrectedFrame,
    DelayCorrectionRequest,
    DenyCode,
    Direction,
    Empty,
    Frame,
    MainNodeAddress,
    ModuleMode,
    Prm,
    ProtocolType,
    Q13762Framer,
    ReadAnswer,
    ReadDataReport,
    ReadFlag,
    ReadingMode,
    ReportedNode,
    RouteWorkChange,
    RunModeInfo,
    SlaveInfoReport,
    UplinkInfo,
    VersionInfo,
    WorkChange,
    encode_frame,
)
from protocols.q13762 import ReadRequest as RouterAsks
from simulator.district import District
from simulator.plc import VirtualPlcModule, module_settings
from simulator.scenario import build_district, parse_scenario

CST = dt.timezone(dt.timedelta(hours=8))
START = dt.datetime(2025, 6, 3, 0, 30, tzinfo=CST)
MAIN = Address("000000000001")
M = [Address(f"0000001000{i:02d}") for i in range(1, 7)]
SILENT = M[5]
GARBLED = Address("000000100007")  # in the district, answers with flipped bits
STALE = [Address("000000900001"), Address("000000900002")]
P07 = ProtocolType.DLT645_2007
BAUD = 115200
FREEZE_TIME, FROZEN_ENERGY = 0x05060001, 0x05060101


def make_district() -> tuple[District, ManualClock]:
    scenario = parse_scenario(
        {
            "simulation": {"start": START, "history_days": 2, "seed": 11},
            "defaults": {"bus": "plc", "initial_kwh": [100, 900]},
            "plc": {"module_address": "000000000000"},
            "meter_groups": [{"first_address": M[0].digits, "count": len(M)}],
            "meters": [{"address": GARBLED.digits}],
            "timeline": [
                {"kind": "silent", "meter": SILENT.digits, "start": "+0h"},
                {"kind": "garbled", "meter": GARBLED.digits, "start": "+0h", "flips": 4},
            ],
        }
    )
    clock = ManualClock(START)
    return build_district(scenario, clock), clock


def driver_for(path: str, clock: ManualClock, **overrides: Any) -> PlcDriver:
    settings = PlcSettings(
        main_node=MAIN,
        startup_wait_s=overrides.pop("startup_wait_s", 0.1),
        command_timeout_s=1.0,
        point_read_timeout_s=1.0,
        retries=1,
        backoff_after=2,
        backoff_initial_s=60.0,
        **overrides,
    )
    link = Link("plc", serial_opener(SerialSettings(path, BAUD, "N")), char_time=11 / BAUD)
    return PlcDriver("plc", link, settings, clock)


@contextlib.asynccontextmanager
async def rig(
    archive: list[Address], *, driver: dict[str, Any] | None = None, **module: Any
) -> AsyncIterator[tuple[PlcDriver, VirtualPlcModule, District, ManualClock]]:
    district, clock = make_district()
    fast = {"carrier_latency_s": 0.005, "turnaround_s": 0.001, "no_answer_s": 0.05}
    settings = module_settings(district.plc, baud=BAUD, **(fast | module))
    async with VirtualPlcModule(district, settings, archive=[(a, P07) for a in archive]) as mod:
        plc = driver_for(mod.path, clock, **(driver or {}))
        try:
            yield plc, mod, district, clock
        finally:
            await plc.close()


def configured(addresses: list[Address]) -> dict[Address, ProtocolType]:
    return dict.fromkeys(addresses, P07)


def values(reply: Message) -> tuple[Any, ...]:
    assert isinstance(reply, ReadResponse)
    item = reply.decode()
    assert item is not None
    return tuple(v.value for v in item.values)


# --- start and archive ------------------------------------------------------------------------


async def test_start_takes_the_power_up_report() -> None:
    async with rig([], boot_delay_s=0.5, driver={"startup_wait_s": 3.0}) as (plc, mod, _, _):
        info = await plc.start()
        assert info.reported_at_power_up
        assert info.monitor_timeout_s == plc.monitor_timeout_s == 90
        assert info.router_led
        assert info.version == mod.settings.version
        assert mod.main_node == MAIN  # set by AFN05 F1


async def test_start_queries_the_run_mode_when_nothing_is_reported() -> None:
    async with rig([], boot_delay_s=30.0) as (plc, mod, _, _):
        info = await plc.start()
        assert not info.reported_at_power_up
        assert info.run_mode.reading_mode is ReadingMode.BOTH
        assert mod.main_node == MAIN


async def test_archive_sync_adds_and_removes_the_right_meters() -> None:
    async with rig([STALE[0], M[0], STALE[1], M[1]], driver={"add_batch": 2}) as (plc, mod, _, _):
        await plc.start()
        sync = await plc.sync_archive(configured(M))
        assert set(sync.removed) == set(STALE)
        assert sync.kept == (M[0], M[1])
        assert sync.added == tuple(M[2:])
        assert set(mod.archive) == set(M)

        again = await plc.sync_archive(configured(M[:4]))
        assert (again.added, set(again.removed)) == ((), {M[4], M[5]})
        assert set(mod.archive) == set(M[:4])
        assert mod.statistics().denies == 0


# --- point reads ------------------------------------------------------------------------------


async def test_point_reads_equal_the_virtual_meters() -> None:
    async with rig([]) as (plc, _, district, _):
        await plc.start()
        await plc.sync_archive(configured(M))
        meter = district.meters[M[1]]
        record = meter.daily_record(1)
        assert record is not None

        energy = await plc.request(ReadRequest(M[1], 0x00010000))
        assert values(energy.reply) == (meter.registers().forward_active[0],)
        assert energy.attempts == 1
        assert energy.request_bytes > 0
        assert energy.reply_bytes > 0
        freeze = await plc.request(ReadRequest(M[1], FREEZE_TIME))
        assert values(freeze.reply) == (record.freeze_time,)
        frozen = await plc.request(ReadRequest(M[1], FROZEN_ENERGY))
        assert values(frozen.reply) == record.forward_active
        stats = plc.statistics()
        assert (stats.requests, stats.replies, stats.timeouts) == (3, 3, 0)


async def test_meter_missing_from_the_archive_is_not_in_network() -> None:
    async with rig([]) as (plc, _, _, _):
        await plc.start()
        await plc.sync_archive(configured(M[:3]))
        with pytest.raises(NotInNetworkError) as caught:
            await plc.request(ReadRequest(M[4], 0x00010000))
        assert caught.value.reason == "not-in-network"
        assert caught.value.code == DenyCode.SLAVE_NOT_IN_NETWORK
        assert plc.statistics().not_in_network == 1


async def test_silent_meter_times_out_then_rests() -> None:
    async with rig([]) as (plc, _, _, clock):
        await plc.start()
        await plc.sync_archive(configured(M))
        for _ in range(2):
            with pytest.raises(MeterTimeoutError, match="after 2 attempts"):
                await plc.request(ReadRequest(SILENT, 0x00010000))
        assert plc.resting_until(SILENT) == clock.now() + dt.timedelta(seconds=60)
        sent = plc.statistics().frames_out
        with pytest.raises(MeterRestingError):
            await plc.request(ReadRequest(SILENT, 0x00010000))
        stats = plc.statistics()
        assert stats.frames_out == sent  # resting costs the power line nothing
        assert (stats.timeouts, stats.retries, stats.backed_off) == (4, 2, 1)
        clock.advance(61)
        assert plc.resting_until(SILENT) is None
        assert plc.resting_until(M[0]) is None


async def test_garbled_reply_is_retried_then_reported_corrupted() -> None:
    async with rig([]) as (plc, _, _, _):
        await plc.start()
        await plc.sync_archive(configured([*M, GARBLED]))
        with pytest.raises(ReplyCorruptedError):
            await plc.request(ReadRequest(GARBLED, 0x00010000))
        stats = plc.statistics()
        assert (stats.corrupted, stats.retries, stats.replies) == (2, 1, 0)


async def test_sequence_numbers_wrap_and_keep_matching() -> None:
    # A concentrator-led module never routes, so every read is exactly one numbered command.
    lean: dict[str, Any] = {"reading_mode": ReadingMode.CONCENTRATOR_LED, "carrier_latency_s": 0}
    async with rig([], **lean) as (plc, mod, district, _):
        info = await plc.start()
        assert not info.router_led
        await plc.sync_archive(configured(M[:2]))
        expected = (district.meters[M[0]].registers().forward_active[0],)
        for _ in range(260):
            assert values((await plc.request(ReadRequest(M[0], 0x00010000))).reply) == expected
        stats = plc.statistics()
        assert (stats.requests, stats.replies, stats.unmatched, stats.timeouts) == (260, 260, 0, 0)
        module = mod.statistics()
        assert (module.point_reads, module.pauses, module.stray_answers) == (260, 1, 0)
        assert plc.router is RouterState.IDLE


async def test_broadcast_sets_the_meters_clocks() -> None:
    async with rig([]) as (plc, _, district, _):
        await plc.start()
        await plc.sync_archive(configured(M[:2]))
        ahead = START.replace(tzinfo=None) + dt.timedelta(minutes=3)
        await plc.broadcast(BroadcastTime(ahead))
        await asyncio.sleep(0.05)
        assert district.meters[M[0]].clock_error() == dt.timedelta(minutes=3)
        assert district.meters[M[2]].clock_error() == dt.timedelta(0)
        assert plc.statistics().broadcasts == 1


# --- router-led rounds ------------------------------------------------------------------------


class FrozenDaySource:
    """Reads the freeze time and the frozen energies of yesterday from every meter."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self.todo: dict[Address, list[int]] = {}
        self.replies: dict[Address, list[Message]] = {}
        self.failures: dict[Address, str] = {}

    def next_request(self, address: Address) -> Message | None:
        self.asked.set()
        queue = self.todo.setdefault(address, [FREEZE_TIME, FROZEN_ENERGY])
        return ReadRequest(address, queue.pop(0)) if queue else None

    def on_reply(self, address: Address, reply: Message) -> None:
        self.replies.setdefault(address, []).append(reply)

    def on_failure(self, address: Address, reason: str) -> None:
        self.failures[address] = reason


async def test_router_round_reads_every_meters_frozen_record() -> None:
    async with rig([]) as (plc, mod, district, _):
        await plc.start()
        await plc.sync_archive(configured(M))
        source = FrozenDaySource()
        report = await plc.run_round(source, idle_timeout_s=2.0)

        assert report.finished
        assert report.meters_asked == len(M)
        assert report.meters_done == len(M) - 1  # the silent one is never "done"
        assert (report.requests_answered, report.reports, report.failures) == (11, 10, 1)
        assert report.duration_s > 0
        assert set(source.failures) == {SILENT}
        assert source.failures[SILENT].startswith("timeout")
        for address in M[:5]:
            record = district.meters[address].daily_record(1)
            assert record is not None
            freeze, energy = source.replies[address]
            assert values(freeze) == (record.freeze_time,)
            assert values(energy) == record.forward_active
        stats = plc.statistics()
        assert stats.reports_confirmed == 11  # ten reads and "finished"
        assert plc.router is RouterState.IDLE
        assert mod.statistics().unconfirmed == 0


async def test_point_read_pauses_and_resumes_a_running_round() -> None:
    slow = {M[0]: 0.15, M[1]: 0.15}
    async with rig([], meter_latency_s=slow) as (plc, mod, district, _):
        await plc.start()
        await plc.sync_archive(configured(M[:3]))
        source = FrozenDaySource()
        round_task = asyncio.create_task(plc.run_round(source, idle_timeout_s=2.0))
        await source.asked.wait()
        assert plc.router is RouterState.RUNNING
        pauses = mod.statistics().pauses
        reading = await plc.request(ReadRequest(M[2], 0x00010000))
        assert values(reading.reply) == (district.meters[M[2]].registers().forward_active[0],)
        assert plc.router is RouterState.RUNNING
        assert not mod.paused
        report = await round_task
        stats = mod.statistics()
        assert stats.pauses == pauses + 1
        assert stats.resumes >= 2  # the one closing the archive sync, the one after the read
        assert report.finished
        assert (report.reports, report.failures) == (6, 0)


async def test_a_second_round_is_refused_while_one_runs() -> None:
    async with rig([], meter_latency_s={M[0]: 0.2}) as (plc, _, _, _):
        await plc.start()
        await plc.sync_archive(configured(M[:1]))
        first = asyncio.create_task(plc.run_round(FrozenDaySource(), idle_timeout_s=2.0))
        await asyncio.sleep(0.05)
        with pytest.raises(Exception, match="already running") as caught:
            await plc.run_round(FrozenDaySource(), idle_timeout_s=1.0)
        assert getattr(caught.value, "reason", "") == "router"
        assert (await first).finished


# --- a scripted module: what the module initiates ------------------------------------------------


class ScriptedModule:
    """The module's end of a bare pty: the test writes uplink frames and reads what the
    driver answers."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.framer = Q13762Framer()
        self.frames: asyncio.Queue[Frame] = asyncio.Queue()
        self.seq = 0x20
        asyncio.get_running_loop().add_reader(self.master, self._readable)

    def _readable(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self.framer.feed(os.read(self.master, 4096))
        for frame in self.framer.frames():
            self.frames.put_nowait(frame)

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.master)
        os.close(self.master)
        os.close(self.slave)

    def initiate(self, afn: Afn, fn: int, unit: DataUnit, seq: int | None = None) -> int:
        if seq is None:
            self.seq = (self.seq + 1) & 0xFF
            seq = self.seq
        control = Control(Direction.UPLINK, Prm.INITIATOR, CommMode.HPLC)
        os.write(self.master, encode_frame(Frame(control, UplinkInfo(seq=seq), afn, fn, unit)))
        return seq

    def reply(
        self, to: Frame, unit: DataUnit, afn: Afn | None = None, fn: int | None = None
    ) -> None:
        control = Control(Direction.UPLINK, Prm.RESPONDER, CommMode.HPLC)
        frame = Frame(
            control,
            UplinkInfo(seq=to.seq),
            to.afn if afn is None else afn,
            to.fn if fn is None else fn,
            unit,
        )
        os.write(self.master, encode_frame(frame))

    async def expect(self, within_s: float = 2.0) -> Frame:
        return await asyncio.wait_for(self.frames.get(), within_s)

    async def answer_of(self, seq: int) -> Frame:
        frame = await self.expect()
        assert frame.seq == seq
        assert frame.control.direction is Direction.DOWNLINK
        assert frame.control.prm is Prm.RESPONDER
        return frame


VERSION = VersionInfo("XX", "YY", dt.date(2023, 1, 2), 3)
RUN_MODE = RunModeInfo(
    ModuleMode.BROADBAND, True, True, ReadingMode.ROUTER_LED, 0, 1, 0, 0, 60, 120, 512, 256,
    10, Address("000000000000"), 1024, 0, None, None, VERSION,
)  # fmt: skip


async def scripted_start(module: ScriptedModule, plc: PlcDriver) -> None:
    """Power-up report, then answer AFN03 F1 and AFN05 F1 as the driver sends them."""
    await plc.link.open()  # opening a serial port flushes what arrived before
    module.initiate(Afn.QUERY, 10, RUN_MODE)
    starting = asyncio.create_task(plc.start())
    query = await module.expect()
    assert (query.afn, query.fn, query.control.byte) == (Afn.QUERY, 1, 0x43)  # HPLC adopted
    module.reply(query, VERSION)
    main = await module.expect()
    assert main.unit == MainNodeAddress(MAIN)
    assert main.seq == (query.seq + 1) & 0xFF
    module.reply(main, Confirm(), Afn.CONFIRM, 1)
    info = await starting
    assert info.reported_at_power_up
    assert info.comm_mode is CommMode.HPLC
    assert plc.monitor_timeout_s == 60


async def test_driver_answers_everything_the_module_initiates() -> None:
    module = ScriptedModule()
    clock = ManualClock(dt.datetime(2025, 6, 3, 1, 2, 3, 456000, tzinfo=dt.UTC))
    plc = driver_for(module.path, clock, startup_wait_s=2.0, zone=ZoneInfo("Asia/Shanghai"))
    try:
        await scripted_start(module, plc)

        seq = module.initiate(Afn.ROUTE_READ, 2, Empty())
        answer = await module.answer_of(seq)
        assert answer.control.byte == 0x03
        assert answer.unit == ClockAnswer(dt.datetime(2025, 6, 3, 9, 2, 3))  # Beijing time

        node = ReportedNode(M[0], P07, 1)
        seq = module.initiate(Afn.REPORT, 1, SlaveInfoReport((node,)))
        answer = await module.answer_of(seq)
        assert (answer.afn, answer.fn) == (Afn.CONFIRM, 1)
        assert isinstance(answer.unit, Confirm)

        seq = module.initiate(Afn.ROUTE_READ, 1, RouterAsks(1, M[0], 1))
        answer = await module.answer_of(seq)
        assert answer.unit == ReadAnswer(ReadFlag.DONE)  # no round: nothing to read
        assert plc.router is RouterState.RUNNING  # the router reads on its own

        frame = encode_645(ReadRequest(M[0], 0x00010000).to_frame(), 0)
        seq = module.initiate(Afn.ROUTE_READ, 3, DelayCorrectionRequest(M[0], 5, frame))
        assert (await module.answer_of(seq)).unit == DelayCorrectedFrame(frame)

        seq = module.initiate(Afn.REPORT, 3, RouteWorkChange(WorkChange.READING_FINISHED))
        assert isinstance((await module.answer_of(seq)).unit, Confirm)
        await asyncio.sleep(0.05)
        assert plc.router.value == RouterState.IDLE.value  # mypy keeps the narrowing above
        stats = plc.statistics()
        assert (stats.reports_confirmed, stats.clock_requests, stats.read_requests) == (2, 1, 1)
    finally:
        await plc.close()
        module.close()


async def test_round_delivers_a_resent_report_once() -> None:
    module = ScriptedModule()
    clock = ManualClock(START)
    plc = driver_for(module.path, clock, startup_wait_s=2.0)
    try:
        await scripted_start(module, plc)
        source = FrozenDaySource()
        round_task = asyncio.create_task(plc.run_round(source, idle_timeout_s=1.0))
        restart = await module.expect()
        assert (restart.afn, restart.fn) == (Afn.ROUTE_CONTROL, 1)
        module.reply(restart, Confirm(), Afn.CONFIRM, 1)

        seq = module.initiate(Afn.ROUTE_READ, 1, RouterAsks(2, M[0], 7))
        answer = (await module.answer_of(seq)).unit
        assert isinstance(answer, ReadAnswer)
        assert answer.read_flag is ReadFlag.READ
        assert answer.frame645 is not None
        assert answer.frame645.address == M[0]

        reply = ReadResponse(M[0], FREEZE_TIME, bytes.fromhex("0000030625"))
        raw = encode_645(reply.to_frame(), 2)
        report = ReadDataReport(7, P07, 1, raw)
        seq = module.initiate(Afn.REPORT, 2, report)
        assert isinstance((await module.answer_of(seq)).unit, Confirm)
        module.initiate(Afn.REPORT, 2, report, seq=seq)  # our confirm "got lost"
        assert isinstance((await module.answer_of(seq)).unit, Confirm)

        seq = module.initiate(Afn.REPORT, 3, RouteWorkChange(WorkChange.READING_FINISHED))
        await module.answer_of(seq)
        result = await round_task
        assert result.finished
        assert (result.reports, result.duplicates, result.failures) == (1, 1, 0)
        assert source.replies[M[0]] == [reply]
    finally:
        await plc.close()
        module.close()
