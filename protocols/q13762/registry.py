"""Which data unit each (AFN, Fn, direction) carries, and the one seam where construct's errors
become ours.

An (AFN, Fn, direction) not listed decodes as :class:`RawUnit`: an unknown or vendor function
is data we keep, never an error. A listed one whose body does not fit its layout raises
``ValueDecodeError("bad-data-unit")`` (or the value's own reason: ``bad-address``, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

import construct

from protocols.errors import LocalProtocolError, ValueDecodeError

from .base import DataUnit, Empty, RawUnit
from .enums import Afn, Direction
from .route_units import (
    AddSlaves,
    ClockAnswer,
    DelayCorrectedFrame,
    DelayCorrectionRequest,
    DeleteSlaves,
    MonitorReply,
    MonitorRequest,
    ReadAnswer,
    ReadRequest,
    SlaveCount,
    SlaveInfoList,
    SlaveInfoQuery,
)
from .units import (
    Confirm,
    Deny,
    EventReporting,
    Forward,
    MainNodeAddress,
    ReadDataReport,
    RouteWorkChange,
    RunModeInfo,
    SlaveEvent,
    SlaveInfoReport,
    StartBroadcast,
    VersionInfo,
)

DOWN: Final = Direction.DOWNLINK
UP: Final = Direction.UPLINK
_BOTH: Final = (DOWN, UP)

_TABLE: Final[tuple[tuple[Afn, int, tuple[Direction, ...], type[DataUnit]], ...]] = (
    (Afn.CONFIRM, 1, _BOTH, Confirm),
    (Afn.CONFIRM, 2, _BOTH, Deny),
    (Afn.INITIALIZE, 1, (DOWN,), Empty),
    (Afn.INITIALIZE, 2, (DOWN,), Empty),
    (Afn.INITIALIZE, 3, (DOWN,), Empty),
    (Afn.FORWARD, 1, _BOTH, Forward),
    (Afn.QUERY, 1, (DOWN,), Empty),
    (Afn.QUERY, 1, (UP,), VersionInfo),
    (Afn.QUERY, 10, (DOWN,), Empty),
    (Afn.QUERY, 10, (UP,), RunModeInfo),
    (Afn.CONTROL, 1, (DOWN,), MainNodeAddress),
    (Afn.CONTROL, 2, (DOWN,), EventReporting),
    (Afn.CONTROL, 3, (DOWN,), StartBroadcast),
    (Afn.REPORT, 1, (UP,), SlaveInfoReport),
    (Afn.REPORT, 2, (UP,), ReadDataReport),
    (Afn.REPORT, 3, (UP,), RouteWorkChange),
    (Afn.REPORT, 5, (UP,), SlaveEvent),
    (Afn.ROUTE_QUERY, 1, (DOWN,), Empty),
    (Afn.ROUTE_QUERY, 1, (UP,), SlaveCount),
    (Afn.ROUTE_QUERY, 2, (DOWN,), SlaveInfoQuery),
    (Afn.ROUTE_QUERY, 2, (UP,), SlaveInfoList),
    (Afn.ROUTE_SET, 1, (DOWN,), AddSlaves),
    (Afn.ROUTE_SET, 2, (DOWN,), DeleteSlaves),
    (Afn.ROUTE_CONTROL, 1, (DOWN,), Empty),
    (Afn.ROUTE_CONTROL, 2, (DOWN,), Empty),
    (Afn.ROUTE_CONTROL, 3, (DOWN,), Empty),
    (Afn.ROUTE_FORWARD, 1, (DOWN,), MonitorRequest),
    (Afn.ROUTE_FORWARD, 1, (UP,), MonitorReply),
    (Afn.ROUTE_READ, 1, (UP,), ReadRequest),
    (Afn.ROUTE_READ, 1, (DOWN,), ReadAnswer),
    (Afn.ROUTE_READ, 2, (UP,), Empty),
    (Afn.ROUTE_READ, 2, (DOWN,), ClockAnswer),
    (Afn.ROUTE_READ, 3, (UP,), DelayCorrectionRequest),
    (Afn.ROUTE_READ, 3, (DOWN,), DelayCorrectedFrame),
)

#: (AFN, Fn, direction) -> the data unit class that frame carries.
UNITS: Final[Mapping[tuple[int, int, Direction], type[DataUnit]]] = MappingProxyType(
    {(afn, fn, d): cls for afn, fn, dirs, cls in _TABLE for d in dirs}
)


def unit_class(afn: int, fn: int, direction: Direction) -> type[DataUnit]:
    """The unit class for this function; :class:`RawUnit` when we do not model it."""
    return UNITS.get((afn, fn, direction), RawUnit)


def decode_unit(afn: int, fn: int, direction: Direction, data: bytes) -> DataUnit:
    cls = unit_class(afn, fn, direction)
    try:
        return cls.parse(bytes(data))
    except construct.ConstructError as exc:
        raise ValueDecodeError(
            "bad-data-unit",
            f"AFN{afn:02X} F{fn} {cls.__name__}: {_first_line(exc)}"
            f" in {bytes(data).hex(' ').upper()}",
        ) from None


def encode_unit(unit: DataUnit) -> bytes:
    try:
        return unit.build()
    except construct.ConstructError as exc:
        raise LocalProtocolError(
            "bad-data-unit", f"{type(unit).__name__} cannot be encoded: {_first_line(exc)}"
        ) from None


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
