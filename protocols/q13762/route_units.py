"""Data units of the routing AFNs: 10 (query), 11 (set), 13 (forward), 14 (router-led reading).

Layouts follow PROTOCOLS.md 3.7 (2013 edition). The slave archive lists of AFN10/11 and the
point-read and router-led-read exchanges are what a concentrator's collection loop runs on.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

import construct
from construct import Int8ul, Int16ul, Terminated

from protocols.bcd import Address
from protocols.dlt645.frame import Frame as Frame645

from .base import DataUnit, FrameCarrier
from .enums import DelayFlag, ProtocolType, ReadFlag
from .fields import ADDRESS, CLOCK, FRAME, DataclassAdapter, EnumAdapter, tuple_of

PROTOCOL: Final = EnumAdapter(ProtocolType)
DELAY_FLAG: Final = EnumAdapter(DelayFlag)

# --- AFN10 ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SlaveCount(DataUnit):
    """AFN10 F1 uplink: slaves in the archive and how many the module supports."""

    count: int
    max_supported: int

    LAYOUT: ClassVar[Any] = construct.Struct(
        "count" / Int16ul, "max_supported" / Int16ul, Terminated
    )


@dataclass(frozen=True, slots=True)
class SlaveInfoQuery(DataUnit):
    """AFN10 F2 downlink: list ``count`` slaves starting at ``start_index``."""

    start_index: int
    count: int

    LAYOUT: ClassVar[Any] = construct.Struct("start_index" / Int16ul, "count" / Int8ul, Terminated)


@dataclass(frozen=True, slots=True)
class SlaveNodeInfo:
    address: Address
    info: int  # relay level, signal quality, phase, protocol bits; not split (unverified)


@dataclass(frozen=True, slots=True)
class SlaveInfoList(DataUnit):
    """AFN10 F2 uplink: the archive size and one page of it."""

    total: int
    nodes: tuple[SlaveNodeInfo, ...]

    LAYOUT: ClassVar[Any] = construct.Struct(
        "total" / Int16ul,
        "nodes"
        / tuple_of(
            Int8ul,
            DataclassAdapter(
                SlaveNodeInfo, construct.Struct("address" / ADDRESS, "info" / Int16ul)
            ),
        ),
        Terminated,
    )


# --- AFN11 ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SlaveNode:
    address: Address
    protocol: ProtocolType


@dataclass(frozen=True, slots=True)
class AddSlaves(DataUnit):
    """AFN11 F1, 2013 body: address + protocol. (The 2009 body with a slave index between
    them is [unsure] in PROTOCOLS.md, unverified and not parsed: it fails as bad-data-unit.)"""

    nodes: tuple[SlaveNode, ...]

    LAYOUT: ClassVar[Any] = construct.Struct(
        "nodes"
        / tuple_of(
            Int8ul,
            DataclassAdapter(
                SlaveNode, construct.Struct("address" / ADDRESS, "protocol" / PROTOCOL)
            ),
        ),
        Terminated,
    )


@dataclass(frozen=True, slots=True)
class DeleteSlaves(DataUnit):
    """AFN11 F2: remove slaves from the archive."""

    addresses: tuple[Address, ...]

    LAYOUT: ClassVar[Any] = construct.Struct("addresses" / tuple_of(Int8ul, ADDRESS), Terminated)


# --- AFN13 ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MonitorRequest(FrameCarrier):
    """AFN13 F1 downlink: read a slave through the router (the A field names the slave)."""

    protocol: ProtocolType
    delay_flag: DelayFlag
    attached: tuple[Address, ...]
    frame: bytes
    frame645: Frame645 | None = field(default=None, init=False, compare=False, repr=False)
    frame645_error: str | None = field(default=None, init=False, compare=False, repr=False)

    LAYOUT: ClassVar[Any] = construct.Struct(
        "protocol" / PROTOCOL,
        "delay_flag" / DELAY_FLAG,
        "attached" / tuple_of(Int8ul, ADDRESS),
        "frame" / FRAME,
        Terminated,
    )

    def __post_init__(self) -> None:
        self._decode_embedded(self.protocol)


@dataclass(frozen=True, slots=True)
class MonitorReply(FrameCarrier):
    """AFN13 F1 uplink: the slave's reply (an empty ``frame`` when the meter was silent)."""

    transit_time: int  # s
    protocol: ProtocolType
    frame: bytes
    frame645: Frame645 | None = field(default=None, init=False, compare=False, repr=False)
    frame645_error: str | None = field(default=None, init=False, compare=False, repr=False)

    LAYOUT: ClassVar[Any] = construct.Struct(
        "transit_time" / Int16ul, "protocol" / PROTOCOL, "frame" / FRAME, Terminated
    )

    def __post_init__(self) -> None:
        self._decode_embedded(self.protocol)


# --- AFN14 ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadRequest(DataUnit):
    """AFN14 F1 uplink: the router asks what to read from this slave."""

    phase: int  # 0 unknown, 1..3
    address: Address
    index: int

    LAYOUT: ClassVar[Any] = construct.Struct(
        "phase" / Int8ul, "address" / ADDRESS, "index" / Int16ul, Terminated
    )


@dataclass(frozen=True, slots=True)
class ReadAnswer(FrameCarrier):
    """AFN14 F1 downlink: the concentrator's answer; the frame has no protocol byte, so it is
    decoded as 645 when it looks like one."""

    read_flag: ReadFlag
    delay_flag: DelayFlag = DelayFlag.NOT_RELATED
    frame: bytes = b""
    attached: tuple[Address, ...] = ()
    frame645: Frame645 | None = field(default=None, init=False, compare=False, repr=False)
    frame645_error: str | None = field(default=None, init=False, compare=False, repr=False)

    LAYOUT: ClassVar[Any] = construct.Struct(
        "read_flag" / EnumAdapter(ReadFlag),
        "delay_flag" / DELAY_FLAG,
        "frame" / FRAME,
        "attached" / tuple_of(Int8ul, ADDRESS),
        Terminated,
    )

    def __post_init__(self) -> None:
        self._decode_embedded(None)


@dataclass(frozen=True, slots=True)
class ClockAnswer(DataUnit):
    """AFN14 F2 downlink: the concentrator's clock, ``ss mm hh DD MM YY``."""

    time: dt.datetime

    LAYOUT: ClassVar[Any] = construct.Struct("time" / CLOCK, Terminated)


@dataclass(frozen=True, slots=True)
class DelayCorrectionRequest(FrameCarrier):
    """AFN14 F3 uplink: the router asks for a frame corrected for ``expected_delay`` (s)."""

    address: Address
    expected_delay: int
    frame: bytes
    frame645: Frame645 | None = field(default=None, init=False, compare=False, repr=False)
    frame645_error: str | None = field(default=None, init=False, compare=False, repr=False)

    LAYOUT: ClassVar[Any] = construct.Struct(
        "address" / ADDRESS, "expected_delay" / Int16ul, "frame" / FRAME, Terminated
    )

    def __post_init__(self) -> None:
        self._decode_embedded(None)


@dataclass(frozen=True, slots=True)
class DelayCorrectedFrame(FrameCarrier):
    """AFN14 F3 downlink: the delay-corrected frame."""

    frame: bytes
    frame645: Frame645 | None = field(default=None, init=False, compare=False, repr=False)
    frame645_error: str | None = field(default=None, init=False, compare=False, repr=False)

    LAYOUT: ClassVar[Any] = construct.Struct("frame" / FRAME, Terminated)

    def __post_init__(self) -> None:
        self._decode_embedded(None)
