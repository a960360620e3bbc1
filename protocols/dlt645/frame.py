"""The DL/T 645 link frame (both editions): address, control code, scrambled data, checksum.

```
[FE..FE] 68 A0..A5 68 C L DATA(L, each byte +33h) CS 16
```

``CS`` is the sum modulo 256 of every byte from the first ``68`` through the last data byte.
:class:`Frame` holds the data with the ``+33h`` already removed; :func:`encode_frame` adds it back.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Final

from protocols.bcd import Address
from protocols.errors import FrameError, LocalProtocolError, ValueDecodeError

START: Final = 0x68
END: Final = 0x16
WAKE: Final = 0xFE
HEADER_LEN: Final = 10  # 68 A(6) 68 C L
MAX_DATA: Final = 255
DEFAULT_PREAMBLE: Final = 4

_UNSCRAMBLE: Final = bytes((b - 0x33) & 0xFF for b in range(256))
_SCRAMBLE: Final = bytes((b + 0x33) & 0xFF for b in range(256))


def unscramble(data: bytes | bytearray) -> bytes:
    """Remove the +33h every DATA byte carries on the wire."""
    return bytes(data).translate(_UNSCRAMBLE)


def scramble(data: bytes | bytearray) -> bytes:
    """Add the +33h every DATA byte carries on the wire."""
    return bytes(data).translate(_SCRAMBLE)


class Direction(enum.IntEnum):
    """Control code bit D7."""

    REQUEST = 0  # master (concentrator) -> slave (meter)
    RESPONSE = 1  # slave -> master


@dataclass(frozen=True, slots=True)
class Control:
    """The control code taken apart: D7 direction, D6 abnormal, D5 follow-up, D4..D0 function."""

    function: int
    direction: Direction = Direction.REQUEST
    abnormal: bool = False
    follow_up: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.function <= 0x1F:
            raise LocalProtocolError(
                "bad-control", f"function code {self.function:#x} exceeds 5 bits"
            )

    @classmethod
    def from_byte(cls, c: int) -> Control:
        return _CONTROLS[c]

    @property
    def byte(self) -> int:
        return (
            self.direction << 7
            | (0x40 if self.abnormal else 0)
            | (0x20 if self.follow_up else 0)
            | self.function
        )

    def reply(self, *, abnormal: bool = False, follow_up: bool = False) -> Control:
        """The control code of a reply to this request."""
        return Control(self.function, Direction.RESPONSE, abnormal, follow_up)

    def __str__(self) -> str:
        return f"{self.byte:02X}"


_CONTROLS: Final = tuple(
    Control(c & 0x1F, Direction(c >> 7), bool(c & 0x40), bool(c & 0x20)) for c in range(256)
)


@dataclass(frozen=True, slots=True)
class Frame:
    """One DL/T 645 frame; ``data`` is unscrambled (the +33h removed)."""

    address: Address
    control: Control
    data: bytes = b""
    raw: bytes = field(default=b"", compare=False, repr=False)


def checksum(frame_bytes: bytes | bytearray | memoryview) -> int:
    return sum(frame_bytes) & 0xFF


def encode_frame(frame: Frame, preamble: int = DEFAULT_PREAMBLE) -> bytes:
    """Build the wire bytes of ``frame``, with ``preamble`` wake-up ``FE`` bytes in front."""
    if len(frame.data) > MAX_DATA:
        raise LocalProtocolError("too-long", f"{len(frame.data)} data bytes exceed {MAX_DATA}")
    body = bytearray((START,))
    body += frame.address.to_wire()
    body += bytes((START, frame.control.byte, len(frame.data)))
    body += scramble(frame.data)
    body.append(checksum(body))
    body.append(END)
    return b"\xfe" * preamble + bytes(body)


def decode_frame(raw: bytes | bytearray) -> Frame:
    """Decode exactly one frame (leading ``FE`` bytes allowed, nothing after the ``16``)."""
    buf = bytes(raw)
    i = 0
    while i < len(buf) and buf[i] == WAKE:
        i += 1
    buf = buf[i:]
    if not buf:
        raise FrameError("empty", "no bytes after the FE preamble")
    if buf[0] != START:
        raise FrameError("bad-start", f"expected 68, got {buf[0]:02X}")
    if len(buf) < HEADER_LEN + 2:
        raise FrameError("truncated", f"{len(buf)} bytes is shorter than the smallest frame (12)")
    if buf[7] != START:
        raise FrameError("bad-header", f"expected the second 68 at offset 7, got {buf[7]:02X}")
    length = buf[9]
    total = HEADER_LEN + length + 2
    if len(buf) < total:
        raise FrameError("truncated", f"L={length} needs {total} bytes, got {len(buf)}")
    if len(buf) > total:
        raise FrameError("trailing-bytes", f"{len(buf) - total} bytes after the end of the frame")
    cs = checksum(memoryview(buf)[: total - 2])
    if buf[total - 2] != cs:
        raise FrameError("bad-checksum", f"CS is {buf[total - 2]:02X}, computed {cs:02X}")
    if buf[total - 1] != END:
        raise FrameError("bad-end", f"expected 16 at the end, got {buf[total - 1]:02X}")
    return frame_from_checked(buf)


def frame_from_checked(buf: bytes) -> Frame:
    """Build a :class:`Frame` from bytes whose envelope and checksum are already verified."""
    try:
        address = Address.from_wire(buf[1:7])
    except ValueDecodeError as exc:
        raise FrameError(exc.reason, exc.detail) from None
    return Frame(
        address=address,
        control=_CONTROLS[buf[8]],
        data=buf[HEADER_LEN : HEADER_LEN + buf[9]].translate(_UNSCRAMBLE),
        raw=buf,
    )
