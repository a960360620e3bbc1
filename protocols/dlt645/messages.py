"""DL/T 645 application messages: what a frame *means*, for both editions.

:func:`decode_message` turns a :class:`~.frame.Frame` into one typed message; every message has
``to_frame()``, so the gateway and the simulator build and parse with the same declarations.
The data-unit layouts below are ``construct`` structs over the unscrambled DATA bytes.

Editions are told apart by the function code: 01/02/04/0A/0C/0F/10 are 1997 only, 11..1C are
2007 only, 08 (broadcast time) is the same in both and reported as 2007, and 03 is the 1997
"re-read" when it carries no data and the 2007 security authentication otherwise.
"""

from __future__ import annotations

import datetime as dt
import enum
import struct
from dataclasses import dataclass
from typing import Any, Final

import construct
from construct import GreedyBytes, Int8ul, Int16ul, Int32ul, Struct, Terminated, this

from protocols.bcd import BCD_BYTE, BCD_VALUE, BROADCAST, WILDCARD, Address
from protocols.errors import LocalProtocolError, ValueDecodeError

from .formats import BaudFeature, BcdTimestamp, HexString, ValueFormat
from .frame import Control, Direction, Frame
from .registry import DecodedItem, Edition, lookup


class Function(enum.IntEnum):
    """DL/T 645-2007 function codes (control code D4..D0)."""

    SECURITY_AUTH = 0x03
    BROADCAST_TIME = 0x08
    READ = 0x11
    READ_FOLLOW_UP = 0x12
    READ_ADDRESS = 0x13
    WRITE = 0x14
    WRITE_ADDRESS = 0x15
    FREEZE = 0x16
    CHANGE_BAUD = 0x17
    CHANGE_PASSWORD = 0x18
    RESET_DEMAND = 0x19
    CLEAR_METER = 0x1A
    CLEAR_EVENTS = 0x1B
    RELAY_CONTROL = 0x1C


class Function1997(enum.IntEnum):
    """DL/T 645-1997 function codes."""

    READ = 0x01
    READ_FOLLOW_UP = 0x02
    REREAD = 0x03
    WRITE = 0x04
    BROADCAST_TIME = 0x08
    WRITE_ADDRESS = 0x0A
    CHANGE_BAUD = 0x0C
    CHANGE_PASSWORD = 0x0F
    RESET_DEMAND = 0x10


_ONLY_1997: Final = frozenset({0x01, 0x02, 0x04, 0x0A, 0x0C, 0x0F, 0x10})


class ErrorWord(enum.IntFlag):
    """2007 abnormal-reply error word (after removing +33h)."""

    OTHER = 0x01
    NO_DATA = 0x02
    PASSWORD = 0x04
    BAUD_UNCHANGEABLE = 0x08
    YEAR_ZONES_EXCEEDED = 0x10
    DAY_PERIODS_EXCEEDED = 0x20
    TARIFFS_EXCEEDED = 0x40


class ErrorWord1997(enum.IntFlag):
    """1997 abnormal-reply error byte."""

    ILLEGAL_DATA = 0x01
    DI_ERROR = 0x02
    PASSWORD = 0x04
    YEAR_ZONES_EXCEEDED = 0x10
    DAY_PERIODS_EXCEEDED = 0x20
    TARIFFS_EXCEEDED = 0x40


class RelayCommand(enum.IntEnum):
    """N1 of the 0x1C relay-control data."""

    TRIP = 0x1A
    CLOSE_ALLOWED = 0x1B
    CLOSE = 0x1C
    ALARM = 0x2A
    ALARM_RELEASE = 0x2B
    KEEP_POWER = 0x3A
    KEEP_POWER_RELEASE = 0x3B


def edition_of(control: Control, data_len: int) -> Edition:
    f = control.function
    if f in _ONLY_1997 or (f == 0x03 and data_len == 0):
        return Edition.V1997
    return Edition.V2007


def function_name(control: Control, edition: Edition) -> str:
    enum_type: type[enum.IntEnum] = Function if edition is Edition.V2007 else Function1997
    try:
        return enum_type(control.function).name.lower()
    except ValueError:
        return f"unknown_{control.function:02x}"


# --- data-unit layouts (after removing +33h) ----------------------------------------------------


class AddressField(ValueFormat):
    """A 6-byte address inside DATA (0x13 reply, 0x15 request)."""

    size = 6

    def decode(self, raw: bytes) -> Address:
        return Address.from_wire(raw)

    def encode(self, value: Address) -> bytes:
        return value.to_wire()


