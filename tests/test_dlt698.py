"""DL/T 698.45 envelope: CRC, corpus frames, malformed inputs, round trips and the framer."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.dlt645.framer import Rejection
from protocols.dlt698 import (
    AddressType,
    Control,
    Direction,
    Dlt698Framer,
    Frame,
    LinkFunction,
    Prm,
    ServerAddress,
    Service,
    crc16,
    decode_frame,
    describe_frame,
    encode_frame,
)
from protocols.dlt698.sniff import probe_698
from protocols.errors import FrameError, LocalProtocolError
from protocols.framing import NEED_DATA
from protocols.sniff import Found, Rejected, scan

CORPUS_PATH = Path(__file__).resolve().parents[2] / "shared" / "frames" / "corpus.json"
CORPUS: list[dict[str, Any]] = [
    e for e in json.loads(CORPUS_PATH.read_text(encoding="utf-8")) if e["protocol"] == "dlt698.45"
]
GOOD = [e for e in CORPUS if e["checksum_ok"]]
BAD = [e for e in CORPUS if not e["checksum_ok"]]
#: The example quoted in PROTOCOLS.md section 4 (HCS 2B 3A, FCS D7 EA).
DOC_EXAMPLE = bytes.fromhex(
    "68 17 00 43 05 AA AA AA AA AA AA 10 2B 3A 05 01 01 FF FF 02 00 00 D7 EA 16"
)


def _id(entry: dict[str, Any]) -> str:
    return f"{entry['kind']}:{entry['hex'][:36]}"


def test_crc_known_answer() -> None:
    assert crc16(b"123456789") == 0x906E


def _visible_strings(apdu: bytes) -> list[str]:
    """visible-string values (tag 0A, A-XDR length) found in an APDU; enough for the corpus."""
    out = []
    i = apdu.find(0x0A)
    while 0 <= i < len(apdu) - 1:
        n, j = apdu[i + 1], i + 2
        if n & 0x80:  # long form: the low bits say how many length bytes follow
            width = n & 0x7F
            n, j = int.from_bytes(apdu[j : j + width], "big"), j + width
        text = apdu[j : j + n]
        if len(text) == n and text.isascii():
            out.append(text.decode())
        i = apdu.find(0x0A, i + 1)
    return out


def check_stated(frame: Frame, stated: dict[str, Any]) -> None:
    for key, expected in stated.items():
        match key:
            case "C":
                assert f"{frame.control.byte:02X}" == expected
            case "value":
                assert expected in _visible_strings(frame.apdu)
            case _:
                pytest.fail(f"corpus states {key!r}, which this test does not check")


@pytest.mark.parametrize("entry", GOOD, ids=_id)
def test_corpus_frame_decodes_as_stated(entry: dict[str, Any]) -> None:
    raw = bytes.fromhex(entry["hex"])
    frame = decode_frame(raw)
    check_stated(frame, entry["decoded"])
    assert encode_frame(frame, preamble=0) == raw
    assert decode_frame(b"\xfe" * 4 + raw) == frame


def test_corpus_get_response_fields() -> None:
    frame = decode_frame(bytes.fromhex(GOOD[0]["hex"]))
    assert frame.control == Control(Direction.UPLINK, Prm.CLIENT, LinkFunction.USER_DATA)
    assert frame.server == ServerAddress("000000000001", AddressType.SINGLE, 0)
    assert frame.client == 0x10
    assert frame.service is Service.GET_RESPONSE
    d = describe_frame(frame)
    assert d["protocol"] == "dlt698.45"
    assert d["control"] == "C3"
    assert d["direction"] == "uplink"
    assert d["server_address"] == "000000000001"
    assert d["server_address_type"] == "single"
    assert d["logical_address"] == 0
    assert d["client_address"] == "10"
    assert d["service"] == "get_response"
    assert d["apdu"].startswith("85 01 01")
    json.dumps(d)


def test_documented_example() -> None:
    frame = decode_frame(DOC_EXAMPLE)
    assert frame.server.digits == "AAAAAAAAAAAA"
    assert frame.control.byte == 0x43
    assert frame.control.direction is Direction.DOWNLINK
    assert frame.service is Service.GET_REQUEST
    assert encode_frame(frame, preamble=0) == DOC_EXAMPLE
    assert encode_frame(frame)[:4] == b"\xfe" * 4


@pytest.mark.parametrize("entry", BAD, ids=_id)
def test_corpus_bad_frame_is_rejected(entry: dict[str, Any]) -> None:
    raw = bytes.fromhex(entry["hex"])
    with pytest.raises(FrameError) as exc:
        decode_frame(raw)
    assert exc.value.reason == "bad-fcs"
    framer = Dlt698Framer()
    framer.feed(raw + DOC_EXAMPLE)
    event = framer.next_event()
    assert isinstance(event, Rejection)
    assert event.reason == "bad-fcs"
    assert event.raw == raw
    assert framer.next_frame() == decode_frame(DOC_EXAMPLE)
    assert dict(framer.statistics().rejected) == {"bad-fcs": 1}


def test_corpus_holds_the_negative_frame() -> None:
    assert len(BAD) == 1
    assert len(GOOD) >= 1


@pytest.mark.parametrize(
    "raw", [bytes.fromhex(e["hex"]) for e in GOOD] + [DOC_EXAMPLE, b"\xfe\xfe" + DOC_EXAMPLE]
)
def test_every_strict_prefix_needs_data(raw: bytes) -> None:
    for cut in range(1, len(raw)):
        framer = Dlt698Framer()
        framer.feed(raw[:cut])
        assert framer.next_event() is NEED_DATA, cut
        assert framer.statistics().rejected_total == 0
        framer.feed(raw[cut:])
        frame = framer.next_frame()
        assert isinstance(frame, Frame)
        assert frame.raw == raw.lstrip(b"\xfe")


def _patch(raw: bytes, offset: int, value: int) -> bytes:
    b = bytearray(raw)
    b[offset] = value
    return bytes(b)


def _reframe(apdu: bytes, *, length_delta: int = 0) -> bytes:
    """DOC_EXAMPLE's header around ``apdu`` with a valid HCS for a (possibly wrong) length."""
    head = bytearray(DOC_EXAMPLE[1:12])
    length = 2 + 1 + 1 + 6 + 1 + 2 + len(apdu) + 2 + length_delta
    head[0:2] = length.to_bytes(2, "little")
    head += crc16(head).to_bytes(2, "little")
    body = head + apdu
    return b"\x68" + bytes(body + crc16(body).to_bytes(2, "little")) + b"\x16"


