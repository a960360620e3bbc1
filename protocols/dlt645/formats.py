"""Value formats of DL/T 645 data items, declared once for both parsing and building.

Each format is a ``construct`` construct, so data-item layouts compose with ``Struct`` and
compile with construct's compiler; each also offers plain ``decode(raw)`` / ``encode(value)``.
Values are lowest byte first on the wire, BCD unless stated:

* :class:`BcdNumber` — ``XXXXXX.XX`` and friends as :class:`~decimal.Decimal` with the meter's
  own number of decimals; optionally signed (the top bit of the highest byte is the sign).
* :class:`BcdInteger` — counters, minutes, constants as ``int``.
* :class:`BcdTimestamp` — ``YYMMDDhhmm``, ``YYMMDDhhmmss``, ``YYMMDD``, ``hhmmss`` (meter local
  time, naive); years are 20YY.
* :class:`DigitString`, :class:`AsciiText`, :class:`BaudFeature`, :class:`StatusWord`.

A field whose bytes are all ``FF`` (absent phase on a single-phase meter, a never-written
record) decodes to :data:`ABSENT`; a timestamp of all ``00`` (an empty frozen slot) too.
Any other non-BCD byte raises :class:`~protocols.errors.ValueDecodeError`.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Final

import construct

from protocols.bcd import BCD_BYTE, BCD_VALUE, int_to_bcd
from protocols.errors import LocalProtocolError, ValueDecodeError


class _Absent(enum.Enum):
    ABSENT = "absent"

    def __repr__(self) -> str:
        return "ABSENT"

    def __bool__(self) -> bool:
        return False


#: A value the meter reports as not present (all ``FF``).
ABSENT: Final = _Absent.ABSENT
Absent = _Absent


def _check_size(raw: bytes, size: int, what: str) -> None:
    if len(raw) != size:
        raise ValueDecodeError("short-value", f"{what} needs {size} bytes, got {len(raw)}")


class ValueFormat(construct.Construct):  # type: ignore[misc]
    """Base of the value formats: fixed size, ``decode``/``encode`` plus the construct hooks."""

    size: int
    what: str = "value"

    def decode(self, raw: bytes) -> Any:
        raise NotImplementedError

    def encode(self, value: Any) -> bytes:
        raise NotImplementedError

    # construct protocol -------------------------------------------------------------------
    def _parse(self, stream: Any, context: Any, path: str) -> Any:
        return self.decode(construct.stream_read(stream, self.size, path))

    def _build(self, obj: Any, stream: Any, context: Any, path: str) -> Any:
        construct.stream_write(stream, self.encode(obj), self.size, path)
        return obj

    def _sizeof(self, context: Any, path: str) -> int:
        return self.size

    def _emitparse(self, code: Any) -> str:
        code.linkedinstances[id(self)] = self
        return f"linkedinstances[{id(self)}].decode(io.read({self.size}))"

    def _emitbuild(self, code: Any) -> str:
        code.linkedinstances[id(self)] = self
        return f"(io.write(linkedinstances[{id(self)}].encode(obj)), obj)[1]"


def _bcd_digits(raw: bytes, what: str) -> int:
    value = 0
    for b in reversed(raw):
        v = BCD_VALUE[b]
        if v < 0:
            raise ValueDecodeError(
                "invalid-bcd", f"{what}: byte {b:02X} is not BCD in {raw.hex(' ').upper()}"
            )
        value = value * 100 + v
    return value


class BcdNumber(ValueFormat):
    """A decimal quantity: ``size`` BCD bytes with ``decimals`` implied decimals."""

    def __init__(self, size: int, decimals: int, *, signed: bool = False) -> None:
        super().__init__()
        self.size = size
        self.decimals = decimals
        self.signed = signed
        self._all_ff = b"\xff" * size
        self._limit = 100**size // (2 if signed else 1)

    def decode(self, raw: bytes) -> Decimal | Absent:
        if len(raw) != self.size:
            _check_size(raw, self.size, self.what)
        if raw == self._all_ff:
            return ABSENT
        if self.signed and raw[-1] & 0x80:
            magnitude = _bcd_digits(raw[:-1] + bytes((raw[-1] & 0x7F,)), self.what)
            return Decimal(-magnitude).scaleb(-self.decimals)
        return Decimal(_bcd_digits(raw, self.what)).scaleb(-self.decimals)

    def encode(self, value: Decimal | Absent) -> bytes:
        if value is ABSENT:
            return self._all_ff
        assert isinstance(value, Decimal)
        scaled = value.scaleb(self.decimals)
        if scaled != scaled.to_integral_value():
            raise LocalProtocolError(
                "out-of-range", f"{value} has more than {self.decimals} decimals"
            )
        units = int(scaled)
        negative = units < 0
        if negative and not self.signed:
            raise LocalProtocolError("out-of-range", f"{value} is negative for an unsigned field")
        raw = bytearray(int_to_bcd(abs(units), self.size, self.what))
        if self.signed:
            if raw[-1] & 0x80:
                raise LocalProtocolError("out-of-range", f"{value} does not fit a signed field")
            if negative:
                raw[-1] |= 0x80
        return bytes(raw)

    def __repr__(self) -> str:
        return f"BcdNumber({self.size}, {self.decimals}, signed={self.signed})"


class BcdInteger(ValueFormat):
    """A counter or other whole number in ``size`` BCD bytes."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self._all_ff = b"\xff" * size

    def decode(self, raw: bytes) -> int | Absent:
        if len(raw) != self.size:
            _check_size(raw, self.size, self.what)
        if raw == self._all_ff:
            return ABSENT
        return _bcd_digits(raw, self.what)

    def encode(self, value: int | Absent) -> bytes:
        if value is ABSENT:
            return self._all_ff
        assert isinstance(value, int)
        return int_to_bcd(value, self.size, self.what)

    def __repr__(self) -> str:
        return f"BcdInteger({self.size})"


