"""DL/T 645 codec: malformed inputs with their exact errors, builders, and round trips."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from protocols.bcd import BROADCAST, WILDCARD, Address
from protocols.dlt645 import (
    ABSENT,
    BroadcastTime,
    ChangeBaud,
    Control,
    Direction,
    Dlt645Framer,
    Edition,
    ErrorResponse,
    ErrorWord,
    Frame,
    FreezeRequest,
    ReadAddressRequest,
    ReadFollowUpRequest,
    ReadRequest,
    ReadResponse,
    RelayCommand,
    RelayControl,
    WriteRequest,
    decode_frame,
    decode_message,
    encode_frame,
    find,
    lookup,
)
from protocols.errors import FrameError, LocalProtocolError, ValueDecodeError

A = Address("201000000012")


def wire(text: str) -> bytes:
    return bytes.fromhex(text)


def with_cs(text: str) -> bytes:
    """Append the right checksum and end byte to a frame body written in hex."""
    body = wire(text)
    return body + bytes((sum(body) & 0xFF, 0x16))


FRAME_ERRORS = [
    (b"", "empty"),
    (b"\xfe\xfe", "empty"),
    (wire("00 12 00 00 00 10 20 68 11 00 00 16"), "bad-start"),
    (wire("68 12 00 00"), "truncated"),
    (wire("68 12 00 00 00 10 20 00 11 00 E1 16"), "bad-header"),
    (wire("68 12 00 00 00 10 20 68 11 04 33 33"), "truncated"),
    (with_cs("68 12 00 00 00 10 20 68 11 00") + b"\x00", "trailing-bytes"),
    (wire("68 12 00 00 00 10 20 68 11 00 00 16"), "bad-checksum"),
    (with_cs("68 12 00 00 00 10 20 68 11 00")[:-1] + b"\x17", "bad-end"),
    (with_cs("68 1F 00 00 00 10 20 68 11 00"), "bad-address"),
]


@pytest.mark.parametrize(("raw", "reason"), FRAME_ERRORS)
def test_malformed_frames_get_their_exact_error(raw: bytes, reason: str) -> None:
    with pytest.raises(FrameError) as info:
        decode_frame(raw)
    assert info.value.reason == reason


def frame_of(control: int, data_minus_33: str) -> Frame:
    body = wire(data_minus_33)
    return decode_frame(encode_frame(Frame(A, Control.from_byte(control), body)))


VALUE_ERRORS = [
    # read reply for 00010000 with a nibble above 9
    (0x91, "00 00 01 00 00 00 0E 00", "invalid-bcd"),
    # date 2016-13-11: a month that does not exist
    (0x91, "01 01 00 04 01 11 13 16", "bad-timestamp"),
    # 4-byte energy answered with 2 bytes
    (0x91, "00 00 01 00 12 34", "short-value"),
    # a frozen block that is not a whole number of 4-byte values
    (0x91, "01 01 06 05 00 00 00 00 00 00", "bad-block-length"),
    # baud feature word with several bits set (the unscrambled-data capture)
    (0x17, "D5", "bad-baud-feature"),
    # relay control with an N1 that is not a relay command
    (0x1C, "02 00 00 00 00 00 00 00 55 00 00 00 00 30 12 99", "bad-relay-command"),
    # relay control one byte short
    (0x1C, "02 00 00 00 00 00 00 00 1A 00 00 00 00 30 12", "bad-length"),
    # read-address request carrying data
    (0x13, "00", "bad-length"),
    # abnormal reply with two error bytes
    (0xD1, "02 02", "bad-length"),
    # 1997 read request with a 3-byte DI
    (0x01, "10 90 00", "bad-length"),
    # broadcast time with an hour of 25
    (0x08, "00 00 25 01 01 24", "bad-timestamp"),
]


@pytest.mark.parametrize(("control", "data", "reason"), VALUE_ERRORS)
def test_malformed_content_gets_its_exact_error(control: int, data: str, reason: str) -> None:
    frame = frame_of(control, data)

    def decode_all() -> None:
        msg = decode_message(frame)
        if isinstance(msg, ReadResponse):
            msg.decode()

    with pytest.raises(ValueDecodeError) as info:
        decode_all()
    assert info.value.reason == reason


def test_absent_phases_decode_as_absent() -> None:
    item = lookup(Edition.V2007, 0x0201FF00)
    assert item is not None
    decoded = item.decode(wire("56 22 FF FF FF FF")).as_dict()
    assert decoded == {"voltage_a": Decimal("225.6"), "voltage_b": ABSENT, "voltage_c": ABSENT}


def test_signed_values_use_the_top_bit() -> None:
    item = lookup(Edition.V2007, 0x02030000)
    assert item is not None
    assert item.decode(wire("34 12 80")).as_dict() == {"active_power_total": Decimal("-0.1234")}
    assert item.build({"active_power_total": Decimal("-0.1234")}) == wire("34 12 80")
    with pytest.raises(LocalProtocolError):
        item.build({"active_power_total": Decimal("80")})


def test_status_word_3_names_relay_bits() -> None:
    item = lookup(Edition.V2007, 0x04000503)
    assert item is not None
    (value,) = item.decode(wire("50 00")).values
    assert value.value.bits["relay_open"] is True
    assert value.value.bits["relay_trip_commanded"] is True
    (value,) = item.decode(wire("00 01")).values
    assert value.value.bits["meter_type"] == "energy_prepaid"
    assert value.value.bits["relay_open"] is False


def test_extra_trailing_byte_is_kept_not_dropped() -> None:
    item = lookup(Edition.V2007, 0x00010000)
    assert item is not None
    decoded = item.decode(wire("88 19 03 00 AA"))
    assert decoded.as_dict() == {"forward_active_total": Decimal("319.88")}
    assert decoded.extra == b"\xaa"


def test_read_request_matches_the_captured_bytes() -> None:
    frame = ReadRequest(Address("652022122003"), 0x00000000).to_frame()
    assert encode_frame(frame, preamble=0) == wire(
        "68 03 20 12 22 20 65 68 11 04 33 33 33 33 8D 16"
    )
    assert encode_frame(frame)[:4] == b"\xfe" * 4


def test_1997_read_request_matches_the_captured_bytes() -> None:
    frame = ReadRequest(Address("000003430163"), 0x9010, Edition.V1997).to_frame()
    assert encode_frame(frame, preamble=0) == wire("68 63 01 43 03 00 00 68 01 02 43 C3 83 16")


def test_relay_control_matches_the_captured_bytes() -> None:
    msg = RelayControl(
        Address("151230011061"),
        RelayCommand.CLOSE_ALLOWED,
        dt.datetime(2099, 12, 30),
        0x02,
        "020637",
        "00000001",
    )
    assert encode_frame(msg.to_frame(), preamble=0) == wire(
        "68 61 10 01 30 12 15 68 1C 10 35 6A 39 35 34 33 33 33 4E 33 33 33 33 63 45 CC 2D 16"
    )


def test_broadcast_time_matches_the_captured_bytes() -> None:
    msg = BroadcastTime(dt.datetime(2017, 6, 5, 10, 40, 25), Address("111111111111"))
    assert encode_frame(msg.to_frame(), preamble=0) == wire(
        "68 11 11 11 11 11 11 68 08 06 58 73 43 38 39 4A 0D 16"
    )
    assert BroadcastTime(dt.datetime(2024, 1, 1)).to_frame().address == BROADCAST


def test_builders_round_trip_through_the_codec() -> None:
    messages = [
        ReadRequest(A, 0x05060101),
        ReadRequest(A, 0x06000001, extra=wire("05 00 00 01 01 24")),
        ReadRequest(A, 0xB611, Edition.V1997),
        ReadFollowUpRequest(A, 0x05060101, 2),
        ReadResponse(A, 0x00010000, wire("88 19 03 00")),
        ReadResponse(A, 0x05060101, wire("00 00 00 00") * 5, follow_up=True),
        ReadResponse(A, 0x05060101, wire("00 00 00 00"), seq=3),
        ReadResponse(A, 0x9010, wire("15 80 95 00"), Edition.V1997),
        ErrorResponse(A, 0x11, ErrorWord.NO_DATA),
        ErrorResponse(A, 0x01, 0x02, Edition.V1997),
        ReadAddressRequest(),
        WriteRequest(A, 0x04000102, wire("00 00 12"), 0x02, "123456", "00000001"),
        WriteRequest(A, 0xC011, wire("00 00 12"), 0x00, "000000", None, Edition.V1997),
        FreezeRequest(A),
        FreezeRequest(A, minute=0, hour=0, day=None, month=None),
        ChangeBaud(A, 9600),
        ChangeBaud(A, 9600, response=True),
        RelayControl(A, RelayCommand.TRIP, dt.datetime(2030, 1, 2, 3, 4, 5)),
        BroadcastTime(dt.datetime(2026, 11, 28, 12, 0, 0)),
    ]
    for msg in messages:
        raw = encode_frame(msg.to_frame())
        assert decode_message(decode_frame(raw)) == msg, msg


def test_wildcard_and_broadcast_addresses() -> None:
    assert ReadAddressRequest().to_frame().address == WILDCARD
    assert WILDCARD.is_wildcard
    assert not WILDCARD.is_broadcast
    assert BROADCAST.is_broadcast
    assert Address.parse("1 2") == Address("000000000012")
    with pytest.raises(LocalProtocolError):
        Address("12345")


def test_control_code_taken_apart() -> None:
    c = Control.from_byte(0xB1)
    assert (c.function, c.direction, c.abnormal, c.follow_up) == (
        0x11,
        Direction.RESPONSE,
        False,
        True,
    )
    c = Control.from_byte(0xD1)
    assert c.abnormal
    assert c.direction is Direction.RESPONSE
    assert Control(0x11).reply(follow_up=True).byte == 0xB1


def test_error_word_names() -> None:
    msg = ErrorResponse(A, 0x11, 0x06)
    assert msg.flag_names == ["no_data", "password"]
    assert ErrorResponse(A, 0x04, 0x01, Edition.V1997).flag_names == ["illegal_data"]
    assert ErrorResponse(A, 0x11, 0x80).flag_names == ["reserved_80"]


def test_find_items_by_name_or_di() -> None:
    assert find("05060101") is lookup(Edition.V2007, 0x05060101)
    assert find("9010", Edition.V1997) is lookup(Edition.V1997, 0x9010)
    item = find("forward_active_total")
    assert item is not None
    assert item.di == 0x00010000
    assert find("no_such_thing") is None


def test_registry_covers_the_documented_families() -> None:
    for di in (
        0x00000000,
        0x00010000,
        0x00013F00,
        0x0001FF00,
        0x0001000C,
        0x00020000,
        0x0002FF00,
        0x00030000,
        0x00040000,
        0x00050000,
        0x00080000,
        0x00150000,
        0x003E0000,
        0x01010000,
        0x0101FF00,
        0x02010100,
        0x0201FF00,
        0x02020100,
        0x0202FF00,
        0x02030000,
        0x0203FF00,
        0x02040000,
        0x02050000,
        0x02060000,
        0x02070100,
        0x02800001,
        0x02800002,
        0x02800007,
        0x02800008,
        0x0280000A,
        0x03010000,
        0x03110000,
        0x03110001,
        0x03300D00,
        0x03300E00,
        0x04000101,
        0x04000102,
        0x04000401,
        0x04000402,
        0x04000403,
        0x04000409,
        0x04000501,
        0x04000502,
        0x04000503,
        0x04000504,
        0x04000507,
        0x04000701,
        0x05060001,
        0x0506003E,
        0x05060101,
        0x05060201,
        0x05060901,
        0x05040001,
        0x05040101,
        0x00900100,
        0x00900101,
        0x00900200,
        0x00900201,
    ):
        assert lookup(Edition.V2007, di) is not None, f"{di:08X}"
    for di in (
        0x9010,
        0x901F,
        0x9011,
        0x9014,
        0x9020,
        0x9110,
        0x9120,
        0x9410,
        0xB611,
        0xB621,
        0xB630,
        0xB650,
        0xC010,
        0xC011,
        0xC030,
        0xC032,
        0xC033,
    ):
        assert lookup(Edition.V1997, di) is not None, f"{di:04X}"
    for di in (0x0506003F, 0x00013F0D, 0x00400000, 0x05060B01):
        assert lookup(Edition.V2007, di) is None, f"{di:08X}"


def test_framer_counts_preamble_noise_and_rejections() -> None:
    good = encode_frame(ReadRequest(A, 0x00010000).to_frame())
    bad = bytearray(encode_frame(ReadRequest(A, 0x00010000).to_frame(), preamble=0))
    bad[-2] ^= 0xFF
    framer = Dlt645Framer()
    framer.feed(b"\x01\x02" + bytes(bad) + good + b"\x68\x01")
    frames = list(framer.frames())
    assert len(frames) == 1
    framer.feed_eof()
    assert list(framer.frames()) == []
    stats = framer.statistics()
    assert stats.frames == 1
    assert stats.preamble_bytes == 4
    assert stats.rejected["bad-checksum"] == 1
    assert stats.rejected["truncated"] == 1
    assert stats.buffered == 0
    assert stats.discarded_bytes == 2 + len(bad) + 2


def test_frame_with_68_and_16_inside_address_and_data() -> None:
    addr = Address("681600006816")
    msg = ReadResponse(addr, 0x00010000, wire("16 68 16 00"))
    raw = encode_frame(msg.to_frame())
    framer = Dlt645Framer()
    framer.feed(raw[:5])
    assert list(framer.frames()) == []
    framer.feed(raw[5:])
    (frame,) = framer.frames()
    assert decode_message(frame) == msg
