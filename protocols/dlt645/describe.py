"""A DL/T 645 frame described field by field, as plain data (``amigw decode``, replay, logs).

:func:`describe_frame` never raises on what a meter sent: a value that does not decode is
reported under ``error`` as ``"reason: detail"`` (a string), while a meter's own abnormal reply
puts its named error flags (a list) there.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from protocols.errors import RemoteProtocolError
from protocols.render import plain

from .formats import StatusBits
from .frame import Direction, Frame
from .messages import (
    AuthorisedCommand,
    BroadcastTime,
    ChangeBaud,
    ErrorResponse,
    FreezeRequest,
    ReadAddressResponse,
    ReadFollowUpRequest,
    ReadRequest,
    ReadResponse,
    RelayControl,
    WriteAddressRequest,
    WriteRequest,
    decode_message,
    edition_of,
    function_name,
)
from .registry import DecodedItem, Value, lookup


def flat_values(values: Iterable[Value]) -> Iterator[tuple[str, Any, str | None]]:
    """Values as ``(name, value, unit)`` with composites spread out: a status word gives its
    word (as hex text) and one entry per named bit; a max demand gives its value and
    ``<name>_time``."""
    for v in values:
        if isinstance(v.value, StatusBits):
            yield v.name, str(v.value), None
            for bit, state in v.value.bits.items():
                yield bit, state, None
        elif isinstance(v.value, tuple):
            yield v.name, v.value[0], v.unit
            yield f"{v.name}_time", v.value[1], None
        else:
            yield v.name, v.value, v.unit


def _values(decoded: DecodedItem) -> dict[str, dict[str, Any]]:
    return {
        name: {"value": plain(value), "unit": unit}
        for name, value, unit in flat_values(decoded.values)
    }


def describe_frame(frame: Frame) -> dict[str, Any]:
    """Every field of ``frame`` by name, JSON-ready (decimals stay ``Decimal``)."""
    c = frame.control
    edition = edition_of(c, len(frame.data))
    out: dict[str, Any] = {
        "protocol": edition.value,
        "address": str(frame.address),
        "control": f"{c.byte:02X}",
        "function": function_name(c, edition),
        "direction": "response" if c.direction is Direction.RESPONSE else "request",
        "abnormal": c.abnormal,
        "follow_up": c.follow_up,
        "di": None,
        "item": None,
        "error": None,
        "values": {},
        "data": frame.data.hex(" ").upper(),
    }
    if frame.raw:
        out["raw"] = frame.raw.hex(" ").upper()
    try:
        msg = decode_message(frame)
    except RemoteProtocolError as exc:
        out["error"] = f"{exc.reason}: {exc.detail}"
        return out
    match msg:
        case ReadRequest() | ReadResponse() | ReadFollowUpRequest() | WriteRequest():
            out["di"] = (
                msg.edition.format_di(msg.di)
                if not isinstance(msg, ReadFollowUpRequest)
                else f"{msg.di:08X}"
            )
            item = lookup(edition, msg.di)
            out["item"] = item.title if item else None
    match msg:
        case ReadResponse():
            if msg.seq is not None:
                out["seq"] = msg.seq
            item = lookup(msg.edition, msg.di)
            if item is None:
                out["payload"] = msg.payload.hex(" ").upper()
            else:
                try:
                    decoded = item.decode(msg.payload)
                except RemoteProtocolError as exc:
                    out["error"] = f"{exc.reason}: {exc.detail}"
                    out["payload"] = msg.payload.hex(" ").upper()
                else:
                    out["values"] = _values(decoded)
                    if decoded.extra:
                        out["extra"] = decoded.extra.hex(" ").upper()
        case ReadRequest():
            if msg.extra:
                out["extra"] = msg.extra.hex(" ").upper()
        case ReadFollowUpRequest():
            out["seq"] = msg.seq
        case ErrorResponse():
            out["error"] = msg.flag_names
            out["error_word"] = f"{msg.error:02X}"
        case ReadAddressResponse():
            out["address_in_data"] = str(msg.address)
        case WriteAddressRequest():
            out["new_address"] = str(msg.new_address)
        case WriteRequest():
            out["password_level"] = f"{msg.password_level:02X}"
            out["password"] = msg.password
            out["operator"] = msg.operator
            out["value_bytes"] = msg.value.hex(" ").upper()
        case BroadcastTime():
            out["time"] = plain(msg.time)
        case FreezeRequest():
            out["freeze"] = {
                "month": msg.month,
                "day": msg.day,
                "hour": msg.hour,
                "minute": msg.minute,
            }
            out["immediate"] = msg.immediate
        case ChangeBaud():
            out["baud"] = msg.baud
        case RelayControl():
            out["password_level"] = f"{msg.password_level:02X}"
            out["password"] = msg.password
            out["operator"] = msg.operator
            out["command"] = msg.command.name.lower()
            out["command_code"] = f"{int(msg.command):02X}"
            out["valid_until"] = plain(msg.valid_until)
        case AuthorisedCommand():
            out["password_level"] = f"{msg.password_level:02X}"
            out["password"] = msg.password
            out["operator"] = msg.operator
            out["argument"] = msg.argument.hex(" ").upper()
        case _:
            pass
    return out