_PATTERNS: Final = {
    "YYMMDDhhmmss": 6,
    "YYMMDDhhmm": 5,
    "YYMMDD": 3,
    "MMDDhhmm": 4,
    "hhmmss": 3,
}


class BcdTimestamp(ValueFormat):
    """Date and/or time as BCD, written most significant first in ``pattern``, sent reversed."""

    def __init__(self, pattern: str) -> None:
        super().__init__()
        if pattern not in _PATTERNS:
            raise ValueError(f"unknown timestamp pattern {pattern}")
        self.pattern = pattern
        self.size = _PATTERNS[pattern]
        self._all_ff = b"\xff" * self.size
        self._all_00 = bytes(self.size)

    def decode(self, raw: bytes) -> dt.datetime | dt.date | dt.time | Absent:
        if len(raw) != self.size:
            _check_size(raw, self.size, self.what)
        if raw == self._all_ff or (raw == self._all_00 and self.pattern != "hhmmss"):
            return ABSENT
        digits = []
        for b in reversed(raw):
            v = BCD_VALUE[b]
            if v < 0:
                raise ValueDecodeError(
                    "invalid-bcd",
                    f"{self.what}: byte {b:02X} is not BCD in {self.pattern} "
                    f"{raw.hex(' ').upper()}",
                )
            digits.append(v)
        try:
            match self.pattern:
                case "YYMMDDhhmmss":
                    return dt.datetime(
                        2000 + digits[0], digits[1], digits[2], digits[3], digits[4], digits[5]
                    )
                case "YYMMDDhhmm":
                    return dt.datetime(2000 + digits[0], digits[1], digits[2], digits[3], digits[4])
                case "YYMMDD":
                    return dt.date(2000 + digits[0], digits[1], digits[2])
                case "MMDDhhmm":
                    return dt.datetime(2000, digits[0], digits[1], digits[2], digits[3])
                case _:
                    return dt.time(digits[0], digits[1], digits[2])
        except ValueError as exc:
            raise ValueDecodeError(
                "bad-timestamp",
                f"{self.what}: {raw[::-1].hex().upper()} is not a valid {self.pattern}: {exc}",
            ) from None

    def encode(self, value: dt.datetime | dt.date | dt.time | Absent) -> bytes:
        if value is ABSENT:
            return self._all_ff
        parts: Sequence[int]
        match self.pattern:
            case "YYMMDDhhmmss":
                assert isinstance(value, dt.datetime)
                parts = (
                    value.year - 2000,
                    value.month,
                    value.day,
                    value.hour,
                    value.minute,
                    value.second,
                )
            case "YYMMDDhhmm":
                assert isinstance(value, dt.datetime)
                parts = (value.year - 2000, value.month, value.day, value.hour, value.minute)
            case "YYMMDD":
                assert isinstance(value, dt.date)
                parts = (value.year - 2000, value.month, value.day)
            case "MMDDhhmm":
                assert isinstance(value, dt.datetime)
                parts = (value.month, value.day, value.hour, value.minute)
            case _:
                assert isinstance(value, dt.time)
                parts = (value.hour, value.minute, value.second)
        if not all(0 <= p <= 99 for p in parts):
            raise LocalProtocolError("out-of-range", f"{value} cannot be sent as {self.pattern}")
        return bytes(BCD_BYTE[p] for p in reversed(parts))

    def __repr__(self) -> str:
        return f"BcdTimestamp({self.pattern!r})"


