"""A virtual meter on the wire: which requests it answers, and with what frame.

:func:`handle_frame` is called by :meth:`VirtualMeter.handle` for a request the meter hears
while it has supply. It follows what meters do in the field: broadcast time sync (0x08) is
applied and never answered; nothing else sent to the broadcast address is answered; a meter
ignores the other edition's function codes (so probing 2007 then 1997 works); an unknown DI is
``ERR 02`` (no data); a frame whose data does not fit its function gets ``ERR 01`` (other);
read address (0x13) is answered on the wildcard; relay control is answered ``9C`` or refused.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Final

from protocols.dlt645.frame import Frame
from protocols.dlt645.messages import (
    Acknowledge,
    BroadcastTime,
    ErrorResponse,
    ErrorWord,
    Function,
    ReadAddressRequest,
    ReadAddressResponse,
    ReadRequest,
    ReadResponse,
    RelayControl,
    decode_message,
)
from protocols.dlt645.registry import Edition
from protocols.errors import ProtocolError

from . import answers

if TYPE_CHECKING:
    from .meter import VirtualMeter

_2007_ONLY: Final = frozenset(range(0x11, 0x1D))
_1997_ONLY: Final = frozenset({0x01, 0x02, 0x04, 0x0A, 0x0C, 0x0F, 0x10})


#: What a smart meter accepts from a broadcast time sync (State Grid smart-meter rules): a
#: correction of at most 5 minutes, at most once a day, never within 5 minutes of midnight.
BROADCAST_MAX_CORRECTION: Final = dt.timedelta(minutes=5)
BROADCAST_QUIET: Final = dt.timedelta(minutes=5)


def broadcast_time_accepted(meter: VirtualMeter, time: object) -> bool:
    if not isinstance(time, dt.datetime):
        return False
    now = meter.now_local()
    if abs(time - now) > BROADCAST_MAX_CORRECTION:
        return False
    midnight = dt.datetime.combine(now.date(), dt.time())
    since = now - midnight
    if since < BROADCAST_QUIET or since > dt.timedelta(days=1) - BROADCAST_QUIET:
        return False
    if meter.last_broadcast_sync == now.date():
        return False
    meter.last_broadcast_sync = now.date()
    return True


def handle_frame(meter: VirtualMeter, frame: Frame) -> Frame | None:
    fn = frame.control.function
    if fn == Function.BROADCAST_TIME:
        try:
            message = decode_message(frame)
        except ProtocolError:
            return None
        if isinstance(message, BroadcastTime) and broadcast_time_accepted(meter, message.time):
            meter.set_clock(message.time)
        return None
    if frame.address.is_broadcast:
        return None
    if fn in (_1997_ONLY if meter.edition is Edition.V2007 else _2007_ONLY):
        return None
    try:
        message = decode_message(frame)
    except ProtocolError:
        return error(meter, fn, ErrorWord.OTHER)
    match message:
        case ReadRequest(di=di):
            payload = answers.answer(meter, di)
            if payload is None:
                return error(meter, fn, ErrorWord.NO_DATA)
            return ReadResponse(meter.address, di, payload, meter.edition).to_frame()
        case ReadAddressRequest():
            return ReadAddressResponse(meter.address).to_frame()
        case RelayControl():
            refused = meter.execute_relay(message)
            if refused is not None:
                return error(meter, fn, refused)
            return Acknowledge(meter.address, Function.RELAY_CONTROL).to_frame()
    return error(meter, fn, ErrorWord.OTHER)


def error(meter: VirtualMeter, function: int, word: ErrorWord) -> Frame:
    return ErrorResponse(meter.address, function, int(word), meter.edition).to_frame()