MALFORMED: list[tuple[str, bytes, str, str | None]] = [
    # (what, bytes, reason from decode_frame, reason from the framer or None)
    ("empty", b"", "empty", None),
    ("only preamble", b"\xfe\xfe", "empty", None),
    ("bad start", _patch(DOC_EXAMPLE, 0, 0x69), "bad-start", None),
    ("header cut", DOC_EXAMPLE[:8], "truncated", "truncated"),
    ("no room for an APDU", _reframe(b"", length_delta=0), "bad-length", "bad-length"),
    ("bad HCS", _patch(DOC_EXAMPLE, 12, 0x2C), "bad-hcs", "bad-hcs"),
    ("length changed (HCS catches it)", _patch(DOC_EXAMPLE, 1, 0x18), "bad-hcs", "bad-hcs"),
    ("body cut", DOC_EXAMPLE[:-1], "truncated", "truncated"),
    ("trailing byte", DOC_EXAMPLE + b"\x00", "trailing-bytes", None),
    ("bad FCS", _patch(DOC_EXAMPLE, 22, 0xD8), "bad-fcs", "bad-fcs"),
    ("APDU byte flipped", _patch(DOC_EXAMPLE, 15, 0x02), "bad-fcs", "bad-fcs"),
    ("bad end", _patch(DOC_EXAMPLE, 24, 0x17), "bad-end", "bad-end"),
]


@pytest.mark.parametrize(
    ("what", "raw", "reason", "framer_reason"), MALFORMED, ids=[m[0] for m in MALFORMED]
)
def test_malformed_input(what: str, raw: bytes, reason: str, framer_reason: str | None) -> None:
    with pytest.raises(FrameError) as exc:
        decode_frame(raw)
    assert exc.value.reason == reason, exc.value.detail
    alone = Dlt698Framer()
    alone.feed(raw)
    alone.feed_eof()
    events = []
    while (event := alone.next_event()) is not NEED_DATA:
        events.append(event)
    rejections = [e.reason for e in events if isinstance(e, Rejection)]
    assert rejections[:1] == ([framer_reason] if framer_reason else [])
    followed = Dlt698Framer()
    followed.feed(raw + DOC_EXAMPLE)
    followed.feed_eof()
    assert [f.raw for f in followed.frames()][-1:] == [DOC_EXAMPLE]


