"""The virtual PLC module over a real pty, driven by hand-built 1376.2 frames: what a
concentrator sees at power-up, archive changes and queries, point reads of the virtual meters,
and router-led rounds with their confirmations, pauses and re-sent reports."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import termios
import time
import tty
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

from drivers.clock import ManualClock
from protocols.bcd import Address
from protocols.dlt645 import BroadcastTime, ReadRequest, ReadResponse, decode_message
from protocols.dlt645 import encode_frame as encode_645
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
    DownlinkInfo,
    Empty,
    Frame,
    MainNodeAddress,
    MonitorReply,
    MonitorRequest,
    Prm,
    ProtocolType,
    Q13762Framer,
    RawUnit,
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
    encode_frame,
)
from protocols.q13762 import ReadRequest as RouterAsks
from protocols.q13762.enums import DelayFlag
from simulator.district import District, PlcConfig
from simulator.plc import ModuleSettings, VirtualPlcModule, module_settings
from simulator.scenario import build_district, parse_scenario

CST = dt.timezone(dt.timedelta(hours=8))
START = dt.datetime(2025, 6, 3, 0, 30, tzinfo=CST)
MAIN = Address("000000000001")
M = [Address(f"0000001000{i:02d}") for i in range(1, 7)]
SILENT = M[5]
STALE = [Address("000000900001"), Address("000000900002")]
P07 = ProtocolType.DLT645_2007
LATENCY_S = 0.03


def make_district() -> tuple[District, ManualClock]:
    scenario = parse_scenario(
        {
            "simulation": {"start": START, "history_days": 2, "seed": 7},
            "defaults": {"bus": "plc", "initial_kwh": [100, 900]},
            "plc": {"module_address": MAIN.digits, "baud": 19200},
            "meter_groups": [{"first_address": M[0].digits, "count": len(M)}],
            "timeline": [{"kind": "silent", "meter": SILENT.digits, "start": "+0h"}],
        }
    )
    clock = ManualClock(START)
    return build_district(scenario, clock), clock


class Concentrator:
    """The test's end of the module's UART: the pty slave in raw mode, hand-built frames."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        # TCSANOW: keep what the module already sent (its power-up report).
        tty.setraw(self.fd, termios.TCSANOW)
        attrs = termios.tcgetattr(self.fd)
        assert not attrs[2] & termios.PARENB  # parity none: a pty rejects even parity
        self.framer = Q13762Framer()
        self.frames: asyncio.Queue[Frame] = asyncio.Queue()
        self.seq = 0x40
        asyncio.get_running_loop().add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self.framer.feed(os.read(self.fd, 4096))
        for frame in self.framer.frames():
            self.frames.put_nowait(frame)

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.fd)
        os.close(self.fd)

    def send(self, frame: Frame) -> None:
        os.write(self.fd, encode_frame(frame))

    def request(
        self, afn: Afn, fn: int, unit: DataUnit | None = None, slave: Address | None = None
    ) -> int:
        self.seq = (self.seq + 1) & 0xFF
        info = DownlinkInfo(seq=self.seq, module_flag=slave is not None)
        address = None if slave is None else AddressField(MAIN, slave)
        control = Control(Direction.DOWNLINK, Prm.INITIATOR, CommMode.NARROWBAND_PLC_CENTRAL)
        self.send(Frame(control, info, afn, fn, Empty() if unit is None else unit, address))
        return self.seq

    def answer(
        self, to: Frame, unit: DataUnit, afn: Afn | None = None, fn: int | None = None
    ) -> None:
        control = Control(Direction.DOWNLINK, Prm.RESPONDER, CommMode.NARROWBAND_PLC_CENTRAL)
        info = DownlinkInfo(seq=to.seq)
        self.send(Frame(control, info, to.afn if afn is None else afn, fn or to.fn, unit))

    def confirm(self, to: Frame) -> None:
        self.answer(to, Confirm(), Afn.CONFIRM, 1)

    async def expect(self, within_s: float = 2.0) -> Frame:
        return await asyncio.wait_for(self.frames.get(), within_s)

    async def call(
        self, afn: Afn, fn: int, unit: DataUnit | None = None, slave: Address | None = None
    ) -> Frame:
        seq = self.request(afn, fn, unit, slave)
        reply = await self.expect()
        assert reply.seq == seq
        assert reply.control.byte == 0x81  # uplink, PRM=0 (a reply), narrow-band
        return reply

    async def quiet(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        assert self.frames.empty(), self.frames.get_nowait()


@contextlib.asynccontextmanager
async def running(
    archive: list[Address], **overrides: Any
) -> AsyncIterator[tuple[VirtualPlcModule, Concentrator, District]]:
    district, _ = make_district()
    settings = module_settings(
        district.plc,
        baud=115200,
        carrier_latency_s=LATENCY_S,
        turnaround_s=0.002,
        no_answer_s=0.05,
        **overrides,
    )
    module = VirtualPlcModule(district, settings, archive=[(a, P07) for a in archive])
    await module.start()
    concentrator = Concentrator(module.path)
    try:
        yield module, concentrator, district
    finally:
        concentrator.close()
        await module.close()


def read_645(address: Address, di: int) -> bytes:
    return encode_645(ReadRequest(address, di).to_frame(), preamble=0)


def decoded(frame: Frame) -> ReadResponse:
    unit = frame.unit
    assert isinstance(unit, MonitorReply | ReadDataReport)
    assert unit.frame645 is not None
    message = decode_message(unit.frame645)
    assert isinstance(message, ReadResponse)
    return message


# --- power-up, queries, control -------------------------------------------------------------


async def test_power_up_report_then_version_and_main_node() -> None:
    async with running(STALE) as (module, c, _):
        report = await c.expect()
        assert report.control.byte == 0xC1  # uplink, module-initiated, narrow-band
        assert (report.afn, report.fn) == (Afn.QUERY, 10)
        run_mode = report.unit
        assert isinstance(run_mode, RunModeInfo)
        assert run_mode.reading_mode is ReadingMode.BOTH
        assert run_mode.monitor_timeout == 90
        assert run_mode.main_node == MAIN
        assert (run_mode.slave_count, run_mode.max_slaves) == (2, 2040)

        version = (await c.call(Afn.QUERY, 1)).unit
        assert isinstance(version, VersionInfo)
        assert version == module.settings.version

        new_main = Address("000000000777")
        assert isinstance((await c.call(Afn.CONTROL, 1, MainNodeAddress(new_main))).unit, Confirm)
        assert module.main_node == new_main
        queried = (await c.call(Afn.QUERY, 10)).unit
        assert isinstance(queried, RunModeInfo)
        assert queried.main_node == new_main

        unsupported = (await c.call(Afn.LINK_TEST, 1, RawUnit(b""))).unit
        assert unsupported == Deny(DenyCode.MAIN_NODE_UNSUPPORTED)


async def test_archive_changes_and_paged_queries() -> None:
    async with running(STALE) as (module, c, _):
        await c.expect()  # power-up report
        assert (await c.call(Afn.ROUTE_QUERY, 1)).unit == SlaveCount(2, 2040)

        add = AddSlaves(tuple(SlaveNode(a, P07) for a in M[:5]))
        assert isinstance((await c.call(Afn.ROUTE_SET, 1, add)).unit, Confirm)
        duplicate = AddSlaves((SlaveNode(M[5], P07), SlaveNode(M[0], P07)))
        assert (await c.call(Afn.ROUTE_SET, 1, duplicate)).unit == Deny(DenyCode.DUPLICATE_METER)
        assert M[5] not in module.archive  # a denied batch changes nothing

        unknown = DeleteSlaves((STALE[0], Address("000000555555")))
        assert (await c.call(Afn.ROUTE_SET, 2, unknown)).unit == Deny(DenyCode.METER_NOT_FOUND)
        assert isinstance((await c.call(Afn.ROUTE_SET, 2, DeleteSlaves((STALE[0],)))).unit, Confirm)

        expected = [STALE[1], *M[:5]]
        assert list(module.archive) == expected
        assert (await c.call(Afn.ROUTE_QUERY, 1)).unit == SlaveCount(6, 2040)
        listed: list[Address] = []
        for start in (1, 3, 5, 7):
            page = (await c.call(Afn.ROUTE_QUERY, 2, SlaveInfoQuery(start, 2))).unit
            assert isinstance(page, SlaveInfoList)
            assert page.total == 6
            listed += [n.address for n in page.nodes]
            # D13..D11 of the node word carry the protocol.
            assert all(n.info >> 11 & 7 == P07 for n in page.nodes)
        assert listed == expected

        assert isinstance((await c.call(Afn.INITIALIZE, 2)).unit, Confirm)
        assert dict(module.archive) == {}
        assert (await c.call(Afn.ROUTE_QUERY, 1)).unit == SlaveCount(0, 2040)


# --- point reads ----------------------------------------------------------------------------


async def test_point_read_returns_the_virtual_meters_values() -> None:
    async with running(M) as (module, c, district):
        await c.expect()
        meter = district.meters[M[1]]

        began = time.monotonic()
        unit = MonitorRequest(P07, DelayFlag.NOT_RELATED, (), read_645(M[1], 0x00010000))
        reply = await c.call(Afn.ROUTE_FORWARD, 1, unit, slave=M[1])
        assert time.monotonic() - began >= LATENCY_S  # the carrier costs real time
        assert reply.address == AddressField(M[1], MAIN)  # uplink: A1 the meter, A3 main node
        assert reply.info.module_flag
        answer = decoded(reply)
        value = answer.decode()
        assert value is not None
        assert value.values[0].value == meter.registers().forward_active[0]

        unit = MonitorRequest(P07, DelayFlag.NOT_RELATED, (), read_645(M[1], 0x05060101))
        frozen = decoded(await c.call(Afn.ROUTE_FORWARD, 1, unit, slave=M[1])).decode()
        record = meter.daily_record(1)
        assert frozen is not None
        assert record is not None
        assert tuple(v.value for v in frozen.values) == record.forward_active
        assert all(isinstance(v.value, Decimal) for v in frozen.values)
        assert module.statistics().point_reads == 2


async def test_point_read_denies_archive_mismatch_and_silent_meter() -> None:
    async with running([*M[:3], SILENT]) as (module, c, district):
        await c.expect()
        assert M[4] in district.meters  # on the power line, but the module does not know it
        unit = MonitorRequest(P07, DelayFlag.NOT_RELATED, (), read_645(M[4], 0x00010000))
        reply = await c.call(Afn.ROUTE_FORWARD, 1, unit, slave=M[4])
        assert reply.unit == Deny(DenyCode.SLAVE_NOT_IN_NETWORK)

        unit = MonitorRequest(P07, DelayFlag.NOT_RELATED, (), read_645(SILENT, 0x00010000))
        reply = await c.call(Afn.ROUTE_FORWARD, 1, unit, slave=SILENT)
        assert reply.unit == Deny(DenyCode.SLAVE_NO_ANSWER)
        stats = module.statistics()
        assert (stats.not_in_network, stats.point_reads_silent, stats.denies) == (1, 1, 2)


async def test_broadcast_reaches_the_meters_in_the_archive_only() -> None:
    async with running(M[:2]) as (_, c, district):
        await c.expect()
        ahead = START.astimezone(CST).replace(tzinfo=None) + dt.timedelta(minutes=3)
        frame = encode_645(BroadcastTime(ahead).to_frame(), preamble=0)
        reply = await c.call(Afn.CONTROL, 3, StartBroadcast(P07, frame))
        assert isinstance(reply.unit, Confirm)
        await asyncio.sleep(LATENCY_S + 0.02)
        assert district.meters[M[0]].clock_error() == dt.timedelta(minutes=3)
        assert district.meters[M[1]].clock_error() == dt.timedelta(minutes=3)
        assert district.meters[M[2]].clock_error() == dt.timedelta(0)


# --- router-led rounds ----------------------------------------------------------------------


async def test_router_led_round_with_pause_and_finish() -> None:
    async with running(M[:2]) as (module, c, district):
        await c.expect()
        restart = await c.call(Afn.ROUTE_CONTROL, 1)
        assert isinstance(restart.unit, Confirm)

        ask = await c.expect()
        assert ask.control.byte == 0xC1
        assert isinstance(ask.unit, RouterAsks)
        assert (ask.unit.address, ask.unit.index) == (M[0], 1)
        assert 1 <= ask.unit.phase <= 3
        c.answer(ask, ReadAnswer(ReadFlag.READ, frame=read_645(M[0], 0x05060101)))
        report = await c.expect()
        assert (report.afn, report.fn, report.control.byte) == (Afn.REPORT, 2, 0xC1)
        unit = report.unit
        assert isinstance(unit, ReadDataReport)
        assert unit.index == 1
        assert unit.transit_time is not None  # the 2013 body
        value = decoded(report).decode()
        record = district.meters[M[0]].daily_record(1)
        assert value is not None
        assert record is not None
        assert tuple(v.value for v in value.values) == record.forward_active
        c.confirm(report)

        again = await c.expect()  # the same meter: anything more?
        assert isinstance(again.unit, RouterAsks)
        assert again.unit.address == M[0]
        assert again.seq != ask.seq
        c.answer(again, ReadAnswer(ReadFlag.DONE))

        second = await c.expect()
        assert isinstance(second.unit, RouterAsks)
        assert (second.unit.address, second.unit.index) == (M[1], 2)
        # Pause with the answer still to come: the module holds the read until resumed.
        assert isinstance((await c.call(Afn.ROUTE_CONTROL, 2)).unit, Confirm)
        c.answer(second, ReadAnswer(ReadFlag.READ, frame=read_645(M[1], 0x05060001)))
        await c.quiet(0.2)
        assert module.paused
        assert isinstance((await c.call(Afn.ROUTE_CONTROL, 3)).unit, Confirm)
        report = await c.expect()
        freeze = decoded(report).decode()
        record = district.meters[M[1]].daily_record(1)
        assert freeze is not None
        assert record is not None
        assert freeze.values[0].value == record.freeze_time
        c.confirm(report)

        last = await c.expect()
        assert isinstance(last.unit, RouterAsks)
        c.answer(last, ReadAnswer(ReadFlag.FAILED))  # 00: skip this meter

        finished = await c.expect()
        assert finished.unit == RouteWorkChange(WorkChange.READING_FINISHED)
        c.confirm(finished)
        await c.quiet(0.2)
        stats = module.statistics()
        assert (stats.rounds_started, stats.rounds_finished) == (1, 1)
        assert (stats.reports, stats.router_reads, stats.reports_resent) == (2, 2, 0)
        assert not module.round_running


async def test_unconfirmed_report_is_resent_then_given_up() -> None:
    async with running(M[:2], answer_timeout_s=0.15, report_retries=2) as (module, c, _):
        await c.expect()
        await c.call(Afn.ROUTE_CONTROL, 1)

        ask = await c.expect()
        c.answer(ask, ReadAnswer(ReadFlag.READ, frame=read_645(M[0], 0x00010000)))
        first = await c.expect()
        assert isinstance(first.unit, ReadDataReport)
        sent = time.monotonic()
        resent = await c.expect()  # not confirmed: the same frame, the same seq
        assert time.monotonic() - sent >= 0.1
        assert resent.raw == first.raw
        c.confirm(resent)
        ask = await c.expect()
        assert isinstance(ask.unit, RouterAsks)
        assert ask.unit.address == M[0]
        c.answer(ask, ReadAnswer(ReadFlag.DONE))

        ask = await c.expect()
        c.answer(ask, ReadAnswer(ReadFlag.READ, frame=read_645(M[1], 0x00010000)))
        copies = [await c.expect() for _ in range(3)]  # first send + 2 re-sends, never confirmed
        assert len({f.raw for f in copies}) == 1
        assert isinstance(copies[0].unit, ReadDataReport)
        finished = await c.expect()  # given up: on to the end of the archive
        assert isinstance(finished.unit, RouteWorkChange)
        c.confirm(finished)
        await c.quiet(0.2)
        stats = module.statistics()
        assert (stats.reports, stats.reports_resent, stats.unconfirmed) == (2, 3, 1)


async def test_unanswered_router_request_moves_on() -> None:
    async with running(M[:2], answer_timeout_s=0.1) as (module, c, _):
        await c.expect()
        await c.call(Afn.ROUTE_CONTROL, 3)  # resume with no round in progress starts one
        first = await c.expect()
        second = await c.expect()  # nobody answered the first: the next meter
        assert isinstance(first.unit, RouterAsks)
        assert isinstance(second.unit, RouterAsks)
        assert (first.unit.address, second.unit.address) == (M[0], M[1])
        c.answer(second, ReadAnswer(ReadFlag.DONE))
        finished = await c.expect()
        c.confirm(finished)
        await c.quiet(0.1)
        assert module.statistics().unanswered == 1


# --- settings --------------------------------------------------------------------------------


def test_settings_from_the_scenario_table() -> None:
    config = PlcConfig(
        baud=9600,
        module_address="000000000009",
        turnaround_ms=20,
        relay_delay_ms=300,
        options={
            "comm_mode": 3,
            "reading_mode": "router",
            "meter_latency_ms": {"000000100001": 250},
            "report_retries": 1,
        },
    )
    s = ModuleSettings.from_config(config)
    assert (s.comm_mode, s.reading_mode, s.main_node) == (
        CommMode.HPLC,
        ReadingMode.ROUTER_LED,
        Address("000000000009"),
    )
    assert (s.carrier_latency_s, s.turnaround_s, s.report_retries) == (0.3, 0.02, 1)
    assert s.meter_latency_s == {M[0]: 0.25}
    with pytest.raises(ValueError, match="unknown option"):
        ModuleSettings.from_config(PlcConfig(options={"latency": 1}))
    with pytest.raises(ValueError, match="reading_mode"):
        ModuleSettings.from_config(PlcConfig(options={"reading_mode": "sometimes"}))
