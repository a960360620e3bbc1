"""Data units of AFN00 (confirm/deny), 02 (forward), 03 (query), 05 (control), 06 (report).

Layouts follow PROTOCOLS.md 3.7. Where a peer may send either the 2009 or the 2013 body
(AFN00 F1, AFN06 F2) the parser decides from the length, and the unit remembers which it was so
it re-encodes the same way.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Self

import construct
from construct import Int8ul, Int16ul, Int32ul, Terminated, this

from protocols.bcd import Address
from protocols.dlt645.frame import Frame as Frame645
from protocols.errors import LocalProtocolError, ValueDecodeError

from .base import DataUnit, FrameCarrier
from .enums import (
    ConfirmEdition,
    DenyCode,
    DeviceType,
    ModuleMode,
    ProtocolType,
    ReadingMode,
    WorkChange,
)
from .fields import (
    ADDRESS,
    DATE,
    FRAME,
    RATE,
    DataclassAdapter,
    EnumAdapter,
    Rate,
    array_of,
    ascii2,
    bcd_int,
    tuple_of,
)

PROTOCOL: Final = EnumAdapter(ProtocolType)

# --- AFN00 ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Confirm(DataUnit):
    """AFN00 F1. 2013: 32 status bits (bit 0 command processed, bits 1..31 channel idle) and
    the wait time; 2009: a 16-bit status word and the wait time."""

    status: int = 1
    wait_seconds: int = 0
    edition: ConfirmEdition = ConfirmEdition.Q2013

    _Q2013: ClassVar[Any] = construct.Struct(
        "status" / Int32ul, "wait_seconds" / Int16ul, Terminated
    )
    _Q2009: ClassVar[Any] = construct.Struct(
        "status" / Int16ul, "wait_seconds" / Int16ul, Terminated
    )

    @classmethod
    def parse(cls, data: bytes) -> Self:
        if len(data) == 6:
            c = cls._Q2013.parse(data)
            return cls(c.status, c.wait_seconds, ConfirmEdition.Q2013)
        if len(data) == 4:
            c = cls._Q2009.parse(data)
            return cls(c.status, c.wait_seconds, ConfirmEdition.Q2009)
        raise ValueDecodeError(
            "bad-data-unit", f"AFN00 F1 body is 6 (2013) or 4 (2009) bytes, got {len(data)}"
        )

    def build(self) -> bytes:
        layout = self._Q2013 if self.edition is ConfirmEdition.Q2013 else self._Q2009
        return bytes(layout.build({"status": self.status, "wait_seconds": self.wait_seconds}))

    @property
    def command_processed(self) -> bool:
        # Bit 0 per the 2013 text; the 2009 word's bits are unverified (FF FF seen).
        return bool(self.status & 1)

    def channel_idle(self, channel: int) -> bool:
        return bool(self.status >> channel & 1)


@dataclass(frozen=True, slots=True)
class Deny(DataUnit):
    """AFN00 F2: one error byte."""

    code: DenyCode

    LAYOUT: ClassVar[Any] = construct.Struct("code" / EnumAdapter(DenyCode), Terminated)


# --- AFN02 / AFN05 F3: frames passed through ---------------------------------------------


@dataclass(frozen=True, slots=True)
class Forward(FrameCarrier):
    """AFN02 F1: forward a protocol frame without routing (both directions)."""

    protocol: ProtocolType
    frame: bytes
    frame645: Frame645 | None = field(default=None, init=False, compare=False, repr=False)
    frame645_error: str | None = field(default=None, init=False, compare=False, repr=False)

    LAYOUT: ClassVar[Any] = construct.Struct("protocol" / PROTOCOL, "frame" / FRAME, Terminated)

    def __post_init__(self) -> None:
        self._decode_embedded(self.protocol)


@dataclass(frozen=True, slots=True)
class StartBroadcast(FrameCarrier):
    """AFN05 F3: start a broadcast. ``control`` is kept as a plain byte (unverified whether it
    is always the protocol type), so the frame is decoded as 645 only when it looks like one."""

    control: int
    frame: bytes
    frame645: Frame645 | None = field(default=None, init=False, compare=False, repr=False)
    frame645_error: str | None = field(default=None, init=False, compare=False, repr=False)

    LAYOUT: ClassVar[Any] = construct.Struct("control" / Int8ul, "frame" / FRAME, Terminated)

    def __post_init__(self) -> None:
        self._decode_embedded(None)


# --- AFN03 -------------------------------------------------------------------------------


_VERSION_FIELDS: Final = (
    "vendor_code" / ascii2(),
    "chip_code" / ascii2(),
    "date" / DATE,
    "version" / bcd_int(2, "version"),
)


@dataclass(frozen=True, slots=True)
class VersionInfo(DataUnit):
    """AFN03 F1 uplink: vendor and chip codes (2 ASCII each, in wire order), version date
    (``None`` when all zero) and version (BCD)."""

    vendor_code: str
    chip_code: str
    date: dt.date | None
    version: int

    LAYOUT: ClassVar[Any] = construct.Struct(*_VERSION_FIELDS, Terminated)


@dataclass(frozen=True, slots=True)
class RunModeInfo(DataUnit):
    """AFN03 F10 uplink: the module's run mode, limits, addresses and supported rates."""

    module_mode: ModuleMode
    route_management: bool
    needs_slave_archive: bool
    reading_mode: ReadingMode
    delay_broadcast_flags: int  # byte 1; its individual bits are not decoded (unverified)
    channel_count: int
    outage_info: int
    reserved: int
    monitor_timeout: int  # s; the AFN13 F1 timeout to use
    broadcast_timeout: int  # s
    max_frame_length: int
    max_file_packet: int
    upgrade_wait: int
    main_node: Address
    max_slaves: int
    slave_count: int
    protocol_date: dt.date | None  # YYMMDD sent low byte first: unverified byte order
    filing_date: dt.date | None
    version: VersionInfo
    rates: tuple[Rate, ...] = ()

    LAYOUT: ClassVar[Any] = construct.Struct(
        "b0"
        / construct.BitStruct(
            "reading_mode" / construct.BitsInteger(2),
            "needs_slave_archive" / construct.Flag,
            "route_management" / construct.Flag,
            "module_mode" / construct.BitsInteger(4),
        ),
        "delay_broadcast_flags" / Int8ul,
        "b2"
        / construct.BitStruct(
            "outage_info" / construct.BitsInteger(3), "channel_count" / construct.BitsInteger(5)
        ),
        "b3"
        / construct.BitStruct(
            "unused" / construct.BitsInteger(4), "rate_count" / construct.BitsInteger(4)
        ),
        "reserved" / Int16ul,
        "monitor_timeout" / Int8ul,
        "broadcast_timeout" / Int16ul,
        "max_frame_length" / Int16ul,
        "max_file_packet" / Int16ul,
        "upgrade_wait" / Int8ul,
        "main_node" / ADDRESS,
        "max_slaves" / Int16ul,
        "slave_count" / Int16ul,
        "protocol_date" / DATE,
        "filing_date" / DATE,
        "version" / DataclassAdapter(VersionInfo, construct.Struct(*_VERSION_FIELDS)),
        "rates" / array_of(this.b3.rate_count, RATE),
        Terminated,
    )
    _BITS: ClassVar[dict[str, tuple[str, ...]]] = {
        "b0": ("reading_mode", "needs_slave_archive", "route_management", "module_mode"),
        "b2": ("outage_info", "channel_count"),
    }

    @classmethod
    def parse(cls, data: bytes) -> Self:
        c = cls.LAYOUT.parse(data)
        flat = {k: v for k, v in c.items() if not k.startswith("_") and k not in ("b0", "b2", "b3")}
        for group, names in cls._BITS.items():
            flat.update({name: c[group][name] for name in names})
        flat["module_mode"] = ModuleMode(flat["module_mode"])
        flat["reading_mode"] = ReadingMode(flat["reading_mode"])
        return cls(**flat)

    def build(self) -> bytes:
        if len(self.rates) > 15:
            raise LocalProtocolError(
                "out-of-range", f"{len(self.rates)} rates exceed the 4-bit count"
            )
        bits = self._bit_names()
        obj: dict[str, Any] = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in bits
        }
        for group, names in self._BITS.items():
            obj[group] = {name: getattr(self, name) for name in names}
        obj["b3"] = {"unused": 0, "rate_count": len(self.rates)}
        return bytes(self.LAYOUT.build(obj))

    @classmethod
    def _bit_names(cls) -> frozenset[str]:
        return frozenset(n for names in cls._BITS.values() for n in names)


