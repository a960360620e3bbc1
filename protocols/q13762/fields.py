"""``construct`` building blocks shared by the 1376.2 data-unit declarations.

Each piece converts between wire bytes and the typed value a data unit holds (an
:class:`~protocols.bcd.Address`, an open enum, a :class:`Rate`, a date), so one declaration
serves both parsing and building. Errors raised here are our own (``ValueDecodeError`` on parse,
``LocalProtocolError`` on build); :mod:`.units` maps construct's own errors at its single seam.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Any, Final

import construct

from protocols.bcd import BCD_BYTE, Address, bcd_byte, bcd_to_int, int_to_bcd
from protocols.errors import LocalProtocolError, ValueDecodeError

from .enums import OpenIntEnum


@dataclass(frozen=True, slots=True)
class Rate:
    """A communication rate word: D14..D0 the rate (0 = default), D15 the unit."""

    value: int = 0
    kbps: bool = False  # D15: False = bit/s, True = kbit/s

    def __post_init__(self) -> None:
        if not 0 <= self.value <= 0x7FFF:
            raise LocalProtocolError("out-of-range", f"rate {self.value} exceeds 15 bits")

    @classmethod
    def from_word(cls, word: int) -> Rate:
        return cls(word & 0x7FFF, bool(word & 0x8000))

    @property
    def word(self) -> int:
        return self.value | (0x8000 if self.kbps else 0)


class _AddressAdapter(construct.Adapter):  # type: ignore[misc]
    def _decode(self, obj: bytes, context: Any, path: str) -> Address:
        return Address.from_wire(obj)

    def _encode(self, obj: Address, context: Any, path: str) -> bytes:
        return obj.to_wire()


class EnumAdapter(construct.Adapter):  # type: ignore[misc]
    """An integer field read as an :class:`OpenIntEnum` member (unknown values survive)."""

    def __init__(self, enum_type: type[OpenIntEnum], subcon: Any = construct.Int8ul) -> None:
        super().__init__(subcon)
        self.enum_type = enum_type

    def _decode(self, obj: int, context: Any, path: str) -> OpenIntEnum:
        return self.enum_type(obj)

    def _encode(self, obj: int, context: Any, path: str) -> int:
        return int(obj)


class _RateAdapter(construct.Adapter):  # type: ignore[misc]
    def _decode(self, obj: int, context: Any, path: str) -> Rate:
        return Rate.from_word(obj)

    def _encode(self, obj: Rate, context: Any, path: str) -> int:
        return obj.word


class _TupleAdapter(construct.Adapter):  # type: ignore[misc]
    """Lists come back as tuples so frozen data units stay hashable and compare by value."""

    def _decode(self, obj: list[Any], context: Any, path: str) -> tuple[Any, ...]:
        return tuple(obj)

    def _encode(self, obj: tuple[Any, ...], context: Any, path: str) -> list[Any]:
        return list(obj)


class _BcdDate(construct.Adapter):  # type: ignore[misc]
    """``DD MM YY`` on the wire (YYMMDD sent low byte first); all zero = never set (``None``)."""

    def _decode(self, obj: bytes, context: Any, path: str) -> dt.date | None:
        if obj == b"\x00\x00\x00":
            return None
        day, month, year = (bcd_byte(b, "date") for b in obj)
        try:
            return dt.date(2000 + year, month, day)
        except ValueError:
            raise ValueDecodeError(
                "bad-timestamp", f"{obj[::-1].hex().upper()} is not a valid YYMMDD"
            ) from None

    def _encode(self, obj: dt.date | None, context: Any, path: str) -> bytes:
        if obj is None:
            return b"\x00\x00\x00"
        return _bcd_parts((obj.day, obj.month, obj.year - 2000), obj)


class _BcdClock(construct.Adapter):  # type: ignore[misc]
    """``ss mm hh DD MM YY`` (AFN14 F2), years 20YY."""

    def _decode(self, obj: bytes, context: Any, path: str) -> dt.datetime:
        second, minute, hour, day, month, year = (bcd_byte(b, "clock") for b in obj)
        try:
            return dt.datetime(2000 + year, month, day, hour, minute, second)
        except ValueError:
            raise ValueDecodeError(
                "bad-timestamp", f"{obj[::-1].hex().upper()} is not a valid YYMMDDhhmmss"
            ) from None

    def _encode(self, obj: dt.datetime, context: Any, path: str) -> bytes:
        parts = (obj.second, obj.minute, obj.hour, obj.day, obj.month, obj.year - 2000)
        return _bcd_parts(parts, obj)


def _bcd_parts(parts: tuple[int, ...], value: object) -> bytes:
    if not all(0 <= p <= 99 for p in parts):
        raise LocalProtocolError("out-of-range", f"{value} cannot be sent as BCD 20YY")
    return bytes(BCD_BYTE[p] for p in parts)


class DataclassAdapter(construct.Adapter):  # type: ignore[misc]
    """A ``Struct`` whose fields are named like a dataclass's init fields, read as that class."""

    def __init__(self, cls: type[Any], subcon: Any) -> None:
        super().__init__(subcon)
        self.cls = cls
        self.names = tuple(f.name for f in dataclasses.fields(cls) if f.init)

    def _decode(self, obj: Any, context: Any, path: str) -> Any:
        return self.cls(**{name: obj[name] for name in self.names})

    def _encode(self, obj: Any, context: Any, path: str) -> dict[str, Any]:
        return {name: getattr(obj, name) for name in self.names}


ADDRESS: Final = _AddressAdapter(construct.Bytes(6))
RATE: Final = _RateAdapter(construct.Int16ul)
DATE: Final = _BcdDate(construct.Bytes(3))
CLOCK: Final = _BcdClock(construct.Bytes(6))
#: A 1-byte length followed by that many bytes (the embedded protocol frames).
FRAME: Final = construct.Prefixed(construct.Int8ul, construct.GreedyBytes)


def tuple_of(count: Any, item: Any) -> Any:
    """``count`` items (a construct, e.g. ``Int8ul`` for an n-prefixed list) as a tuple."""
    return _TupleAdapter(construct.PrefixedArray(count, item))


def array_of(count: Any, item: Any) -> Any:
    """An array whose length comes from the context (``this.n``), as a tuple."""
    return _TupleAdapter(construct.Array(count, item))


def ascii2() -> Any:
    """Two ASCII characters in wire order (vendor and chip codes; any byte survives)."""
    return construct.ExprAdapter(
        construct.Bytes(2),
        decoder=lambda obj, ctx: obj.decode("latin-1"),
        encoder=lambda obj, ctx: _latin1(obj),
    )


def _latin1(text: str) -> bytes:
    try:
        raw = text.encode("latin-1")
    except UnicodeEncodeError:
        raise LocalProtocolError("out-of-range", f"{text!r} is not single-byte text") from None
    if len(raw) != 2:
        raise LocalProtocolError("out-of-range", f"{text!r} must be exactly 2 characters")
    return raw


def bcd_int(size: int, what: str) -> Any:
    """A whole number in ``size`` BCD bytes, lowest byte first."""
    return construct.ExprAdapter(
        construct.Bytes(size),
        decoder=lambda obj, ctx: bcd_to_int(obj, what),
        encoder=lambda obj, ctx: int_to_bcd(obj, size, what),
    )