class DigitString(ValueFormat):
    """A number kept as its digits (address, meter number): ``size`` BCD bytes, lowest first."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def decode(self, raw: bytes) -> str:
        if len(raw) != self.size:
            _check_size(raw, self.size, self.what)
        text = raw[::-1].hex().upper()
        if not text.isdigit():
            raise ValueDecodeError("invalid-bcd", f"{self.what}: {text} is not all digits")
        return text

    def encode(self, value: str) -> bytes:
        if len(value) != self.size * 2 or not value.isdigit():
            raise LocalProtocolError("out-of-range", f"{value!r} is not {self.size * 2} digits")
        return bytes.fromhex(value)[::-1]


class HexString(ValueFormat):
    """Opaque bytes shown as hex, most significant byte first (passwords, operator codes)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def decode(self, raw: bytes) -> str:
        if len(raw) != self.size:
            _check_size(raw, self.size, self.what)
        return raw[::-1].hex().upper()

    def encode(self, value: str) -> bytes:
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            raise LocalProtocolError("out-of-range", f"{value!r} is not hex") from None
        if len(raw) != self.size:
            raise LocalProtocolError("out-of-range", f"{value!r} is not {self.size} bytes")
        return raw[::-1]


class AsciiText(ValueFormat):
    """Text stored lowest byte first (so reversed on the wire), padded with NUL or spaces."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def decode(self, raw: bytes) -> str:
        if len(raw) != self.size:
            _check_size(raw, self.size, self.what)
        try:
            return raw[::-1].decode("ascii").strip("\x00 ")
        except UnicodeDecodeError:
            raise ValueDecodeError(
                "bad-text", f"{self.what}: {raw.hex(' ').upper()} is not ASCII"
            ) from None

    def encode(self, value: str) -> bytes:
        raw = value.encode("ascii")
        if len(raw) > self.size:
            raise LocalProtocolError("out-of-range", f"{value!r} is longer than {self.size}")
        return raw.rjust(self.size, b"\x00")[::-1]


#: Baud feature byte Z: bit -> baud rate.
BAUD_BITS: Final = MappingProxyType({1: 600, 2: 1200, 3: 2400, 4: 4800, 5: 9600, 6: 19200})


class BaudFeature(ValueFormat):
    """The baud-rate feature word Z: exactly one of bits 1..6 set."""

    size = 1

    def decode(self, raw: bytes) -> int:
        if len(raw) != 1:
            _check_size(raw, 1, self.what)
        z = raw[0]
        bauds = [baud for bit, baud in BAUD_BITS.items() if z & (1 << bit)]
        if len(bauds) != 1 or z & 0x81:
            raise ValueDecodeError(
                "bad-baud-feature", f"{self.what}: Z={z:02X} does not name one baud rate"
            )
        return bauds[0]

    def encode(self, value: int) -> bytes:
        for bit, baud in BAUD_BITS.items():
            if baud == value:
                return bytes((1 << bit,))
        raise LocalProtocolError("out-of-range", f"{value} is not a DL/T 645 baud rate")


@dataclass(frozen=True, slots=True)
class BitField:
    """A named bit (``width`` 1) or a small enumerated field inside a status word."""

    name: str
    bit: int
    width: int = 1
    labels: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StatusBits:
    """A status word and its named bits (``bool``, or a label for multi-bit fields)."""

    word: int
    bits: Mapping[str, bool | str]
    size: int = 2

    def __str__(self) -> str:
        return f"{self.word:0{self.size * 2}X}"


class StatusWord(ValueFormat):
    """A run-status word (binary, lowest byte first) with named bits."""

    def __init__(self, size: int, fields: Sequence[BitField]) -> None:
        super().__init__()
        self.size = size
        self.fields = tuple(fields)

    def decode(self, raw: bytes) -> StatusBits:
        if len(raw) != self.size:
            _check_size(raw, self.size, self.what)
        word = int.from_bytes(raw, "little")
        bits: dict[str, bool | str] = {}
        for f in self.fields:
            v = (word >> f.bit) & ((1 << f.width) - 1)
            bits[f.name] = f.labels[v] if f.labels else bool(v)
        return StatusBits(word, MappingProxyType(bits), self.size)

    def encode(self, value: StatusBits | int) -> bytes:
        word = value.word if isinstance(value, StatusBits) else value
        return word.to_bytes(self.size, "little")

    def compose(self, **bits: bool | str) -> StatusBits:
        """Build a word from named bits (the simulator sets status this way)."""
        word = 0
        for f in self.fields:
            if f.name not in bits:
                continue
            v = bits[f.name]
            code = f.labels.index(v) if isinstance(v, str) else int(bool(v))
            word |= code << f.bit
        return self.decode(word.to_bytes(self.size, "little"))


class Repeated(ValueFormat):
    """As many ``item`` values as the payload holds (blocks like ``0001FF00``, ``05060101``)."""

    def __init__(self, item: ValueFormat, minimum: int = 1) -> None:
        super().__init__()
        self.item = item
        self.minimum = minimum
        self.size = item.size

    def decode(self, raw: bytes) -> list[Any]:
        n, rest = divmod(len(raw), self.item.size)
        if rest or n < self.minimum:
            raise ValueDecodeError(
                "bad-block-length",
                f"{len(raw)} bytes is not a whole number of {self.item.size}-byte items",
            )
        size = self.item.size
        dec = self.item.decode
        return [dec(raw[i : i + size]) for i in range(0, len(raw), size)]

    def encode(self, value: Sequence[Any]) -> bytes:
        return b"".join(self.item.encode(v) for v in value)

    def _parse(self, stream: Any, context: Any, path: str) -> Any:
        return self.decode(construct.stream_read_entire(stream, path))

    def _build(self, obj: Any, stream: Any, context: Any, path: str) -> Any:
        raw = self.encode(obj)
        construct.stream_write(stream, raw, len(raw), path)
        return obj

    def _sizeof(self, context: Any, path: str) -> int:
        raise construct.SizeofError("a block has no fixed size", path=path)

    def _emitparse(self, code: Any) -> str:
        code.linkedinstances[id(self)] = self
        return f"linkedinstances[{id(self)}].decode(io.read())"