class FreezeField(ValueFormat):
    """One BCD byte of a freeze schedule, where ``99`` means "every"."""

    size = 1

    def decode(self, raw: bytes) -> int | None:
        if raw == b"\x99":
            return None
        v = BCD_VALUE[raw[0]] if len(raw) == 1 else -1
        if v < 0:
            raise ValueDecodeError("invalid-bcd", f"freeze field {raw.hex().upper()} is not BCD")
        return v

    def encode(self, value: int | None) -> bytes:
        if value is None:
            return b"\x99"
        if not 0 <= value <= 98:
            raise LocalProtocolError("out-of-range", f"freeze field {value} out of range")
        return bytes((BCD_BYTE[value],))


PASSWORD3: Final = HexString(3)
OPERATOR4: Final = HexString(4)
STAMP6: Final = BcdTimestamp("YYMMDDhhmmss")

READ_REQUEST_2007: Final = Struct("di" / Int32ul, "extra" / GreedyBytes)
READ_REQUEST_1997: Final = Struct("di" / Int16ul, Terminated)
READ_RESPONSE_2007: Final = Struct("di" / Int32ul, "payload" / GreedyBytes)
READ_RESPONSE_1997: Final = Struct("di" / Int16ul, "payload" / GreedyBytes)
FOLLOW_UP_REQUEST_2007: Final = Struct("di" / Int32ul, "seq" / Int8ul, Terminated)
FOLLOW_UP_RESPONSE_2007: Final = Struct(
    "di" / Int32ul, "payload" / construct.Bytes(this._.length - 5), "seq" / Int8ul, Terminated
)
ERROR_REPLY: Final = Struct("error" / Int8ul, Terminated)
WRITE_2007: Final = Struct(
    "di" / Int32ul,
    "password_level" / Int8ul,
    "password" / PASSWORD3,
    "operator" / OPERATOR4,
    "value" / GreedyBytes,
)
WRITE_1997: Final = Struct(
    "di" / Int16ul, "password_level" / Int8ul, "password" / PASSWORD3, "value" / GreedyBytes
)
ADDRESS_BODY: Final = Struct("address" / AddressField(), Terminated)
BROADCAST_TIME_BODY: Final = Struct("time" / STAMP6, Terminated)
FREEZE_BODY: Final = Struct(
    "minute" / FreezeField(),
    "hour" / FreezeField(),
    "day" / FreezeField(),
    "month" / FreezeField(),
    Terminated,
)
BAUD_BODY: Final = Struct("baud" / BaudFeature(), Terminated)
RELAY_BODY: Final = Struct(
    "password_level" / Int8ul,
    "password" / PASSWORD3,
    "operator" / OPERATOR4,
    "command" / Int8ul,
    "reserved" / Int8ul,
    "valid_until" / STAMP6,
    Terminated,
)
AUTHORISED_BODY: Final = Struct(
    "password_level" / Int8ul,
    "password" / PASSWORD3,
    "operator" / OPERATOR4,
    "argument" / GreedyBytes,
)

_COMPILED: dict[int, Any] = {}


def _parse(layout: Struct, data: bytes, what: str, **context: int) -> Any:
    """The one seam where construct's exceptions become ours."""
    compiled = _COMPILED.get(id(layout))
    if compiled is None:
        compiled = _COMPILED[id(layout)] = layout.compile()
    try:
        return compiled.parse(data, **context)
    except ValueDecodeError as exc:
        if exc.reason != "short-value":
            raise
        raise ValueDecodeError(
            "bad-length", f"{what}: {len(data)} data bytes are too few"
        ) from None
    except (construct.ConstructError, struct.error) as exc:
        # Compiled parsers raise struct.error (not a ConstructError) when data runs short.
        raise ValueDecodeError(
            "bad-length", f"{what}: {len(data)} data bytes do not fit its layout"
        ) from exc


def _required_time(value: Any, what: str) -> dt.datetime:
    """A time the message cannot do without: all-00/FF bytes are an error, not "absent"."""
    if not isinstance(value, dt.datetime):
        raise ValueDecodeError("bad-timestamp", f"{what} is empty (all 00 or FF)")
    return value


def _build(layout: Struct, length: int | None = None, **values: Any) -> bytes:
    """Build a data unit; ``length`` is the context some layouts size a field from."""
    try:
        return bytes(layout.build(values, **({} if length is None else {"length": length})))
    except construct.ConstructError as exc:
        raise LocalProtocolError("bad-value", str(exc)) from exc


