"""The DL/T 698.45 link frame (the envelope only): length, control, server and client address,
header and frame check sequences, APDU kept as bytes with its service named.

```
[FE..FE] 68 | L (2) | C | SA | server address (n) | CA | HCS (2) | APDU | FCS (2) | 16
```

``L`` bits 13..0 count the bytes from the first L byte through the FCS; bit 14 says the count
is in KiB. HCS covers L..CA, FCS covers L..the last APDU byte; both are CRC-16/X-25, sent low
byte first.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import crcmod.predefined

from protocols.errors import FrameError, LocalProtocolError

START: Final = 0x68
END: Final = 0x16
WAKE: Final = 0xFE
DEFAULT_PREAMBLE: Final = 4
MAX_LENGTH_FIELD: Final = 0x3FFF
_KIB_UNIT: Final = 0x4000

#: CRC-16/X-25 (poly 0x1021 reflected, init and xorout 0xFFFF); check("123456789") = 0x906E.
crc16: Final[Callable[[bytes | bytearray], int]] = crcmod.predefined.mkCrcFun("x-25")


class _OpenIntEnum(enum.IntEnum):
    """Unlisted byte values decode as pseudo-members (``SERVICE_6E``) instead of failing."""

    @classmethod
    def _missing_(cls, value: object) -> Any:
        if not isinstance(value, int) or not 0 <= value <= 0xFF:
            return None
        member = int.__new__(cls, value)
        member._name_ = f"{cls.__name__.upper()}_{value:02X}"
        member._value_ = value
        return cls._value2member_map_.setdefault(value, member)


class Direction(enum.IntEnum):
    """C.D7."""

    DOWNLINK = 0  # client (concentrator, head-end) -> server (meter, terminal)
    UPLINK = 1


class Prm(enum.IntEnum):
    """C.D6: which side started the exchange (unverified beyond "43 request, C3 response")."""

    SERVER = 0
    CLIENT = 1


class LinkFunction(_OpenIntEnum):
    """C.D2..D0."""

    LINK_MANAGEMENT = 1
    USER_DATA = 3


class AddressType(enum.IntEnum):
    """SA.D7..D6."""

    SINGLE = 0
    WILDCARD = 1
    GROUP = 2
    BROADCAST = 3


class Service(_OpenIntEnum):
    """First APDU byte."""

    LINK_REQUEST = 0x01
    GET_REQUEST = 0x05
    SET_REQUEST = 0x06
    ACTION_REQUEST = 0x07
    PROXY_REQUEST = 0x09
    SECURITY_REQUEST = 0x10
    LINK_RESPONSE = 0x81
    GET_RESPONSE = 0x85
    SET_RESPONSE = 0x86
    ACTION_RESPONSE = 0x87
    PROXY_RESPONSE = 0x89
    SECURITY_RESPONSE = 0x90


@dataclass(frozen=True, slots=True)
class Control:
    """C: D7 direction, D6 PRM, D5 fragment, D4 reserved, D3 scrambling (SC), D2..D0 function."""

    direction: Direction = Direction.DOWNLINK
    prm: Prm = Prm.CLIENT
    function: LinkFunction = LinkFunction.USER_DATA
    fragmented: bool = False
    scrambled: bool = False
    reserved: bool = False  # D4, kept so any received byte re-encodes unchanged

    def __post_init__(self) -> None:
        if not 0 <= self.function <= 7:
            raise LocalProtocolError("bad-control", f"function {int(self.function)} exceeds 3 bits")

    @classmethod
    def from_byte(cls, c: int) -> Control:
        return cls(
            Direction(c >> 7),
            Prm(c >> 6 & 1),
            LinkFunction(c & 7),
            fragmented=bool(c & 0x20),
            scrambled=bool(c & 0x08),
            reserved=bool(c & 0x10),
        )

    @property
    def byte(self) -> int:
        return (
            self.direction << 7
            | self.prm << 6
            | self.fragmented << 5
            | self.reserved << 4
            | self.scrambled << 3
            | self.function
        )

    def __str__(self) -> str:
        return f"{self.byte:02X}"


_HEX: Final = frozenset("0123456789ABCDEF")


@dataclass(frozen=True, slots=True)
class ServerAddress:
    """The server address as printed: hex digits, most significant first (``000000000001``);
    on the wire low byte first. ``A`` nibbles are how wildcard addresses are written."""

    digits: str
    kind: AddressType = AddressType.SINGLE
    logical: int = 0  # SA.D5..D4

    def __post_init__(self) -> None:
        n = len(self.digits)
        if n % 2 or not 2 <= n <= 32 or not set(self.digits) <= _HEX:
            raise LocalProtocolError(
                "bad-address", f"server address must be 1..16 bytes of hex, got {self.digits!r}"
            )
        if not 0 <= self.logical <= 3:
            raise LocalProtocolError(
                "bad-address", f"logical address {self.logical} exceeds 2 bits"
            )

    @classmethod
    def from_wire(cls, sa: int, raw: bytes) -> ServerAddress:
        return cls(raw[::-1].hex().upper(), AddressType(sa >> 6), sa >> 4 & 3)

    @property
    def size(self) -> int:
        return len(self.digits) // 2

    @property
    def sa(self) -> int:
        return self.kind << 6 | self.logical << 4 | (self.size - 1)

    def to_wire(self) -> bytes:
        return bytes.fromhex(self.digits)[::-1]

    def __str__(self) -> str:
        return self.digits


@dataclass(frozen=True, slots=True)
class Frame:
    """One 698.45 link frame; ``apdu`` is the link user data exactly as sent."""

    control: Control
    server: ServerAddress
    client: int
    apdu: bytes
    raw: bytes = field(default=b"", compare=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.client <= 0xFF:
            raise LocalProtocolError("bad-address", f"client address {self.client} is not one byte")

    @property
    def service(self) -> Service | None:
        """The APDU's service, or ``None`` for a fragment (its first bytes are the fragment
        header, not a service) or an empty APDU."""
        if not self.apdu or self.control.fragmented:
            return None
        first = self.apdu[0]
        if self.control.scrambled:
            first = (first - 0x33) & 0xFF  # SC: user data sent +33h (unverified, never captured)
        return Service(first)


def _header_size(sa: int) -> int:
    """68 L L C SA address CA HCS HCS."""
    return 8 + (sa & 0x0F) + 1


def _length(field_value: int) -> int:
    """Bytes from L through FCS; the KiB unit is decoded as stated but never seen (unverified)."""
    count = field_value & MAX_LENGTH_FIELD
    return count * 1024 if field_value & _KIB_UNIT else count


def encode_frame(frame: Frame, preamble: int = DEFAULT_PREAMBLE) -> bytes:
    """Build the wire bytes of ``frame`` with ``preamble`` FE bytes in front."""
    server = frame.server.to_wire()
    length = 2 + 1 + 1 + len(server) + 1 + 2 + len(frame.apdu) + 2
    if length > MAX_LENGTH_FIELD:
        raise LocalProtocolError("too-long", f"{length} bytes exceed the 14-bit length field")
    head = bytearray(length.to_bytes(2, "little"))
    head += bytes((frame.control.byte, frame.server.sa)) + server + bytes((frame.client,))
    head += crc16(head).to_bytes(2, "little")
    body = head + frame.apdu
    body += crc16(body).to_bytes(2, "little")
    return b"\xfe" * preamble + bytes((START,)) + bytes(body) + bytes((END,))


def decode_frame(raw: bytes | bytearray) -> Frame:
    """Decode exactly one frame (leading ``FE`` bytes allowed, nothing after the ``16``)."""
    buf = bytes(raw).lstrip(bytes((WAKE,)))
    if not buf:
        raise FrameError("empty", "no bytes after the FE preamble")
    if buf[0] != START:
        raise FrameError("bad-start", f"expected 68, got {buf[0]:02X}")
    if len(buf) < 5 or len(buf) < _header_size(buf[4]):
        raise FrameError("truncated", f"{len(buf)} bytes do not hold the frame header")
    reason = check_header(buf)
    if reason is not None:
        raise FrameError(*reason)
    total = _length(buf[1] | buf[2] << 8) + 2
    if len(buf) < total:
        raise FrameError("truncated", f"L needs {total} bytes, got {len(buf)}")
    if len(buf) > total:
        raise FrameError("trailing-bytes", f"{len(buf) - total} bytes after the end of the frame")
    reason = check_body(buf, total)
    if reason is not None:
        raise FrameError(*reason)
    return frame_from_checked(buf[:total])


def check_header(buf: bytes | bytearray) -> tuple[str, str] | None:
    """``(reason, detail)`` when the header (present in ``buf``) is invalid: its length field
    too small to hold header, one APDU byte and FCS, or a bad HCS."""
    sa = buf[4]
    head = _header_size(sa)
    length = _length(buf[1] | buf[2] << 8)
    if length < head + 2:  # L counts offset 1 through FCS: header rest, >= 1 APDU byte, FCS
        return (
            "bad-length",
            f"L={length} cannot hold a {(sa & 0x0F) + 1}-byte address, an APDU and FCS",
        )
    hcs = crc16(bytes(buf[1 : head - 2]))
    got = buf[head - 2] | buf[head - 1] << 8
    if got != hcs:
        return "bad-hcs", f"HCS is {got:04X}, computed {hcs:04X}"
    return None


def check_body(buf: bytes | bytearray, total: int) -> tuple[str, str] | None:
    """``(reason, detail)`` when the frame of ``total`` bytes has a bad FCS or end byte."""
    fcs = crc16(bytes(buf[1 : total - 3]))
    got = buf[total - 3] | buf[total - 2] << 8
    if got != fcs:
        return "bad-fcs", f"FCS is {got:04X}, computed {fcs:04X}"
    if buf[total - 1] != END:
        return "bad-end", f"expected 16 at the end, got {buf[total - 1]:02X}"
    return None


def frame_from_checked(buf: bytes) -> Frame:
    """Build a :class:`Frame` from bytes (no preamble) whose HCS, FCS and end are verified."""
    sa = buf[4]
    head = _header_size(sa)
    return Frame(
        control=Control.from_byte(buf[3]),
        server=ServerAddress.from_wire(sa, buf[5 : head - 3]),
        client=buf[head - 3],
        apdu=buf[head : len(buf) - 3],
        raw=buf,
    )
