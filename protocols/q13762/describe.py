"""A 1376.2 frame described field by field, as plain JSON-ready data (``amigw decode --json``).

Enum values are rendered as lower-case names (``dlt645_2007``, ``hplc``; an unlisted value as
``afn_0a``), addresses as their 12 digits, bytes as spaced upper-case hex. The data unit's fields
go under ``data`` (its own ``protocol`` field must not shadow the frame's ``protocol`` key), and
an embedded DL/T 645 frame is described by :func:`protocols.dlt645.describe.describe_frame`.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from protocols.bcd import Address
from protocols.render import plain

from .base import DataUnit, FrameCarrier
from .enums import Direction, Prm
from .fields import Rate
from .frame import Frame
from .units import Confirm, Deny

_DERIVED = frozenset(("frame645", "frame645_error"))


def _json(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.name.lower()
    if isinstance(value, Address):
        return str(value)
    if isinstance(value, Rate):
        return {"value": value.value, "unit": "kbit/s" if value.kbps else "bit/s"}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _json(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.name not in _DERIVED and f.name != "raw"
        }
    if isinstance(value, tuple | list):
        return [_json(v) for v in value]
    return plain(value)


def describe_unit(unit: DataUnit) -> dict[str, Any]:
    """The unit's fields by name (derived ones included where they help a reader)."""
    out: dict[str, Any] = _json(unit)
    if isinstance(unit, Confirm):
        out["command_processed"] = unit.command_processed
    return out


def describe_frame(frame: Frame) -> dict[str, Any]:
    """Every field of ``frame`` by name; never raises on what a module sent."""
    # Lazy: the 645 describer pulls in the whole DI registry, which decoding never needs.
    from protocols.dlt645.describe import describe_frame as describe_645  # noqa: PLC0415

    c = frame.control
    a = frame.address
    unit = frame.unit
    out: dict[str, Any] = {
        "protocol": "q1376.2",
        "control": f"{c.byte:02X}",
        "direction": "uplink" if c.direction is Direction.UPLINK else "downlink",
        "prm": "initiator" if c.prm is Prm.INITIATOR else "responder",
        "comm_mode": _json(c.comm_mode),
        "seq": frame.seq,
        "relay_level": frame.info.relay_level,
        "info": {**_json(frame.info), "raw": frame.info.raw.hex(" ").upper()},
        "afn": f"{frame.afn:02X}",
        "afn_name": _json(frame.afn),
        "fn": frame.fn,
        "addresses": {
            "A1": str(a.source) if a else None,
            "A2": [str(r) for r in a.relays] if a else None,
            "A3": str(a.destination) if a else None,
        },
        "unit": type(unit).__name__,
        "data": describe_unit(unit),
        "frame645": None,
        "frame645_error": None,
        "error": _json(unit.code) if isinstance(unit, Deny) else None,
    }
    if isinstance(unit, FrameCarrier):
        if unit.frame645 is not None:
            out["frame645"] = describe_645(unit.frame645)
        out["frame645_error"] = unit.frame645_error
    if frame.raw:
        out["raw"] = frame.raw.hex(" ").upper()
    return out