# --- messages -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """0x11 (2007) / 0x01 (1997): read one DI. ``extra`` carries load-record arguments."""

    address: Address
    di: int
    edition: Edition = Edition.V2007
    extra: bytes = b""

    def to_frame(self) -> Frame:
        if self.edition is Edition.V2007:
            return Frame(
                self.address,
                Control(Function.READ),
                _build(READ_REQUEST_2007, di=self.di, extra=self.extra),
            )
        if self.extra:
            raise LocalProtocolError("bad-value", "a 1997 read carries no arguments")
        return Frame(
            self.address, Control(Function1997.READ), _build(READ_REQUEST_1997, di=self.di)
        )


@dataclass(frozen=True, slots=True)
class ReadResponse:
    """Normal read reply: DI and the value bytes (decode with :meth:`decode`)."""

    address: Address
    di: int
    payload: bytes
    edition: Edition = Edition.V2007
    follow_up: bool = False
    seq: int | None = None  # only on 0x92 follow-up replies

    def decode(self) -> DecodedItem | None:
        """The payload as named values, or ``None`` when the DI is not in the registry."""
        item = lookup(self.edition, self.di)
        return None if item is None else item.decode(self.payload)

    def to_frame(self) -> Frame:
        if self.edition is Edition.V1997:
            data = _build(READ_RESPONSE_1997, di=self.di, payload=self.payload)
            fn: int = Function1997.READ
        elif self.seq is not None:
            data = _build(
                FOLLOW_UP_RESPONSE_2007,
                di=self.di,
                payload=self.payload,
                seq=self.seq,
                length=len(self.payload) + 5,
            )
            fn = Function.READ_FOLLOW_UP
        else:
            data = _build(READ_RESPONSE_2007, di=self.di, payload=self.payload)
            fn = Function.READ
        return Frame(self.address, Control(fn, Direction.RESPONSE, follow_up=self.follow_up), data)


@dataclass(frozen=True, slots=True)
class ReadFollowUpRequest:
    """0x12: read the next frame of a multi-frame reply."""

    address: Address
    di: int
    seq: int

    def to_frame(self) -> Frame:
        return Frame(
            self.address,
            Control(Function.READ_FOLLOW_UP),
            _build(FOLLOW_UP_REQUEST_2007, di=self.di, seq=self.seq),
        )


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """Abnormal reply (D6 set): one error byte."""

    address: Address
    function: int
    error: int
    edition: Edition = Edition.V2007

    @property
    def flags(self) -> ErrorWord | ErrorWord1997:
        return ErrorWord(self.error) if self.edition is Edition.V2007 else ErrorWord1997(self.error)

    @property
    def flag_names(self) -> list[str]:
        names = [f.name.lower() for f in type(self.flags) if f in self.flags and f.name]
        undefined = self.error & ~sum(type(self.flags))
        if undefined:
            names.append(f"reserved_{undefined:02x}")
        return names

    def to_frame(self) -> Frame:
        return Frame(
            self.address,
            Control(self.function, Direction.RESPONSE, abnormal=True),
            _build(ERROR_REPLY, error=self.error),
        )


@dataclass(frozen=True, slots=True)
class ReadAddressRequest:
    """0x13: ask the only meter on the bus for its address (sent to the wildcard)."""

    address: Address = WILDCARD

    def to_frame(self) -> Frame:
        return Frame(self.address, Control(Function.READ_ADDRESS))


@dataclass(frozen=True, slots=True)
class ReadAddressResponse:
    address: Address

    def to_frame(self) -> Frame:
        return Frame(
            self.address,
            Control(Function.READ_ADDRESS, Direction.RESPONSE),
            _build(ADDRESS_BODY, address=self.address),
        )


@dataclass(frozen=True, slots=True)
class WriteAddressRequest:
    """0x15 (2007) / 0x0A (1997): set the address of the only meter on the bus."""

    new_address: Address
    address: Address = WILDCARD
    edition: Edition = Edition.V2007

    def to_frame(self) -> Frame:
        fn = Function.WRITE_ADDRESS if self.edition is Edition.V2007 else Function1997.WRITE_ADDRESS
        return Frame(self.address, Control(fn), _build(ADDRESS_BODY, address=self.new_address))


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """0x14 (2007) / 0x04 (1997): write a parameter; ``operator`` is 2007 only."""

    address: Address
    di: int
    value: bytes
    password_level: int = 0x02
    password: str = "000000"  # noqa: S105 - the meters' factory default, configurable
    operator: str | None = "00000000"
    edition: Edition = Edition.V2007

    def to_frame(self) -> Frame:
        if self.edition is Edition.V2007:
            data = _build(
                WRITE_2007,
                di=self.di,
                password_level=self.password_level,
                password=self.password,
                operator=self.operator or "00000000",
                value=self.value,
            )
            return Frame(self.address, Control(Function.WRITE), data)
        data = _build(
            WRITE_1997,
            di=self.di,
            password_level=self.password_level,
            password=self.password,
            value=self.value,
        )
        return Frame(self.address, Control(Function1997.WRITE), data)


