"""Q/GDW 1376.2: corpus frames, malformed inputs, unit round trips and the stream framer."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from protocols.bcd import Address
from protocols.dlt645.frame import Control as Control645
from protocols.dlt645.frame import Frame as Frame645
from protocols.dlt645.frame import decode_frame as decode_645
from protocols.dlt645.frame import encode_frame as encode_645
from protocols.dlt645.framer import Rejection
from protocols.errors import FrameError, LocalProtocolError, RemoteProtocolError, ValueDecodeError
from protocols.framing import NEED_DATA
from protocols.q13762 import (
    UNITS,
    AddressField,
    AddSlaves,
    Afn,
    ClockAnswer,
    CommMode,
    Confirm,
    ConfirmEdition,
    Control,
    DataUnit,
    DelayCorrectedFrame,
    DelayCorrectionRequest,
    DelayFlag,
    DeleteSlaves,
    Deny,
    DenyCode,
    DeviceType,
    Direction,
    DownlinkInfo,
    Empty,
    EventReporting,
    Forward,
    Frame,
    FrameCarrier,
    MainNodeAddress,
    ModuleMode,
    MonitorReply,
    MonitorRequest,
    Prm,
    ProtocolType,
    Q13762Framer,
    Rate,
    RawUnit,
    ReadAnswer,
    ReadDataReport,
    ReadFlag,
    ReadingMode,
    ReadRequest,
    ReportedNode,
    RouteWorkChange,
    RunModeInfo,
    SlaveCount,
    SlaveEvent,
    SlaveInfoList,
    SlaveInfoQuery,
    SlaveInfoReport,
    SlaveNode,
    SlaveNodeInfo,
    StartBroadcast,
    UplinkInfo,
    VersionInfo,
    WorkChange,
    decode_frame,
    decode_unit,
    describe_frame,
    dt_to_fn,
    encode_frame,
    encode_unit,
    fn_to_dt,
)
from protocols.q13762.sniff import probe_13762
from protocols.render import dumps
from protocols.sniff import Found, Rejected, scan

CORPUS_PATH = Path(__file__).resolve().parents[2] / "shared" / "frames" / "corpus.json"
CORPUS: list[dict[str, Any]] = [
    e for e in json.loads(CORPUS_PATH.read_text(encoding="utf-8")) if e["protocol"] == "q1376.2"
]
GOOD = [e for e in CORPUS if e["checksum_ok"]]
BAD = [e for e in CORPUS if not e["checksum_ok"]]


def _id(entry: dict[str, Any]) -> str:
    return f"{entry['kind']}:{entry['hex'][:36]}"


def wire(body: str) -> bytes:
    """A frame around ``body`` (C .. last data byte, hex) with L and CS computed."""
    b = bytes.fromhex(body)
    total = len(b) + 5
    return bytes((0x68, total & 0xFF, total >> 8)) + b + bytes((sum(b) & 0xFF, 0x16))


def di_of(frame645: Frame645 | None) -> str:
    assert frame645 is not None
    return frame645.data[:4][::-1].hex().upper()


# --- corpus --------------------------------------------------------------------------------


def check_stated(frame: Frame, stated: dict[str, Any]) -> None:
    """Every key the corpus states is checked; an unknown key fails so none is ignored."""
    unit = frame.unit
    for key, expected in stated.items():
        match key:
            case "C":
                assert f"{frame.control.byte:02X}" == expected
            case "afn":
                assert f"{frame.afn:02X}" == expected
            case "fn":
                assert frame.fn == expected
            case "seq":
                assert frame.seq == expected
            case "A1":
                assert frame.address is not None
                assert str(frame.address.source) == expected
            case "A3":
                assert frame.address is not None
                assert str(frame.address.destination) == expected
            case "relay_level":
                assert frame.info.relay_level == expected
                assert frame.address is not None
                assert len(frame.address.relays) == expected
            case "main_node_addr":
                assert isinstance(unit, MainNodeAddress)
                assert str(unit.address) == expected
            case "count":
                assert isinstance(unit, AddSlaves | DeleteSlaves)
                n = len(unit.nodes) if isinstance(unit, AddSlaves) else len(unit.addresses)
                assert n == expected
            case "node":
                if isinstance(unit, AddSlaves):
                    assert [str(n.address) for n in unit.nodes] == [expected]
                else:
                    assert isinstance(unit, DeleteSlaves)
                    assert [str(a) for a in unit.addresses] == [expected]
            case "protocol":
                assert isinstance(unit, AddSlaves | MonitorRequest)
                got = unit.nodes[0].protocol if isinstance(unit, AddSlaves) else unit.protocol
                assert got == expected
            case "delay_flag":
                assert isinstance(unit, MonitorRequest | ReadAnswer)
                assert unit.delay_flag == expected
            case "attached":
                assert isinstance(unit, MonitorRequest | ReadAnswer)
                assert len(unit.attached) == expected
            case "frame645":
                assert isinstance(unit, FrameCarrier)
                assert unit.frame == bytes.fromhex(expected)
                assert unit.frame645 == decode_645(bytes.fromhex(expected))
            case "frame645_di":
                assert isinstance(unit, FrameCarrier)
                assert di_of(unit.frame645) == expected
            case "read_flag":
                assert isinstance(unit, ReadAnswer)
                assert unit.read_flag == expected
            case "len":
                assert isinstance(unit, FrameCarrier)
                assert len(unit.frame) == expected
            case "status_word":
                assert isinstance(unit, Confirm)
                assert unit.status == int(expected, 16)
            case "wait_s":
                assert isinstance(unit, Confirm)
                assert unit.wait_seconds == expected
            case "data":
                assert encode_unit(unit) == bytes.fromhex(expected)
            case "edition":
                assert isinstance(unit, Confirm)
                assert unit.edition is ConfirmEdition(int(expected[:4]))
            case _:
                pytest.fail(f"corpus states {key!r}, which this test does not check")


@pytest.mark.parametrize("entry", GOOD, ids=_id)
def test_corpus_frame_decodes_as_stated(entry: dict[str, Any]) -> None:
    raw = bytes.fromhex(entry["hex"])
    frame = decode_frame(raw)
    check_stated(frame, entry["decoded"])
    assert encode_frame(frame) == raw
    assert frame.info.raw == raw[4:10]
    described = json.loads(dumps(describe_frame(frame)))
    assert described["protocol"] == "q1376.2"
    assert described["control"] == entry["decoded"]["C"]
    assert described["afn"] == f"{frame.afn:02X}"
    assert described["fn"] == frame.fn


@pytest.mark.parametrize("entry", GOOD, ids=_id)
def test_corpus_frame_from_framer_with_noise(entry: dict[str, Any]) -> None:
    raw = bytes.fromhex(entry["hex"])
    framer = Q13762Framer()
    framer.feed(b"\x00\xfe\x16" + raw + b"\x55")
    assert [f.raw for f in framer.frames()] == [raw]
    stats = framer.statistics()
    assert stats.frames == 1
    assert stats.discarded_bytes == 4  # the trailing byte holds no start byte either
    assert stats.buffered == 0


def test_corpus_bad_checksums_are_rejected() -> None:
    # The current corpus has no broken 1376.2 frame; captures added later are checked here.
    for entry in BAD:
        raw = bytes.fromhex(entry["hex"])
        with pytest.raises(FrameError) as exc:
            decode_frame(raw)
        assert exc.value.reason == "bad-checksum"
        framer = Q13762Framer()
        framer.feed(raw)
        event = framer.next_event()
        assert isinstance(event, Rejection)
        assert event.reason == "bad-checksum"


def test_corpus_is_loaded() -> None:
    assert len(GOOD) >= 18


@pytest.mark.parametrize("entry", GOOD, ids=_id)
def test_every_strict_prefix_needs_data(entry: dict[str, Any]) -> None:
    raw = bytes.fromhex(entry["hex"])
    for cut in range(1, len(raw)):
        framer = Q13762Framer()
        framer.feed(raw[:cut])
        assert framer.next_event() is NEED_DATA, cut
        assert framer.statistics().buffered == cut
        assert framer.statistics().rejected_total == 0
        framer.feed(raw[cut:])
        frame = framer.next_frame()
        assert isinstance(frame, Frame)
        assert frame.raw == raw


def test_documented_captures_decode() -> None:
    """Captures quoted in PROTOCOLS.md 3.7 but not in the corpus."""
    answer = decode_frame(
        bytes.fromhex(
            "68 23 00 01 00 00 04 00 00 03 14 01 00 02 00 10"
            " 68 00 00 00 00 00 05 68 11 04 33 33 34 33 B7 16 00 B3 16"
        )
    )
    assert isinstance(answer.unit, ReadAnswer)
    assert answer.unit.read_flag is ReadFlag.READ
    assert answer.unit.attached == ()
    assert di_of(answer.unit.frame645) == "00010000"
    assert answer.unit.frame645 is not None
    assert str(answer.unit.frame645.address) == "050000000000"
    query = decode_frame(wire("41 00 00 00 00 00 07 03 01 00"))
    assert (query.afn, query.fn, query.seq, query.unit) == (Afn.QUERY, 1, 7, Empty())


def test_unknown_afn_keeps_relays_and_data() -> None:
    frame = decode_frame(
        bytes.fromhex(
            "68 24 00 4A 14 00 00 00 00 0A 11 12 13 14 15 16 21 22 23 24 25 26"
            " 31 32 33 34 35 36 0A 01 00 00 01 01 F4 16"
        )
    )
    assert frame.afn == 0x0A
    assert not frame.afn.known
    assert frame.control.comm_mode is CommMode.MICRO_POWER_WIRELESS
    assert frame.address == AddressField(
        Address("161514131211"), Address("363534333231"), (Address("262524232221"),)
    )
    assert frame.unit == RawUnit(bytes.fromhex("00 01 01"))
    d = describe_frame(frame)
    assert d["afn"] == "0A"
    assert d["addresses"] == {
        "A1": "161514131211",
        "A2": ["262524232221"],
        "A3": "363534333231",
    }
    assert d["relay_level"] == 1


# --- embedded 645 frames -----------------------------------------------------------------

MONITOR_HEAD = "41 04 00 00 00 00 01 010000000000 040000000000 13 01 00"


def test_embedded_frame_with_preamble_is_decoded() -> None:
    inner = "FE FE FE FE 68 04 00 00 00 00 00 68 11 04 33 33 34 33 B6 16"
    frame = decode_frame(wire(f"{MONITOR_HEAD} 02 00 00 14 {inner}"))
    assert isinstance(frame.unit, MonitorRequest)
    assert frame.unit.frame == bytes.fromhex(inner)
    assert di_of(frame.unit.frame645) == "00010000"
    assert frame.unit.frame645_error is None


def test_broken_embedded_frame_keeps_outer_frame() -> None:
    inner = "68 04 00 00 00 00 00 68 11 04 33 33 34 33 00 16"  # CS should be B6
    frame = decode_frame(wire(f"{MONITOR_HEAD} 02 00 00 10 {inner}"))
    assert isinstance(frame.unit, MonitorRequest)
    assert frame.unit.frame == bytes.fromhex(inner)
    assert frame.unit.frame645 is None
    assert frame.unit.frame645_error is not None
    assert frame.unit.frame645_error.startswith("bad-checksum")
    d = describe_frame(frame)
    assert d["frame645"] is None
    assert d["frame645_error"].startswith("bad-checksum")


def test_non_645_protocol_is_not_decoded_as_645() -> None:
    inner = "68 04 00 00 00 00 00 68 11 04 33 33 34 33 B6 16"
    frame = decode_frame(wire(f"{MONITOR_HEAD} 03 00 00 10 {inner}"))
    assert isinstance(frame.unit, MonitorRequest)
    assert frame.unit.protocol is ProtocolType.DLT698_45
    assert frame.unit.frame645 is None
    assert frame.unit.frame645_error is None


def test_describe_embeds_645_description_and_deny_name() -> None:
    frame = decode_frame(
        wire(f"{MONITOR_HEAD} 02 00 00 10 68 04 00 00 00 00 00 68 11 04 33 33 34 33 B6 16")
    )
    d = describe_frame(frame)
    assert d["direction"] == "downlink"
    assert d["prm"] == "initiator"
    assert d["seq"] == 1
    assert d["data"]["protocol"] == "dlt645_2007"
    assert d["frame645"]["di"] == "00010000"
    assert d["frame645"]["address"] == "000000000004"
    assert d["error"] is None
    deny = decode_frame(wire("81 00 00 00 00 00 09 00 02 00 0B"))
    dd = describe_frame(deny)
    assert dd["error"] == "slave_no_answer"
    assert dd["direction"] == "uplink"
    assert dd["prm"] == "responder"
    assert json.loads(dumps(dd))["data"] == {"code": "slave_no_answer"}


def test_2009_and_2013_read_reports() -> None:
    reply = Frame645(
        Address("200314000005"),
        Control645.from_byte(0x91),
        bytes.fromhex("00 00 01 00 12 34 56 78"),
    )
    inner = encode_645(reply, preamble=0).hex()
    old = decode_frame(
        wire(f"C1 00 00 00 00 00 21 06 02 00 0100 02 {len(bytes.fromhex(inner)):02X} {inner}")
    )
    new = decode_frame(wire(f"C1 00 00 00 00 00 21 06 02 00 0100 02 0300 14 {inner}"))
    assert isinstance(old.unit, ReadDataReport)
    assert isinstance(new.unit, ReadDataReport)
    assert old.unit.transit_time is None
    assert new.unit.transit_time == 3
    assert old.unit.frame == new.unit.frame == bytes.fromhex(inner)
    assert old.unit.index == new.unit.index == 1
    assert new.unit.frame645 is not None
    assert new.unit.frame645.data[:4] == bytes.fromhex("00 00 01 00")


# --- malformed input ---------------------------------------------------------------------

GOOD_RAW = bytes.fromhex("68 0F 00 41 00 00 04 00 00 1D 12 02 00 76 16")
A_FIELD = "41 04 00 00 00 00 00 000000000001 000000000002 "

#: What the framer does not even treat as a candidate (so it rejects nothing).
NOT_CANDIDATES = frozenset(("empty", "bad start", "L below 15", "trailing byte"))
L14 = bytes.fromhex("68 0E 00 41 00 00 04 00 00 1D 12 02 00 76 16")

MALFORMED: list[tuple[str, bytes, str]] = [
    # (what, bytes, reason); FrameError for the envelope, ValueDecodeError for the contents
    ("empty", b"", "empty"),
    ("bad start", b"\x69" + GOOD_RAW[1:], "bad-start"),
    ("length field cut", GOOD_RAW[:2], "truncated"),
    ("L below 15", L14, "bad-length"),
    ("shorter than L", GOOD_RAW[:-1], "truncated"),
    ("trailing byte", GOOD_RAW + b"\x00", "trailing-bytes"),
    ("bad checksum", GOOD_RAW[:-2] + b"\x77\x16", "bad-checksum"),
    ("bad end", GOOD_RAW[:-1] + b"\x17", "bad-end"),
    ("DT1 zero", wire("41 000000000000 03 00 00"), "bad-dt"),
    ("DT1 two bits", wire("41 000000000000 03 03 00"), "bad-dt"),
    ("A field longer than L", wire("41 040000000000 13 01 00 02 00 00 00"), "bad-length"),
    ("relay list longer than L", wire(A_FIELD.replace("04", "14", 1) + "13 01 00"), "bad-length"),
    ("non-BCD A1", wire("41 040000000000 0A000000000F 010000000000 13 01 00 00"), "bad-address"),
    ("AFN00 F1 of 5 bytes", wire("01 000000000000 00 01 00 01 00 00 00 05"), "bad-data-unit"),
    ("AFN00 F2 of 2 bytes", wire("81 000000000000 00 02 00 0B 00"), "bad-data-unit"),
    ("AFN05 F1 short address", wire("41 000000000000 05 01 00 01 00 00 00 00"), "bad-data-unit"),
    ("AFN05 F2 flag 02", wire("41 000000000000 05 02 00 02"), "bad-data-unit"),
    ("AFN12 F1 with data", wire("41 000000000000 12 01 00 00"), "bad-data-unit"),
    ("AFN11 F1 n > nodes", wire("41 000000000000 11 01 00 02 010000000000 02"), "bad-data-unit"),
    ("AFN11 F2 non-BCD node", wire("41 000000000000 11 02 00 01 FF0000000000"), "bad-address"),
    (
        "AFN06 F2 no length fits",
        wire("C1 000000000000 06 02 00 0100 02 0500 09 6816"),
        "bad-data-unit",
    ),
    ("AFN13 F1 frame > body", wire(A_FIELD + "13 01 00 02 00 00 10 68 00"), "bad-data-unit"),
    ("AFN03 F1 month 13", wire("81 000000000000 03 01 00 5443 3348 011319 0001"), "bad-timestamp"),
    (
        "AFN03 F1 version 0A01",
        wire("81 000000000000 03 01 00 5443 3348 011219 0A01"),
        "invalid-bcd",
    ),
    ("AFN14 F2 hour 25", wire("01 000000000000 14 02 00 00 00 25 01 01 24"), "bad-timestamp"),
]
ENVELOPE_REASONS = frozenset(
    (
        "empty",
        "bad-start",
        "truncated",
        "bad-length",
        "trailing-bytes",
        "bad-checksum",
        "bad-end",
        "bad-dt",
    )
)


@pytest.mark.parametrize(("what", "raw", "reason"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_input(what: str, raw: bytes, reason: str) -> None:
    exc_type = FrameError if reason in ENVELOPE_REASONS else ValueDecodeError
    with pytest.raises(exc_type) as exc:
        decode_frame(raw)
    assert exc.value.reason == reason, exc.value.detail
    alone = Q13762Framer()
    alone.feed(raw)
    alone.feed_eof()
    events = []
    while (event := alone.next_event()) is not NEED_DATA:
        events.append(event)
    rejections = [e.reason for e in events if isinstance(e, Rejection)]
    assert rejections[:1] == ([] if what in NOT_CANDIDATES else [reason])
    # Whatever the damage, a good frame right after it is still found.
    followed = Q13762Framer()
    followed.feed(raw + GOOD_RAW)
    followed.feed_eof()
    assert [f.raw for f in followed.frames()][-1:] == [GOOD_RAW]


def test_fn_dt_table() -> None:
    table = {
        1: "01 00",
        2: "02 00",
        3: "04 00",
        4: "08 00",
        8: "80 00",
        9: "01 01",
        10: "02 01",
        200: "80 18",
    }
    for fn, dt_hex in table.items():
        assert fn_to_dt(fn) == bytes.fromhex(dt_hex)
        assert dt_to_fn(*bytes.fromhex(dt_hex)) == fn


@given(st.integers(1, 2048))
def test_fn_dt_round_trip(fn: int) -> None:
    assert dt_to_fn(*fn_to_dt(fn)) == fn


@pytest.mark.parametrize("fn", [0, 2049])
def test_fn_out_of_range(fn: int) -> None:
    with pytest.raises(LocalProtocolError) as exc:
        fn_to_dt(fn)
    assert exc.value.reason == "bad-dt"


HPLC_DOWN = Control(Direction.DOWNLINK, Prm.INITIATOR, CommMode.HPLC)


def _down(afn: Afn, fn: int, unit: DataUnit, **kw: Any) -> Frame:
    return Frame(HPLC_DOWN, DownlinkInfo(**kw), afn, fn, unit)


def test_local_errors() -> None:
    addr = Address("000000000001")
    pair = AddressField(addr, addr)
    up = Control(Direction.UPLINK, Prm.INITIATOR, CommMode.HPLC)
    relay1 = DownlinkInfo(module_flag=True, relay_level=1)
    too_many_rates = dataclasses.replace(RUN_MODE_SAMPLE, rates=(Rate(),) * 16)
    cases: list[tuple[str, Any]] = [
        ("address-mismatch", lambda: Frame(HPLC_DOWN, DownlinkInfo(), Afn.QUERY, 1, Empty(), pair)),
        ("address-mismatch", lambda: Frame(HPLC_DOWN, relay1, Afn.QUERY, 1, Empty(), pair)),
        ("info-mismatch", lambda: Frame(up, DownlinkInfo(), Afn.QUERY, 1)),
        ("unit-mismatch", lambda: _down(Afn.CONTROL, 1, Confirm())),
        ("out-of-range", lambda: DownlinkInfo(relay_level=16)),
        ("out-of-range", lambda: UplinkInfo(seq=256)),
        ("out-of-range", lambda: Rate(0x8000)),
        ("bad-control", lambda: Control(Direction.DOWNLINK, Prm.INITIATOR, CommMode(64))),
        ("bad-data-unit", lambda: encode_unit(Forward(ProtocolType.TRANSPARENT, bytes(256)))),
        ("bad-data-unit", lambda: encode_unit(DeleteSlaves((addr,) * 256))),
        ("out-of-range", lambda: encode_unit(ClockAnswer(dt.datetime(2100, 1, 1)))),
        ("out-of-range", lambda: encode_unit(too_many_rates)),
        ("out-of-range", lambda: encode_unit(VersionInfo("T", "3H", None, 1))),
        ("too-long", lambda: encode_frame(_down(Afn.FORWARD, 1, RawUnit(bytes(65535))))),
    ]
    for reason, make in cases:
        with pytest.raises(LocalProtocolError) as exc:
            make()
        assert exc.value.reason == reason


def test_raw_unit_is_allowed_for_any_function() -> None:
    frame = _down(Afn.CONTROL, 1, RawUnit(bytes.fromhex("01 00 00 00 00 00")), seq=5)
    assert decode_frame(encode_frame(frame)).unit == MainNodeAddress(Address("000000000001"))


def test_open_enums_keep_unknown_codes() -> None:
    assert DenyCode(200).name == "DENY_C8"
    assert ProtocolType(9).name == "PROTOCOL_09"
    assert not ProtocolType(9).known
    assert ProtocolType.DLT645_2007.known
    frame = decode_frame(wire("81 000000000000 00 02 00 C8"))
    assert isinstance(frame.unit, Deny)
    assert frame.unit.code == 200
    assert encode_frame(frame) == frame.raw


def test_confirm_status_bits() -> None:
    unit = Confirm(status=0b101, wait_seconds=5)
    assert unit.command_processed
    assert not unit.channel_idle(1)
    assert unit.channel_idle(2)
    assert encode_unit(unit) == bytes.fromhex("05 00 00 00 05 00")
    assert encode_unit(Confirm(0xFFFF, 0, ConfirmEdition.Q2009)) == bytes.fromhex("FF FF 00 00")


# --- hypothesis: every data unit, both directions ----------------------------------------

addresses = st.integers(0, 10**12 - 1).map(lambda n: Address(f"{n:012d}"))
u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
protocols_ = st.integers(0, 0xFF).map(ProtocolType)
dates = st.none() | st.dates(dt.date(2000, 1, 1), dt.date(2099, 12, 31))
frames645 = st.builds(
    lambda a, c, d, p: encode_645(Frame645(a, Control645.from_byte(c), d), preamble=p),
    addresses,
    u8,
    st.binary(max_size=200),
    st.integers(0, 4),
)
embedded = st.binary(max_size=255) | frames645
versions = st.builds(
    VersionInfo,
    vendor_code=st.text(st.characters(max_codepoint=0xFF), min_size=2, max_size=2),
    chip_code=st.text(st.characters(max_codepoint=0xFF), min_size=2, max_size=2),
    date=dates,
    version=st.integers(0, 9999),
)
rates = st.builds(Rate, st.integers(0, 0x7FFF), st.booleans())
VERSION_SAMPLE = VersionInfo("TC", "3H", dt.date(2019, 8, 15), 100)
RUN_MODE_SAMPLE = RunModeInfo(
    ModuleMode.BROADBAND, True, True, ReadingMode.BOTH, 0x07, 1, 0, 0, 90, 120, 512, 256, 10,
    Address("000000000001"), 1024, 3, dt.date(2013, 6, 1), None, VERSION_SAMPLE, (Rate(100, True),),
)  # fmt: skip

UNIT_STRATEGIES: dict[type[DataUnit], st.SearchStrategy[Any]] = {
    Confirm: st.one_of(
        st.builds(Confirm, st.integers(0, 2**32 - 1), u16, st.just(ConfirmEdition.Q2013)),
        st.builds(Confirm, u16, u16, st.just(ConfirmEdition.Q2009)),
    ),
    Deny: st.builds(Deny, u8.map(DenyCode)),
    Empty: st.just(Empty()),
    Forward: st.builds(Forward, protocols_, embedded),
    StartBroadcast: st.builds(StartBroadcast, u8, embedded),
    VersionInfo: versions,
    RunModeInfo: st.builds(
        RunModeInfo,
        module_mode=st.integers(0, 15).map(ModuleMode),
        route_management=st.booleans(),
        needs_slave_archive=st.booleans(),
        reading_mode=st.integers(0, 3).map(ReadingMode),
        delay_broadcast_flags=u8,
        channel_count=st.integers(0, 31),
        outage_info=st.integers(0, 7),
        reserved=u16,
        monitor_timeout=u8,
        broadcast_timeout=u16,
        max_frame_length=u16,
        max_file_packet=u16,
        upgrade_wait=u8,
        main_node=addresses,
        max_slaves=u16,
        slave_count=u16,
        protocol_date=dates,
        filing_date=dates,
        version=versions,
        rates=st.lists(rates, max_size=15).map(tuple),
    ),
    MainNodeAddress: st.builds(MainNodeAddress, addresses),
    EventReporting: st.builds(EventReporting, st.booleans()),
    SlaveInfoReport: st.builds(
        SlaveInfoReport,
        st.lists(st.builds(ReportedNode, addresses, protocols_, u16), max_size=20).map(tuple),
    ),
    ReadDataReport: st.builds(ReadDataReport, u16, protocols_, st.none() | u16, embedded),
    RouteWorkChange: st.builds(RouteWorkChange, u8.map(WorkChange)),
    SlaveEvent: st.builds(SlaveEvent, u8.map(DeviceType), protocols_, embedded),
    SlaveCount: st.builds(SlaveCount, u16, u16),
    SlaveInfoQuery: st.builds(SlaveInfoQuery, u16, u8),
    SlaveInfoList: st.builds(
        SlaveInfoList,
        u16,
        st.lists(st.builds(SlaveNodeInfo, addresses, u16), max_size=20).map(tuple),
    ),
    AddSlaves: st.builds(
        AddSlaves, st.lists(st.builds(SlaveNode, addresses, protocols_), max_size=20).map(tuple)
    ),
    DeleteSlaves: st.builds(DeleteSlaves, st.lists(addresses, max_size=20).map(tuple)),
    MonitorRequest: st.builds(
        MonitorRequest,
        protocols_,
        u8.map(DelayFlag),
        st.lists(addresses, max_size=5).map(tuple),
        embedded,
    ),
    MonitorReply: st.builds(MonitorReply, u16, protocols_, embedded),
    ReadRequest: st.builds(ReadRequest, u8, addresses, u16),
    ReadAnswer: st.builds(
        ReadAnswer,
        u8.map(ReadFlag),
        u8.map(DelayFlag),
        embedded,
        st.lists(addresses, max_size=5).map(tuple),
    ),
    ClockAnswer: st.builds(
        ClockAnswer,
        st.datetimes(dt.datetime(2000, 1, 1), dt.datetime(2099, 12, 31, 23, 59, 59)).map(
            lambda t: t.replace(microsecond=0)
        ),
    ),
    DelayCorrectionRequest: st.builds(DelayCorrectionRequest, addresses, u16, embedded),
    DelayCorrectedFrame: st.builds(DelayCorrectedFrame, embedded),
}

REGISTERED = sorted(UNITS.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2]))


def test_every_registered_unit_has_a_strategy() -> None:
    assert {cls for _, cls in REGISTERED} == set(UNIT_STRATEGIES)


@st.composite
def frames_carrying(
    draw: st.DrawFn, afn: int, fn: int, direction: Direction, unit: st.SearchStrategy[Any]
) -> Frame:
    has_address = draw(st.booleans())
    relay_level = draw(st.integers(0, 15))
    address = None
    if has_address:
        relays = tuple(draw(addresses) for _ in range(relay_level))
        address = AddressField(draw(addresses), draw(addresses), relays)
    nibble = st.integers(0, 15)
    info: DownlinkInfo | UplinkInfo
    if direction is Direction.DOWNLINK:
        info = DownlinkInfo(
            seq=draw(u8),
            module_flag=has_address,
            relay_level=relay_level,
            route_flag=draw(st.booleans()),
            attached_node=draw(st.booleans()),
            conflict_detection=draw(st.booleans()),
            channel=draw(nibble),
            ecc=draw(nibble),
            expected_bytes=draw(u8),
            rate=draw(rates),
        )
    else:
        info = UplinkInfo(
            seq=draw(u8),
            module_flag=has_address,
            relay_level=relay_level,
            route_flag=draw(st.booleans()),
            channel=draw(nibble),
            phase=draw(nibble),
            channel_feature=draw(nibble),
            command_quality=draw(nibble),
            reply_quality=draw(nibble),
            event_flag=draw(st.booleans()),
        )
    control = Control(direction, draw(st.sampled_from(Prm)), CommMode(draw(st.integers(0, 63))))
    return Frame(control, info, Afn(afn), fn, draw(unit), address)


def _ambiguous_report(unit: DataUnit) -> bool:
    """A 2009 AFN06 F2 body whose bytes also read as a consistent 2013 body."""
    if not isinstance(unit, ReadDataReport) or unit.transit_time is not None:
        return False
    data = encode_unit(unit)
    return len(data) >= 6 and data[5] == len(data) - 6


@pytest.mark.parametrize(
    ("key", "cls"), REGISTERED, ids=[f"AFN{k[0]:02X}-F{k[1]}-{k[2].name}" for k, _ in REGISTERED]
)
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_unit_round_trip(
    key: tuple[int, int, Direction], cls: type[DataUnit], data: st.DataObject
) -> None:
    afn, fn, direction = key
    frame = data.draw(frames_carrying(afn, fn, direction, UNIT_STRATEGIES[cls]))
    assume(not _ambiguous_report(frame.unit))
    raw = encode_frame(frame)
    decoded = decode_frame(raw)
    assert decoded == frame
    assert decoded.raw == raw
    assert decoded.info.raw == raw[4:10]
    assert decode_unit(afn, fn, direction, encode_unit(frame.unit)) == frame.unit
    if isinstance(decoded.unit, FrameCarrier):
        _check_embedded(decoded.unit)
    described = json.loads(dumps(describe_frame(decoded)))
    assert described["fn"] == fn
    assert described["seq"] == frame.seq


def _check_embedded(unit: FrameCarrier) -> None:
    protocol = getattr(unit, "protocol", None)
    try:
        expected: Frame645 | None = decode_645(unit.frame) if unit.frame else None
    except RemoteProtocolError:
        expected = None
    if protocol is not None and not ProtocolType(protocol).is_dlt645:
        assert unit.frame645 is None
        assert unit.frame645_error is None
        return
    if expected is not None:
        assert unit.frame645 == expected
        assert unit.frame645_error is None
    else:
        assert unit.frame645 is None


@settings(max_examples=200)
@given(
    afn=u8,
    fn=st.integers(1, 2048),
    direction=st.sampled_from(Direction),
    data=st.binary(max_size=300),
)
def test_unregistered_functions_decode_as_raw(
    afn: int, fn: int, direction: Direction, data: bytes
) -> None:
    assume((afn, fn, direction) not in UNITS)
    assert decode_unit(afn, fn, direction, data) == RawUnit(data)


# --- framer ------------------------------------------------------------------------------

SAMPLE_FRAMES = [bytes.fromhex(e["hex"]) for e in GOOD]
generated_frames = (
    st.sampled_from(REGISTERED)
    .flatmap(lambda kv: frames_carrying(*kv[0], UNIT_STRATEGIES[kv[1]]))
    .map(encode_frame)
)
valid_frames = st.sampled_from(SAMPLE_FRAMES) | generated_frames
noise = st.binary(min_size=1, max_size=30).map(lambda b: b.replace(b"\x68", b"\x69"))
truncated = valid_frames.flatmap(lambda f: st.integers(1, len(f) - 1).map(lambda n: f[:n]))
pieces = st.lists(
    st.tuples(st.just("frame"), valid_frames)
    | st.tuples(st.just("noise"), noise)
    | st.tuples(st.just("cut"), truncated),
    max_size=12,
)


def _collect(framer: Q13762Framer, stream: bytes, cuts: list[int]) -> list[bytes]:
    out: list[bytes] = []
    bounds = [0, *sorted(c % (len(stream) + 1) for c in cuts), len(stream)]
    for lo, hi in itertools.pairwise(bounds):
        framer.feed(stream[lo:hi])
        out += [f.raw for f in framer.frames()]
    framer.feed_eof()
    out += [f.raw for f in framer.frames()]
    return out


@settings(
    max_examples=150, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(parts=pieces, cuts=st.lists(st.integers(0, 10_000), max_size=20))
def test_framer_any_chunking(parts: list[tuple[str, bytes]], cuts: list[int]) -> None:
    stream = b"".join(b for _, b in parts)
    expected = [b for kind, b in parts if kind == "frame"]
    framer = Q13762Framer()
    assert _collect(framer, stream, cuts) == expected
    stats = framer.statistics()
    assert stats.frames == len(expected)
    assert stats.buffered == 0
    assert stats.discarded_bytes == len(stream) - sum(map(len, expected))
    assert stats.preamble_bytes == 0


def test_framer_rejects_then_recovers_inside_broken_frame() -> None:
    good = SAMPLE_FRAMES[0]
    broken = bytearray(SAMPLE_FRAMES[1])
    broken[-2] ^= 0xFF
    framer = Q13762Framer()
    framer.feed(bytes(broken) + good)
    first = framer.next_event()
    assert isinstance(first, Rejection)
    assert first.reason == "bad-checksum"
    assert first.raw == bytes(broken)
    assert framer.next_frame() == decode_frame(good)
    stats = framer.statistics()
    assert dict(stats.rejected) == {"bad-checksum": 1}
    assert stats.discarded_bytes == len(broken)


def test_framer_ignores_impossible_length_without_waiting() -> None:
    framer = Q13762Framer(max_length=256)
    framer.feed(b"\x68\xff\xff" + SAMPLE_FRAMES[0])
    assert framer.next_event() == decode_frame(SAMPLE_FRAMES[0])
    assert framer.statistics().rejected_total == 0


def test_framer_reset_counts_discarded() -> None:
    framer = Q13762Framer()
    framer.feed(SAMPLE_FRAMES[0][:5])
    assert framer.next_frame() is NEED_DATA
    framer.reset()
    assert framer.statistics().discarded_bytes == 5
    framer.feed(SAMPLE_FRAMES[0])
    assert [f.raw for f in framer.frames()] == [SAMPLE_FRAMES[0]]


def test_sniff_probe_finds_corpus_frames_in_a_capture() -> None:
    capture = b"".join(b"\x00\x68\x01" + raw for raw in SAMPLE_FRAMES) + SAMPLE_FRAMES[0][:9]
    events = list(scan(capture, [probe_13762]))
    assert [e.frame.raw for e in events if isinstance(e, Found)] == SAMPLE_FRAMES
    rejected = [e.rejection.reason for e in events if isinstance(e, Rejected)]
    assert rejected == ["truncated"]
