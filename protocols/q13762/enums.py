"""The code tables of Q/GDW 1376.2: control-field parts, AFNs, protocol types, deny codes.

Every table is an :class:`OpenIntEnum`: a value the table does not list (a vendor AFN, a mode
added by a later revision) still decodes, as a pseudo-member named after its value, so an unknown
code never makes a frame undecodable and re-encodes to the same byte.
"""

from __future__ import annotations

import enum
from typing import Any


class OpenIntEnum(enum.IntEnum):
    """An IntEnum that accepts unlisted values 0..0xFFFF as pseudo-members (e.g. ``AFN_0A``)."""

    @classmethod
    def _missing_(cls, value: object) -> Any:
        if not isinstance(value, int) or not 0 <= value <= 0xFFFF:
            return None
        member = int.__new__(cls, value)
        member._name_ = f"{cls._prefix()}_{value:02X}"
        member._value_ = value
        # Cache it so identity and pickling behave like a listed member.
        return cls._value2member_map_.setdefault(value, member)

    @classmethod
    def _prefix(cls) -> str:
        return cls.__name__.upper()

    @property
    def known(self) -> bool:
        """Whether the value is listed in the table (not a pseudo-member)."""
        return self._name_ in type(self).__members__


class Direction(enum.IntEnum):
    """Control field D7."""

    DOWNLINK = 0  # concentrator -> module
    UPLINK = 1  # module -> concentrator


class Prm(enum.IntEnum):
    """Control field D6: who started the exchange."""

    RESPONDER = 0
    INITIATOR = 1


class CommMode(OpenIntEnum):
    """Control field D5..D0: the module's communication mode."""

    NARROWBAND_PLC_CENTRAL = 1  # centralized routing
    NARROWBAND_PLC_DISTRIBUTED = 2
    HPLC = 3
    MICRO_POWER_WIRELESS = 10
    ETHERNET = 20

    @classmethod
    def _prefix(cls) -> str:
        return "MODE"


class Afn(OpenIntEnum):
    """Application function code."""

    CONFIRM = 0x00
    INITIALIZE = 0x01
    FORWARD = 0x02
    QUERY = 0x03
    LINK_TEST = 0x04
    CONTROL = 0x05
    REPORT = 0x06
    ROUTE_QUERY = 0x10
    ROUTE_SET = 0x11
    ROUTE_CONTROL = 0x12
    ROUTE_FORWARD = 0x13
    ROUTE_READ = 0x14
    FILE_TRANSFER = 0x15
    VENDOR_DEBUG = 0xF0
    CONCURRENT_READ = 0xF1

    @classmethod
    def _prefix(cls) -> str:
        return "AFN"


class ProtocolType(OpenIntEnum):
    """The protocol-type byte of AFN02/06/11/13/14 (04 and 05 only appear in AFN06 F5)."""

    TRANSPARENT = 0
    DLT645_1997 = 1
    DLT645_2007 = 2
    DLT698_45 = 3
    OUTAGE_EVENT = 4
    REJECTED_NODE = 5

    @classmethod
    def _prefix(cls) -> str:
        return "PROTOCOL"

    @property
    def is_dlt645(self) -> bool:
        return self in (ProtocolType.DLT645_1997, ProtocolType.DLT645_2007)


class DenyCode(OpenIntEnum):
    """AFN00 F2 deny error byte."""

    COMM_TIMEOUT = 0
    INVALID_DATA_UNIT = 1
    LENGTH_ERROR = 2
    CHECKSUM_ERROR = 3
    NO_SUCH_INFO_CLASS = 4
    FORMAT_ERROR = 5
    DUPLICATE_METER = 6
    METER_NOT_FOUND = 7
    METER_NO_ANSWER = 8
    MAIN_NODE_BUSY = 9
    MAIN_NODE_UNSUPPORTED = 10
    SLAVE_NO_ANSWER = 11
    SLAVE_NOT_IN_NETWORK = 12
    MAX_CONCURRENCY_EXCEEDED = 109
    TOO_MANY_METER_FRAMES = 110
    METER_BEING_READ = 111

    @classmethod
    def _prefix(cls) -> str:
        return "DENY"


class ConfirmEdition(enum.IntEnum):
    """Which AFN00 F1 body a peer sent: 2013 (4-byte status) or 2009 (2-byte status)."""

    Q2009 = 2009
    Q2013 = 2013


class DelayFlag(OpenIntEnum):
    """Delay-related flag of AFN13 F1 / AFN14 F1: does the frame need delay correction."""

    NOT_RELATED = 0
    RELATED = 1

    @classmethod
    def _prefix(cls) -> str:
        return "DELAY"


class ReadFlag(OpenIntEnum):
    """AFN14 F1 downlink: what the concentrator tells the router to do with the slave."""

    FAILED = 0  # read failed / skip this slave
    DONE = 1  # already read, nothing more
    READ = 2  # read the enclosed frame

    @classmethod
    def _prefix(cls) -> str:
        return "READ_FLAG"


class WorkChange(OpenIntEnum):
    """AFN06 F3 route work change code."""

    READING_FINISHED = 1
    SEARCH_FINISHED = 2
    AREA_IDENTIFICATION_FINISHED = 3

    @classmethod
    def _prefix(cls) -> str:
        return "WORK_CHANGE"


class DeviceType(OpenIntEnum):
    """AFN06 F5 reporting device type."""

    COLLECTOR = 0
    METER = 1
    HPLC_UNIT = 2  # unverified: only "02 HPLC unit ..." is documented, later codes unknown

    @classmethod
    def _prefix(cls) -> str:
        return "DEVICE"


class ModuleMode(OpenIntEnum):
    """AFN03 F10 byte 0 D3..D0 (a different numbering from the control field's mode)."""

    NARROWBAND = 1
    BROADBAND = 2
    MICRO_POWER = 3

    @classmethod
    def _prefix(cls) -> str:
        return "MODULE_MODE"


class ReadingMode(OpenIntEnum):
    """AFN03 F10 byte 0 D7..D6: who leads the meter reading."""

    CONCENTRATOR_LED = 1
    ROUTER_LED = 2
    BOTH = 3

    @classmethod
    def _prefix(cls) -> str:
        return "READING_MODE"
