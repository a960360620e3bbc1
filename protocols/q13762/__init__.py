"""Q/GDW 1376.2-2013: the local interface between a concentrator and its PLC/HPLC/wireless
communication module.

* :mod:`.frame` — the link frame (L, C, R, A, AFN, DT/Fn, CS) and its codec;
* :mod:`.units`, :mod:`.route_units` — the data units we parse and build, :mod:`.registry`
  the (AFN, Fn, direction) -> unit table;
* :mod:`.framer` — the sans-IO stream framer; :mod:`.describe` — the JSON-ready description.
"""

from __future__ import annotations

from .base import DataUnit, Empty, FrameCarrier, RawUnit
from .describe import describe_frame
from .enums import (
    Afn,
    CommMode,
    ConfirmEdition,
    DelayFlag,
    DenyCode,
    DeviceType,
    Direction,
    ModuleMode,
    Prm,
    ProtocolType,
    ReadFlag,
    ReadingMode,
    WorkChange,
)
from .fields import Rate
from .frame import (
    AddressField,
    Control,
    DownlinkInfo,
    Frame,
    Info,
    UplinkInfo,
    decode_frame,
    dt_to_fn,
    encode_frame,
    fn_to_dt,
)
from .framer import Q13762Framer
from .registry import UNITS, decode_unit, encode_unit, unit_class
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
    SlaveNode,
    SlaveNodeInfo,
)
from .units import (
    Confirm,
    Deny,
    EventReporting,
    Forward,
    MainNodeAddress,
    ReadDataReport,
    ReportedNode,
    RouteWorkChange,
    RunModeInfo,
    SlaveEvent,
    SlaveInfoReport,
    StartBroadcast,
    VersionInfo,
)

__all__ = [
    "UNITS",
    "AddSlaves",
    "AddressField",
    "Afn",
    "ClockAnswer",
    "CommMode",
    "Confirm",
    "ConfirmEdition",
    "Control",
    "DataUnit",
    "DelayCorrectedFrame",
    "DelayCorrectionRequest",
    "DelayFlag",
    "DeleteSlaves",
    "Deny",
    "DenyCode",
    "DeviceType",
    "Direction",
    "DownlinkInfo",
    "Empty",
    "EventReporting",
    "Forward",
    "Frame",
    "FrameCarrier",
    "Info",
    "MainNodeAddress",
    "ModuleMode",
    "MonitorReply",
    "MonitorRequest",
    "Prm",
    "ProtocolType",
    "Q13762Framer",
    "Rate",
    "RawUnit",
    "ReadAnswer",
    "ReadDataReport",
    "ReadFlag",
    "ReadRequest",
    "ReadingMode",
    "ReportedNode",
    "RouteWorkChange",
    "RunModeInfo",
    "SlaveCount",
    "SlaveEvent",
    "SlaveInfoList",
    "SlaveInfoQuery",
    "SlaveInfoReport",
    "SlaveNode",
    "SlaveNodeInfo",
    "StartBroadcast",
    "UplinkInfo",
    "VersionInfo",
    "WorkChange",
    "decode_frame",
    "decode_unit",
    "describe_frame",
    "dt_to_fn",
    "encode_frame",
    "encode_unit",
    "fn_to_dt",
    "unit_class",
]
