"""The signed command envelope (pure: no I/O, no clock of its own).

A head-end publishes on ``{prefix}/{gateway}/cmd``::

    {"schema": "amigw.cmd/1", "id": "c-0001", "gateway": "gw-0001", "type": "read",
     "issued": "2024-05-02T08:00:00Z", "expires": "2024-05-02T08:05:00Z", "key": "he-1",
     "params": {...}, "signature": "<hex HMAC-SHA256>"}

The signature is HMAC-SHA256 under the key named by ``key`` over the **canonical encoding**:
the envelope without ``signature``, as JSON with keys sorted at every level, no whitespace,
UTF-8 (``ensure_ascii=False``). It travels as lowercase hex (base64 is accepted too) and is
compared in constant time. Decimals travel as strings and numbers are integers, so every JSON
library encodes the signed text the same way; a float, NaN or a duplicated key is refused before
anything else (two readers of one payload must never see two different commands).

:func:`parse` checks shape and size; :func:`verify` the signature; :func:`check_times` the
clock window and expiry; :func:`parse_params` validates ``params`` for the type with pydantic
models that forbid unknown keys. Each failure raises :class:`CommandRejectedError` naming a
:class:`Reason`, which the service turns into a result, an audit record and a counted metric.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import enum
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

CMD_SCHEMA: Final = "amigw.cmd/1"
_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_KEY_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_ADDRESS = re.compile(r"^[0-9]{12}$")
_DI = re.compile(r"^([0-9A-Fa-f]{8}|[0-9A-Fa-f]{4})$")
_FIELDS: Final = frozenset(
    {"schema", "id", "gateway", "type", "issued", "expires", "key", "params", "signature"}
)


class Reason(enum.StrEnum):
    """Why a command was rejected (the metric's ``rejected_<reason>`` and the result's reason)."""

    OVERSIZED = "oversized"
    MALFORMED = "malformed"
    WRONG_GATEWAY = "wrong_gateway"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_TYPE = "unknown_type"
    NOT_ALLOWED = "not_allowed"
    CLOCK_WINDOW = "clock_window"
    EXPIRED = "expired"
    BAD_PARAMETERS = "bad_parameters"
    REPLAYED = "replayed"
    RATE_LIMITED = "rate_limited"
    QUEUE_FULL = "queue_full"


class CommandRejectedError(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class CommandType(enum.StrEnum):
    PING = "ping"
    READ = "read"
    TIME_SYNC = "time_sync"
    RELAY = "relay"
    TOP_UP = "top_up"
    ARCHIVE = "archive"
    RESEND = "resend"


@dataclass(frozen=True, slots=True)
class Envelope:
    """A parsed envelope; ``raw`` is the whole JSON object (``params`` still unvalidated)."""

    id: str
    gateway: str
    type: str
    issued: dt.datetime
    expires: dt.datetime
    key: str
    signature: str
    params: Mapping[str, Any]
    raw: Mapping[str, Any]


# -- parsing ----------------------------------------------------------------------------------


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise CommandRejectedError(Reason.MALFORMED, f"key {k!r} appears twice")
        out[k] = v
    return out


def _no_float(text: str) -> Any:
    raise CommandRejectedError(
        Reason.MALFORMED, f"number {text} is not an integer (decimals travel as text)"
    )


def _no_constant(text: str) -> Any:
    raise CommandRejectedError(Reason.MALFORMED, f"{text} is not JSON")


def _instant(raw: Mapping[str, Any], name: str) -> dt.datetime:
    value = raw.get(name)
    if not isinstance(value, str) or len(value) > 40:
        raise CommandRejectedError(Reason.MALFORMED, f"{name} must be an ISO 8601 date-time text")
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise CommandRejectedError(
            Reason.MALFORMED, f"{name} {value!r} is not an ISO 8601 date-time"
        ) from None
    if moment.utcoffset() is None:
        raise CommandRejectedError(Reason.MALFORMED, f"{name} needs a UTC offset or Z")
    return moment


def peek(payload: bytes) -> tuple[str, str, str]:
    """Best-effort ``(id, type, key)`` of a payload that may be junk, for results and audit
    (each ``""`` when missing or not a plausible value)."""
    try:
        raw = json.loads(payload)
    except (ValueError, RecursionError, CommandRejectedError):
        return ("", "", "")
    if not isinstance(raw, dict):
        return ("", "", "")

    def field(name: str, pattern: re.Pattern[str]) -> str:
        value = raw.get(name)
        return value if isinstance(value, str) and pattern.match(value) else ""

    return (field("id", _ID), field("type", _KEY_ID), field("key", _KEY_ID))


def parse(payload: bytes, max_bytes: int) -> Envelope:
    """The envelope of ``payload``, or :class:`CommandRejectedError` (oversized, malformed)."""
    if len(payload) > max_bytes:
        raise CommandRejectedError(Reason.OVERSIZED, f"{len(payload)} bytes, at most {max_bytes}")
    try:
        text = payload.decode("utf-8")
        raw = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_float=_no_float,
            parse_constant=_no_constant,
        )
    except UnicodeDecodeError:
        raise CommandRejectedError(Reason.MALFORMED, "not UTF-8") from None
    except RecursionError:
        raise CommandRejectedError(Reason.MALFORMED, "nested too deeply") from None
    except ValueError as exc:
        raise CommandRejectedError(Reason.MALFORMED, f"not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise CommandRejectedError(Reason.MALFORMED, "the command must be a JSON object")
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise CommandRejectedError(Reason.MALFORMED, f"unknown field(s): {', '.join(unknown[:5])}")
    if raw.get("schema") != CMD_SCHEMA:
        raise CommandRejectedError(Reason.MALFORMED, f"schema must be {CMD_SCHEMA!r}")
    strings = {}
    for name, pattern in (("id", _ID), ("gateway", _KEY_ID), ("type", _KEY_ID), ("key", _KEY_ID)):
        value = raw.get(name)
        if not isinstance(value, str) or not pattern.match(value):
            raise CommandRejectedError(Reason.MALFORMED, f"{name} is missing or not a valid name")
        strings[name] = value
    signature = raw.get("signature")
    if not isinstance(signature, str) or not 0 < len(signature) <= 128:
        raise CommandRejectedError(Reason.MALFORMED, "signature is missing")
    params = raw.get("params", {})
    if not isinstance(params, dict):
        raise CommandRejectedError(Reason.MALFORMED, "params must be an object")
    return Envelope(
        id=strings["id"],
        gateway=strings["gateway"],
        type=strings["type"],
        issued=_instant(raw, "issued"),
        expires=_instant(raw, "expires"),
        key=strings["key"],
        signature=signature,
        params=params,
        raw=raw,
    )


# -- signing ----------------------------------------------------------------------------------


def canonical(envelope: Mapping[str, Any]) -> bytes:
    """The signed bytes: the envelope without ``signature``, keys sorted, no spaces, UTF-8."""
    body = {k: v for k, v in envelope.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(envelope: Mapping[str, Any], secret: bytes) -> str:
    """The hex signature a head-end puts in ``signature``."""
    return hmac.new(secret, canonical(envelope), hashlib.sha256).hexdigest()


def _signature_bytes(text: str) -> bytes | None:
    if re.fullmatch(r"[0-9a-fA-F]{64}", text):
        return bytes.fromhex(text)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 32 else None


def verify(envelope: Envelope, secret: bytes) -> None:
    expected = hmac.new(secret, canonical(envelope.raw), hashlib.sha256).digest()
    given = _signature_bytes(envelope.signature)
    # compare_digest even for a malformed signature, so timing says nothing about the key
    if not hmac.compare_digest(expected, given if given is not None else b"\0" * 32):
        raise CommandRejectedError(
            Reason.BAD_SIGNATURE, f"signature does not match key {envelope.key!r}"
        )


def check_times(
    envelope: Envelope, now: dt.datetime, window_s: float, max_lifetime_s: float
) -> None:
    """``issued`` within ±``window_s`` of ``now``; ``expires`` after ``issued``, within the
    longest lifetime, and not yet past."""
    skew = (envelope.issued - now).total_seconds()
    if abs(skew) > window_s:
        raise CommandRejectedError(
            Reason.CLOCK_WINDOW,
            f"issued {skew:+.0f} s from the gateway's clock (window ±{window_s:.0f} s)",
        )
    lifetime = (envelope.expires - envelope.issued).total_seconds()
    if lifetime <= 0 or lifetime > max_lifetime_s:
        raise CommandRejectedError(
            Reason.BAD_PARAMETERS,
            f"lifetime {lifetime:.0f} s is outside (0, {max_lifetime_s:.0f}] s",
        )
    if envelope.expires <= now:
        raise CommandRejectedError(Reason.EXPIRED, f"expired at {envelope.expires.isoformat()}")


# -- parameters -------------------------------------------------------------------------------


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


Address = Annotated[str, Field(pattern=_ADDRESS.pattern)]


class PingParams(_Params):
    pass


class ReadParams(_Params):
    """On-demand read: every item of every meter (items are DIs in hex or registry names)."""

    meters: Annotated[list[Address], Field(min_length=1, max_length=64)]
    items: Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]],
                     Field(min_length=1, max_length=16)]  # fmt: skip


class TimeSyncParams(_Params):
    """Time sync: broadcast on ``buses``; ``meters`` set with the 0x14 write where the meter is
    configured ``time_set = "write"``, else by a broadcast on its bus. Neither: every bus."""

    buses: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=32)] | None = None
    meters: Annotated[list[Address], Field(min_length=1, max_length=64)] | None = None


def _instant_param(value: str, name: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{name} is not an ISO 8601 date-time") from None
    if moment.utcoffset() is None:
        raise ValueError(f"{name} needs a UTC offset or Z")
    return moment


Instant = Annotated[str, Field(min_length=10, max_length=40)]
ResendStream = Literal["readings", "alarms", "events"]


class ResendParams(_Params):
    """Send again what the spool holds with a data time in ``[start, end)``: readings by data
    time, events by event time, alarms by window start; only ``streams`` and ``meters`` when
    given (all three streams, every meter otherwise)."""

    start: Instant
    end: Instant
    streams: Annotated[list[ResendStream], Field(min_length=1, max_length=3)] | None = None
    meters: Annotated[list[Address], Field(min_length=1, max_length=64)] | None = None

    @field_validator("start", "end")
    @classmethod
    def _instant(cls, value: str) -> str:
        _instant_param(value, "the time")
        return value

    @model_validator(mode="after")
    def _order(self) -> ResendParams:
        if self.end_time <= self.start_time:
            raise ValueError("end must be after start")
        return self

    @property
    def start_time(self) -> dt.datetime:
        return _instant_param(self.start, "start")

    @property
    def end_time(self) -> dt.datetime:
        return _instant_param(self.end, "end")


RelayAction = Literal["trip", "close_allowed", "close", "protect_on", "protect_off"]


class RelayParams(_Params):
    """``trip`` is two-phase: ``stage = "arm"`` returns a token, ``stage = "execute"`` with it
    carries it out; ``"single"`` does both at once where the key allows it. Other actions
    are single-stage (``stage`` omitted or ``"single"``)."""

    meter: Address
    action: RelayAction
    stage: Literal["arm", "execute", "single"] = "single"
    token: Annotated[str, Field(min_length=16, max_length=64)] | None = None

    @field_validator("token")
    @classmethod
    def _hex(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9a-f]+", value):
            raise ValueError("token must be lowercase hex")
        return value


class TopUpParams(_Params):
    """A prepaid purchase credited to ``account`` (``amount`` as decimal text, > 0)."""

    account: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    amount: Annotated[str, Field(pattern=r"^[0-9]{1,9}(\.[0-9]{1,4})?$")]

    @property
    def value(self) -> Decimal:
        return Decimal(self.amount)

    @field_validator("amount")
    @classmethod
    def _positive(cls, value: str) -> str:
        if Decimal(value) <= 0:
            raise ValueError("amount must be above zero")
        return value


class ArchiveMeter(_Params):
    """A meter's archive entry: the fields of a ``[[meter]]`` table a head-end may set."""

    address: Address
    bus: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    edition: Literal["2007", "1997"] = "2007"
    phases: Literal[1, 3] = 1
    district: Annotated[str, Field(max_length=64)] | None = None
    tariff: Annotated[str, Field(max_length=64)] | None = None
    account: Annotated[str, Field(max_length=64)] | None = None
    prepaid: Literal["none", "remote", "local"] = "none"