@dataclass(frozen=True, slots=True)
class Acknowledge:
    """A normal reply without data (write, freeze, relay control, clear...)."""

    address: Address
    function: int

    def to_frame(self) -> Frame:
        return Frame(self.address, Control(self.function, Direction.RESPONSE))


@dataclass(frozen=True, slots=True)
class BroadcastTime:
    """0x08: set every meter's clock; sent to ``99..99`` and never answered."""

    time: dt.datetime
    address: Address = BROADCAST

    def to_frame(self) -> Frame:
        return Frame(
            self.address,
            Control(Function.BROADCAST_TIME),
            _build(BROADCAST_TIME_BODY, time=self.time),
        )


@dataclass(frozen=True, slots=True)
class FreezeRequest:
    """0x16: freeze at ``month-day hour:minute``; ``None`` fields are "every" (99)."""

    address: Address
    minute: int | None = None
    hour: int | None = None
    day: int | None = None
    month: int | None = None

    @property
    def immediate(self) -> bool:
        return self.minute is None and self.hour is None and self.day is None and self.month is None

    def to_frame(self) -> Frame:
        return Frame(
            self.address,
            Control(Function.FREEZE),
            _build(FREEZE_BODY, minute=self.minute, hour=self.hour, day=self.day, month=self.month),
        )


@dataclass(frozen=True, slots=True)
class ChangeBaud:
    """0x17 request, or its 0x97 reply echoing the new rate."""

    address: Address
    baud: int
    response: bool = False

    def to_frame(self) -> Frame:
        direction = Direction.RESPONSE if self.response else Direction.REQUEST
        return Frame(
            self.address,
            Control(Function.CHANGE_BAUD, direction),
            _build(BAUD_BODY, baud=self.baud),
        )


@dataclass(frozen=True, slots=True)
class RelayControl:
    """0x1C: trip, close, alarm or keep-power, valid until ``valid_until`` (meter local time)."""

    address: Address
    command: RelayCommand
    valid_until: dt.datetime
    password_level: int = 0x02
    password: str = "000000"  # noqa: S105 - the meters' factory default, configurable
    operator: str = "00000000"

    def to_frame(self) -> Frame:
        data = _build(
            RELAY_BODY,
            password_level=self.password_level,
            password=self.password,
            operator=self.operator,
            command=int(self.command),
            reserved=0,
            valid_until=self.valid_until,
        )
        return Frame(self.address, Control(Function.RELAY_CONTROL), data)


@dataclass(frozen=True, slots=True)
class AuthorisedCommand:
    """0x19 reset demand, 0x1A clear meter, 0x1B clear events: password + operator + argument."""

    address: Address
    function: Function
    password_level: int
    password: str
    operator: str
    argument: bytes = b""

    def to_frame(self) -> Frame:
        data = _build(
            AUTHORISED_BODY,
            password_level=self.password_level,
            password=self.password,
            operator=self.operator,
            argument=self.argument,
        )
        return Frame(self.address, Control(self.function), data)


@dataclass(frozen=True, slots=True)
class OtherMessage:
    """Any frame this module does not take apart further (kept whole, never dropped)."""

    address: Address
    control: Control
    data: bytes
    edition: Edition

    def to_frame(self) -> Frame:
        return Frame(self.address, self.control, self.data)


Message = (
    ReadRequest
    | ReadResponse
    | ReadFollowUpRequest
    | ErrorResponse
    | ReadAddressRequest
    | ReadAddressResponse
    | WriteAddressRequest
    | WriteRequest
    | Acknowledge
    | BroadcastTime
    | FreezeRequest
    | ChangeBaud
    | RelayControl
    | AuthorisedCommand
    | OtherMessage
)