def test_local_errors() -> None:
    cases: list[tuple[str, Any]] = [
        ("bad-address", lambda: ServerAddress("12345")),
        ("bad-address", lambda: ServerAddress("XY")),
        ("bad-address", lambda: ServerAddress("00" * 17)),
        ("bad-address", lambda: ServerAddress("01", logical=4)),
        ("bad-address", lambda: Frame(Control(), ServerAddress("01"), 256, b"\x05")),
        ("bad-control", lambda: Control(function=LinkFunction(8))),
        ("too-long", lambda: encode_frame(Frame(Control(), ServerAddress("01"), 0, bytes(0x4000)))),
    ]
    for reason, make in cases:
        with pytest.raises(LocalProtocolError) as exc:
            make()
        assert exc.value.reason == reason


def test_service_of_fragment_and_scrambled_frames() -> None:
    server = ServerAddress("000000000001")
    assert Frame(Control(fragmented=True), server, 0x10, b"\x00\x00\x05").service is None
    assert Frame(Control(scrambled=True), server, 0x10, b"\x38\x34").service is Service.GET_REQUEST
    assert Frame(Control(), server, 0x10, b"\x6e").service == 0x6E
    assert Frame(Control(), server, 0x10, b"\x6e").service.name == "SERVICE_6E"  # type: ignore[union-attr]


# --- hypothesis --------------------------------------------------------------------------

controls = st.integers(0, 0xFF).filter(lambda c: c & 7 in (1, 3)).map(Control.from_byte)
servers = st.builds(
    ServerAddress,
    st.binary(min_size=1, max_size=16).map(lambda b: b.hex().upper()),
    st.sampled_from(AddressType),
    st.integers(0, 3),
)
frames = st.builds(
    Frame, controls, servers, st.integers(0, 0xFF), st.binary(min_size=1, max_size=300)
)


@settings(max_examples=300)
@given(frame=frames, preamble=st.integers(0, 4))
def test_round_trip(frame: Frame, preamble: int) -> None:
    raw = encode_frame(frame, preamble=preamble)
    decoded = decode_frame(raw)
    assert decoded == frame
    assert decoded.raw == raw[preamble:]
    assert Control.from_byte(frame.control.byte) == frame.control
    d = describe_frame(decoded)
    assert d["server_address"] == frame.server.digits
    assert d["apdu"] == frame.apdu.hex(" ").upper()
    json.dumps(d)


@given(st.integers(0, 0xFF))
def test_control_byte_round_trip(c: int) -> None:
    assert Control.from_byte(c).byte == c


valid = st.tuples(frames, st.integers(0, 4)).map(lambda fp: encode_frame(*fp))
noise = st.binary(min_size=1, max_size=30).map(lambda b: b.replace(b"\x68", b"\x69"))
truncated = valid.flatmap(lambda f: st.integers(1, len(f) - 1).map(lambda n: f[:n]))
pieces = st.lists(
    st.tuples(st.just("frame"), valid)
    | st.tuples(st.just("noise"), noise)
    | st.tuples(st.just("cut"), truncated),
    max_size=10,
)


@settings(
    max_examples=150, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(parts=pieces, cuts=st.lists(st.integers(0, 10_000), max_size=20))
def test_framer_any_chunking(parts: list[tuple[str, bytes]], cuts: list[int]) -> None:
    stream = b"".join(b for _, b in parts)
    expected = [b.lstrip(b"\xfe") for kind, b in parts if kind == "frame"]
    framer = Dlt698Framer()
    got: list[bytes] = []
    bounds = [0, *sorted(c % (len(stream) + 1) for c in cuts), len(stream)]
    for lo, hi in itertools.pairwise(bounds):
        framer.feed(stream[lo:hi])
        got += [f.raw for f in framer.frames()]
    framer.feed_eof()
    got += [f.raw for f in framer.frames()]
    assert got == expected
    stats = framer.statistics()
    assert stats.frames == len(expected)
    assert stats.buffered == 0
    assert stats.preamble_bytes + stats.discarded_bytes == len(stream) - sum(map(len, expected))


def test_sniff_probe_names_the_broken_frame() -> None:
    capture = b"\x00\x68" + b"".join(bytes.fromhex(e["hex"]) for e in CORPUS) + DOC_EXAMPLE
    events = list(scan(capture, [probe_698]))
    found = [e.frame for e in events if isinstance(e, Found)]
    expected = [bytes.fromhex(e["hex"]) for e in GOOD] + [DOC_EXAMPLE]
    assert found == [decode_frame(raw) for raw in expected]
    assert [e.rejection.reason for e in events if isinstance(e, Rejected)] == ["bad-fcs"] * len(BAD)