class ArchiveParams(_Params):
    """Meters to add, modify (replace their entry) or remove."""

    add: Annotated[list[ArchiveMeter], Field(max_length=256)] = []
    modify: Annotated[list[ArchiveMeter], Field(max_length=256)] = []
    remove: Annotated[list[Address], Field(max_length=256)] = []


PARAMS: Final[Mapping[CommandType, type[_Params]]] = {
    CommandType.PING: PingParams,
    CommandType.READ: ReadParams,
    CommandType.TIME_SYNC: TimeSyncParams,
    CommandType.RELAY: RelayParams,
    CommandType.TOP_UP: TopUpParams,
    CommandType.ARCHIVE: ArchiveParams,
    CommandType.RESEND: ResendParams,
}


def command_type(envelope: Envelope) -> CommandType:
    try:
        return CommandType(envelope.type)
    except ValueError:
        raise CommandRejectedError(
            Reason.UNKNOWN_TYPE, f"unknown command type {envelope.type!r}"
        ) from None


def parse_params(kind: CommandType, params: Mapping[str, Any]) -> _Params:
    try:
        return PARAMS[kind].model_validate(dict(params))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "params"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise CommandRejectedError(
            Reason.BAD_PARAMETERS, f"{where}: {first['msg']}{more}"
        ) from None
