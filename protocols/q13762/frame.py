"""The Q/GDW 1376.2 link frame: length, control field, information field R, address field A,
AFN, DT (Fn), data unit, checksum.

```
68 | L_lo L_hi | C | R1..R6 | [A1 A2.. A3] | AFN | DT1 DT2 | data unit | CS | 16
```

``L`` is the total frame length; ``CS`` is the sum modulo 256 of C through the last data byte.
There is no FE preamble and no +33h scrambling at this layer. :func:`decode_frame` checks the
envelope and then decodes the data unit through :mod:`.registry`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from protocols.bcd import Address
from protocols.errors import FrameError, LocalProtocolError

from .base import DataUnit, Empty, RawUnit
from .enums import Afn, CommMode, Direction, Prm
from .fields import Rate
from .registry import decode_unit, encode_unit, unit_class

START: Final = 0x68
END: Final = 0x16
MIN_LENGTH: Final = 15  # 68 L L C R(6) AFN DT1 DT2 CS 16
MAX_LENGTH: Final = 0xFFFF
MAX_FN: Final = 2048  # DT2 255, bit 7
_HEAD: Final = 10  # 68 L L C R(6)


@dataclass(frozen=True, slots=True)
class Control:
    """The control field: D7 direction, D6 PRM, D5..D0 communication mode."""

    direction: Direction
    prm: Prm
    comm_mode: CommMode

    def __post_init__(self) -> None:
        if not 0 <= self.comm_mode <= 0x3F:
            raise LocalProtocolError(
                "bad-control", f"communication mode {int(self.comm_mode)} exceeds 6 bits"
            )

    @classmethod
    def from_byte(cls, c: int) -> Control:
        return cls(Direction(c >> 7), Prm(c >> 6 & 1), CommMode(c & 0x3F))

    @property
    def byte(self) -> int:
        return self.direction << 7 | self.prm << 6 | self.comm_mode

    def __str__(self) -> str:
        return f"{self.byte:02X}"


def _check_nibbles(info: object, names: tuple[str, ...], limit: int = 0x0F) -> None:
    for name in names:
        value = getattr(info, name)
        if not 0 <= value <= limit:
            raise LocalProtocolError("out-of-range", f"{name}={value} does not fit its bits")


@dataclass(frozen=True, slots=True)
class DownlinkInfo:
    """Information field R of a downlink frame. ``raw`` holds the 6 bytes as received (or as
    they will be sent when built here)."""

    seq: int = 0
    module_flag: bool = False  # R1.D2: the address field A is present
    relay_level: int = 0
    route_flag: bool = False
    attached_node: bool = False
    conflict_detection: bool = False
    channel: int = 0
    ecc: int = 0  # error-correction code id
    expected_bytes: int = 0  # 0 = default wait
    rate: Rate = field(default_factory=Rate)
    raw: bytes = field(default=b"", init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        _check_nibbles(self, ("relay_level", "channel", "ecc"))
        _check_nibbles(self, ("seq", "expected_bytes"), 0xFF)
        object.__setattr__(self, "raw", self.to_bytes())

    @classmethod
    def from_bytes(cls, r: bytes) -> DownlinkInfo:
        info = cls(
            seq=r[5],
            module_flag=bool(r[0] & 4),
            relay_level=r[0] >> 4,
            route_flag=bool(r[0] & 1),
            attached_node=bool(r[0] & 2),
            conflict_detection=bool(r[0] & 8),
            channel=r[1] & 0x0F,
            ecc=r[1] >> 4,
            expected_bytes=r[2],
            rate=Rate.from_word(r[3] | r[4] << 8),
        )
        object.__setattr__(info, "raw", bytes(r))
        return info

    def to_bytes(self) -> bytes:
        r1 = (
            self.relay_level << 4
            | self.conflict_detection << 3
            | self.module_flag << 2
            | self.attached_node << 1
            | self.route_flag
        )
        word = self.rate.word
        return bytes(
            (
                r1,
                self.ecc << 4 | self.channel,
                self.expected_bytes,
                word & 0xFF,
                word >> 8,
                self.seq,
            )
        )


@dataclass(frozen=True, slots=True)
class UplinkInfo:
    """Information field R of an uplink frame. Bits the standard leaves reserved are not
    modelled; ``raw`` keeps them as received."""

    seq: int = 0
    module_flag: bool = False
    relay_level: int = 0
    route_flag: bool = False
    channel: int = 0
    phase: int = 0  # 0 unknown, 1..3
    channel_feature: int = 0
    command_quality: int = 0  # last-hop command signal quality, 0..15
    reply_quality: int = 0
    event_flag: bool = False  # the module has events to report
    raw: bytes = field(default=b"", init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        _check_nibbles(
            self,
            (
                "relay_level",
                "channel",
                "phase",
                "channel_feature",
                "command_quality",
                "reply_quality",
            ),
        )
        _check_nibbles(self, ("seq",), 0xFF)
        object.__setattr__(self, "raw", self.to_bytes())

    @classmethod
    def from_bytes(cls, r: bytes) -> UplinkInfo:
        info = cls(
            seq=r[5],
            module_flag=bool(r[0] & 4),
            relay_level=r[0] >> 4,
            route_flag=bool(r[0] & 1),
            channel=r[1] & 0x0F,
            phase=r[2] & 0x0F,
            channel_feature=r[2] >> 4,
            command_quality=r[3] & 0x0F,
            reply_quality=r[3] >> 4,
            event_flag=bool(r[4] & 1),
        )
        object.__setattr__(info, "raw", bytes(r))
        return info

    def to_bytes(self) -> bytes:
        r1 = self.relay_level << 4 | self.module_flag << 2 | self.route_flag
        return bytes(
            (
                r1,
                self.channel,
                self.channel_feature << 4 | self.phase,
                self.reply_quality << 4 | self.command_quality,
                int(self.event_flag),
                self.seq,
            )
        )


Info = DownlinkInfo | UplinkInfo


@dataclass(frozen=True, slots=True)
class AddressField:
    """A1 source, A2 relays (one per relay level), A3 destination."""

    source: Address
    destination: Address
    relays: tuple[Address, ...] = ()

    def to_bytes(self) -> bytes:
        return b"".join(a.to_wire() for a in (self.source, *self.relays, self.destination))


def fn_to_dt(fn: int) -> bytes:
    """Fn -> ``DT1 DT2`` as sent: DT1 the bit of (Fn-1) mod 8, DT2 the group (Fn-1) div 8."""
    if not 1 <= fn <= MAX_FN:
        raise LocalProtocolError("bad-dt", f"F{fn} is outside F1..F{MAX_FN}")
    group, bit = divmod(fn - 1, 8)
    return bytes((1 << bit, group))


def dt_to_fn(dt1: int, dt2: int) -> int:
    """``DT1 DT2`` -> Fn. A DT1 without exactly one bit set names no single function."""
    if dt1 == 0 or dt1 & (dt1 - 1):
        raise FrameError("bad-dt", f"DT1={dt1:02X} must have exactly one bit set (DT2={dt2:02X})")
    return dt2 * 8 + dt1.bit_length()


@dataclass(frozen=True, slots=True)
class Frame:
    """One 1376.2 frame. ``info`` is :class:`DownlinkInfo` or :class:`UplinkInfo` as
    ``control.direction`` says; ``address`` is present exactly when ``info.module_flag`` is."""

    control: Control
    info: Info
    afn: Afn
    fn: int
    unit: DataUnit = field(default_factory=Empty)
    address: AddressField | None = None
    raw: bytes = field(default=b"", compare=False, repr=False)

    def __post_init__(self) -> None:
        expected_info = DownlinkInfo if self.control.direction is Direction.DOWNLINK else UplinkInfo
        if not isinstance(self.info, expected_info):
            raise LocalProtocolError(
                "info-mismatch",
                f"a {self.control.direction.name} frame needs {expected_info.__name__}",
            )
        if (self.address is not None) != self.info.module_flag:
            raise LocalProtocolError(
                "address-mismatch", "the address field is present exactly when R1.D2 is set"
            )
        if self.address is not None and len(self.address.relays) != self.info.relay_level:
            raise LocalProtocolError(
                "address-mismatch",
                f"relay level {self.info.relay_level} but {len(self.address.relays)} relays",
            )
        expected_unit = unit_class(self.afn, self.fn, self.control.direction)
        if not isinstance(self.unit, RawUnit) and type(self.unit) is not expected_unit:
            raise LocalProtocolError(
                "unit-mismatch",
                f"AFN{self.afn:02X} F{self.fn} {self.control.direction.name} carries "
                f"{expected_unit.__name__}, not {type(self.unit).__name__}",
            )

    @property
    def seq(self) -> int:
        return self.info.seq

    @property
    def direction(self) -> Direction:
        return self.control.direction


def checksum(data: bytes | bytearray | memoryview) -> int:
    return sum(data) & 0xFF


def encode_frame(frame: Frame) -> bytes:
    """The wire bytes of ``frame``."""
    body = bytearray((frame.control.byte,))
    body += frame.info.to_bytes()
    if frame.address is not None:
        body += frame.address.to_bytes()
    body.append(frame.afn)
    body += fn_to_dt(frame.fn)
    body += encode_unit(frame.unit)
    total = len(body) + 5
    if total > MAX_LENGTH:
        raise LocalProtocolError("too-long", f"{total} bytes exceed the 16-bit length")
    return bytes((START, total & 0xFF, total >> 8)) + body + bytes((checksum(body), END))


def decode_frame(raw: bytes | bytearray) -> Frame:
    """Decode exactly one frame (no preamble, nothing after the ``16``)."""
    buf = bytes(raw)
    if not buf:
        raise FrameError("empty", "no bytes")
    if buf[0] != START:
        raise FrameError("bad-start", f"expected 68, got {buf[0]:02X}")
    if len(buf) < 3:
        raise FrameError("truncated", f"{len(buf)} bytes do not hold the length field")
    total = buf[1] | buf[2] << 8
    if total < MIN_LENGTH:
        raise FrameError("bad-length", f"L={total} is below the minimum {MIN_LENGTH}")
    if len(buf) < total:
        raise FrameError("truncated", f"L={total} needs {total} bytes, got {len(buf)}")
    if len(buf) > total:
        raise FrameError("trailing-bytes", f"{len(buf) - total} bytes after the end of the frame")
    cs = checksum(memoryview(buf)[3 : total - 2])
    if buf[total - 2] != cs:
        raise FrameError("bad-checksum", f"CS is {buf[total - 2]:02X}, computed {cs:02X}")
    if buf[total - 1] != END:
        raise FrameError("bad-end", f"expected 16 at the end, got {buf[total - 1]:02X}")
    return frame_from_checked(buf)


def frame_from_checked(buf: bytes) -> Frame:
    """Build a :class:`Frame` from bytes whose length, checksum and end byte are verified.

    Raises ``FrameError`` (``bad-length``, ``bad-dt``) or ``ValueDecodeError`` for what only
    the contents can reveal.
    """
    total = len(buf)
    control = Control.from_byte(buf[3])
    r = buf[4:_HEAD]
    info: Info = (
        DownlinkInfo.from_bytes(r)
        if control.direction is Direction.DOWNLINK
        else UplinkInfo.from_bytes(r)
    )
    pos = _HEAD
    address = None
    if info.module_flag:
        size = 6 * (2 + info.relay_level)
        if pos + size + 3 > total - 2:
            raise FrameError(
                "bad-length",
                f"L={total} cannot hold the address field of relay level {info.relay_level}",
            )
        addrs = [Address.from_wire(buf[i : i + 6]) for i in range(pos, pos + size, 6)]
        address = AddressField(source=addrs[0], destination=addrs[-1], relays=tuple(addrs[1:-1]))
        pos += size
    afn = Afn(buf[pos])
    fn = dt_to_fn(buf[pos + 1], buf[pos + 2])
    unit = decode_unit(afn, fn, control.direction, buf[pos + 3 : total - 2])
    return Frame(control=control, info=info, afn=afn, fn=fn, unit=unit, address=address, raw=buf)
