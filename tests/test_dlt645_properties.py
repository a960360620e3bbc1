"""Property tests: build -> parse round trips for every DI, and chunking-proof framing."""

from __future__ import annotations

import json
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.bcd import Address
from protocols.dlt645 import (
    Control,
    Direction,
    Dlt645Framer,
    Frame,
    Function,
    ReadRequest,
    ReadResponse,
    decode_frame,
    decode_message,
    encode_frame,
    items,
)
from protocols.dlt645.describe import describe_frame
from protocols.dlt645.formats import Repeated
from protocols.dlt645.messages import READ_REQUEST_2007, READ_RESPONSE_2007
from protocols.dlt645.registry import DataItem
from protocols.render import dumps

from .strategies import normalise, random_record, record_strategy

ALL_ITEMS = list(items())
ADDRESSES = st.text("0123456789", min_size=12, max_size=12).map(Address)


def _round_trip(item: DataItem, record: dict[str, object], address: Address) -> None:
    payload = item.build(record)
    msg = ReadResponse(address, item.di, payload, item.edition)
    raw = encode_frame(msg.to_frame())
    framer = Dlt645Framer()
    framer.feed(raw)
    (frame,) = framer.frames()
    back = decode_message(frame)
    assert back == msg
    assert isinstance(back, ReadResponse)
    parsed = item.parse(back.payload)
    assert parsed == normalise(item, record)
    flat: dict[str, object] = {}
    for f in item.fields:
        if isinstance(f.format, Repeated):
            flat.update({f.item_name(i): x for i, x in enumerate(parsed[f.name])})
        else:
            flat[f.name] = parsed[f.name]
    assert item.decode(back.payload).as_dict() == flat


def test_every_registry_di_round_trips() -> None:
    """Exhaustive: one random valid record for each of the registry's DIs."""
    rng = random.Random(645)
    assert len(ALL_ITEMS) > 10_000
    for item in ALL_ITEMS:
        _round_trip(item, random_record(item, rng), Address("000000000001"))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), ADDRESSES)
def test_registry_round_trip_with_random_values(data: st.DataObject, address: Address) -> None:
    item = data.draw(st.sampled_from(ALL_ITEMS))
    record = data.draw(record_strategy(item))
    _round_trip(item, record, address)


@st.composite
def valid_frames(draw: st.DrawFn) -> bytes:
    address = draw(ADDRESSES)
    item = draw(st.sampled_from(ALL_ITEMS[:2000]))
    if draw(st.booleans()):
        msg: ReadRequest | ReadResponse = ReadRequest(address, item.di, item.edition)
    else:
        msg = ReadResponse(address, item.di, item.build(draw(record_strategy(item))), item.edition)
    return encode_frame(msg.to_frame(), preamble=draw(st.integers(0, 4)))


# Noise holds no start or end byte, so every inserted frame must be found (a truncated frame
# that only lacks its 16 would otherwise be completed by a noise byte that happens to be 16);
# truncated frames are real frames cut short and do start with 68.
NOISE = st.binary(min_size=1, max_size=12).map(
    lambda b: b.replace(b"\x68", b"\x00").replace(b"\x16", b"\x00")
)
FE_RUN = st.integers(1, 8).map(lambda n: b"\xfe" * n)


@st.composite
def noisy_streams(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    parts: list[bytes] = []
    expected: list[bytes] = []
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["frame", "frame", "noise", "fe", "truncated"]))
        if kind == "frame":
            raw = draw(valid_frames())
            parts.append(raw)
            expected.append(raw.lstrip(b"\xfe"))
        elif kind == "noise":
            parts.append(draw(NOISE))
        elif kind == "fe":
            parts.append(draw(FE_RUN))
        else:
            raw = draw(valid_frames()).lstrip(b"\xfe")
            parts.append(raw[: draw(st.integers(1, len(raw) - 1))])
    return b"".join(parts), expected


def _frames(stream: bytes, cuts: list[int]) -> list[bytes]:
    framer = Dlt645Framer()
    out: list[bytes] = []
    last = 0
    for cut in sorted(set(cuts)):
        framer.feed(stream[last:cut])
        out.extend(f.raw for f in framer.frames())
        last = cut
    framer.feed(stream[last:])
    out.extend(f.raw for f in framer.frames())
    framer.feed_eof()
    out.extend(f.raw for f in framer.frames())
    assert framer.statistics().buffered == 0
    return out


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(noisy_streams(), st.data())
def test_framer_is_chunking_independent(
    sample: tuple[bytes, list[bytes]], data: st.DataObject
) -> None:
    stream, expected = sample
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    whole = _frames(stream, [])
    assert whole == expected
    assert _frames(stream, cuts) == whole
    assert _frames(stream, list(range(len(stream)))) == whole
    for raw in whole:
        decode_frame(raw)


@given(st.binary(min_size=4, max_size=40), st.booleans())
def test_read_fast_path_matches_the_declared_layouts(data: bytes, response: bool) -> None:
    address = Address("000000000001")
    control = Control(Function.READ, Direction.RESPONSE if response else Direction.REQUEST)
    msg = decode_message(Frame(address, control, data))
    if response:
        body = READ_RESPONSE_2007.parse(data)
        assert isinstance(msg, ReadResponse)
        assert (msg.di, msg.payload) == (body.di, body.payload)
    else:
        body = READ_REQUEST_2007.parse(data)
        assert isinstance(msg, ReadRequest)
        assert (msg.di, msg.extra) == (body.di, body.extra)


@settings(max_examples=500)
@given(st.integers(0, 255), st.binary(max_size=40))
def test_describe_never_raises_on_what_a_peer_sends(control: int, data: bytes) -> None:
    """Any envelope-valid frame, whatever its control code and data, is described: content
    that does not decode is reported under ``error``, never raised."""
    frame = decode_frame(
        encode_frame(Frame(Address("000000000001"), Control.from_byte(control), data))
    )
    described = describe_frame(frame)
    assert described["control"] == f"{control:02X}"
    json.loads(dumps(described))