def decode_message(frame: Frame) -> Message:
    """What a frame means. Raises :class:`ValueDecodeError` when its data does not fit."""
    c = frame.control
    data = frame.data
    fn = c.function
    response = c.direction is Direction.RESPONSE
    # Hot path: a normal 2007 read and its reply are by far the most frequent frames. The
    # slicing below is exactly READ_REQUEST_2007 / READ_RESPONSE_2007 (a test holds them equal).
    if fn == Function.READ and not c.abnormal and len(data) >= 4:
        di = int.from_bytes(data[:4], "little")
        if response:
            return ReadResponse(frame.address, di, data[4:], Edition.V2007, c.follow_up)
        return ReadRequest(frame.address, di, Edition.V2007, data[4:])
    edition = edition_of(c, len(data))
    if c.abnormal:
        body = _parse(ERROR_REPLY, data, function_name(c, edition) + " error reply")
        return ErrorResponse(frame.address, c.function, body.error, edition)
    if edition is Edition.V1997:
        if fn == Function1997.READ:
            if response:
                body = _parse(READ_RESPONSE_1997, data, "1997 read reply")
                return ReadResponse(frame.address, body.di, body.payload, edition, c.follow_up)
            body = _parse(READ_REQUEST_1997, data, "1997 read")
            return ReadRequest(frame.address, body.di, edition)
        if fn == Function1997.WRITE and not response:
            body = _parse(WRITE_1997, data, "1997 write")
            return WriteRequest(
                frame.address,
                body.di,
                body.value,
                body.password_level,
                body.password,
                None,
                edition,
            )
        if fn == Function1997.WRITE_ADDRESS and not response:
            body = _parse(ADDRESS_BODY, data, "1997 write address")
            return WriteAddressRequest(body.address, frame.address, edition)
        if response and not data:
            return Acknowledge(frame.address, fn)
        return OtherMessage(frame.address, c, data, edition)
    if fn == Function.READ:
        if response:
            body = _parse(READ_RESPONSE_2007, data, "read reply")
            return ReadResponse(frame.address, body.di, body.payload, edition, c.follow_up)
        body = _parse(READ_REQUEST_2007, data, "read")
        return ReadRequest(frame.address, body.di, edition, body.extra)
    if fn == Function.READ_FOLLOW_UP:
        if response:
            body = _parse(FOLLOW_UP_RESPONSE_2007, data, "follow-up reply", length=len(data))
            return ReadResponse(
                frame.address, body.di, body.payload, edition, c.follow_up, body.seq
            )
        body = _parse(FOLLOW_UP_REQUEST_2007, data, "follow-up read")
        return ReadFollowUpRequest(frame.address, body.di, body.seq)
    if fn == Function.READ_ADDRESS:
        if response:
            body = _parse(ADDRESS_BODY, data, "read-address reply")
            return ReadAddressResponse(body.address)
        if data:
            raise ValueDecodeError("bad-length", "a read-address request carries no data")
        return ReadAddressRequest(frame.address)
    if fn == Function.WRITE and not response:
        body = _parse(WRITE_2007, data, "write")
        return WriteRequest(
            frame.address, body.di, body.value, body.password_level, body.password, body.operator
        )
    if fn == Function.WRITE_ADDRESS and not response:
        body = _parse(ADDRESS_BODY, data, "write address")
        return WriteAddressRequest(body.address, frame.address)
    if fn == Function.BROADCAST_TIME and not response:
        body = _parse(BROADCAST_TIME_BODY, data, "broadcast time")
        return BroadcastTime(_required_time(body.time, "broadcast time"), frame.address)
    if fn == Function.FREEZE and not response:
        body = _parse(FREEZE_BODY, data, "freeze")
        return FreezeRequest(frame.address, body.minute, body.hour, body.day, body.month)
    if fn == Function.CHANGE_BAUD:
        body = _parse(BAUD_BODY, data, "change baud")
        return ChangeBaud(frame.address, body.baud, response)
    if fn == Function.RELAY_CONTROL and not response:
        body = _parse(RELAY_BODY, data, "relay control")
        try:
            command = RelayCommand(body.command)
        except ValueError:
            raise ValueDecodeError(
                "bad-relay-command", f"N1={body.command:02X} is not a relay command"
            ) from None
        return RelayControl(
            frame.address,
            command,
            _required_time(body.valid_until, "relay control deadline"),
            body.password_level,
            body.password,
            body.operator,
        )
    if fn in (Function.RESET_DEMAND, Function.CLEAR_METER, Function.CLEAR_EVENTS) and not response:
        body = _parse(AUTHORISED_BODY, data, function_name(c, edition))
        return AuthorisedCommand(
            frame.address,
            Function(fn),
            body.password_level,
            body.password,
            body.operator,
            body.argument,
        )
    if response and not data:
        return Acknowledge(frame.address, fn)
    return OtherMessage(frame.address, c, data, edition)