# --- AFN05 -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MainNodeAddress(DataUnit):
    """AFN05 F1: set the main-node (concentrator module) address."""

    address: Address

    LAYOUT: ClassVar[Any] = construct.Struct("address" / ADDRESS, Terminated)


@dataclass(frozen=True, slots=True)
class EventReporting(DataUnit):
    """AFN05 F2: allow (True) or forbid slave event reporting; any byte but 00/01 is refused."""

    allow: bool

    LAYOUT: ClassVar[Any] = construct.Struct(
        "allow" / construct.Mapping(Int8ul, {False: 0, True: 1}), Terminated
    )


# --- AFN06 -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReportedNode:
    address: Address
    protocol: ProtocolType
    index: int


@dataclass(frozen=True, slots=True)
class SlaveInfoReport(DataUnit):
    """AFN06 F1: n x (address, protocol, slave index)."""

    nodes: tuple[ReportedNode, ...]

    LAYOUT: ClassVar[Any] = construct.Struct(
        "nodes"
        / tuple_of(
            Int8ul,
            DataclassAdapter(
                ReportedNode,
                construct.Struct("address" / ADDRESS, "protocol" / PROTOCOL, "index" / Int16ul),
            ),
        ),
        Terminated,
    )


@dataclass(frozen=True, slots=True)
class ReadDataReport(FrameCarrier):
    """AFN06 F2: the meter's reply to a router-led read. ``transit_time`` (s) is ``None`` for
    the 2009 body, which lacks it."""

    index: int
    protocol: ProtocolType
    transit_time: int | None
    frame: bytes
    frame645: Frame645 | None = field(default=None, init=False, compare=False, repr=False)
    frame645_error: str | None = field(default=None, init=False, compare=False, repr=False)

    _Q2013: ClassVar[Any] = construct.Struct(
        "index" / Int16ul,
        "protocol" / PROTOCOL,
        "transit_time" / Int16ul,
        "frame" / FRAME,
        Terminated,
    )
    _Q2009: ClassVar[Any] = construct.Struct(
        "index" / Int16ul, "protocol" / PROTOCOL, "frame" / FRAME, Terminated
    )

    def __post_init__(self) -> None:
        self._decode_embedded(self.protocol)

    @classmethod
    def parse(cls, data: bytes) -> Self:
        fits_2013 = len(data) >= 6 and data[5] == len(data) - 6
        fits_2009 = len(data) >= 4 and data[3] == len(data) - 4
        if fits_2013 and fits_2009:
            # Both length bytes are consistent: believe the one whose frame starts like a frame.
            fits_2013 = _frame_start(data, 6) or not _frame_start(data, 4)
        if fits_2013:
            c = cls._Q2013.parse(data)
            return cls(c.index, c.protocol, c.transit_time, c.frame)
        if fits_2009:
            c = cls._Q2009.parse(data)
            return cls(c.index, c.protocol, None, c.frame)
        raise ValueDecodeError(
            "bad-data-unit", f"AFN06 F2: no length byte matches the {len(data)}-byte body"
        )

    def build(self) -> bytes:
        obj = {"index": self.index, "protocol": self.protocol, "frame": self.frame}
        if self.transit_time is None:
            return bytes(self._Q2009.build(obj))
        return bytes(self._Q2013.build({**obj, "transit_time": self.transit_time}))


def _frame_start(data: bytes, offset: int) -> bool:
    return len(data) > offset and data[offset] in (0x68, 0xFE)


@dataclass(frozen=True, slots=True)
class RouteWorkChange(DataUnit):
    """AFN06 F3: the router's work changed (reading finished, search finished...)."""

    code: WorkChange

    LAYOUT: ClassVar[Any] = construct.Struct("code" / EnumAdapter(WorkChange), Terminated)


@dataclass(frozen=True, slots=True)
class SlaveEvent(FrameCarrier):
    """AFN06 F5: a slave's event report, usually its reply to 04001501."""

    device_type: DeviceType
    protocol: ProtocolType
    frame: bytes
    frame645: Frame645 | None = field(default=None, init=False, compare=False, repr=False)
    frame645_error: str | None = field(default=None, init=False, compare=False, repr=False)

    LAYOUT: ClassVar[Any] = construct.Struct(
        "device_type" / EnumAdapter(DeviceType), "protocol" / PROTOCOL, "frame" / FRAME, Terminated
    )

    def __post_init__(self) -> None:
        self._decode_embedded(self.protocol)
