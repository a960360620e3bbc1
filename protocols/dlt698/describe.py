"""A DL/T 698.45 frame described as plain JSON-ready data (``amigw decode --json``).

Only the envelope is decoded; the APDU is shown as hex with its service named.
"""

from __future__ import annotations

from typing import Any

from .frame import Direction, Frame, Prm


def describe_frame(frame: Frame) -> dict[str, Any]:
    c = frame.control
    service = frame.service
    out: dict[str, Any] = {
        "protocol": "dlt698.45",
        "control": f"{c.byte:02X}",
        "direction": "uplink" if c.direction is Direction.UPLINK else "downlink",
        "prm": "client" if c.prm is Prm.CLIENT else "server",
        "function": c.function.name.lower(),
        "fragmented": c.fragmented,
        "scrambled": c.scrambled,
        "server_address": frame.server.digits,
        "server_address_type": frame.server.kind.name.lower(),
        "logical_address": frame.server.logical,
        "client_address": f"{frame.client:02X}",
        "service": service.name.lower() if service is not None else None,
        "apdu": frame.apdu.hex(" ").upper(),
        "error": None,
    }
    if frame.raw:
        out["raw"] = frame.raw.hex(" ").upper()
    return out
