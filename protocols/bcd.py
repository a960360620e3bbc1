"""Binary-coded decimal and meter addresses, shared by every protocol in this package.

Meters send multi-byte BCD values lowest byte first. A byte whose nibbles are not both 0-9 is
rejected with :class:`ValueDecodeError` — a corrupted register must never become a number.
An address is 12 BCD digits (``A`` allowed for the DL/T 645 wildcard) sent lowest byte first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from protocols.errors import LocalProtocolError, ValueDecodeError

#: byte -> its two-digit BCD value, or -1 when either nibble is above 9.
BCD_VALUE: Final[tuple[int, ...]] = tuple(
    (b >> 4) * 10 + (b & 0x0F) if (b >> 4) <= 9 and (b & 0x0F) <= 9 else -1 for b in range(256)
)
#: 0..99 -> its BCD byte.
BCD_BYTE: Final[tuple[int, ...]] = tuple((v // 10) << 4 | (v % 10) for v in range(100))


def bcd_to_int(raw: bytes | bytearray | memoryview, what: str = "value") -> int:
    """Decode little-endian BCD (lowest byte first) to an int; reject invalid digits."""
    value = 0
    for b in reversed(raw):
        v = BCD_VALUE[b]
        if v < 0:
            raise ValueDecodeError(
                "invalid-bcd", f"{what}: byte {b:02X} is not BCD in {bytes(raw).hex(' ').upper()}"
            )
        value = value * 100 + v
    return value


def int_to_bcd(value: int, size: int, what: str = "value") -> bytes:
    """Encode a non-negative int as ``size`` bytes of little-endian BCD."""
    if value < 0 or value >= 100**size:
        raise LocalProtocolError("out-of-range", f"{what}: {value} does not fit {size} BCD bytes")
    out = bytearray(size)
    for i in range(size):
        value, digit_pair = divmod(value, 100)
        out[i] = BCD_BYTE[digit_pair]
    return bytes(out)


def bcd_byte(raw: int, what: str = "value") -> int:
    """Decode one BCD byte (0..99)."""
    v = BCD_VALUE[raw]
    if v < 0:
        raise ValueDecodeError("invalid-bcd", f"{what}: byte {raw:02X} is not BCD")
    return v


_ADDRESS_DIGITS: Final = frozenset("0123456789A")


_FROM_WIRE_MAX: Final = 8192


@dataclass(frozen=True, slots=True, order=True)
class Address:
    """A 12-digit meter/node address as printed on the nameplate (most significant digit first).

    On the wire it is 6 bytes, lowest byte first: ``000102030425`` is sent ``25 04 03 02 01 00``.
    ``A`` digits only appear in the DL/T 645 wildcard (``AAAAAAAAAAAA`` or a partial form).
    """

    digits: str

    def __post_init__(self) -> None:
        if len(self.digits) != 12 or not set(self.digits) <= _ADDRESS_DIGITS:
            raise LocalProtocolError(
                "bad-address", f"address must be 12 digits, got {self.digits!r}"
            )

    @classmethod
    def parse(cls, text: str) -> Address:
        """Accept the nameplate form, tolerating spaces and lower-case ``a``; pad short numbers."""
        cleaned = text.replace(" ", "").upper()
        if cleaned.isdigit() and len(cleaned) < 12:
            cleaned = cleaned.zfill(12)
        return cls(cleaned)

    @classmethod
    def from_wire(cls, raw: bytes | bytearray | memoryview) -> Address:
        key = bytes(raw)
        cached = _FROM_WIRE.get(key)
        if cached is not None:
            return cached
        address = cls._from_wire(key)
        if len(_FROM_WIRE) >= _FROM_WIRE_MAX:
            _FROM_WIRE.clear()  # a district has a few thousand meters; never grow without bound
        _FROM_WIRE[key] = address
        return address

    @classmethod
    def _from_wire(cls, raw: bytes) -> Address:
        if len(raw) != 6:
            raise ValueDecodeError("bad-address", f"address needs 6 bytes, got {len(raw)}")
        digits = bytes(raw[::-1]).hex().upper()
        if not set(digits) <= _ADDRESS_DIGITS:
            raise ValueDecodeError(
                "bad-address", f"address bytes {bytes(raw).hex(' ').upper()} are not BCD"
            )
        return cls(digits)

    def to_wire(self) -> bytes:
        return bytes.fromhex(self.digits)[::-1]

    @property
    def is_broadcast(self) -> bool:
        return self.digits == "999999999999"

    @property
    def is_wildcard(self) -> bool:
        return "A" in self.digits

    def __str__(self) -> str:
        return self.digits


BROADCAST: Final = Address("999999999999")
WILDCARD: Final = Address("AAAAAAAAAAAA")


_FROM_WIRE: dict[bytes, Address] = {}
